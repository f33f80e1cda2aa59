"""Child process of the compile benchmark: compile one scenario, print one JSON line.

    python benchmarks/compile_one.py POLICY_DIR CLUSTER OUT.o [--cilium]

Times every stage of ``compile_paths`` plus writing the object, and reports the peak RSS of
this process (``ru_maxrss``) before the optional Cilium layout count runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("policies")
    ap.add_argument("cluster")
    ap.add_argument("out")
    ap.add_argument("--cilium", action="store_true")
    ap.add_argument("--dump", metavar="PKL", help="also pickle (policy IR, inventory) here")
    ap.add_argument("--variant", metavar="OUT2.o", help="also write the same tables with another generation")
    a = ap.parse_args()

    from polc.compiler.source import gc_paused

    with gc_paused():  # as `polc compile` does
        out = run(a)
    print(json.dumps(out))


def run(a: argparse.Namespace) -> dict:
    """Compile stage by stage; the report as a dict."""
    import polc
    from polc.compiler.backend import emit_object, object_spec
    from polc.compiler.inventory import load_inventory
    from polc.compiler.lower import load_policies, lower
    from polc.compiler.tables import build_tables

    stages = {}
    t = time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    inventory = load_inventory([a.cluster])
    lap("inventory")
    policies = load_policies([a.policies])
    lap("parse")
    policy = lower(policies)
    del policies  # as compile_paths does: the documents are not needed after lowering
    lap("lower")
    tables = build_tables(policy, inventory)
    lap("tables")
    spec = object_spec(tables, [], polc.__version__)
    lap("images")
    data = emit_object(spec)
    with open(a.out, "wb") as f:
        f.write(data)
    lap("llvm")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "stages": stages, "total": sum(stages.values()), "peak_rss": rss,
        "rules": len(policy.rules), "identities": len({e.identity for e in tables.entries}),
        "pods": len(inventory.pods),
        "entries": {"ipcache": len(tables.entries), "pairs": len(tables.pairs), "verdicts": len(tables.verdicts),
                    "ranges": len(tables.ranges)},
        "image_bytes": {k: len(v) for k, v in spec.images.items()},
        "object_bytes": len(data),
        "classes": {"subject": tables.subject_classes, "peer": tables.peer_class_count,
                    "profiles": tables.profile_count,
                    "groups": tables.peer_group_count, "ranges": len(tables.ranges)},
    }
    if a.cilium:
        from cilium_layout import count
        t0 = time.perf_counter()
        out["cilium"] = count(policy, inventory, tables)
        out["cilium"]["seconds"] = time.perf_counter() - t0
    if a.variant:
        with open(a.variant, "wb") as f:
            f.write(emit_object(object_spec(tables, [{"file": "variant", "role": "policy", "sha256": "0"}],
                                            polc.__version__)))
    if a.dump:
        import pickle
        with open(a.dump, "wb") as f:
            pickle.dump((policy, inventory), f, protocol=pickle.HIGHEST_PROTOCOL)
    return out


if __name__ == "__main__":
    sys.exit(main())
