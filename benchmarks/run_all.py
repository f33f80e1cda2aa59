"""Run every figure once, sharing one scenario cache, and print the markdown for the README.

    sudo python3 benchmarks/run_all.py [--quick] [--out results.md] [--cache DIR]

Full run: sets of 10 .. 100,000 rules (every compile is capped at 8 minutes and 16 GiB; when
one does not finish, the tables say so).  --quick: up to 10,000 rules, one
sample per point.  Figure 4 (real traffic) is benchmarks/fig4_traffic.py, run on its own (about 3 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import fig3_kernel
import fig5_load
import fig12_compile
from common import machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache")
    ap.add_argument("--out")
    ap.add_argument("--sizes", help="rule counts for every figure (default: per mode)")
    a = ap.parse_args(argv)
    cache = a.cache or tempfile.mkdtemp(prefix="polc-bench-")
    common = (["--quick"] if a.quick else []) + ["--cache", cache] + (["--sizes", a.sizes] if a.sizes else [])
    t0 = time.time()
    buf = io.StringIO()
    print(f"Machine: {machine()}; nproc {os.cpu_count()}.\n", file=buf)
    for mod, extra in ((fig12_compile, ["--json", os.path.join(cache, "fig12.json")]),
                       (fig3_kernel, ["--json", os.path.join(cache, "fig3.json")]),
                       (fig5_load, ["--json", os.path.join(cache, "fig5.json")])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            mod.main(common + extra)
        sys.stdout.write(out.getvalue() + "\n")
        sys.stdout.flush()
        buf.write(out.getvalue() + "\n")
    buf.write(f"\nTotal run time: {time.time() - t0:.0f} s (cache {cache}).\n")
    print(f"Total run time: {time.time() - t0:.0f} s (cache {cache}).")
    if a.out:
        with open(a.out, "w") as f:
            f.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
