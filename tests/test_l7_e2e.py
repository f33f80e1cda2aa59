"""End to end: L7 rules enforced by the datapath on real HTTP and DNS traffic.

A node namespace routes between five pod namespaces shaped like cilium-cli's connectivity
test deployment (``tests/data/l7_e2e/cluster.yaml``): client, client2, echo-same-node and
echo-other-node (a real HTTP/1.1 server on 8080) and kube-system/coredns (a real DNS
server on 53, UDP and TCP); see ``tests/l7net.py``.  For each scenario the real CLI
compiles the policies, ``polc load`` pins them and ``polc attach --netns`` puts them on every
host-side veth; then requests go over real sockets and the test checks what the client
saw *and* what the server received (every server logs each request before answering it):

- allowed requests get the server's response;
- a denied HTTP request (or DNS over TCP) ends in ECONNRESET within a second, and the
  server never logs it;
- a denied DNS query over UDP gets a REFUSED answer (same id and question), and the server
  never logs it;
- an L3/L4 denial stays a silent drop (connect timeout).

Scenarios: cilium-cli's ``echo-ingress-l7`` (ingress rules: the server side's
``polc_to_ep``), ``client-egress-l7`` and ``client-egress-l7-method`` (egress rules: the
client side's ``polc_from_ep``), each with evasion attempts, and a DNS name policy.  Two
more runs check the answers the datapath builds: with both ends default-deny in the
direction the reset travels (it must pass as a reply), and with checksum offload off (the
client then verifies every checksum in software instead of trusting a partial one).
Numbers (requests, reset latency) are printed by the last test (``pytest -s``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest
from l7net import (
    DNSAnswer,
    Outcome,
    dns_tcp,
    dns_tcp_session,
    dns_udp,
    http_exchange,
    http_head,
    read_log,
    set_checksum_offload,
    start_server,
)
from netns import Node, free_ns_name_check

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

DATA = Path(__file__).resolve().parent / "data" / "l7_e2e"
NODE = "node-1"
# Pods by short name (the harness names namespaces and veths after them) and address; the
# inventory has the same addresses under cilium-test/<name> and kube-system/coredns.
PODS = {"client": "198.18.7.11", "client2": "198.18.7.12", "echo-same-node": "198.18.7.21",
        "echo-other-node": "198.18.7.22", "coredns": "198.18.7.53"}
ECHOES = ("echo-same-node", "echo-other-node")
RECORDS = {"one.one.one.one": "198.18.99.1", "www.cilium.io": "198.18.99.2", "evil.example.org": "198.18.99.66",
           "api.cilium.io": "198.18.99.3"}
OBJECTS = {
    "echo-ingress-l7": ["echo-ingress-l7.yaml"],
    "client-egress-l7": ["client-egress-l7-http.yaml", "client-egress-only-dns.yaml"],
    "client-egress-l7-method": ["client-egress-l7-http-method.yaml", "client-egress-only-dns.yaml"],
    "dns-names": ["client-egress-dns-names.yaml"],
    "echo-ingress-l7-isolated": ["echo-ingress-l7.yaml", "isolated-ends.yaml"],
}
RESET_WITHIN = 1.0   # a denied request must end in a reset this fast (seconds)
DROP_TIMEOUT = 0.5   # connect timeout that shows an L3/L4 drop
TIMEOUT = 2.0        # anything else: long enough to tell a hang from a reset

STATS: dict = {"http": [], "dns": [], "scenarios": {}}


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces, veths and bpf(2)"
    return None


def polc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI."""
    proc = subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"polc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("l7-logs")
    n = Node.create(PODS, ports=())
    n.polc_names = []
    n.logs = {}
    try:
        for pod in ECHOES:
            n.logs[pod] = str(logs / f"{pod}.log")
            start_server(n, n.pods[pod], n.logs[pod], http_port=8080)
        n.logs["coredns"] = str(logs / "coredns.log")
        start_server(n, n.pods["coredns"], n.logs["coredns"], dns_port=53, records=RECORDS)
        yield n
    finally:
        for name in n.polc_names:
            polc("unload", name, check=False)
        n.close()
        assert not [x for x in free_ns_name_check() if n.tag in x], "namespaces left behind"


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """The scenarios' objects, compiled in parallel by the real CLI."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("l7-objects")

    def build(item):
        name, files = item
        path = out / f"{name}.o"
        polc("compile", *(str(DATA / f) for f in files), "--cluster", str(DATA / "cluster.yaml"), "-o", str(path))
        return name, str(path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(build, OBJECTS.items()))


class Loaded:
    """``polc load`` + ``polc attach --netns`` on every host-side veth; ``unload`` on exit."""

    def __init__(self, node: Node, obj: str):
        self.node, self.obj = node, obj
        self.name = f"l7e2e-{node.tag}-{uuid.uuid4().hex[:4]}"

    def __enter__(self) -> Self:
        self.node.polc_names.append(self.name)
        polc("load", self.obj, "--name", self.name, "--node", NODE)
        polc("attach", self.name, *self.node.host_ifaces, "--netns", self.node.netns)
        return self

    def __exit__(self, *exc) -> None:
        polc("unload", self.name)
        self.node.polc_names.remove(self.name)


# --- HTTP -------------------------------------------------------------------------------------

SECRET = ("X-Very-Secret-Token: 42",)


@dataclass
class Req:
    """One connection: ``steps`` as for :func:`l7net.http_exchange`, and what must happen.

    ``expect``: ``"ok"`` (every awaited response came), ``"reset"`` (ECONNRESET/EPIPE within
    :data:`RESET_WITHIN`) or ``"drop"`` (the SYN is dropped: connect times out).
    ``served``: the request lines the server must log for this connection; by default those
    of every step awaited when ``expect`` is ok, none otherwise.
    """

    what: str
    src: str
    dst: str
    steps: list[tuple[bytes, int]]
    expect: str
    responses: int = 0
    served: tuple[str, ...] | None = None

    def logged(self) -> list[str]:
        if self.served is not None:
            return [f"HTTP {line}" for line in self.served]
        if self.expect != "ok":
            return []
        return ["HTTP " + data.split(b"\r\n", 1)[0].decode() for data, want in self.steps if want]


def get(target: str, *headers: str, method: str = "GET") -> list[tuple[bytes, int]]:
    return [(http_head(method, target, headers), 1)]


def split(head: bytes, at: int) -> list[tuple[bytes, int]]:
    """The head in two segments, ``at`` bytes then the rest (50 ms apart)."""
    return [(head[:at], 0), (head[at:], 1)]


def _run_requests(node: Node, scenario: str, reqs: list[Req]) -> None:
    """Run ``reqs`` one after another; check outcomes, reset latency and the servers' logs."""
    before = {pod: len(read_log(node.logs[pod])) for pod in ECHOES}
    problems, want_logs = [], {pod: [] for pod in ECHOES}
    for r in reqs:
        timeout = DROP_TIMEOUT if r.expect == "drop" else TIMEOUT
        out: Outcome = http_exchange(node.pods[r.src], PODS[r.dst], 8080, r.steps, timeout=timeout)
        STATS["http"].append({"scenario": scenario, "what": r.what, "expect": r.expect, "end": out.end,
                              "latency": out.latency, "steps": len(r.steps)})
        got = "drop" if out.end == "timeout" and not out.responses and "connect" in out.detail else out.end
        want_n = r.responses or sum(w for _, w in r.steps if r.expect == "ok")
        if got != r.expect or len(out.responses) != want_n:
            problems.append(f"{r.what} ({r.src} -> {r.dst}): expected {r.expect} after {want_n} response(s), "
                            f"got {out.end} after {out.responses} {out.detail}")
        elif r.expect == "reset" and out.latency > RESET_WITHIN:
            problems.append(f"{r.what}: reset came {out.latency * 1000:.0f} ms after the send")
        want_logs[r.dst] += r.logged()
    time.sleep(0.1)  # let a request that should not have got through reach the log
    for pod in ECHOES:
        seen = read_log(node.logs[pod])[before[pod]:]
        if seen != want_logs[pod]:
            problems.append(f"{pod} received {seen}, expected {want_logs[pod]}")
    STATS["scenarios"][scenario] = {"requests": len(reqs), "problems": len(problems)}
    assert not problems, f"{scenario}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


def test_echo_ingress_l7(node, objects):
    """cilium-cli echo-ingress-l7: ingress L7 rules on the echo pods, judged in polc_to_ep."""
    public = http_head("GET", "/public")
    reqs = [
        # upstream expectations: other=client may GET /, /public, /private with the token
        Req("GET /", "client2", "echo-same-node", get("/"), "ok"),
        Req("GET /public", "client2", "echo-same-node", get("/public"), "ok"),
        Req("GET /public (echo-other-node)", "client2", "echo-other-node", get("/public"), "ok"),
        Req("GET /private without token", "client2", "echo-same-node", get("/private"), "reset"),
        Req("GET /private with token", "client2", "echo-same-node", get("/private", *SECRET), "ok"),
        Req("GET /private, header name lowercase", "client2", "echo-same-node",
            get("/private", "x-very-secret-token: 42"), "ok"),
        Req("GET /private with token 420", "client2", "echo-same-node",
            get("/private", "X-Very-Secret-Token: 420"), "reset"),
        Req("GET /other", "client2", "echo-other-node", get("/other"), "reset"),
        Req("POST /public", "client2", "echo-same-node", get("/public", method="POST"), "reset"),
        Req("client (not other=client): L3 drop", "client", "echo-same-node", get("/"), "drop"),
        # evasions
        Req("request line split across segments", "client2", "echo-same-node", split(public, 7), "reset"),
        Req("head split before the empty line", "client2", "echo-same-node", split(public, len(public) - 2),
            "reset"),
        Req("lowercase method", "client2", "echo-same-node", get("/public", method="get"), "reset"),
        Req("dot segments /public/../private", "client2", "echo-same-node",
            get("/public/../private", *SECRET), "reset"),
        Req("encoded dot segments", "client2", "echo-same-node", get("/public/%2e%2e/private"), "reset"),
        Req("absolute-form target", "client2", "echo-same-node", get("http://echo-same-node:8080/public"),
            "reset"),
        Req("query string (the path regex sees it)", "client2", "echo-same-node", get("/public?x=1"), "reset"),
        Req("pipelined allowed + denied in one send", "client2", "echo-same-node",
            [(public + http_head("GET", "/private"), 2)], "reset"),
        Req("pipelined allowed + allowed in one send: both judged, both served", "client2", "echo-same-node",
            [(public + http_head("GET", "/"), 2)], "ok", served=("GET /public HTTP/1.1", "GET / HTTP/1.1")),
        # keep-alive: every request on the connection is judged
        Req("keep-alive: two allowed requests", "client2", "echo-same-node",
            get("/public") + get("/"), "ok"),
        Req("keep-alive: allowed, then denied", "client2", "echo-same-node",
            get("/public") + get("/private"), "reset", responses=1, served=("GET /public HTTP/1.1",)),
    ]
    with Loaded(node, objects["echo-ingress-l7"]):
        _run_requests(node, "echo-ingress-l7", reqs)


def test_reset_is_a_reply_through_isolated_ends(node, objects):
    """Echo egress and client ingress default-deny too: the reset still reaches the client
    (it passes as a reply of the tracked connection), and what is allowed still works."""
    reqs = [
        Req("GET /public", "client2", "echo-same-node", get("/public"), "ok"),
        Req("GET /private without token", "client2", "echo-same-node", get("/private"), "reset"),
        Req("request line split across segments", "client2", "echo-other-node",
            split(http_head("GET", "/public"), 7), "reset"),
        Req("keep-alive: allowed, then denied", "client2", "echo-other-node",
            get("/") + get("/other"), "reset", responses=1, served=("GET / HTTP/1.1",)),
    ]
    with Loaded(node, objects["echo-ingress-l7-isolated"]):
        _run_requests(node, "echo-ingress-l7, isolated ends", reqs)


def test_client_egress_l7(node, objects):
    """cilium-cli client-egress-l7 (+ client-egress-only-dns): egress rules on client2, polc_from_ep."""
    root = http_head("GET", "/")
    reqs = [
        Req("GET /", "client2", "echo-same-node", get("/"), "ok"),
        Req("GET / (echo-other-node)", "client2", "echo-other-node", get("/"), "ok"),
        Req("GET /private", "client2", "echo-same-node", get("/private"), "reset"),
        Req("GET /public", "client2", "echo-other-node", get("/public"), "reset"),
        Req("client (kind=client only): egress default deny", "client", "echo-same-node", get("/"), "drop"),
        Req("request line split across segments", "client2", "echo-same-node", split(root, 4), "reset"),
        Req("lowercase method", "client2", "echo-same-node", get("/", method="get"), "reset"),
        Req("absolute-form target", "client2", "echo-same-node", get("http://echo-same-node:8080/"), "reset"),
        Req("dot segments /public/../", "client2", "echo-same-node", get("/public/../"), "reset"),
        Req("pipelined GET / + GET /private in one send", "client2", "echo-same-node",
            [(root + http_head("GET", "/private"), 2)], "reset"),
        Req("keep-alive: two GET /", "client2", "echo-same-node", get("/") + get("/"), "ok"),
    ]
    with Loaded(node, objects["client-egress-l7"]):
        _run_requests(node, "client-egress-l7", reqs)
        # client-egress-only-dns: any name through kube-dns (matchPattern "*")
        for src in ("client", "client2"):
            ans = dns_udp(node.pods[src], PODS["coredns"], "one.one.one.one", 0x1111)
            assert isinstance(ans, DNSAnswer) and ans.addresses == [RECORDS["one.one.one.one"]], (src, ans)


def test_client_egress_l7_method(node, objects):
    """cilium-cli client-egress-l7-method: client2 may only POST /public and /private."""
    reqs = [
        Req("POST /public", "client2", "echo-same-node", get("/public", method="POST"), "ok"),
        Req("POST /private", "client2", "echo-same-node", get("/private", method="POST"), "ok"),
        Req("POST /public, Content-Length: 0", "client2", "echo-other-node",
            get("/public", "Content-Length: 0", method="POST"), "ok"),
        Req("GET /public", "client2", "echo-same-node", get("/public"), "reset"),
        Req("PUT /public", "client2", "echo-same-node", get("/public", method="PUT"), "reset"),
        Req("POST /other", "client2", "echo-other-node", get("/other", method="POST"), "reset"),
        Req("POST /public/../other", "client2", "echo-same-node", get("/public/../other", method="POST"), "reset"),
        # bodies are not supported yet: head and body in one segment are denied, never let through
        Req("POST /public with a body in the same segment", "client2", "echo-same-node",
            [(http_head("POST", "/public", ("Content-Length: 5",)) + b"hello", 1)], "reset"),
        Req("client: egress default deny", "client", "echo-same-node", get("/public", method="POST"), "drop"),
    ]
    with Loaded(node, objects["client-egress-l7-method"]):
        _run_requests(node, "client-egress-l7-method", reqs)


# --- DNS --------------------------------------------------------------------------------------


def test_dns_names(node, objects):
    """Egress rules.dns on client2: allowed names resolve, others are REFUSED (UDP) or reset (TCP)."""
    udp = [("one.one.one.one", "allow"), ("www.cilium.io", "allow"), ("WWW.Cilium.IO", "allow"),
           ("nope.cilium.io", "allow"),  # allowed, and the server says NXDOMAIN
           ("cilium.io", "deny"), ("a.b.cilium.io", "deny"), ("evil.example.org", "deny"),
           ("one.one.one.one.evil.example.org", "deny"), ("www.cilium.io.evil.example.org", "deny")]
    tcp = [("www.cilium.io", "allow"), ("api.cilium.io", "allow"), ("evil.example.org", "deny")]
    dns = node.pods["coredns"]
    before = len(read_log(node.logs["coredns"]))
    problems, want_log = [], []
    with Loaded(node, objects["dns-names"]):
        qid = 0x4000
        for transport, names in (("udp", udp), ("tcp", tcp)):
            for name, verdict in names:
                qid += 1
                ask = dns_udp if transport == "udp" else dns_tcp
                ans = ask(node.pods["client2"], dns.ip, name, qid, timeout=TIMEOUT)
                problem = _judge_dns(transport, name, verdict, ans)
                if problem:
                    problems.append(problem)
                if verdict == "allow":
                    want_log.append(f"DNS {transport} {name}")
        # several queries on one TCP connection: each is judged
        c2 = node.pods["client2"]
        got = dns_tcp_session(c2, dns.ip, ["www.cilium.io", "one.one.one.one"], 0x6000, timeout=TIMEOUT)
        if [getattr(a, "addresses", None) for a in got] != [[RECORDS["www.cilium.io"]], [RECORDS["one.one.one.one"]]]:
            problems.append(f"tcp, two allowed queries on one connection: {got}")
        want_log += ["DNS tcp www.cilium.io", "DNS tcp one.one.one.one"]
        got = dns_tcp_session(c2, dns.ip, ["api.cilium.io", "evil.example.org"], 0x6010, timeout=TIMEOUT)
        if (len(got) != 2 or getattr(got[0], "addresses", None) != [RECORDS["api.cilium.io"]]
                or getattr(got[1], "end", None) != "reset"):
            problems.append(f"tcp, allowed then denied query on one connection: {got}")
        want_log.append("DNS tcp api.cilium.io")
        # the length prefix in a segment of its own cannot be judged: refused (reset), never let through
        got = dns_tcp_session(c2, dns.ip, ["www.cilium.io"], 0x6020, timeout=TIMEOUT, split_prefix=True)
        if [getattr(a, "end", None) for a in got] != ["reset"]:
            problems.append(f"tcp, length prefix in its own segment: expected a reset, got {got}")
        # client is not selected by the policy: its queries are not judged
        ans = dns_udp(node.pods["client"], dns.ip, "evil.example.org", 0x7777, timeout=TIMEOUT)
        if not isinstance(ans, DNSAnswer) or ans.addresses != [RECORDS["evil.example.org"]]:
            problems.append(f"client (unselected) evil.example.org: {ans}")
        want_log.append("DNS udp evil.example.org")
        time.sleep(0.1)
    seen = read_log(node.logs["coredns"])[before:]
    if seen != want_log:
        problems.append(f"the DNS server received {seen}, expected {want_log}")
    STATS["scenarios"]["dns-names"] = {"requests": len(udp) + len(tcp) + 6, "problems": len(problems)}
    assert not problems, f"dns-names: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


def _judge_dns(transport: str, name: str, verdict: str, ans: DNSAnswer | Outcome | str) -> str | None:
    STATS["dns"].append({"transport": transport, "name": name, "expect": verdict,
                         "got": ans.rcode if isinstance(ans, DNSAnswer) else getattr(ans, "end", ans),
                         "latency": getattr(ans, "latency", None)})
    want_addr = RECORDS.get(name.lower())
    if verdict == "allow":
        if not isinstance(ans, DNSAnswer) or not ans.matches_query:
            return f"{transport} {name}: expected an answer, got {ans}"
        if want_addr and ans.addresses != [want_addr]:
            return f"{transport} {name}: expected A {want_addr}, got {ans}"
        if not want_addr and ans.rcode != "NXDOMAIN":
            return f"{transport} {name}: expected the server's NXDOMAIN, got {ans}"
        return None
    if transport == "udp":
        if not isinstance(ans, DNSAnswer) or ans.rcode != "REFUSED" or ans.addresses or not ans.matches_query:
            return f"udp {name}: expected REFUSED echoing the query, got {ans}"
        if ans.latency > RESET_WITHIN:
            return f"udp {name}: REFUSED came after {ans.latency * 1000:.0f} ms"
        return None
    if not isinstance(ans, Outcome) or ans.end != "reset" or ans.latency > RESET_WITHIN:
        return f"tcp {name}: expected a prompt reset, got {ans}"
    return None


class SoftwareChecksums:
    """Checksum offload off on both ends of ``pods``' veths for the body, then on again."""

    def __init__(self, node: Node, pods: tuple[str, ...]):
        self.ends = [e for p in pods for e in ((node.pods[p].netns, "eth0"), (node.netns, node.pods[p].host_if))]

    def __enter__(self) -> Self:
        for netns, ifname in self.ends:
            set_checksum_offload(netns, ifname, False)
        return self

    def __exit__(self, *exc) -> None:
        for netns, ifname in self.ends:
            set_checksum_offload(netns, ifname, True)


def test_answers_survive_software_checksums(node, objects):
    """With checksum offload off the client verifies every checksum itself: the resets and
    the REFUSED answer the datapath builds must be valid packets, not trusted partial ones."""
    with SoftwareChecksums(node, ("client2", "echo-same-node", "coredns")):
        with Loaded(node, objects["echo-ingress-l7"]):
            _run_requests(node, "echo-ingress-l7, software checksums", [
                Req("GET /public", "client2", "echo-same-node", get("/public"), "ok"),
                Req("GET /private without token", "client2", "echo-same-node", get("/private"), "reset"),
            ])
        with Loaded(node, objects["client-egress-l7"]):
            _run_requests(node, "client-egress-l7, software checksums", [
                Req("GET /", "client2", "echo-same-node", get("/"), "ok"),
                Req("GET /private", "client2", "echo-same-node", get("/private"), "reset"),
            ])
        with Loaded(node, objects["dns-names"]):
            dns = PODS["coredns"]
            problems = [p for p in (
                _judge_dns("udp", "www.cilium.io", "allow", dns_udp(node.pods["client2"], dns, "www.cilium.io", 0x5001)),
                _judge_dns("udp", "evil.example.org", "deny",
                           dns_udp(node.pods["client2"], dns, "evil.example.org", 0x5002, timeout=TIMEOUT)),
                _judge_dns("tcp", "evil.example.org", "deny",
                           dns_tcp(node.pods["client2"], dns, "evil.example.org", 0x5003, timeout=TIMEOUT)),
            ) if p]
    assert not problems, "\n".join(problems)


def test_zz_summary(node):
    """Print what the module proved (run with -s to see it)."""
    http = STATS["http"]
    resets = sorted(h["latency"] * 1000 for h in http if h["end"] == "reset" and h["steps"] == 1)
    refused = sorted(d["latency"] * 1000 for d in STATS["dns"] if d["got"] == "REFUSED")
    dns_resets = sorted(d["latency"] * 1000 for d in STATS["dns"] if d["got"] == "reset")
    ok = sum(1 for h in http if h["end"] == "ok")
    print(f"\nL7 e2e: {len(http)} HTTP connections ({ok} served, "
          f"{sum(1 for h in http if h['end'] == 'reset')} reset, {sum(1 for h in http if h['end'] == 'timeout')} "
          f"dropped at L3/L4), {len(STATS['dns'])} DNS queries ({len(refused)} REFUSED, {len(dns_resets)} reset)")

    def spread(xs):
        return (f"median {statistics.median(xs):.3f} ms, max {max(xs):.3f} ms (n={len(xs)})" if xs else "none")

    print(f"  HTTP reset latency (send -> ECONNRESET): {spread(resets)}")
    print(f"  DNS REFUSED latency (send -> answer):   {spread(refused)}")
    print(f"  DNS/TCP reset latency:                   {spread(dns_resets)}")
    for name, s in STATS["scenarios"].items():
        print(f"  {name:26} {s['requests']:3} requests, {s['problems']} problems")
