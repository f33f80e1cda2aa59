"""Shared helpers of the benchmark scripts: statistics, markdown tables, machine facts, targets."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def median_spread(samples: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``samples``."""
    return statistics.median(samples), min(samples), max(samples)


def fmt_ms(s: list[float] | float) -> str:
    """Seconds as milliseconds: ``median [min-max]`` for several samples."""
    if isinstance(s, (int, float)):
        return f"{s * 1e3:.1f}"
    m, lo, hi = median_spread(s)
    return f"{m * 1e3:.1f}" if len(s) == 1 else f"{m * 1e3:.1f} [{lo * 1e3:.1f}–{hi * 1e3:.1f}]"


def fmt_s(s: list[float]) -> str:
    m, lo, hi = median_spread(s)
    return f"{m:.2f}" if len(s) == 1 else f"{m:.2f} [{lo:.2f}–{hi:.2f}]"


def fmt_ns(s: list[float]) -> str:
    m, lo, hi = median_spread(s)
    return f"{m:.0f}" if len(s) == 1 else f"{m:.0f} [{lo:.0f}–{hi:.0f}]"


def fmt_n(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine() -> str:
    """One line about the machine the numbers come from."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


@dataclass
class Target:
    """One of the issue's targets, met or missed, with the numbers behind it."""

    name: str
    met: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        status = "MET" if self.met else "not measured" if self.met is None else "MISSED"
        return f"- **{status}** — {self.name}: {self.detail}"


def run_child(argv: list[str], *, timeout: float, mem_limit: int | None = None) -> dict:
    """Run a Python child, return its JSON output plus wall time and peak RSS (from wait4).

    ``mem_limit`` (bytes) caps the child's address space so a runaway compile fails
    instead of taking the machine down; the result then has ``error``.
    """

    def limits():
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    env = dict(os.environ)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limits, env=env, cwd="/")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s", "wall": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    res: dict
    try:
        res = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        res = {"error": f"exit {proc.returncode}: " + (" / ".join(tail) or "no output")}
        if proc.returncode in (-9, 137) or "MemoryError" in err.decode(errors="replace"):
            res["error"] = f"out of memory (limit {mem_limit / 2**30:.0f} GiB)" if mem_limit else res["error"]
    res["wall"] = wall
    return res


def save_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


FULL_SIZES = [10, 100, 1000, 10000, 100000]


def figure_args(doc: str, argv, quick_sizes: list[int], extra=None) -> argparse.Namespace:
    """The options every figure script takes; ``a.sizes`` becomes a list, ``a.cache`` a directory.

    ``extra(parser)`` adds a script's own options.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and samples")
    ap.add_argument("--sizes", help="comma-separated rule counts")
    ap.add_argument("--cache", help="scenario cache directory (shared with run_all)")
    ap.add_argument("--json", help="write raw results here")
    if extra is not None:
        extra(ap)
    a = ap.parse_args(argv)
    a.sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else (quick_sizes if a.quick else FULL_SIZES)
    a.cache = a.cache or tempfile.mkdtemp(prefix="polc-bench-")
    return a


def finish(a: argparse.Namespace, results, targets: list[Target]) -> int:
    """Print the target lines, save the raw results if asked; the exit status."""
    if targets:
        print()
    for t in targets:
        print(t.line())
    if a.json:
        save_json(a.json, results)
    return 0

