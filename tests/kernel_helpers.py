"""Compile a policy in-process and load it into the kernel, for tests that judge packets."""

from __future__ import annotations

import os
import struct
import textwrap
from contextlib import contextmanager

import pytest


def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for bpf(2) (CAP_BPF, CAP_NET_ADMIN)")


@contextmanager
def loaded_engine(tmp_path, cluster: str, policy: str, name: str = "test"):
    """A KernelEngine over the compiled (policy, cluster); ``engine.obj`` is the ObjectFile."""
    from polc.compiler.backend import emit_object
    from polc.compiler.pipeline import compile_paths
    from polc.runtime.elfobj import ObjectFile
    from polc.runtime.loader import Collection
    from polc.runtime.testrun import KernelEngine

    (tmp_path / "cluster.yaml").write_text(textwrap.dedent(cluster))
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(policy))
    compiled = compile_paths([str(tmp_path / "policy.yaml")], [str(tmp_path / "cluster.yaml")])
    obj = ObjectFile.from_bytes(emit_object(compiled.spec), name=name, path=str(tmp_path / f"{name}.o"))
    with Collection.load(obj) as coll:
        engine = KernelEngine(coll, obj.meta)
        engine.obj = obj
        yield engine


def ones_complement_sum(data: bytes) -> int:
    """The folded 16-bit ones' complement sum (0xFFFF over data that includes its checksum)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
