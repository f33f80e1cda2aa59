"""Figure 3: in-kernel cost per packet against size, next to the floor and a linear classifier.

    sudo python3 benchmarks/fig3_kernel.py [--quick] [--sizes 10,1000,...] [--cache DIR]

For each size of the ``mixed`` set, the compiled object is loaded and its ingress program
(``polc_to_ep``) runs packets through BPF_PROG_TEST_RUN with a large repeat; the kernel
reports the mean duration per run.  Packets, picked by asking polc's own program:

* ``denied``: pod to an isolated pod, no rule matches (the whole lookup chain: a
  connection-tracking miss, two address lookups, one to three pair lookups, the verdict
  list and a binary search over the profile's port intervals);
* ``cidr``: from an external address inside a CIDR that a rule names (with ``except``) to
  that rule's subject, denied or matched by a rule (no connection-tracking insert);
* ``established``: an allowed flow after its first packet (connection-tracking hit);
* ``reply``: the reply of an allowed flow through the egress program (the same CT entry);
* ``new-allowed``: the first packet of an allowed flow (CT miss, all lookups, CT insert);
  this one cannot repeat inside the kernel (the second run would hit the CT entry), so it
  is the median of single runs with the CT entry removed in between (timer overhead
  included, the same for every program).

The floor and the linear program (``linear.py``) judge the same packets.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tempfile
import time

from common import Target, figure_args, finish, fmt_ns, machine, median_spread, table
from prepare import Prepared, log

from polc import abi
from polc.runtime import bpf
from polc.runtime.elfobj import ObjectFile
from polc.runtime.loader import Collection
from polc.runtime.testrun import Flow, build_packet

KINDS = ("denied", "cidr", "established", "reply", "new-allowed")
CB = 48  # offsetof(struct __sk_buff, cb)


def _stage(res) -> str:
    return abi.STAGES.get(struct.unpack_from("<I", res.ctx_out, CB)[0], "?")


class PolcPrograms:
    def __init__(self, path: str):
        self.coll = Collection.load(ObjectFile.from_path(path))
        self.to_ep = self.coll.program(abi.PROG_TO_EP)
        self.from_ep = self.coll.program(abi.PROG_FROM_EP)
        self.ct = self.coll.map(abi.MAP_CT)

    def run(self, prog, packet: bytes, repeat: int = 1):
        return prog.test_run(packet, bytes(bpf.SIZEOF_SK_BUFF), repeat=repeat)

    def close(self):
        self.coll.close()


def pick_packets(p: PolcPrograms, policy, inventory, rng: random.Random) -> dict:
    """Packets of each kind, found by trying flows on polc's own ingress program."""
    from polc.compiler import ir

    pods = [pod for pod in inventory.pods if pod.ips]
    ports = [80, 443, 8080, 8081, 9090, 5432, 6379, 53] + [r.ports[0].lo for r in policy.rules[:200]
                                                         if r.ports and isinstance(r.ports[0], ir.PortRange)]
    out = {}

    def flow(src, dst, port, proto="TCP"):
        return Flow(src_ip=src, dst_ip=dst, proto=proto, port=port)

    for _ in range(20000):
        if "denied" in out and "allowed" in out:
            break
        a, b = rng.choice(pods), rng.choice(pods)
        f = flow(str(a.ips[0]), str(b.ips[0]), rng.choice(ports))
        p.ct.clear()
        stage = _stage(p.run(p.to_ep, build_packet(f)))
        if stage == "default-deny" and "denied" not in out:
            out["denied"] = f
        elif stage == "allow-rule" and "allowed" not in out:
            out["allowed"] = f
    cidrs = [r for r in policy.rules if r.direction == ir.Direction.INGRESS
             and any(isinstance(x, ir.PeerCIDR) and x.cidr.version == 4 for x in r.peers)]
    by_subject = {}
    for r in cidrs[:300]:
        peer = next(x for x in r.peers if isinstance(x, ir.PeerCIDR))
        subj = by_subject.setdefault(r.subject, [pod for pod in pods if r.subject.matches(dict(pod.labels))])
        if not subj:
            continue
        src = peer.cidr.network_address + (1 if peer.cidr.num_addresses > 1 else 0)
        if any(src in e for e in peer.excepts):
            src = peer.excepts[0].network_address  # an except prefix: CIDR lookup, then denied
        port = r.ports[0].lo if r.ports and isinstance(r.ports[0], ir.PortRange) else 443
        f = flow(str(src), str(subj[0].ips[0]), port)
        p.ct.clear()
        stage = _stage(p.run(p.to_ep, build_packet(f)))
        if stage in ("allow-rule", "deny-rule"):
            out["cidr"] = f
            out["cidr_stage"] = stage
            break
        out.setdefault("cidr", f)
        out.setdefault("cidr_stage", stage)
    return out


def measure_repeat(run, packet: bytes, repeat: int, samples: int) -> list[float]:
    return [run(packet, repeat).duration_ns for _ in range(samples)]


def measure_single(run, packet: bytes, reset, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        reset()
        out.append(run(packet, 1).duration_ns)
    return out


def run_size(prep: Prepared, repeat: int, samples: int, singles: int, linear_ok: bool) -> dict:
    from linear import LinearProgram

    rep = prep.report()
    if "error" in rep:
        return {"rules": prep.scenario.rules, "error": rep["error"]}
    policy, inventory = prep.load_ir()
    rng = random.Random(7)
    p = PolcPrograms(prep.obj)
    lin = None
    try:
        pk = pick_packets(p, policy, inventory, rng)
        res = {"rules": rep["rules"], "identities": rep["identities"], "cidr_stage": pk.get("cidr_stage")}
        packets = {}
        if "denied" in pk:
            packets["denied"] = build_packet(pk["denied"])
        if "cidr" in pk:
            packets["cidr"] = build_packet(pk["cidr"])
        allowed = pk.get("allowed")
        if allowed is not None:
            packets["established"] = build_packet(allowed)
            packets["new-allowed"] = packets["established"]
            rev = Flow(src_ip=allowed.dst_ip, dst_ip=allowed.src_ip, proto="TCP", port=allowed.src_port,
                       src_port=allowed.port)
            packets["reply"] = build_packet(rev)
        polc = {}
        for kind, pkt in packets.items():
            p.ct.clear()
            if kind == "new-allowed":
                polc[kind] = measure_single(lambda d, r: p.run(p.to_ep, d, r), pkt, p.ct.clear, singles)
            elif kind == "reply":
                p.run(p.to_ep, packets["established"])  # the request creates the CT entry
                polc[kind] = measure_repeat(lambda d, r: p.run(p.from_ep, d, r), pkt, repeat, samples)
            else:
                polc[kind] = measure_repeat(lambda d, r: p.run(p.to_ep, d, r), pkt, repeat, samples)
        res["polc"] = polc
        if not linear_ok:
            return res
        t0 = time.perf_counter()
        lin = LinearProgram(policy, inventory, tempfile.mkdtemp(prefix="polc-linear-"))
        floor_tuples = [(pk[k].src_ip, pk[k].dst_ip, 6, pk[k].port) for k in ("allowed",) if k in pk]
        floor_tuples += [(f"198.18.{i >> 8 & 255}.{i & 255}", "198.19.0.1", 6, 80) for i in range(rep["rules"])]
        why = lin.build(floor_tuples)
        if why:
            res["linear_error"] = why
        res["linear_build_seconds"] = time.perf_counter() - t0
        for name in ("floor", "linear"):
            if name == "linear" and not lin.linear_loaded:
                continue
            got = {}
            for kind, pkt in packets.items():
                run = (lambda d, r, n=name: lin.run(n, d, r))
                if kind == "new-allowed":
                    got[kind] = measure_single(run, pkt, lambda: None, singles)
                else:
                    got[kind] = measure_repeat(run, pkt, max(1, repeat // (1 + rep["rules"] // 2000))
                                               if name == "linear" else repeat, samples)
            res[name] = got
        if lin.linear_loaded:
            res["linear_chunks"] = lin.chunks
            res["linear_sets"] = lin.set_entries
        return res
    finally:
        p.close()
        if lin is not None:
            lin.close()


def render(results: list[dict]) -> str:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([f"~{r['rules']:,}", "—", "polc", f"compile failed: {r['error']}"] + [""] * (len(KINDS) - 1))
            continue
        for prog in ("polc", "floor", "linear"):
            got = r.get(prog)
            if got is None:
                if prog == "linear" and r.get("linear_error"):
                    rows.append([f"{r['rules']:,}", r["identities"], "linear", f"not loadable: {r['linear_error']}"]
                                + [""] * (len(KINDS) - 1))
                continue
            rows.append([f"{r['rules']:,}", f"{r['identities']:,}", prog]
                        + [fmt_ns(got[k]) if k in got else "—" for k in KINDS])
    return table(["rules", "identities", "program"] + [f"{k} ns" for k in KINDS], rows)


def targets(results: list[dict]) -> list[Target]:
    """Both targets for every packet kind the benchmark repeats in the kernel."""
    ok = [r for r in results if "polc" in r and "denied" in r["polc"]]
    if len(ok) < 2:
        return [Target("per-packet cost at 100,000 rules within 1.3x of 10 rules", None, "not enough sizes measured")]
    small, big = ok[0], ok[-1]
    m = lambda r, prog, k: median_spread(r[prog][k])[0]
    note = "" if big["rules"] >= 100000 else " (the 100,000-rule point was not measured)"
    out = []
    for kind in ("denied", "cidr", "established", "reply"):
        if kind not in big["polc"] or kind not in small["polc"]:
            continue
        ratio = m(big, "polc", kind) / m(small, "polc", kind)
        out.append(Target(f"{kind}: per-packet cost at {big['rules']:,} rules within 1.3x of {small['rules']:,} rules",
                          ratio <= 1.3 if big["rules"] >= 100000 else None,
                          f"{m(big, 'polc', kind):.0f} ns vs {m(small, 'polc', kind):.0f} ns = {ratio:.2f}x{note}"))
        if kind in big.get("floor", {}):
            f = m(big, "polc", kind) / m(big, "floor", kind)
            out.append(Target(f"{kind}: within 2x of the one-lookup floor at {big['rules']:,} rules", f <= 2,
                              f"{m(big, 'polc', kind):.0f} ns vs floor {m(big, 'floor', kind):.0f} ns = {f:.2f}x"))
    return out


def main(argv=None) -> int:
    a = figure_args(__doc__, argv, [10, 1000, 10000])
    if os.geteuid() != 0:
        print("fig3: needs root (BPF_PROG_TEST_RUN)", file=sys.stderr)
        return 2
    repeat, samples, singles = (20000, 3, 200) if a.quick else (100000, 5, 500)
    results = []
    for n in a.sizes:
        log(f"fig3: {n} rules")
        results.append(run_size(Prepared(a.cache, "mixed", n), repeat, samples, singles, linear_ok=True))
    print("### Figure 3: in-kernel ns per packet (BPF_PROG_TEST_RUN), `mixed` sets\n")
    print(f"Machine: {machine()}. Median [min–max] of {samples} runs of {repeat:,} repeats "
          f"(linear: fewer repeats at large sizes); new-allowed: median of {singles} single runs.\n")
    print(render(results))
    return finish(a, results, targets(results))


if __name__ == "__main__":
    sys.exit(main())
