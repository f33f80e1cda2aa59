"""Shared helpers of the runtime tests: compiling throwaway BPF C and skipping honestly."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLANG = shutil.which("clang-19")
ARCH_INCLUDE = "/usr/include/x86_64-linux-gnu" if os.uname().machine == "x86_64" else "/usr/include/aarch64-linux-gnu"
REPO = Path(__file__).resolve().parent.parent

# A minimal libbpf-free prelude so that the test programs need only the UAPI headers.
PRELUDE = r"""
#include <linux/bpf.h>
#include <linux/types.h>
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
"""


def compile_bpf(tmp_path: Path, source: str, name: str = "prog", *, extra: list[str] | None = None) -> Path:
    """Compile BPF C to ``tmp_path/name.o`` with clang-19; skip when clang-19 is missing."""
    if CLANG is None:
        pytest.skip("clang-19 is not installed: cannot build the test BPF objects")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"{name}.o"
    cmd = [CLANG, "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(out), f"-I{ARCH_INCLUDE}",
           *(extra or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"clang failed:\n{proc.stderr}"
    return out


def add_sections(obj: Path, sections: dict[str, bytes]) -> None:
    """Add raw sections to an object with llvm-objcopy (skip when it is missing)."""
    objcopy = shutil.which("llvm-objcopy-19") or shutil.which("llvm-objcopy")
    if objcopy is None:
        pytest.skip("llvm-objcopy is not installed: cannot add polc sections to the test object")
    args = []
    for name, data in sections.items():
        blob = obj.with_name(obj.name + name + ".bin")
        blob.write_bytes(data)
        args.append(f"--add-section={name}={blob}")
    subprocess.run([objcopy, *args, str(obj)], check=True)


_bpf_ok: str | None = None


def require_bpf() -> None:
    """Skip unless we are root and bpf(2) works; the reason names what is missing."""
    global _bpf_ok
    if os.geteuid() != 0:
        pytest.skip("needs root for bpf(2)")
    if _bpf_ok is None:
        from polc.runtime import bpf
        from polc.runtime.errors import BPFError
        try:
            os.close(bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="polc_probe"))
            _bpf_ok = ""
        except BPFError as e:
            if e.errno != errno.EPERM:
                raise
            _bpf_ok = f"bpf(2) denied: {e}"
    if _bpf_ok:
        pytest.skip(_bpf_ok)
