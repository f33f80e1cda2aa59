"""Figure 5: ``polc load`` and ``polc update`` time against table size.

    sudo python3 benchmarks/fig5_load.py [--quick] [--sizes ...] [--cache DIR]

Uses ``polc.runtime.node`` (what ``polc load`` / ``polc update`` run) with its own pin and
state directories, so a policy loaded on this host is not touched; the map images are
written with BPF_MAP_UPDATE_BATCH.  The update loads a second object with the same tables
and another generation, then swaps it in.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from common import figure_args, finish, fmt_n, fmt_s, machine, table
from prepare import Prepared, log


def run_size(prep: Prepared, reps: int) -> dict:
    from polc.runtime import node

    rep = prep.report()
    if "error" in rep:
        return {"rules": prep.scenario.rules, "error": rep["error"]}
    loads, updates, unloads = [], [], []
    for i in range(reps):
        lay = node.Layout(f"bench{os.getpid()}x{i}", pin_root="/sys/fs/bpf/polc-bench",
                          state_root=tempfile.mkdtemp(prefix="polc-bench-state-"))
        try:
            t0 = time.perf_counter()
            node.load(prep.obj, lay.name, layout=lay)
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            node.update(lay.name, prep.variant, layout=lay)
            updates.append(time.perf_counter() - t0)
        finally:
            t0 = time.perf_counter()
            node.unload(lay.name, layout=lay)
            unloads.append(time.perf_counter() - t0)
    e = rep["entries"]
    return {"rules": rep["rules"], "entries": e["ipcache"] + e["pairs"] + e["verdicts"],
            "bytes": sum(rep["image_bytes"].values()), "load": loads, "update": updates, "unload": unloads}


def render(results) -> str:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([fmt_n(r["rules"]), "—", "—", f"compile failed: {r['error']}", "", ""])
            continue
        rows.append([fmt_n(r["rules"]), fmt_n(r["entries"]), f"{r['bytes'] / 2**20:.1f} MiB", fmt_s(r["load"]),
                     fmt_s(r["update"]), fmt_s(r["unload"])])
    return table(["rules", "map entries", "images", "load s", "update s", "unload s"], rows)


def main(argv=None) -> int:
    a = figure_args(__doc__, argv, [10, 1000, 10000])
    if os.geteuid() != 0:
        print("fig5: needs root", file=sys.stderr)
        return 2
    results = []
    for n in a.sizes:
        log(f"fig5: {n} rules")
        results.append(run_size(Prepared(a.cache, "mixed", n), 1 if a.quick else 3))
    print(f"### Figure 5: polc load / update against table size (`mixed` sets)\n\nMachine: {machine()}.\n")
    print(render(results))
    return finish(a, results, [])


if __name__ == "__main__":
    sys.exit(main())
