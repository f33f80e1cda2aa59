"""Conformance: upstream reachability matrices judged by the kernel through the real CLI.

Every directory under ``tests/data/k8s_e2e`` and ``tests/data/cilium_connectivity`` holding a
``policy.yaml`` and a ``flows.yaml`` is one case: the Kubernetes netpol e2e suite and cilium-cli's
connectivity test, with the expectations those upstream tests assert (see each file's header and
``tests/data/k8s_e2e/README.md``; the data is written by ``tests/data/gen_conformance.py``).  A case
may carry its own ``cluster.yaml``; otherwise its suite's shared one is used.

Each case runs ``polc compile`` and ``polc test --json`` as subprocesses and checks every flow's
verdict against the expectation read here from ``flows.yaml`` (not against polc's own ``ok``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SUITES = ("k8s_e2e", "cilium_connectivity")
TIMEOUT = 60


def _cases() -> list:
    cases = []
    for suite in SUITES:
        root = os.path.join(DATA, suite)
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            d = os.path.join(root, name)
            if os.path.isfile(os.path.join(d, "policy.yaml")) and os.path.isfile(os.path.join(d, "flows.yaml")):
                cases.append(pytest.param(suite, d, id=f"{suite}/{name}"))
    return cases


CASES = _cases()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the kernel engine needs root for bpf(2) and BPF_PROG_TEST_RUN (CAP_BPF, CAP_NET_ADMIN)"
    return None


def _polc(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polc.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _cluster(suite: str, case_dir: str) -> str:
    own = os.path.join(case_dir, "cluster.yaml")
    return own if os.path.isfile(own) else os.path.join(DATA, suite, "cluster.yaml")


def _where(flow: dict) -> str:
    if flow.get("port") is not None:
        return str(flow["port"])
    if flow.get("icmp_type") is not None:
        return f"type {flow['icmp_type']}"
    return "-"


def _rule(entry: dict) -> str:
    rule = entry.get("rule")
    if not rule:
        return "-"
    if isinstance(rule, dict):
        where = f"{os.path.basename(rule.get('file') or '')}:{rule.get('line', '?')}"
        return f"{rule.get('policy', '?')} {rule.get('where', '')} ({where})".strip()
    return str(rule)


def _table(rows: list[tuple]) -> str:
    head = ("#", "from", "to", "proto", "port", "expected", "got", "stage", "rule")
    rows = [head] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@pytest.mark.kernel
@pytest.mark.parametrize("suite,case_dir", CASES)
def test_conformance(suite: str, case_dir: str, tmp_path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = _cluster(suite, case_dir)
    policy, flows_path = os.path.join(case_dir, "policy.yaml"), os.path.join(case_dir, "flows.yaml")
    with open(flows_path) as f:
        flows = yaml.safe_load(f)
    assert isinstance(flows, list) and flows, f"{flows_path}: no flows"

    obj = str(tmp_path / "out.o")
    res = _polc("compile", policy, "--cluster", cluster, "-o", obj, cwd=str(tmp_path))
    assert res.returncode == 0, f"polc compile exited {res.returncode}:\n{res.stderr}{res.stdout}"

    res = _polc("test", obj, flows_path, "--cluster", cluster, "--json", cwd=str(tmp_path))
    assert res.returncode in (0, 1), f"polc test exited {res.returncode}:\n{res.stderr}{res.stdout[-2000:]}"
    try:
        entries = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"polc test --json printed no JSON ({exc}):\n{res.stdout[:2000]}\n{res.stderr}")
    assert len(entries) == len(flows), f"polc test judged {len(entries)} flows, {flows_path} has {len(flows)}"

    bad = []
    for i, (flow, entry) in enumerate(zip(flows, entries)):
        idx = entry.get("index", i)
        flow = flows[idx]
        if entry.get("verdict") != flow["expect"]:
            bad.append((idx, flow["from"], flow["to"], flow["proto"], _where(flow), flow["expect"],
                        entry.get("verdict"), entry.get("stage", "-"), _rule(entry)))
    if bad:
        pytest.fail(f"{len(bad)} of {len(flows)} flows disagree with upstream ({os.path.relpath(case_dir, DATA)}):\n"
                    + _table(bad), pytrace=False)
    assert res.returncode == 0, f"every verdict matched, yet polc test exited {res.returncode}:\n{res.stderr}"
