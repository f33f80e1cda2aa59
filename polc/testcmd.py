"""``polc test``: judge the flows of a flow file and compare with what the user expects."""

from __future__ import annotations

import json
import os
import sys

from polc import abi
from polc.compiler import ir
from polc.compiler.inventory import load_inventory
from polc.flows import Flow, load_flows

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
DIRECTION = {abi.PROG_FROM_EP: "egress", abi.PROG_TO_EP: "ingress"}
PROTO_NAMES = {ir.Proto.TCP: "TCP", ir.Proto.UDP: "UDP", ir.Proto.SCTP: "SCTP", ir.Proto.ICMP: "ICMP",
               ir.Proto.ICMPV6: "ICMPv6"}


class KernelJudge:
    """Loads the object into the kernel (unpinned, gone on exit) and runs flows through it."""

    def __init__(self, path: str):
        from polc.runtime.elfobj import ObjectFile
        from polc.runtime.loader import Collection
        from polc.runtime.testrun import KernelEngine

        obj = ObjectFile.from_path(path)
        if obj.meta is None:
            from polc.runtime.errors import ObjectError
            raise ObjectError(path, f"not a polc object (no {abi.META_SECTION} section)")
        self.collection = Collection.load(obj)
        self.engine = KernelEngine(self.collection, obj.meta)
        self.nodes = set(obj.meta.get("nodes") or {})

    def judge(self, flow: Flow) -> dict:
        from polc.runtime.testrun import Flow as KernelFlow

        def node(pod):
            return pod.node if pod is not None and pod.node in self.nodes else None

        kflow = KernelFlow(src_ip=str(flow.src), dst_ip=str(flow.dst), proto=PROTO_NAMES[flow.proto],
                           port=flow.port if flow.proto < ir.Proto.ICMP else None,
                           icmp_type=flow.port if flow.proto >= ir.Proto.ICMP else None,
                           src_local_node=node(flow.src_pod), dst_local_node=node(flow.dst_pod),
                           payload=flow.payload)
        result = self.engine.run(kflow)
        runs = [{"direction": DIRECTION[r.program], "program": r.program, "node": r.node,
                 "verdict": "allow" if r.passed else "deny", "stage": r.stage, "rule": r.rule}
                for r in result.runs]
        return {"verdict": result.verdict, "runs": runs}

    def close(self) -> None:
        self.collection.close()


class ReferenceJudge:
    """Judges flows with the reference evaluator (``polc.compiler.reference``), not the kernel.

    It needs no privilege.  The policies are the object's own sources (``.polc.meta``
    ``sources`` with role ``policy``), read again from disk; a source that is missing or has
    changed since the compile is an error, so the verdicts are always about the same policies
    the object was compiled from.
    """

    engine = "reference"

    def __init__(self, path: str, inventory: ir.Inventory):
        from polc.compiler.lower import load_policies
        from polc.compiler.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(load_policies(_meta_sources(path, "policy")), inventory)

    def judge(self, flow: Flow) -> dict:
        decision = self.evaluator.decide(flow.src, flow.dst, flow.proto, flow.port, payload=flow.payload)
        runs = [{"direction": r.direction, "program": "reference " + r.direction, "node": r.node,
                 "verdict": r.verdict, "stage": r.stage, "rule": r.rule} for r in decision.runs]
        return {"verdict": decision.verdict, "runs": runs}

    def close(self) -> None:
        pass


def _meta_sources(path: str, role: str) -> list[str]:
    """The files of ``role`` the object at ``path`` was compiled from, checked against their hashes."""
    import hashlib

    from polc.compiler.errors import CompileError, Location
    from polc.runtime.elfobj import ObjectFile

    obj = ObjectFile.from_path(path)
    if obj.meta is None:
        raise CompileError(f"not a polc object (no {abi.META_SECTION} section)", Location(path))
    files = [s["file"] for s in obj.meta.get("sources") or () if s.get("role") == role]
    if not files:
        raise CompileError(f"the object records no {role} sources; recompile it with this polc", Location(path))
    for src in obj.meta["sources"]:
        if src.get("role") != role:
            continue
        try:
            with open(src["file"], "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            raise CompileError(f"cannot read {role} source {src['file']} recorded in the object: {exc.strerror} "
                               "(run polc test from the directory you compiled in)", Location(path)) from None
        if digest != src.get("sha256"):
            raise CompileError(f"{role} source {src['file']} changed since {path} was compiled; recompile it",
                               Location(path))
    return files


_SPECIFIC = ("l7-allow", "allow-rule", "ct-established", "ct-reply")


def _deciding(runs: list[dict]) -> dict:
    """The run that decided: the first that denied; for an allow, the most telling one."""
    denied = next((r for r in runs if r["verdict"] == "deny"), None)
    if denied:
        return denied
    return min(runs, key=lambda r: (_SPECIFIC.index(r["stage"]) if r["stage"] in _SPECIFIC else len(_SPECIFIC),
                                    -runs.index(r)))


def _record(flow: Flow, judged: dict, engine: str = "kernel") -> dict:
    decide = _deciding(judged["runs"])
    rec = {
        "engine": engine,
        "index": flow.index, "name": flow.name, "src": str(flow.src), "dst": str(flow.dst),
        "from": flow.src_pod.ref if flow.src_pod else str(flow.src),
        "to": flow.dst_pod.ref if flow.dst_pod else str(flow.dst),
        "proto": PROTO_NAMES[flow.proto],
        "verdict": judged["verdict"], "expect": flow.expect,
        "ok": flow.expect is None or flow.expect == judged["verdict"],
        "direction": decide["direction"], "stage": decide["stage"], "rule": decide["rule"],
        "runs": judged["runs"],
    }
    rec["icmp_type" if flow.proto >= ir.Proto.ICMP else "port"] = flow.port
    return rec


def _rule_text(rule: dict | None) -> str:
    if not rule:
        return ""
    where = f" {rule['where']}" if rule.get("where") else ""
    return f" {rule['file']}:{rule['line']}:{rule['col']} {rule['policy']}{where}"


def _has_role(path: str, role: str) -> bool:
    from polc.runtime.elfobj import ObjectFile

    meta = ObjectFile.from_path(path).meta or {}
    return any(s.get("role") == role for s in meta.get("sources") or ())


def _line(rec: dict) -> str:
    status = "ok  " if rec["ok"] else "FAIL"
    port = f"{rec['proto']}/{rec['port']}" if "port" in rec else f"{rec['proto']} type {rec['icmp_type']}"
    expect = "" if rec["ok"] or rec["expect"] is None else f" (expected {rec['expect']})"
    engine = " (reference)" if rec.get("engine") == "reference" else ""
    return (f"{status} {rec['verdict']:<5} {rec['from']} -> {rec['to']} {port}{expect}  "
            f"[{rec['direction']} {rec['stage']}{_rule_text(rec['rule'])}]{engine}")


REFERENCE_NOTE = ("polc test: note: engine 'reference' evaluates the policy semantics in Python; these are "
                  "not the kernel's verdicts (run as root with the default engine for those)")


def run_test(args) -> int:
    """Entry point of ``polc test``; returns the exit code."""
    engine = getattr(args, "engine", "kernel")
    if engine == "kernel" and os.geteuid() != 0:
        print("polc test: error: the kernel engine needs root (CAP_BPF and CAP_NET_ADMIN) to load the "
              "program and run BPF_PROG_TEST_RUN; run it with sudo (or use --engine reference for the "
              "reference evaluator, which needs no privilege)", file=sys.stderr)
        return EXIT_ERROR
    cluster = args.cluster
    if engine == "reference" and not cluster:
        cluster = _meta_sources(args.object, "cluster") if _has_role(args.object, "cluster") else []
    inventory = load_inventory(cluster) if cluster else ir.Inventory()
    flows = load_flows(args.flows, inventory)
    judge = ReferenceJudge(args.object, inventory) if engine == "reference" else KernelJudge(args.object)
    try:
        records = [_record(f, judge.judge(f), engine) for f in flows]
    finally:
        judge.close()
    if engine == "reference":
        print(REFERENCE_NOTE, file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for rec in records:
            print(_line(rec))
        failed = sum(not r["ok"] for r in records)
        checked = sum(r["expect"] is not None for r in records)
        label = "kernel" if engine == "kernel" else "reference, not the kernel's verdict"
        print(f"{len(records)} flows, {checked - failed} as expected, {failed} not (engine: {label})")
    return EXIT_MISMATCH if any(not r["ok"] for r in records) else EXIT_OK
