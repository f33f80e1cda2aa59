"""Property: the kernel's verdicts agree with the reference evaluator (SEMANTICS.md as code).

Each example generates an inventory and a few policies of all three kinds, compiles them
with the real pipeline, loads the object into the kernel and runs a few hundred flows aimed
at range ends, except edges, unselected pods and named ports through BPF_PROG_TEST_RUN;
every verdict must equal the reference's.  A failure shrinks to a small case, printed as
YAML with the commands that replay it (see ``strategies.KernelCase.report``).

Example counts per profile (tests/conftest.py): ``ci`` 320 cases, ``thorough`` 5000.
"""

from __future__ import annotations

import tempfile
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as S
from conftest import kernel_skip_reason

CASES = {"ci": 320, "thorough": 5000}.get(S.PROFILE, 320)
FLOWS_PER_CASE = {"ci": 250, "thorough": 600}.get(S.PROFILE, 250)

pytestmark = pytest.mark.skipif(kernel_skip_reason() is not None, reason=str(kernel_skip_reason()))

STATS = {"cases": 0, "flows": 0}


@st.composite
def cases(draw):
    inventory = draw(S.inventories())
    policies = draw(S.policy_sets())
    rnd = draw(st.randoms(use_true_random=False))
    return S.Case(policies, inventory, S.interesting_flows(policies, inventory, rnd, FLOWS_PER_CASE))


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="polc-prop-") as d:
        yield d


def check_case(case: S.Case, directory: str) -> None:
    kc = S.KernelCase(case, directory)
    try:
        bad = kc.mismatches(case.flows)
        STATS["cases"] += 1
        STATS["flows"] += len(case.flows)
        if bad and "first_bad" not in STATS:
            STATS["first_bad"] = STATS["cases"]  # how many cases it took to find a disagreement
        assert not bad, kc.report(bad, len(case.flows))
    finally:
        kc.close()


@settings(max_examples=CASES)
@given(case=cases())
def test_kernel_agrees_with_reference(workdir, case):
    check_case(case, workdir)


@settings(max_examples=max(40, CASES // 4))
@given(case=cases())
def test_kernel_agrees_with_reference_with_peer_groups(workdir, case):
    """The same with every peer selector treated as broad: rules then reach peers through
    peer groups (one pair per group, then per-class pairs over them), which the small
    generated clusters would otherwise never use."""
    from polc.compiler import tables

    with mock.patch.object(tables, "BROAD_MIN_CLASSES", 1):
        check_case(case, workdir)


def test_report_counts():
    """Not a property: prints how many cases and flows the differential test checked."""
    print(f"\ndifferential: {STATS['cases']} kernel-compiled cases, {STATS['flows']} flows "
          f"(profile {S.PROFILE})")


REGRESSION_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x, namespace: a}
spec:
  endpointSelector:
    matchExpressions: [{key: 'k8s:io.kubernetes.pod.namespace', operator: Exists}]
  ingress: [{}]
"""


def test_regression_namespace_expression_in_subject():
    """Found by the differential test: a CNP endpointSelector with an expression on the
    namespace key crashed lowering (TypeError: '<' not supported between 'Op' and 'Op') when
    the added ``namespace In`` requirement was sorted next to it."""
    from polc.compiler.lower import lower, parse_policies
    from polc.compiler.source import load_text

    lower(parse_policies(load_text(REGRESSION_POLICY, "regression.yaml")))
