"""``polc bench``: the kernel's cost per packet for each flow of a flow file.

Each flow is crafted into the same packet ``polc test`` sends and run through the
program that judges it first (the source endpoint's egress, ``polc_from_ep``), then, if
that passes, the destination's ingress (``polc_to_ep``), each with BPF_PROG_TEST_RUN and
``--repeat N``; the kernel reports the mean duration per run.  Connection tracking is
flushed before each flow, so the first of the N runs takes the policy path and, for an
allowed flow, the others hit the entry it created: the ``stage`` printed is that of the
last run.  The benchmarks (``benchmarks/fig3_kernel.py``) separate those paths.
"""

from __future__ import annotations

import json
import os
import struct
import sys

EXIT_OK, EXIT_ERROR = 0, 2
_CB_OFFSET = 48  # offsetof(struct __sk_buff, cb)


def register(sub) -> None:
    """Add the bench subcommand to the ``polc`` argument parser."""
    p = sub.add_parser("bench", help="kernel ns per packet for each flow (BPF_PROG_TEST_RUN with a repeat)")
    p.add_argument("object", metavar="OUT.o")
    p.add_argument("flows", metavar="FLOWS", help="YAML list of flows (as for polc test)")
    p.add_argument("--cluster", action="append", default=[], metavar="FILE", help="cluster inventory; repeatable")
    p.add_argument("--repeat", type=_positive, default=100000, metavar="N",
                   help="runs per program inside the kernel (default 100000)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per flow")
    p.set_defaults(func=cmd_bench)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--repeat wants a whole number, got {text!r}") from None
    if not 1 <= n <= 2**32 - 1:
        import argparse
        raise argparse.ArgumentTypeError(f"--repeat must be between 1 and 4294967295, got {n}")
    return n


def bench_flows(judge, flows, repeat: int) -> list[dict]:
    """Per flow: the programs that ran, ns per packet of each, and the verdict."""
    from polc import abi
    from polc.runtime import bpf
    from polc.runtime.testrun import build_packet
    from polc.testcmd import DIRECTION, PROTO_NAMES

    engine = judge.engine
    out = []
    for flow in flows:
        first = judge.judge(flow)  # verdict and stages of a single packet, as polc test reports them
        kflow = _kernel_flow(judge, flow)
        packet = build_packet(kflow)
        runs = []
        for prog, node in ((engine._from, kflow.src_local_node), (engine._to, kflow.dst_local_node)):
            if engine._ct is not None:
                engine._ct.clear()
            engine.set_local_node(node)
            res = prog.test_run(packet, bytes(bpf.SIZEOF_SK_BUFF), repeat=repeat)
            stage = abi.STAGES.get(struct.unpack_from("<I", res.ctx_out, _CB_OFFSET)[0], "?")
            runs.append({"direction": DIRECTION[prog.name], "ns_per_packet": res.duration_ns,
                         "stage": stage, "verdict": "allow" if res.retval == 0 else "deny"})
            if res.retval != 0:
                break
        rec = {"index": flow.index, "name": flow.name, "proto": PROTO_NAMES[flow.proto], "port": flow.port,
               "verdict": first["verdict"], "first_stages": [r["stage"] for r in first["runs"]],
               "repeat": repeat, "runs": runs, "ns_per_packet": sum(r["ns_per_packet"] for r in runs)}
        out.append(rec)
    return out


def _kernel_flow(judge, flow):
    from polc.compiler import ir
    from polc.runtime.testrun import Flow as KernelFlow
    from polc.testcmd import PROTO_NAMES

    def node(pod):
        return pod.node if pod is not None and pod.node in judge.nodes else None

    return KernelFlow(src_ip=str(flow.src), dst_ip=str(flow.dst), proto=PROTO_NAMES[flow.proto],
                      port=flow.port if flow.proto < ir.Proto.ICMP else None,
                      icmp_type=flow.port if flow.proto >= ir.Proto.ICMP else None,
                      src_local_node=node(flow.src_pod), dst_local_node=node(flow.dst_pod))


def cmd_bench(args) -> int:
    """Entry point of ``polc bench``; returns the exit code."""
    if os.geteuid() != 0:
        print("polc bench: error: BPF_PROG_TEST_RUN needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo",
              file=sys.stderr)
        return EXIT_ERROR
    from polc.compiler import ir
    from polc.compiler.inventory import load_inventory
    from polc.flows import load_flows
    from polc.testcmd import KernelJudge

    inventory = load_inventory(args.cluster) if args.cluster else ir.Inventory()
    flows = load_flows(args.flows, inventory)
    judge = KernelJudge(args.object)
    try:
        records = bench_flows(judge, flows, args.repeat)
    finally:
        judge.close()
    if args.json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    for r in records:
        parts = ", ".join(f"{x['direction']} {x['ns_per_packet']} ns ({x['stage']})" for x in r["runs"])
        print(f"{r['ns_per_packet']:>6} ns/packet  {r['verdict']:<5} {r['name']} {r['proto']}/{r['port']}  [{parts}]")
    print(f"{len(records)} flows, {args.repeat} runs per program (engine: kernel, BPF_PROG_TEST_RUN)")
    return EXIT_OK
