"""For every conformance case, the DSL form of policy.yaml (``polc convert --to dsl``) gets the same
kernel verdicts as the YAML form, flow by flow (``polc test --json``, judged by BPF_PROG_TEST_RUN).

The CLI runs in-process (two compiles and two kernel runs per case) to keep the suite fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from polc.cli import main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SUITES = ("k8s_e2e", "cilium_connectivity")


def _cases() -> list:
    cases = []
    for suite in SUITES:
        root = os.path.join(DATA, suite)
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
            d = os.path.join(root, name)
            if os.path.isfile(os.path.join(d, "policy.yaml")) and os.path.isfile(os.path.join(d, "flows.yaml")):
                cases.append(pytest.param(suite, d, id=f"{suite}/{name}"))
    return cases


def _run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


def _verdicts(policy: str, flows: str, cluster: str, obj: str, reference: bool = False) -> list[tuple]:
    code, text = _run("compile", policy, "--cluster", cluster, "-o", obj)
    assert code == 0, text
    code, text = _run("test", obj, flows, "--cluster", cluster, "--json")
    assert code in (0, 1), text
    return [(e.get("index"), e.get("verdict"), e.get("stage")) for e in json.loads(text[: text.rindex("]") + 1])]


@pytest.mark.kernel
@pytest.mark.parametrize("suite,case_dir", _cases())
def test_dsl_form_gets_the_same_kernel_verdicts(suite, case_dir, tmp_path, needs_kernel):
    cluster = os.path.join(case_dir, "cluster.yaml")
    if not os.path.isfile(cluster):
        cluster = os.path.join(DATA, suite, "cluster.yaml")
    policy, flows = os.path.join(case_dir, "policy.yaml"), os.path.join(case_dir, "flows.yaml")
    pol = str(tmp_path / "policy.pol")
    code, text = _run("convert", policy, "--to", "dsl", "-o", pol)
    assert code == 0, text
    from_yaml = _verdicts(policy, flows, cluster, str(tmp_path / "yaml.o"), reference=True)
    from_dsl = _verdicts(pol, flows, cluster, str(tmp_path / "dsl.o"))
    assert from_yaml and from_dsl == from_yaml
