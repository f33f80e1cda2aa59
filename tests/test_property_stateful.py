"""Stateful property: policies and pods come and go; after every change the kernel agrees.

A Hypothesis state machine adds and removes policies (all three kinds) and pods, and after
each step applies the new state: it recompiles and either updates the loaded policy in place
with ``polc.runtime.node.update`` (the path ``polc update`` takes: new collection next to
the old, connection table kept, pins swapped) or, where that runtime is missing, loads a new
collection.  Then every flow's kernel verdict must equal the reference's.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import strategies as S
from conftest import kernel_skip_reason

try:
    from polc.runtime import node as node_runtime
except ImportError:  # the node runtime is optional here: fall back to loading afresh
    node_runtime = None

EXAMPLES, STEPS = {"ci": (10, 8), "thorough": (200, 25)}.get(S.PROFILE, (10, 8))
FLOWS_PER_STEP = 120

pytestmark = pytest.mark.skipif(kernel_skip_reason() is not None, reason=str(kernel_skip_reason()))


def _pinned_collection(layout, obj):
    """A ``Collection`` over the maps and programs ``node.load``/``update`` pinned."""
    from polc.runtime import bpf
    from polc.runtime.loader import Collection, Map, Program

    maps = {name: Map(bpf.obj_get(layout.pin(name)), spec) for name, spec in obj.maps.items()}
    programs = {}
    for name, spec in obj.programs.items():
        fd = bpf.obj_get(layout.pin(name))
        programs[name] = Program(fd, spec, spec.prog_type)
    return Collection(obj, maps, programs)


class PolicyMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="polc-state-")
        self.policies: dict[str, dict] = {}
        self.pods: dict[int, dict] = {}
        self.next_id = 0
        self.loaded = False
        self.layout = None
        if node_runtime is not None:
            name = f"polcprop{os.getpid()}"
            self.layout = node_runtime.Layout(name, pin_root=f"/sys/fs/bpf/polc-proptest-{os.getpid()}",
                                              state_root=os.path.join(self.dir, "run"))

    @initialize(ns_labels=st.lists(S.labels(S.NS_LABEL_KEYS, S.NS_LABEL_VALUES, 1), min_size=3, max_size=3))
    def setup(self, ns_labels):
        self.namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns, **({"labels": lb} if lb else {})}}
                           for ns, lb in zip(S.NAMESPACES, ns_labels)]
        self.nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
                       "status": {"addresses": [{"type": "InternalIP", "address": f"198.18.0.{i}"},
                                                {"type": "InternalIP", "address": f"2001:db8::{i}"}]}}
                      for i, n in enumerate(S.NODES, start=1)]

    # -- changes --------------------------------------------------------------------------
    @rule(data=st.data(), kind=st.sampled_from(("np", "cnp")))
    def add_policy(self, data, kind):
        self.next_id += 1
        name = f"{kind}{self.next_id}"
        strat = S.network_policies(name) if kind == "np" else S.cilium_policies(name)
        self.policies[name] = data.draw(strat)
        self.apply_and_check()

    @precondition(lambda self: self.policies)
    @rule(data=st.data())
    def remove_policy(self, data):
        del self.policies[data.draw(st.sampled_from(sorted(self.policies)))]
        self.apply_and_check()

    @precondition(lambda self: len(self.pods) < 8)
    @rule(data=st.data())
    def add_pod(self, data):
        self.next_id += 1
        self.pods[self.next_id] = data.draw(S.pods(self.next_id, S.NAMESPACES, S.NODES))
        self.apply_and_check()

    @precondition(lambda self: self.pods)
    @rule(data=st.data())
    def remove_pod(self, data):
        del self.pods[data.draw(st.sampled_from(sorted(self.pods)))]
        self.apply_and_check()

    # -- apply and compare ----------------------------------------------------------------
    def _load(self, obj, path):
        if self.layout is None:
            from polc.runtime.loader import Collection

            return Collection.load(obj)
        if self.loaded:
            node_runtime.update(self.layout.name, path, layout=self.layout)
        else:
            node_runtime.load(path, self.layout.name, layout=self.layout)
            self.loaded = True
        return _pinned_collection(self.layout, obj)

    def apply_and_check(self):
        if not self.policies:
            return  # an empty policy set has nothing to compile (polc compile needs a policy)
        inventory = {"apiVersion": "v1", "kind": "List",
                     "items": self.namespaces + self.nodes + list(self.pods.values())}
        policies = [self.policies[k] for k in sorted(self.policies)]
        import random

        flows = S.interesting_flows(policies, inventory, random.Random(len(self.policies) * 31 + self.next_id),
                                    FLOWS_PER_STEP)
        case = S.Case(policies, inventory, flows)
        kc = S.KernelCase(case, os.path.join(self.dir, f"step{self.next_id}"), load=self._load)
        try:
            bad = kc.mismatches(flows)
            assert not bad, kc.report(bad, len(flows))
        finally:
            kc.close()

    def teardown(self):
        if self.layout is not None and self.loaded:
            node_runtime.unload(self.layout.name, layout=self.layout)
        shutil.rmtree(self.dir, ignore_errors=True)


PolicyMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS)
TestPolicyChanges = PolicyMachine.TestCase
