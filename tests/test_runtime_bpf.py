"""The bpf(2) wrapper: errors, object ids and info, test runs, tcx links."""

from __future__ import annotations

import errno
import os
import uuid

import pytest

from polc.runtime import bpf
from polc.runtime.errors import BPFError, KernelTooOld, VerifierError
from runtime_helpers import require_bpf

EXIT = bytes.fromhex("9500000000000000")


def mov_r0(imm: int) -> bytes:
    """``r0 = imm`` (BPF_ALU64 | BPF_MOV | BPF_K)."""
    return bytes([0xB7, 0, 0, 0]) + (imm & 0xFFFFFFFF).to_bytes(4, "little")


def load_const(value: int, name: str = "const") -> int:
    return bpf.prog_load(bpf.BPF_PROG_TYPE_SCHED_CLS, mov_r0(value) + EXIT, "GPL", name=name)


def test_error_text_and_hints():
    e = BPFError("map 'x': create", errno.EPERM)
    assert str(e) == "map 'x': create: Operation not permitted (are you root? is CAP_BPF (and CAP_NET_ADMIN) available?)"
    log = "\n".join(f"line {i}" for i in range(30))
    v = VerifierError("program 'p': load", errno.EACCES, log)
    text = str(v).splitlines()
    assert text[1] == "verifier log (last 20 of 30 lines):"
    assert text[2] == "  line 10" and text[-1] == "  line 29" and v.log == log
    assert "ENOTSUPP" in str(KernelTooOld("batch ops", 524))


def test_names_are_validated():
    with pytest.raises(ValueError, match="longer than 15 bytes"):
        bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="a_name_too_long_x")
    with pytest.raises(ValueError, match="may only hold"):
        bpf.map_create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="bad-name")


def test_create_error_names_the_map():
    require_bpf()
    with pytest.raises(BPFError) as err:
        bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 4, 0, name="empty")
    assert err.value.errno == errno.EINVAL and str(err.value).startswith("map 'empty': create: Invalid argument")


def test_ids_info_and_fd_by_id():
    require_bpf()
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 8, name="polc_idtest")
    try:
        info = bpf.map_info(fd)
        assert (info.name, info.key_size, info.value_size, info.max_entries) == ("polc_idtest", 4, 8, 8)
        ids, cur = [], 0
        while (cur := bpf.map_get_next_id(cur)) is not None:
            ids.append(cur)
        assert info.id in ids
        fd2 = bpf.map_get_fd_by_id(info.id)
        try:
            bpf.map_update(fd2, b"abcd", b"12345678")
            assert bpf.map_lookup(fd, b"abcd", 8) == b"12345678"
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    with pytest.raises(BPFError, match="no map with that id"):
        bpf.map_get_fd_by_id(info.id)


def test_batch_and_freeze():
    require_bpf()
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 8, flags=bpf.BPF_F_NO_PREALLOC, name="lpm")
    try:
        keys = [bytes([32, 0, 0, 0, 10, 0, 0, i]) for i in range(3)]
        bpf.map_update_batch(fd, keys, [b"vvvv"] * 3, name="lpm")
        assert all(bpf.map_lookup(fd, k, 4) == b"vvvv" for k in keys)
        bpf.map_freeze(fd, name="lpm")
        with pytest.raises(BPFError, match="frozen"):
            bpf.map_update(fd, keys[0], b"wwww", name="lpm")
    finally:
        os.close(fd)


def test_batch_falls_back_per_element(monkeypatch):
    """Map types without batch support answer ENOTSUPP (524): write element by element."""
    require_bpf()
    real = bpf._sys_bpf
    calls = []

    def no_batch(cmd, attr):
        calls.append(cmd)
        return -524 if cmd == bpf.BPF_MAP_UPDATE_BATCH else real(cmd, attr)

    monkeypatch.setattr(bpf, "_sys_bpf", no_batch)
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 4, 8, name="nobatch")
    try:
        keys = [i.to_bytes(4, "little") for i in range(3)]
        with pytest.raises(KernelTooOld, match="batch updates of map 'nobatch'"):
            bpf.map_update_batch(fd, keys, keys, name="nobatch", fallback=False)
        bpf.map_update_batch(fd, keys, keys, name="nobatch")
        assert calls.count(bpf.BPF_MAP_UPDATE_ELEM) == 3
        assert all(bpf.map_lookup(fd, k, 4) == k for k in keys)
    finally:
        os.close(fd)


def test_test_run_signed_retval_and_repeat():
    require_bpf()
    fd = load_const(-1)
    try:
        res = bpf.prog_test_run(fd, bytes(60), repeat=100)
        assert res.retval == -1 and res.data_out == bytes(60) and res.ctx_out is None
        assert res.duration_ns >= 0
        info = bpf.prog_info(fd)
        assert info.name == "const" and info.xlated_prog_len == 16
        with pytest.raises(BPFError, match="test run"):
            bpf.prog_test_run(fd, bytes(60), bytes(7))  # not a struct __sk_buff
    finally:
        os.close(fd)


@pytest.fixture
def dummy_ifindex():
    require_bpf()
    pyroute2 = pytest.importorskip("pyroute2")
    name = f"polct{uuid.uuid4().hex[:6]}"
    with pyroute2.IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=name + "p")  # veth: dummy is not in every kernel
        try:
            yield ipr.link_lookup(ifname=name)[0]
        finally:
            ipr.link("del", ifname=name)


def test_tcx_link(dummy_ifindex):
    first, second = load_const(0, "first"), load_const(2, "second")
    try:
        try:
            link = bpf.link_create(first, dummy_ifindex, bpf.BPF_TCX_INGRESS, name="first")
        except KernelTooOld as e:
            pytest.skip(str(e))
        try:
            info = bpf.link_info(link)
            assert info.type == bpf.BPF_LINK_TYPE_TCX
            assert (info.ifindex, info.attach_type) == (dummy_ifindex, bpf.BPF_TCX_INGRESS)
            assert info.prog_id == bpf.prog_info(first).id
            ids, cur = [], 0
            while (cur := bpf.link_get_next_id(cur)) is not None:
                ids.append(cur)
            assert info.id in ids
            bpf.link_update(link, second)
            assert bpf.link_info(link).prog_id == bpf.prog_info(second).id
            bpf.link_detach(link)
            assert bpf.link_info(link).ifindex == 0
        finally:
            os.close(link)
        with pytest.raises(BPFError, match="ifindex 999999"):
            bpf.link_create(first, 999999, bpf.BPF_TCX_EGRESS, name="first")
    finally:
        os.close(first)
        os.close(second)
