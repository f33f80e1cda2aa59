"""A thin ctypes wrapper of the bpf(2) system call.

One function per command.  Each builds the command's part of ``union bpf_attr`` as its
own ctypes structure (layouts follow ``include/uapi/linux/bpf.h``) and passes that
structure's size: the kernel zero-extends a short attr, so newer kernels with a larger
union accept it.  File descriptors are plain ``int``s; callers own and close them.

Failures raise :class:`~polc.runtime.errors.BPFError` (or a subclass) whose ``op`` names
the command and the object, e.g. ``map 'polc_ct': update``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

from .errors import ENOTSUPP, BPFError, KernelTooOld, VerifierError

# --- constants (include/uapi/linux/bpf.h) ----------------------------------------------

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_LOAD = 18
BPF_MAP_FREEZE = 22
BPF_MAP_UPDATE_BATCH = 26
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_DETACH = 34

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
PERCPU_MAP_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
ARRAY_MAP_TYPES = (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY)

MAP_TYPE_NAMES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash", 10: "lru_percpu_hash",
    11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps", 14: "devmap", 15: "sockmap",
    16: "cpumap", 17: "xskmap", 18: "sockhash", 20: "reuseport_sockarray", 22: "queue",
    23: "stack", 24: "sk_storage", 25: "devmap_hash", 26: "struct_ops", 27: "ringbuf",
}

BPF_F_NO_PREALLOC = 1 << 0
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_WRONLY_PROG = 1 << 8

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

BPF_PROG_TYPE_SCHED_CLS = 3

BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2

BPF_OBJ_NAME_LEN = 16
SIZEOF_SK_BUFF = 192  # sizeof(struct __sk_buff) since Linux 5.16 (hwtstamp)

_NR_BPF = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

# --- the system call ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


def _nr_bpf() -> int:
    machine = platform.machine()
    try:
        return _NR_BPF[machine]
    except KeyError:
        raise KernelTooOld(f"bpf(2) on architecture {machine!r} (unknown syscall number)") from None


_NR = _nr_bpf()


def _sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(cmd, &attr, sizeof attr); return the result or the negated errno.

    EINTR and EAGAIN are retried the way libbpf does (the verifier may be interrupted).
    """
    for _ in range(5):
        ret = _libc.syscall(_NR, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN) or cmd != BPF_PROG_LOAD:
            return -err
    return -err


def _check(op: str, ret: int, hint: str | None = None) -> int:
    if ret < 0:
        raise BPFError(op, -ret, hint=hint)
    return ret


def _buf(data: bytes) -> ctypes.Array:
    return ctypes.create_string_buffer(bytes(data), len(data)) if data else ctypes.create_string_buffer(1)


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


class _Attr(ctypes.Structure):
    """Base for the attr structs: natural (kernel) alignment, zero-initialised."""


def _attr(name: str, fields: list) -> type:
    return type(name, (_Attr,), {"_fields_": fields})


u32, u64 = ctypes.c_uint32, ctypes.c_uint64

_MapCreateAttr = _attr("_MapCreateAttr", [
    ("map_type", u32), ("key_size", u32), ("value_size", u32), ("max_entries", u32),
    ("map_flags", u32), ("inner_map_fd", u32), ("numa_node", u32),
    ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("map_ifindex", u32), ("btf_fd", u32),
    ("btf_key_type_id", u32), ("btf_value_type_id", u32), ("btf_vmlinux_value_type_id", u32),
    ("map_extra", u64),
])
_MapElemAttr = _attr("_MapElemAttr", [("map_fd", u32), ("key", u64), ("value", u64), ("flags", u64)])
_MapBatchAttr = _attr("_MapBatchAttr", [
    ("in_batch", u64), ("out_batch", u64), ("keys", u64), ("values", u64), ("count", u32),
    ("map_fd", u32), ("elem_flags", u64), ("flags", u64),
])
_ProgLoadAttr = _attr("_ProgLoadAttr", [
    ("prog_type", u32), ("insn_cnt", u32), ("insns", u64), ("license", u64), ("log_level", u32),
    ("log_size", u32), ("log_buf", u64), ("kern_version", u32), ("prog_flags", u32),
    ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("prog_ifindex", u32),
    ("expected_attach_type", u32), ("prog_btf_fd", u32), ("func_info_rec_size", u32),
    ("func_info", u64), ("func_info_cnt", u32), ("line_info_rec_size", u32), ("line_info", u64),
    ("line_info_cnt", u32), ("attach_btf_id", u32), ("attach_prog_fd", u32), ("core_relo_cnt", u32),
    ("fd_array", u64), ("core_relos", u64), ("core_relo_rec_size", u32),
    ("log_true_size", u32),  # Linux 6.4+: the log size the verifier wanted
])
_ObjAttr = _attr("_ObjAttr", [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32)])
_TestRunAttr = _attr("_TestRunAttr", [
    ("prog_fd", u32), ("retval", u32), ("data_size_in", u32), ("data_size_out", u32),
    ("data_in", u64), ("data_out", u64), ("repeat", u32), ("duration", u32),
    ("ctx_size_in", u32), ("ctx_size_out", u32), ("ctx_in", u64), ("ctx_out", u64),
    ("flags", u32), ("cpu", u32), ("batch_size", u32),
])
_IdAttr = _attr("_IdAttr", [("start_id", u32), ("next_id", u32), ("open_flags", u32)])
_InfoAttr = _attr("_InfoAttr", [("bpf_fd", u32), ("info_len", u32), ("info", u64)])
_BtfLoadAttr = _attr("_BtfLoadAttr", [
    ("btf", u64), ("btf_log_buf", u64), ("btf_size", u32), ("btf_log_size", u32),
    ("btf_log_level", u32), ("btf_log_true_size", u32),
])
_LinkCreateAttr = _attr("_LinkCreateAttr", [
    ("prog_fd", u32), ("target_ifindex", u32), ("attach_type", u32), ("flags", u32),
    # tcx: union { relative_fd; relative_id }, then expected_revision
    ("relative_fd", u32), ("_pad", u32), ("expected_revision", u64),
])
_LinkUpdateAttr = _attr("_LinkUpdateAttr", [
    ("link_fd", u32), ("new_prog_fd", u32), ("flags", u32), ("old_prog_fd", u32),
])
_LinkDetachAttr = _attr("_LinkDetachAttr", [("link_fd", u32)])


def _name(name: str, what: str) -> bytes:
    """Encode an object name: at most 15 bytes, the kernel allows [A-Za-z0-9_.]."""
    raw = name.encode()
    if len(raw) >= BPF_OBJ_NAME_LEN:
        raise ValueError(f"{what} name {name!r} is longer than {BPF_OBJ_NAME_LEN - 1} bytes")
    if any(not (chr(c).isalnum() or chr(c) in "_.") for c in raw):
        raise ValueError(f"{what} name {name!r} may only hold letters, digits, '_' and '.'")
    return raw


# --- maps --------------------------------------------------------------------------------


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *, flags: int = 0,
               name: str = "", btf_fd: int = 0, btf_key_type_id: int = 0, btf_value_type_id: int = 0,
               map_extra: int = 0, numa_node: int = 0, inner_map_fd: int = 0) -> int:
    """BPF_MAP_CREATE; returns the new map's fd."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd,
                          numa_node=numa_node, map_name=_name(name, "map"), btf_fd=btf_fd,
                          btf_key_type_id=btf_key_type_id, btf_value_type_id=btf_value_type_id,
                          map_extra=map_extra)
    ret = _sys_bpf(BPF_MAP_CREATE, attr)
    if ret == -errno.EINVAL and map_type not in MAP_TYPE_NAMES:
        raise KernelTooOld(f"map type {map_type}", errno.EINVAL)
    return _check(f"map '{name}': create", ret)


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def value_buffer_size(map_type: int, value_size: int) -> int:
    """Bytes user space reads/writes per element (per-CPU maps hold one 8-aligned slot per CPU)."""
    if map_type in PERCPU_MAP_TYPES:
        return ((value_size + 7) & ~7) * possible_cpus()
    return value_size


def map_lookup(fd: int, key: bytes, value_size: int, *, name: str = "?") -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM; ``None`` when the key is absent."""
    kbuf, vbuf = _buf(key), ctypes.create_string_buffer(value_size)
    ret = _sys_bpf(BPF_MAP_LOOKUP_ELEM, _MapElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf)))
    if ret == -errno.ENOENT:
        return None
    _check(f"map '{name}': lookup", ret)
    return vbuf.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY, *, name: str = "?") -> None:
    """BPF_MAP_UPDATE_ELEM."""
    kbuf, vbuf = _buf(key), _buf(value)
    attr = _MapElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf), flags=flags)
    ret = _sys_bpf(BPF_MAP_UPDATE_ELEM, attr)
    hint = {errno.EEXIST: "the key exists and BPF_NOEXIST was given",
            errno.E2BIG: "the map is full (max_entries reached) or the key is out of range",
            errno.EPERM: "is the map frozen or read-only for user space? otherwise: are you root?"}.get(-ret)
    _check(f"map '{name}': update", ret, hint)


def map_delete(fd: int, key: bytes, *, name: str = "?") -> bool:
    """BPF_MAP_DELETE_ELEM; ``False`` when the key was absent."""
    kbuf = _buf(key)
    ret = _sys_bpf(BPF_MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(kbuf)))
    if ret == -errno.ENOENT:
        return False
    _check(f"map '{name}': delete", ret)
    return True


def map_get_next_key(fd: int, key: bytes | None, key_size: int, *, name: str = "?") -> bytes | None:
    """BPF_MAP_GET_NEXT_KEY; ``key=None`` gives the first key, ``None`` marks the end."""
    kbuf = _buf(key) if key is not None else None
    nbuf = ctypes.create_string_buffer(key_size)
    ret = _sys_bpf(BPF_MAP_GET_NEXT_KEY, _MapElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(nbuf)))
    if ret == -errno.ENOENT:
        return None
    _check(f"map '{name}': next key", ret)
    return nbuf.raw


_BATCH_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP)


def map_update_batch(fd: int, keys: list[bytes], values: list[bytes], flags: int = BPF_ANY, *,
                     name: str = "?", fallback: bool = True) -> None:
    """BPF_MAP_UPDATE_BATCH of all pairs.

    Map types without batch support (LPM tries) answer EINVAL or ENOTSUPP; with
    ``fallback`` the pairs are then written one by one (updates are idempotent, so a
    partly applied batch does no harm).
    """
    if len(keys) != len(values):
        raise ValueError(f"map '{name}': {len(keys)} keys but {len(values)} values")
    if not keys:
        return
    kbuf, vbuf = _buf(b"".join(keys)), _buf(b"".join(values))
    done = 0
    while done < len(keys):
        ksz, vsz = len(keys[0]), len(values[0])
        attr = _MapBatchAttr(keys=_addr(kbuf) + done * ksz, values=_addr(vbuf) + done * vsz,
                             count=len(keys) - done, map_fd=fd, elem_flags=flags)
        ret = _sys_bpf(BPF_MAP_UPDATE_BATCH, attr)
        if ret >= 0:
            return
        if -ret in _BATCH_UNSUPPORTED and fallback:
            for key, value in zip(keys[done:], values[done:]):
                map_update(fd, key, value, flags, name=name)
            return
        if -ret in (errno.EINTR, errno.EAGAIN) and attr.count > 0:
            done += attr.count  # the kernel reports how many it wrote; resume after them
            continue
        if -ret in _BATCH_UNSUPPORTED:
            raise KernelTooOld(f"batch updates of map '{name}'", -ret)
        _check(f"map '{name}': batch update of {len(keys)} elements", ret)


def map_freeze(fd: int, *, name: str = "?") -> None:
    """BPF_MAP_FREEZE: user space can no longer write the map."""
    ret = _sys_bpf(BPF_MAP_FREEZE, _MapElemAttr(map_fd=fd))
    if ret in (-errno.EINVAL, -ENOTSUPP):
        raise KernelTooOld("BPF_MAP_FREEZE", -ret)
    _check(f"map '{name}': freeze", ret)


# --- programs ----------------------------------------------------------------------------

LOG_SIZE_START = 64 * 1024
LOG_SIZE_MAX = 1 << 30  # the kernel's limit (UINT_MAX >> 2)


def prog_load(prog_type: int, insns: bytes, license: str, *, name: str = "", expected_attach_type: int = 0,
              prog_btf_fd: int = 0, func_info: bytes = b"", func_info_rec_size: int = 0,
              line_info: bytes = b"", line_info_rec_size: int = 0, log_level: int = 0,
              log_size: int = LOG_SIZE_START) -> int:
    """BPF_PROG_LOAD; returns the program fd.

    Like cilium/ebpf the first attempt runs without a log (a log that is too small fails
    even a good program with ENOSPC); on failure the load is repeated with a log, which
    grows until the whole verifier output fits, and a :class:`VerifierError` carries it.
    ``log_level > 0`` asks for the log from the start (and still raises only on failure).
    """
    if len(insns) % 8:
        raise ValueError(f"program '{name}': {len(insns)} bytes of instructions is not a multiple of 8")
    ibuf, lbuf = _buf(insns), ctypes.create_string_buffer(license.encode() + b"\0")
    fibuf, libuf = _buf(func_info), _buf(line_info)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=_addr(ibuf),
                         license=_addr(lbuf), prog_name=_name(name, "program"),
                         expected_attach_type=expected_attach_type, prog_btf_fd=prog_btf_fd)
    if func_info:
        attr.func_info, attr.func_info_rec_size = _addr(fibuf), func_info_rec_size
        attr.func_info_cnt = len(func_info) // func_info_rec_size
    if line_info:
        attr.line_info, attr.line_info_rec_size = _addr(libuf), line_info_rec_size
        attr.line_info_cnt = len(line_info) // line_info_rec_size
    op = f"program '{name}': load"
    if log_level == 0:
        ret = _sys_bpf(BPF_PROG_LOAD, attr)
        if ret >= 0:
            return ret
        if ret in (-errno.EPERM, -errno.E2BIG, -errno.ENOMEM):
            raise BPFError(op, -ret)
        log_level = 1
    return _load_with_log(BPF_PROG_LOAD, attr, op, log_level, log_size)


def _load_with_log(cmd: int, attr: ctypes.Structure, op: str, log_level: int, log_size: int) -> int:
    """Run a load command with a verifier log, growing the buffer on ENOSPC."""
    is_btf = cmd == BPF_BTF_LOAD
    while True:
        log = ctypes.create_string_buffer(log_size)
        if is_btf:
            attr.btf_log_buf, attr.btf_log_size, attr.btf_log_level = _addr(log), log_size, log_level
        else:
            attr.log_buf, attr.log_size, attr.log_level = _addr(log), log_size, log_level
        ret = _sys_bpf(cmd, attr)
        if ret == -errno.ENOSPC and log_size < LOG_SIZE_MAX:
            wanted = attr.btf_log_true_size if is_btf else attr.log_true_size
            log_size = min(LOG_SIZE_MAX, max(log_size * 4, wanted + 1))
            continue
        if ret >= 0:
            return ret
        text = log.value.decode(errors="replace")
        raise VerifierError(op, -ret, text, truncated=ret == -errno.ENOSPC)


def obj_pin(fd: int, path: str, *, what: str = "object") -> None:
    """BPF_OBJ_PIN ``fd`` at ``path`` (on a bpffs)."""
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    ret = _sys_bpf(BPF_OBJ_PIN, _ObjAttr(pathname=_addr(pbuf), bpf_fd=fd))
    hint = {errno.ENOENT: "is bpffs mounted at /sys/fs/bpf and does the directory exist?",
            errno.EEXIST: "something is already pinned there; unlink it first",
            errno.EPERM: "is the path on a bpffs? are you root?"}.get(-ret)
    _check(f"{what}: pin at {path}", ret, hint)


def obj_get(path: str, flags: int = 0) -> int:
    """BPF_OBJ_GET: open the object pinned at ``path``."""
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    ret = _sys_bpf(BPF_OBJ_GET, _ObjAttr(pathname=_addr(pbuf), file_flags=flags))
    hint = "is bpffs mounted at /sys/fs/bpf and is something pinned there?" if ret == -errno.ENOENT else None
    return _check(f"open pinned object {path}", ret, hint)


@dataclass(frozen=True)
class TestRunResult:
    """Outcome of BPF_PROG_TEST_RUN: return value, output packet and context, mean duration."""

    __test__ = False  # not a pytest test class

    retval: int
    data_out: bytes
    ctx_out: bytes | None
    duration_ns: int


def prog_test_run(fd: int, data: bytes, ctx: bytes | None = None, *, repeat: int = 1,
                  data_out_size: int | None = None, name: str = "?") -> TestRunResult:
    """BPF_PROG_TEST_RUN ``data`` (and ``ctx``, e.g. a ``struct __sk_buff``) through a program.

    ``retval`` is returned as a signed 32-bit value (TC_ACT_UNSPEC is -1).
    """
    out_size = data_out_size if data_out_size is not None else len(data) + 4096
    while True:
        din, dout = _buf(data), ctypes.create_string_buffer(out_size)
        cin = _buf(ctx) if ctx else None
        cout = ctypes.create_string_buffer(len(ctx)) if ctx else None
        attr = _TestRunAttr(prog_fd=fd, data_size_in=len(data), data_size_out=out_size, data_in=_addr(din),
                            data_out=_addr(dout), repeat=repeat)
        if ctx:
            attr.ctx_in, attr.ctx_size_in, attr.ctx_out, attr.ctx_size_out = _addr(cin), len(ctx), _addr(cout), len(ctx)
        ret = _sys_bpf(BPF_PROG_TEST_RUN, attr)
        if ret == -errno.ENOSPC and data_out_size is None and out_size < (1 << 24):
            out_size *= 4  # the program grew the packet beyond our buffer
            continue
        if ret in (-ENOTSUPP, -errno.EOPNOTSUPP):
            raise KernelTooOld("BPF_PROG_TEST_RUN for this program type", -ret)
        hint = "is ctx a valid struct __sk_buff with only writable fields set?" if ret == -errno.EINVAL else None
        _check(f"program '{name}': test run", ret, hint)
        retval = attr.retval - (1 << 32) if attr.retval >= (1 << 31) else attr.retval
        return TestRunResult(retval, dout.raw[:attr.data_size_out], cout.raw[:attr.ctx_size_out] if ctx else None,
                             attr.duration)


# --- BTF ---------------------------------------------------------------------------------


def btf_load(blob: bytes, *, name: str = "?", log_level: int = 0) -> int:
    """BPF_BTF_LOAD; returns the BTF fd, or raises :class:`VerifierError` with the BTF log."""
    bbuf = _buf(blob)
    attr = _BtfLoadAttr(btf=_addr(bbuf), btf_size=len(blob))
    op = f"BTF of {name}: load"
    if log_level == 0:
        ret = _sys_bpf(BPF_BTF_LOAD, attr)
        if ret >= 0:
            return ret
        if ret == -errno.EPERM:
            raise BPFError(op, -ret)
        log_level = 1
    return _load_with_log(BPF_BTF_LOAD, attr, op, log_level, LOG_SIZE_START)


# --- links -------------------------------------------------------------------------------


def link_create(prog_fd: int, target_ifindex: int, attach_type: int, *, flags: int = 0,
                relative_fd: int = 0, expected_revision: int = 0, name: str = "?") -> int:
    """BPF_LINK_CREATE, shaped for tcx (``BPF_TCX_INGRESS``/``BPF_TCX_EGRESS``)."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=target_ifindex, attach_type=attach_type,
                           flags=flags, relative_fd=relative_fd, expected_revision=expected_revision)
    ret = _sys_bpf(BPF_LINK_CREATE, attr)
    if ret == -errno.EINVAL and attach_type in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
        # Kernels before 6.6 do not know the tcx attach types.
        raise KernelTooOld("tcx links (Linux 6.6)", errno.EINVAL)
    hint = "no such interface" if ret in (-errno.ENODEV, -errno.ENXIO) else None
    return _check(f"program '{name}': link to ifindex {target_ifindex} (attach type {attach_type})", ret, hint)


def link_update(link_fd: int, new_prog_fd: int, *, flags: int = 0, old_prog_fd: int = 0) -> None:
    """BPF_LINK_UPDATE: atomically swap the program behind a link."""
    attr = _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd, flags=flags, old_prog_fd=old_prog_fd)
    _check(f"link fd {link_fd}: update", _sys_bpf(BPF_LINK_UPDATE, attr))


def link_detach(link_fd: int) -> None:
    """BPF_LINK_DETACH: detach the program, leaving a defunct link fd."""
    _check(f"link fd {link_fd}: detach", _sys_bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd)))


# --- object info and ids ------------------------------------------------------------------

_ProgInfo = _attr("_ProgInfo", [
    ("type", u32), ("id", u32), ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", u32),
    ("xlated_prog_len", u32), ("jited_prog_insns", u64), ("xlated_prog_insns", u64), ("load_time", u64),
    ("created_by_uid", u32), ("nr_map_ids", u32), ("map_ids", u64), ("name", ctypes.c_char * 16),
    ("ifindex", u32), ("gpl_compatible", u32), ("netns_dev", u64), ("netns_ino", u64),
    ("nr_jited_ksyms", u32), ("nr_jited_func_lens", u32), ("jited_ksyms", u64), ("jited_func_lens", u64),
    ("btf_id", u32), ("func_info_rec_size", u32), ("func_info", u64), ("nr_func_info", u32),
    ("nr_line_info", u32), ("line_info", u64), ("jited_line_info", u64), ("nr_jited_line_info", u32),
    ("line_info_rec_size", u32), ("jited_line_info_rec_size", u32), ("nr_prog_tags", u32),
    ("prog_tags", u64), ("run_time_ns", u64), ("run_cnt", u64), ("recursion_misses", u64),
    ("verified_insns", u32), ("attach_btf_obj_id", u32), ("attach_btf_id", u32),
])
_MapInfo = _attr("_MapInfo", [
    ("type", u32), ("id", u32), ("key_size", u32), ("value_size", u32), ("max_entries", u32),
    ("map_flags", u32), ("name", ctypes.c_char * 16), ("ifindex", u32), ("btf_vmlinux_value_type_id", u32),
    ("netns_dev", u64), ("netns_ino", u64), ("btf_id", u32), ("btf_key_type_id", u32),
    ("btf_value_type_id", u32), ("_pad", u32), ("map_extra", u64),
])
_LinkInfo = _attr("_LinkInfo", [
    ("type", u32), ("id", u32), ("prog_id", u32), ("_pad", u32), ("u", ctypes.c_uint8 * 64),
])


@dataclass(frozen=True)
class ProgInfo:
    """The parts of ``struct bpf_prog_info`` polc uses."""

    type: int
    id: int
    name: str
    tag: bytes
    xlated_prog_len: int
    jited_prog_len: int
    map_ids_count: int
    btf_id: int
    verified_insns: int
    run_cnt: int


@dataclass(frozen=True)
class MapInfo:
    """The parts of ``struct bpf_map_info`` polc uses."""

    type: int
    id: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    btf_id: int
    btf_key_type_id: int
    btf_value_type_id: int


@dataclass(frozen=True)
class LinkInfo:
    """``struct bpf_link_info``; ``ifindex``/``attach_type`` are read for tcx links (type 11)."""

    type: int
    id: int
    prog_id: int
    ifindex: int
    attach_type: int


BPF_LINK_TYPE_TCX = 11


def _get_info(fd: int, struct: type, what: str) -> ctypes.Structure:
    info = struct()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _check(f"{what} fd {fd}: get info", _sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr))
    return info


def prog_info(fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a program."""
    i = _get_info(fd, _ProgInfo, "program")
    return ProgInfo(i.type, i.id, i.name.decode(), bytes(i.tag), i.xlated_prog_len, i.jited_prog_len,
                    i.nr_map_ids, i.btf_id, i.verified_insns, i.run_cnt)


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map."""
    i = _get_info(fd, _MapInfo, "map")
    return MapInfo(i.type, i.id, i.name.decode(), i.key_size, i.value_size, i.max_entries, i.map_flags,
                   i.btf_id, i.btf_key_type_id, i.btf_value_type_id)


def link_info(fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a link."""
    i = _get_info(fd, _LinkInfo, "link")
    ifindex = attach_type = 0
    if i.type == BPF_LINK_TYPE_TCX:
        raw = bytes(i.u)
        ifindex, attach_type = int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little")
    return LinkInfo(i.type, i.id, i.prog_id, ifindex, attach_type)


def _next_id(cmd: int, start: int, what: str) -> int | None:
    attr = _IdAttr(start_id=start)
    ret = _sys_bpf(cmd, attr)
    if ret == -errno.ENOENT:
        return None
    _check(f"next {what} id after {start}", ret)
    return attr.next_id


def _fd_by_id(cmd: int, obj_id: int, what: str) -> int:
    ret = _sys_bpf(cmd, _IdAttr(start_id=obj_id))
    hint = f"no {what} with that id (gone already?)" if ret == -errno.ENOENT else None
    return _check(f"open {what} id {obj_id}", ret, hint)


def prog_get_next_id(start: int = 0) -> int | None:
    """BPF_PROG_GET_NEXT_ID; ``None`` after the last program."""
    return _next_id(BPF_PROG_GET_NEXT_ID, start, "program")


def map_get_next_id(start: int = 0) -> int | None:
    """BPF_MAP_GET_NEXT_ID; ``None`` after the last map."""
    return _next_id(BPF_MAP_GET_NEXT_ID, start, "map")


def link_get_next_id(start: int = 0) -> int | None:
    """BPF_LINK_GET_NEXT_ID; ``None`` after the last link."""
    return _next_id(BPF_LINK_GET_NEXT_ID, start, "link")


def prog_get_fd_by_id(prog_id: int) -> int:
    """BPF_PROG_GET_FD_BY_ID."""
    return _fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id, "program")


def map_get_fd_by_id(map_id: int) -> int:
    """BPF_MAP_GET_FD_BY_ID."""
    return _fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id, "map")


def link_get_fd_by_id(link_id: int) -> int:
    """BPF_LINK_GET_FD_BY_ID."""
    return _fd_by_id(BPF_LINK_GET_FD_BY_ID, link_id, "link")
