"""The command line as users meet it: exit codes and errors without tracebacks."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERRORS = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "frontend", "errors", "*.yaml")))
EXAMPLE = os.path.join(ROOT, "examples", "starwars")


def polc(*args):
    return subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True)


def test_version_and_help():
    assert polc("--version").stdout.startswith("polc ")
    out = polc("--help").stdout
    for command in ("compile", "test", "inspect"):
        assert command in out


@pytest.mark.parametrize("path", ERRORS, ids=os.path.basename)
def test_bad_input_gives_one_positioned_error(tmp_path, path):
    proc = polc("compile", path, "-o", str(tmp_path / "out.o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert re.match(re.escape(path) + r":\d+:\d+: error: ", first), proc.stderr
    assert sum(": error: " in line for line in proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.o").exists()


def test_missing_file_is_an_error(tmp_path):
    proc = polc("compile", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out.o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope.yaml" in proc.stderr


def test_inspect_reports_tables(tmp_path):
    out = tmp_path / "sw.o"
    assert polc("compile", os.path.join(EXAMPLE, "policy.yaml"), "--cluster", os.path.join(EXAMPLE, "cluster.yaml"),
                "-o", str(out)).returncode == 0
    info = json.loads(polc("inspect", str(out), "--json").stdout)
    assert {p["name"] for p in info["programs"]} == {"polc_from_ep", "polc_to_ep"}
    maps = {m["name"]: m for m in info["maps"]}
    assert maps["polc_ipcache"]["image_entries"] == maps["polc_ipcache"]["max_entries"] > 0
    assert any(r["policy"] == "CiliumNetworkPolicy default/rule1" for r in info["rules"])
    text = polc("inspect", str(out)).stdout
    assert "polc_verdicts" in text and "identities" in text


def test_inspect_rejects_foreign_file(tmp_path):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an elf")
    proc = polc("inspect", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad.o" in proc.stderr


def test_flow_mismatch_exits_1(tmp_path, needs_kernel):
    out = tmp_path / "sw.o"
    cluster = os.path.join(EXAMPLE, "cluster.yaml")
    polc("compile", os.path.join(EXAMPLE, "policy.yaml"), "--cluster", cluster, "-o", str(out))
    flows = tmp_path / "flows.yaml"
    flows.write_text("- {from: default/xwing, to: default/deathstar-1, proto: TCP, port: 80, expect: allow}\n")
    proc = polc("test", str(out), str(flows), "--cluster", cluster)
    assert proc.returncode == 1 and "FAIL" in proc.stdout
    flows.write_text("- {from: default/nobody, to: default/deathstar-1, port: 80}\n")
    proc = polc("test", str(out), str(flows), "--cluster", cluster)
    assert proc.returncode == 2 and re.search(r"flows.yaml:1:\d+: error: from: 'default/nobody'", proc.stderr)
