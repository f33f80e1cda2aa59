"""The object polc writes: deterministic, accepted by libbpf/bpftool and the verifier."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "starwars")


def polc(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"polc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def compile_example(out, *extra):
    return polc("compile", os.path.join(EXAMPLE, "policy.yaml"), "--cluster",
                os.path.join(EXAMPLE, "cluster.yaml"), "-o", str(out), *extra)


def test_same_input_same_bytes(tmp_path):
    compile_example(tmp_path / "a.o")
    compile_example(tmp_path / "b.o")
    assert (tmp_path / "a.o").read_bytes() == (tmp_path / "b.o").read_bytes()


def test_object_has_libbpf_layout(tmp_path):
    from elftools.elf.elffile import ELFFile

    compile_example(tmp_path / "a.o")
    with open(tmp_path / "a.o", "rb") as f:
        elf = ELFFile(f)
        names = {s.name for s in elf.iter_sections()}
        assert elf["e_machine"] == "EM_BPF"
        assert {"tc", ".maps", ".rodata", "license", ".BTF", ".BTF.ext", ".polc.meta"} <= names
        funcs = {s.name: s for s in elf.get_section_by_name(".symtab").iter_symbols()
                 if s["st_info"]["type"] == "STT_FUNC"}
        for prog in ("polc_from_ep", "polc_to_ep"):
            assert funcs[prog]["st_info"]["bind"] == "STB_GLOBAL" and funcs[prog]["st_size"] > 0


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed (tests/run installs it)")
def test_bpftool_loadall_accepts_object(tmp_path, needs_kernel):
    compile_example(tmp_path / "a.o")
    pin = f"/sys/fs/bpf/polc-test-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(["bpftool", "prog", "loadall", str(tmp_path / "a.o"), pin],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(pin)) == ["polc_from_ep", "polc_to_ep"]
    finally:
        shutil.rmtree(pin, ignore_errors=True)


@pytest.mark.skipif(shutil.which("clang-19") is None, reason="clang-19 not installed (tests/run installs it)")
def test_emitted_c_builds_with_clang(tmp_path):
    compile_example(tmp_path / "a.o", "--emit-c", str(tmp_path / "c"))
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    proc = subprocess.run(["clang-19", "-target", "bpf", "-O2", "-g", f"-I/usr/include/{arch}", "-c",
                           str(tmp_path / "c" / "policy.c"), "-o", str(tmp_path / "c.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    head = (tmp_path / "c" / "policy.c").read_text().splitlines()[1]
    assert "DO NOT EDIT" in head


def _verdicts(obj, flows, cluster):
    proc = polc("test", str(obj), flows, "--cluster", cluster, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    import json

    return [(r["from"], r["to"], r["proto"], r.get("port", r.get("icmp_type")), r["verdict"], r["stage"])
            for r in json.loads(proc.stdout)]


def _cases():
    """The shipped example plus the conformance cases (when present)."""
    cases = [(os.path.join(EXAMPLE, "policy.yaml"), os.path.join(EXAMPLE, "flows.yaml"),
              os.path.join(EXAMPLE, "cluster.yaml"))]
    for suite in ("k8s_e2e", "cilium_connectivity"):
        base = os.path.join(ROOT, "tests", "data", suite)
        if not os.path.isdir(base):
            continue
        for case in sorted(os.listdir(base))[:6]:
            d = os.path.join(base, case)
            if os.path.isfile(os.path.join(d, "flows.yaml")):
                cases.append((os.path.join(d, "policy.yaml"), os.path.join(d, "flows.yaml"),
                              os.path.join(base, "cluster.yaml")))
    return cases


@pytest.mark.skipif(shutil.which("clang-19") is None, reason="clang-19 not installed (tests/run installs it)")
@pytest.mark.parametrize("policy,flows,cluster", _cases(), ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_clang_built_c_gives_same_verdicts(tmp_path, needs_kernel, policy, flows, cluster):
    polc("compile", policy, "--cluster", cluster, "-o", str(tmp_path / "llvmlite.o"), "--emit-c", str(tmp_path / "c"))
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang-19", "-target", "bpf", "-O2", "-g", f"-I/usr/include/{arch}", "-c",
                    str(tmp_path / "c" / "policy.c"), "-o", str(tmp_path / "clang.o")], check=True)
    ours = _verdicts(tmp_path / "llvmlite.o", flows, cluster)
    theirs = _verdicts(tmp_path / "clang.o", flows, cluster)
    assert ours and ours == theirs
