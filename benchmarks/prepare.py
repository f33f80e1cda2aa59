"""Generate and compile a scenario once per run; later figures reuse the object and the IR."""

from __future__ import annotations

import json
import os
import pickle
import sys

from common import run_child
from gen import scenario, write_scenario

MEM_LIMIT = 16 * 2**30  # a compile that needs more fails, it does not take the machine down
TIMEOUT = 480  # keeps a full run near 20 minutes


class Prepared:
    """Paths and the compile report of one scenario in the run's cache directory."""

    def __init__(self, cache: str, kind: str, rules: int):
        self.scenario = scenario(kind, rules)
        self.dir = os.path.join(cache, self.scenario.name)
        self.obj = os.path.join(self.dir, "out.o")
        self.variant = os.path.join(self.dir, "variant.o")
        self.ir = os.path.join(self.dir, "ir.pkl")
        self.report_path = os.path.join(self.dir, "compile.json")
        self.written = None

    @property
    def policies(self) -> str:
        return os.path.join(self.dir, "policies")

    @property
    def cluster(self) -> str:
        return os.path.join(self.dir, "cluster.yaml")

    def generate(self) -> None:
        if not os.path.exists(self.cluster):
            self.written = write_scenario(self.scenario, self.dir)

    def compile(self, *, extra: bool = False) -> dict:
        """One compile in a fresh child (``extra``: also the Cilium count, the IR dump, a variant)."""
        self.generate()
        argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_one.py"), self.policies, self.cluster, self.obj]
        if extra:
            argv += ["--cilium", "--dump", self.ir, "--variant", self.variant]
        res = run_child(argv, timeout=TIMEOUT, mem_limit=MEM_LIMIT)
        if extra:
            with open(self.report_path, "w") as f:
                json.dump(res, f)
        return res

    def report(self) -> dict:
        """The compile report, compiling (with extras) if this run has none yet."""
        if os.path.exists(self.report_path):
            with open(self.report_path) as f:
                return json.load(f)
        return self.compile(extra=True)

    def load_ir(self):
        with open(self.ir, "rb") as f:
            return pickle.load(f)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
