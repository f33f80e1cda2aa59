"""End to end: polc enforces the Kubernetes NetworkPolicy e2e model on real traffic.

A node namespace routes between nine pod namespaces (x/a ... z/c, addresses from the
inventory ``tests/data/k8s_e2e/cluster.yaml``), each pod running TCP and UDP echo servers
on ports 80 and 81.  For each upstream case the real CLI compiles the policy, ``polc load``
pins it, ``polc attach --netns`` attaches it to the nine host-side veths, every ordered pair
of distinct pods is probed with real sockets for the case's protocols and ports, and the
observed matrix must equal the expected one.  Self pairs are left out: a pod talking to its
own address never leaves its namespace, so no veth (and no CNI) sees it.

Further tests show that replies flow into default-deny pods, that ``polc update`` keeps a
running TCP stream alive while denying what the new policy denies, that failed updates keep
the old policy, and that ``polc unload`` leaves nothing in the kernel.

Numbers (cases, probes, timings, update gap) are printed by the last test (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from netns import Node, Stream, bad_objects, free_ns_name_check, probe, probe_all

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "tests" / "data" / "k8s_e2e"
OWN = REPO / "tests" / "data" / "node_e2e"
NODE = "node-1"

# Upstream cases probed here: TCP and UDP on ports 80/81, ingress and egress, selectors,
# ipBlocks, named ports, port ranges, stacked policies.
CASES = [
    "allow-all", "default-deny-all", "default-deny-ingress", "deny-egress-namespace",
    "deny-egress-podselector", "egress-denied-on-client-side", "ingress-and-egress-together",
    "ingress-any-port-specific-protocol", "ingress-ipblock-except", "egress-cidr-except",
    "multiple-egress-port80-only", "multiple-ingress-port80-only", "named-port-ingress",
    "named-port-egress", "namespaceselector-other-namespace", "podselector-and-namespaceselector",
    "podselector-or-namespaceselector", "ports", "stacked-policies", "udp-ports", "udp-not-treated-as-tcp",
    "udp-default-deny-ingress", "endport-ingress", "endport-egress-udp",
]
TC_CASE = "ports"  # also run through the tc clsact fallback

STATS: dict = {"cases": [], "update": {}, "unload": {}}


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces, veths and bpf(2)"
    if not K8S.joinpath("cluster.yaml").exists():
        return f"no e2e data in {K8S}"
    return None


def polc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI."""
    proc = subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"polc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _cluster(case_dir: Path) -> Path:
    own = case_dir / "cluster.yaml"
    return own if own.exists() else K8S / "cluster.yaml"


def _pods(cluster: Path) -> dict[str, str]:
    doc = yaml.safe_load(cluster.read_text())
    pods = {}
    for item in doc["items"]:
        if item.get("kind") == "Pod":
            ref = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            pods[ref] = item["status"]["podIP"]
    return pods


@pytest.fixture(scope="module")
def node():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    n = Node.create(_pods(K8S / "cluster.yaml"))
    names: list[str] = []
    n.polc_names = names
    try:
        yield n
    finally:
        for name in names:
            polc("unload", name, check=False)
        n.close()
        assert not [x for x in free_ns_name_check() if n.tag in x], "namespaces left behind"


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Every object the module needs, compiled in parallel by the real CLI."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("objects")
    jobs = {case: (K8S / case / "policy.yaml", _cluster(K8S / case)) for case in CASES}
    jobs["update-a"] = (OWN / "update-a.yaml", K8S / "cluster.yaml")
    jobs["update-b"] = (OWN / "update-b.yaml", K8S / "cluster.yaml")

    def build(item):
        case, (policy, cluster) = item
        path = out / f"{case}.o"
        polc("compile", str(policy), "--cluster", str(cluster), "-o", str(path))
        return case, str(path)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = dict(pool.map(build, jobs.items()))
    STATS["compile_seconds"] = time.monotonic() - t0
    built["_dir"] = str(out)
    return built


class Loaded:
    """``polc load`` + ``polc attach --netns`` on every host-side veth; ``unload`` on exit."""

    def __init__(self, node: Node, obj: str, mode: str = "auto"):
        self.node, self.obj, self.mode = node, obj, mode
        self.name = f"e2e-{node.tag}-{uuid.uuid4().hex[:4]}"

    def __enter__(self) -> Loaded:
        self.node.polc_names.append(self.name)
        polc("load", self.obj, "--name", self.name, "--node", NODE)
        polc("attach", self.name, *self.node.host_ifaces, "--netns", self.node.netns, "--mode", self.mode)
        return self

    def status(self) -> dict:
        return json.loads(polc("status", self.name, "--json").stdout)[0]

    def __exit__(self, *exc) -> None:
        polc("unload", self.name)
        self.node.polc_names.remove(self.name)


def _expected(case: str) -> dict[tuple[str, str, str, int], bool]:
    flows = yaml.safe_load((K8S / case / "flows.yaml").read_text())
    want = {}
    for f in flows:
        if f.get("family") == 6 or f["proto"] not in ("TCP", "UDP") or f.get("port") not in (80, 81):
            continue
        if "/" not in f["from"] or "/" not in f["to"] or f["from"] == f["to"]:
            continue
        want[(f["from"], f["to"], f["proto"], f["port"])] = f["expect"] == "allow"
    return want


def _matrix(observed: dict, expected: dict, proto: str, port: int) -> str:
    pods = sorted({k[0] for k in expected} | {k[1] for k in expected})
    lines = [f"{proto}/{port}  (rows: from, columns: to; . allow, X deny, ! wrong)",
             "       " + " ".join(p.replace("/", "") for p in pods)]
    for src in pods:
        row = []
        for dst in pods:
            key = (src, dst, proto, port)
            if key not in expected:
                row.append(" - ")
                continue
            mark = "." if observed[key] else "X"
            row.append(f" {mark if observed[key] == expected[key] else '!'} ")
        lines.append(f"{src:6} " + "".join(row))
    return "\n".join(lines)


@pytest.mark.parametrize("case,mode", [(c, "auto") for c in CASES] + [(TC_CASE, "tc")])
def test_matrix(node, objects, case, mode):
    expected = _expected(case)
    assert expected, f"{case}: no TCP/UDP 80/81 pod-to-pod flows"
    t0 = time.monotonic()
    with Loaded(node, objects[case], mode) as loaded:
        st = loaded.status()
        assert all(h["attached"] for a in st["attachments"] for h in a["hooks"].values())
        assert {a["mode"] for a in st["attachments"]} == {"tcx" if mode == "auto" else "tc"}
        observed = probe_all(node, list(expected))
    wrong = {k: v for k, v in observed.items() if v != expected[k]}
    STATS["cases"].append({"case": case, "mode": mode, "probes": len(expected), "wrong": len(wrong),
                           "allow": sum(expected.values()), "seconds": time.monotonic() - t0})
    if wrong:
        views = sorted({(k[2], k[3]) for k in wrong})
        detail = "\n\n".join(_matrix(observed, expected, proto, port) for proto, port in views)
        lines = [f"  {s} -> {d} {p}/{port}: expected {'allow' if expected[(s, d, p, port)] else 'deny'}, "
                 f"observed {'allow' if v else 'deny'}" for (s, d, p, port), v in sorted(wrong.items())]
        pytest.fail(f"{case} ({mode}): {len(wrong)} of {len(expected)} probes wrong\n" + "\n".join(lines[:30])
                    + "\n\n" + detail)


def test_replies_reach_default_deny_clients(node, objects):
    """x is default-deny for ingress: x's own connections still complete (SYN-ACK, echo)."""
    pods = node.pods
    with Loaded(node, objects["default-deny-ingress"]) as loaded:
        assert probe(pods["x/a"], pods["y/b"], "TCP", 80), "TCP reply into default-deny x/a was dropped"
        assert probe(pods["x/a"], pods["z/c"], "UDP", 81), "UDP reply into default-deny x/a was dropped"
        assert not probe(pods["y/b"], pods["x/a"], "TCP", 80), "x/a accepted a connection despite default deny"
        ct = loaded.status()["maps"]["polc_ct"]["entries"]
    assert ct >= 2, "the allowed connections left no conntrack entries"


def _ids(status: dict) -> dict[str, set[int]]:
    return {"prog": {p["id"] for p in status["programs"].values() if p},
            "map": {m["id"] for m in status["maps"].values() if m},
            "link": {h["link_id"] for a in status["attachments"] for h in a["hooks"].values() if h.get("link_id")}}


def test_update_during_stream(node, objects, tmp_path):
    """A -> B while a TCP stream both allow runs: the stream lives, B's denials hold at once."""
    pods = node.pods
    bad = bad_objects(objects["update-a"], str(tmp_path))
    with Loaded(node, objects["update-a"]) as loaded:
        digest_a = loaded.status()["object"]["digest"]
        assert probe(pods["z/a"], pods["x/a"], "TCP", 80) and probe(pods["y/b"], pods["x/b"], "TCP", 81)
        assert not probe(pods["x/b"], pods["x/a"], "TCP", 80)
        stream = Stream(pods["y/a"], pods["x/a"], 80)
        try:
            time.sleep(0.3)
            assert stream.times and stream.error is None, f"stream did not start: {stream.error}"
            ids_a = _ids(loaded.status())

            # failed updates: each says why, and A keeps enforcing
            for kind, path in bad.items():
                proc = polc("update", loaded.name, path, check=False)
                assert proc.returncode == 2, f"update with a {kind} object: exit {proc.returncode}\n{proc.stderr}"
                assert "still enforcing" in proc.stderr, proc.stderr
                st = loaded.status()
                assert st["object"]["digest"] == digest_a and _ids(st)["prog"] == ids_a["prog"]
            assert probe(pods["z/a"], pods["x/a"], "TCP", 80), "a failed update changed the policy"

            before = len(stream.times)
            t0 = time.monotonic()
            proc = polc("update", loaded.name, objects["update-b"])
            t1 = time.monotonic()
            # right after the update: what B denies is refused, what B allows works
            denied_z = probe(pods["z/b"], pods["x/c"], "TCP", 80, tries=1)
            denied_81 = probe(pods["y/b"], pods["x/b"], "TCP", 81, tries=1)
            allowed = probe(pods["y/c"], pods["x/b"], "TCP", 80)
            time.sleep(0.3)
            st = loaded.status()
        finally:
            stream.close()
    gap = stream.max_gap(t0, t1)
    STATS["update"] = {"cli_seconds": t1 - t0, "stream_messages": len(stream.times),
                       "messages_during_update": sum(1 for t in stream.times if t0 <= t <= t1),
                       "max_gap_ms": gap * 1000, "swap": proc.stderr.strip().splitlines()[-1],
                       "failed_updates": sorted(bad)}
    assert stream.error is None, f"the stream broke during the update: {stream.error}"
    assert len(stream.times) > before + 50, "the stream stalled after the update"
    assert gap < 0.5, f"the stream stalled {gap * 1000:.0f} ms during the update"
    assert not denied_z, "z -> x:80 still allowed after updating to B"
    assert not denied_81, "y -> x:81 still allowed after updating to B"
    assert allowed, "y -> x:80 denied after updating to B"
    assert st["object"]["digest"] != digest_a
    assert all(h["attached"] and h["prog_id"] == st["programs"][h["program"]]["id"]
               for a in st["attachments"] for h in a["hooks"].values())
    assert st["maps"]["polc_ct"]["id"] in ids_a["map"], "polc_ct was not reused"


def _bpftool(kind: str) -> list[dict]:
    proc = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def test_unload_leaves_nothing(node, objects):
    """After unload the kernel has none of the programs, maps, links or pins."""
    loaded = Loaded(node, objects["ports"])
    with loaded:
        ids = _ids(loaded.status())
        assert len(ids["link"]) == 2 * len(node.pods)
        pin_dir = f"/sys/fs/bpf/polc/{loaded.name}"
        assert os.path.isdir(pin_dir)
    assert not os.path.exists(pin_dir) and not os.path.exists(f"/run/polc/{loaded.name}")
    deadline = time.monotonic() + 3  # bpffs drops its references after an RCU grace period
    while True:
        left = {"prog": ids["prog"] & {p["id"] for p in _bpftool("prog")},
                "map": ids["map"] & {m["id"] for m in _bpftool("map")},
                "link": ids["link"] & {li["id"] for li in _bpftool("link")}}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    STATS["unload"] = {k: len(v) for k, v in ids.items()}
    assert not any(left.values()), f"left in the kernel after unload: {left}"
    # and the pods talk freely again: nothing is attached any more
    assert probe(node.pods["y/a"], node.pods["x/a"], "TCP", 81)


def test_zz_summary(node):
    """Print what the module proved (run with -s to see it)."""
    cases = STATS["cases"]
    probes = sum(c["probes"] for c in cases)
    print(f"\nnode e2e: {len(cases)} case runs ({len({c['case'] for c in cases})} upstream cases), "
          f"{probes} pod-pair probes, {sum(c['wrong'] for c in cases)} wrong, "
          f"{sum(c['allow'] for c in cases)} expected allow; "
          f"compile {STATS.get('compile_seconds', 0):.1f}s, "
          f"cases {sum(c['seconds'] for c in cases):.1f}s")
    for c in cases:
        print(f"  {c['case']:36} {c['mode']:4} {c['probes']:4} probes {c['wrong']} wrong {c['seconds']:.1f}s")
    print(f"  update: {STATS['update']}")
    print(f"  unload: ids checked gone {STATS['unload']}")
