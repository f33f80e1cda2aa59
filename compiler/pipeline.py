"""The compile pipeline, one stage after another: sources -> IR -> tables -> object spec."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polc

from . import ir
from .backend import ObjectSpec, object_spec
from .inventory import load_inventory
from .lower import load_policies, lower
from .source import expand_paths, gc_paused
from .tables import Tables, build_tables


@dataclass(frozen=True)
class Compiled:
    """What one compile produced, stage by stage (for the CLI, inspect and tests)."""

    policy: ir.PolicySet
    inventory: ir.Inventory
    tables: Tables
    spec: ObjectSpec


def _sources(paths: list[str], role: str) -> list[dict]:
    out = []
    for path in expand_paths(paths):
        with open(path, "rb") as f:
            out.append({"file": path, "role": role, "sha256": hashlib.sha256(f.read()).hexdigest()})
    return out


def compile_paths(policy_paths: list[str], cluster_paths: list[str]) -> Compiled:
    """Compile policy files and directories against inventory files; raises PolcError."""
    with gc_paused():  # the whole compile, not just loading: tables build millions of objects too
        return _compile(policy_paths, cluster_paths)


def _compile(policy_paths: list[str], cluster_paths: list[str]) -> Compiled:
    # The parsed documents (with their position maps) are dropped once lowered.
    policy_set = lower(load_policies(policy_paths))
    inventory = load_inventory(cluster_paths) if cluster_paths else ir.Inventory()
    tables = build_tables(policy_set, inventory)
    sources = _sources(policy_paths, "policy") + (_sources(cluster_paths, "cluster") if cluster_paths else [])
    return Compiled(policy_set, inventory, tables, object_spec(tables, sources, polc.__version__))
