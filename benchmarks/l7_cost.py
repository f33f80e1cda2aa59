"""L7 in the kernel: cost per HTTP request byte and per DNS name, against the L3/L4 path.

    sudo python3 benchmarks/l7_cost.py [--quick] [--json FILE]

One object holds an ingress HTTP policy on the server (port 80: ``GET`` with a path regex;
port 8080: the same peer allowed at L4 only) and an egress DNS policy on the client
(port 53: ``matchPattern: "**.bench.example"``; port 5353: L4 only).  Packets then run
through BPF_PROG_TEST_RUN with a large repeat; the kernel reports the mean duration per run.

* HTTP: a data segment of an established connection (the SYN ran first, so connection
  tracking holds the L7 profile) carrying one allowed request head of 64..1024 bytes (the
  path grows), through ``polc_to_ep``.  Every run loads the head into scratch memory and
  walks the DFA over every byte (an allowed head is the worst case: a denied one stops
  where the DFA dies).  The same segment to port 8080 is the L3/L4 baseline (a
  connection-tracking hit, no L7).
* DNS: a UDP query (with an EDNS OPT record) for an allowed name of 16..253 characters,
  through ``polc_from_ep``: parse the question, lowercase the name, walk it.  The same
  datagram to port 5353 is the baseline.

Denied requests are not repeated: the first run rewrites the packet into the reset or the
REFUSED answer, so later repeats would judge that instead.  ``ns/byte`` is the L7 extra
(L7 minus baseline) over the bytes walked; the last line fits ``ns = a + b * bytes``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import textwrap

from common import fmt_ns, machine, median_spread, save_json, table
from polc.runtime import bpf
from polc.runtime.testrun import Flow, build_packet

from polc import abi

CLUSTER = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: default, labels: {app: server}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.2.10}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: default, labels: {app: client}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.2.11}]}
- {apiVersion: v1, kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/api/v[0-9]+/[a-z0-9/]*"}
        - {method: POST, path: "/login", headers: ["X-Token: 42"]}
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "**.bench.example"}, {matchName: "one.one.one.one"}]
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}, {port: "80", protocol: TCP}, {port: "8080", protocol: TCP}]}]
"""

SERVER, CLIENT = "198.18.2.10", "198.18.2.11"
CB = 48  # offsetof(struct __sk_buff, cb): the datapath leaves its stage in cb[0]
HTTP_SIZES = (64, 128, 256, 512, 768, 1024)
DNS_SIZES = (16, 32, 64, 128, 192, 253)


def http_head(size: int) -> bytes:
    """An allowed request head of exactly ``size`` bytes (the path takes up the slack)."""
    fixed = len(b"GET /api/v1/ HTTP/1.1\r\nHost: server\r\nAccept: */*\r\n\r\n")
    if size < fixed:
        raise ValueError(f"an HTTP head needs at least {fixed} bytes, got {size}")
    path = "/api/v1/" + ("abcdefgh/" * 128)[: size - fixed]
    head = f"GET {path} HTTP/1.1\r\nHost: server\r\nAccept: */*\r\n\r\n".encode()
    assert len(head) == size
    return head


def dns_name(size: int) -> str:
    """An allowed name of exactly ``size`` characters: labels of up to 63 under bench.example."""
    suffix = "bench.example"
    rest = size - len(suffix)  # label bytes plus their dots
    if rest < 2:
        raise ValueError(f"a name under {suffix} needs at least {len(suffix) + 2} characters, got {size}")
    labels = []
    while rest > 0:
        n = min(63, rest - 1)
        if rest - (n + 1) == 1:  # never leave a 1-byte remainder: a label needs a character and a dot
            n -= 1
        labels.append("x" * n)
        rest -= n + 1
    name = ".".join(labels + [suffix])
    assert len(name) == size, (len(name), size)
    return name


def dns_query(name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1) + opt


class Bench:
    """The object loaded; runs packets and checks which stage decided them."""

    def __init__(self, workdir: str):
        from polc.compiler.backend import emit_object
        from polc.compiler.pipeline import compile_paths
        from polc.runtime.elfobj import ObjectFile
        from polc.runtime.loader import Collection
        from polc.runtime.testrun import KernelEngine

        for name, text in (("cluster.yaml", CLUSTER), ("policy.yaml", POLICY)):
            with open(os.path.join(workdir, name), "w") as f:
                f.write(textwrap.dedent(text))
        compiled = compile_paths([os.path.join(workdir, "policy.yaml")], [os.path.join(workdir, "cluster.yaml")])
        obj = ObjectFile.from_bytes(emit_object(compiled.spec), name="l7bench", path=os.path.join(workdir, "l7.o"))
        self.coll = Collection.load(obj)
        self.engine = KernelEngine(self.coll, obj.meta)
        self.engine.set_local_node("n1")
        self.ct = self.coll.map(abi.MAP_CT)

    def run(self, prog: str, packet: bytes, repeat: int = 1):
        res = self.coll.program(prog).test_run(packet, bytes(bpf.SIZEOF_SK_BUFF), repeat=repeat)
        return res, abi.STAGES.get(struct.unpack_from("<I", res.ctx_out, CB)[0], "?")

    def http_packet(self, head: bytes, port: int) -> bytes:
        """The data segment of a fresh connection (its SYN run first), checked once."""
        self.ct.clear()
        flow = Flow(src_ip=CLIENT, dst_ip=SERVER, proto="TCP", port=port, src_port=41000, payload=head)
        res, stage = self.run(abi.PROG_TO_EP, build_packet(flow))
        if res.retval != 0:
            raise RuntimeError(f"the SYN to port {port} was not let through ({stage})")
        return build_packet(flow, data=True)

    def dns_packet(self, query: bytes, port: int) -> bytes:
        self.ct.clear()
        flow = Flow(src_ip=CLIENT, dst_ip=SERVER, proto="UDP", port=port, src_port=45000, payload=query)
        return build_packet(flow)

    def measure(self, prog: str, packet: bytes, want_stage: str, repeat: int, samples: int) -> list[float]:
        res, stage = self.run(prog, packet)  # the first run also settles connection tracking
        if res.retval != 0:
            raise RuntimeError(f"the packet was not let through ({stage}, retval {res.retval})")
        out = []
        for _ in range(samples):
            res, stage = self.run(prog, packet, repeat)
            if stage != want_stage:
                raise RuntimeError(f"a repeated run ended in {stage}, not {want_stage}")
            out.append(float(res.duration_ns))
        return out

    def close(self):
        self.coll.close()


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def series(b: Bench, kind: str, repeat: int, samples: int) -> list[dict]:
    rows = []
    sizes = HTTP_SIZES if kind == "http" else DNS_SIZES
    for size in sizes:
        if kind == "http":
            head = http_head(size)
            l7 = b.measure(abi.PROG_TO_EP, b.http_packet(head, 80), "l7-allow", repeat, samples)
            base = b.measure(abi.PROG_TO_EP, b.http_packet(head, 8080), "ct-established", repeat, samples)
            walked = size
        else:
            name = dns_name(size)
            query = dns_query(name)
            l7 = b.measure(abi.PROG_FROM_EP, b.dns_packet(query, 53), "l7-allow", repeat, samples)
            base = b.measure(abi.PROG_FROM_EP, b.dns_packet(query, 5353), "ct-established", repeat, samples)
            walked = size
        rows.append({"size": size, "payload": size if kind == "http" else len(query), "walked": walked,
                     "l7_ns": l7, "base_ns": base})
    return rows


def render(kind: str, rows: list[dict]) -> str:
    out = []
    for r in rows:
        m_l7 = median_spread(r["l7_ns"])[0]
        m_base = median_spread(r["base_ns"])[0]
        extra = m_l7 - m_base
        label = f"{r['size']} B head" if kind == "http" else f"{r['size']}-char name ({r['payload']} B query)"
        out.append([label, fmt_ns(r["l7_ns"]), fmt_ns(r["base_ns"]), f"{extra:.0f}", f"{extra / r['walked']:.2f}"])
    a, slope = fit([r["walked"] for r in rows], [median_spread(r["l7_ns"])[0] for r in rows])
    what = "request head" if kind == "http" else "DNS name"
    return (table([what, "L7 ns/packet", "L3/L4 only ns/packet", "L7 extra ns", "extra ns/byte"], out)
            + f"\n\nFit over the medians: ns/packet ≈ {a:.0f} + {slope:.2f} × bytes walked.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    ap.add_argument("--json", help="write raw results here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("l7_cost: needs root (BPF_PROG_TEST_RUN)", file=sys.stderr)
        return 2
    repeat, samples = (20000, 3) if a.quick else (100000, 7)
    with tempfile.TemporaryDirectory(prefix="polc-l7bench-") as d:
        b = Bench(d)
        try:
            http = series(b, "http", repeat, samples)
            dns = series(b, "dns", repeat, samples)
        finally:
            b.close()
    print("### L7 in the kernel: ns per request (BPF_PROG_TEST_RUN)\n")
    print(f"Machine: {machine()}. Median [min–max] of {samples} runs of {repeat:,} repeats each.\n")
    print("HTTP: allowed head in an established connection (`polc_to_ep`), baseline: same segment, L4-only port.\n")
    print(render("http", http))
    print("\nDNS over UDP: allowed query (`polc_from_ep`), baseline: same datagram, L4-only port.\n")
    print(render("dns", dns))
    if a.json:
        save_json(a.json, {"machine": machine(), "repeat": repeat, "samples": samples, "http": http, "dns": dns})
    return 0


if __name__ == "__main__":
    sys.exit(main())
