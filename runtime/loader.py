"""Turn an :class:`~polc.runtime.elfobj.ObjectFile` into live maps and programs.

The order follows cilium/ebpf's ``collectionLoader`` and the polc ABI: load the BTF,
create the maps (data sections are filled and frozen at once, because the verifier reads
frozen ``.rodata`` as constants), write every polc map image, load the programs with their
relocations, and write the generation into ``polc_ctrl[0]`` last: until that write the
datapath drops every policed packet.  On failure everything created so far is closed; on
success the :class:`Collection` owns the file descriptors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from polc import abi

from . import bpf
from .bpf import TestRunResult
from .elfobj import INSN, ObjectFile, ProgramSpec
from .errors import MapIncompatible, ObjectError

__all__ = ["Collection", "Link", "Map", "Program", "TestRunResult"]


class _FdOwner:
    """Something that owns one file descriptor and closes it once."""

    fd: int

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _live_fd(self, what: str) -> int:
        if self.fd < 0:
            raise ValueError(f"{what} is closed")
        return self.fd

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class Map(_FdOwner):
    """A live map. Keys and values are ``bytes`` of the spec's sizes."""

    def __init__(self, fd: int, spec):
        self.fd = fd
        self.spec = spec
        self.name = spec.name
        self._vbuf = bpf.value_buffer_size(spec.type, spec.value_size)

    def __repr__(self) -> str:
        return f"Map({self.name!r}, fd={self.fd}, {self.spec.describe()})"

    def _key(self, key: bytes) -> bytes:
        if len(key) != self.spec.key_size:
            raise ValueError(f"map '{self.name}': key of {len(key)} bytes, want {self.spec.key_size}")
        return bytes(key)

    def _value(self, value: bytes) -> bytes:
        if len(value) != self._vbuf:
            raise ValueError(f"map '{self.name}': value of {len(value)} bytes, want {self._vbuf}")
        return bytes(value)

    def lookup(self, key: bytes) -> bytes | None:
        """The value at ``key``, or ``None``."""
        return bpf.map_lookup(self._live_fd(f"map '{self.name}'"), self._key(key), self._vbuf, name=self.name)

    def update(self, key: bytes, value: bytes, flags: int = bpf.BPF_ANY) -> None:
        """Write one element (``flags``: BPF_ANY, BPF_NOEXIST or BPF_EXIST)."""
        bpf.map_update(self._live_fd(f"map '{self.name}'"), self._key(key), self._value(value), flags,
                       name=self.name)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; ``False`` if it was not there."""
        return bpf.map_delete(self._live_fd(f"map '{self.name}'"), self._key(key), name=self.name)

    def keys(self) -> Iterator[bytes]:
        """Iterate over the keys (BPF_MAP_GET_NEXT_KEY; concurrent deletes may skip some)."""
        fd, key = self._live_fd(f"map '{self.name}'"), None
        while (key := bpf.map_get_next_key(fd, key, self.spec.key_size, name=self.name)) is not None:
            yield key

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over (key, value) pairs; keys deleted meanwhile are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def update_batch(self, records: list[tuple[bytes, bytes]], flags: int = bpf.BPF_ANY) -> None:
        """Write many elements with one BPF_MAP_UPDATE_BATCH (element-wise where unsupported)."""
        keys = [self._key(k) for k, _ in records]
        values = [self._value(v) for _, v in records]
        bpf.map_update_batch(self._live_fd(f"map '{self.name}'"), keys, values, flags, name=self.name)

    def clear(self) -> None:
        """Remove every element; array elements cannot be removed, so they are zeroed."""
        if self.spec.type in bpf.ARRAY_MAP_TYPES:
            zero = bytes(self._vbuf)
            self.update_batch([(i.to_bytes(4, "little"), zero) for i in range(self.spec.max_entries)])
            return
        for key in list(self.keys()):
            self.delete(key)

    def freeze(self) -> None:
        """Make the map read-only for user space."""
        bpf.map_freeze(self._live_fd(f"map '{self.name}'"), name=self.name)

    def pin(self, path: str) -> None:
        """Pin the map at ``path`` on a bpffs."""
        bpf.obj_pin(self._live_fd(f"map '{self.name}'"), path, what=f"map '{self.name}'")

    def info(self) -> bpf.MapInfo:
        """The kernel's view of the map."""
        return bpf.map_info(self._live_fd(f"map '{self.name}'"))


class Program(_FdOwner):
    """A loaded program."""

    def __init__(self, fd: int, spec: ProgramSpec, prog_type: int):
        self.fd = fd
        self.spec = spec
        self.name = spec.name
        self.prog_type = prog_type

    def __repr__(self) -> str:
        return f"Program({self.name!r}, fd={self.fd})"

    def test_run(self, data: bytes, ctx: bytes | None = None, repeat: int = 1) -> TestRunResult:
        """Run the program on ``data`` (a packet from its Ethernet header) with BPF_PROG_TEST_RUN.

        ``ctx`` is an input context, e.g. ``struct __sk_buff`` bytes; the result carries
        the context as the program left it.
        """
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        return bpf.prog_test_run(self._live_fd(f"program '{self.name}'"), bytes(data), ctx, repeat=repeat,
                                 name=self.name)

    def pin(self, path: str) -> None:
        """Pin the program at ``path`` on a bpffs."""
        bpf.obj_pin(self._live_fd(f"program '{self.name}'"), path, what=f"program '{self.name}'")

    def info(self) -> bpf.ProgInfo:
        """The kernel's view of the program."""
        return bpf.prog_info(self._live_fd(f"program '{self.name}'"))

    def attach_tcx(self, ifindex: int, direction: str) -> Link:
        """Attach to ``ifindex`` with a tcx link; ``direction`` is ``ingress`` or ``egress``."""
        types = {"ingress": bpf.BPF_TCX_INGRESS, "egress": bpf.BPF_TCX_EGRESS}
        if direction not in types:
            raise ValueError(f"direction must be 'ingress' or 'egress', got {direction!r}")
        fd = bpf.link_create(self._live_fd(f"program '{self.name}'"), ifindex, types[direction], name=self.name)
        return Link(fd)


class Link(_FdOwner):
    """A BPF link; closing it detaches the program unless the link is pinned."""

    def __init__(self, fd: int):
        self.fd = fd

    def update(self, program: Program) -> None:
        """Atomically replace the attached program."""
        bpf.link_update(self._live_fd("link"), program._live_fd(f"program '{program.name}'"))

    def detach(self) -> None:
        """Detach the program now (the fd stays open but defunct)."""
        bpf.link_detach(self._live_fd("link"))

    def pin(self, path: str) -> None:
        """Pin the link at ``path``: the attachment then outlives this process."""
        bpf.obj_pin(self._live_fd("link"), path, what="link")

    def info(self) -> bpf.LinkInfo:
        """The kernel's view of the link."""
        return bpf.link_info(self._live_fd("link"))


@dataclass
class _Loading:
    """What a load has made so far, so that a failure can close it."""

    btf_fd: int = -1
    maps: dict[str, Map] = field(default_factory=dict)
    programs: dict[str, Program] = field(default_factory=dict)

    def close(self) -> None:
        for owner in list(self.programs.values()) + list(self.maps.values()):
            owner.close()
        if self.btf_fd >= 0:
            os.close(self.btf_fd)
            self.btf_fd = -1


class Collection:
    """Live maps and programs of one object. Use :meth:`load`; close with :meth:`close`."""

    def __init__(self, obj: ObjectFile, maps: dict[str, Map], programs: dict[str, Program]):
        self.object = obj
        self.maps = maps
        self.programs = programs
        self.meta = obj.meta

    @classmethod
    def load(cls, obj: ObjectFile, *, reuse_maps: dict[str, int] | None = None, fill: bool = True,
             generation: bool = True, log_level: int = 0) -> Collection:
        """Create the maps and load the programs of ``obj``.

        ``reuse_maps`` maps a map name to an fd to use instead of creating the map (e.g.
        ``polc_ct`` across a policy update); the fd is duplicated, the caller keeps its
        own.  ``fill=False`` writes neither images nor the generation, leaving the
        datapath fail-closed; ``generation=False`` writes the images but not the
        generation.  ``log_level`` > 0 asks the verifier for a log up front.
        """
        unknown = set(reuse_maps or {}) - set(obj.maps)
        if unknown:
            raise ValueError(f"reuse_maps names maps the object does not have: {sorted(unknown)}")
        if abi.MAP_CTRL in obj.maps and obj.generation == 0:
            # polc_ctrl starts zeroed: generation 0 would open the datapath before any image.
            raise ObjectError(obj.path, f"'{abi.GENERATION_SYMBOL}' is 0, so the datapath cannot fail closed",
                              "the compiler must emit a nonzero generation")
        made = _Loading()
        try:
            made.btf_fd = _load_btf(obj)
            for spec in obj.maps.values():
                fd = (reuse_maps or {}).get(spec.name)
                made.maps[spec.name] = _reuse_map(spec, fd) if fd is not None else _create_map(spec, made.btf_fd)
            if fill:
                _write_images(obj, made.maps)
            for spec in obj.programs.values():
                made.programs[spec.name] = _load_program(obj, spec, made, log_level)
            if fill and generation:
                _write_generation(obj, made.maps)
        except BaseException:
            made.close()
            raise
        if made.btf_fd >= 0:
            os.close(made.btf_fd)  # maps and programs hold their own references
        return cls(obj, made.maps, made.programs)

    def close(self) -> None:
        """Close every map and program fd."""
        for owner in list(self.programs.values()) + list(self.maps.values()):
            owner.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collection({self.object.name!r}, maps={sorted(self.maps)}, programs={sorted(self.programs)})"

    def map(self, name: str) -> Map:
        """The map called ``name``, with an error listing the others."""
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"no map '{name}' in {self.object.path}; have {sorted(self.maps)}") from None

    def program(self, name: str) -> Program:
        """The program called ``name``, with an error listing the others."""
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"no program '{name}' in {self.object.path}; have {sorted(self.programs)}") from None

    def write_generation(self) -> int:
        """Write the object's generation into ``polc_ctrl[0]`` (opens the datapath)."""
        return _write_generation(self.object, self.maps)

    def pin(self, directory: str) -> None:
        """Pin every map and program as ``directory/<name>`` (the directory must exist)."""
        for name, owner in list(self.maps.items()) + list(self.programs.items()):
            owner.pin(os.path.join(directory, name.lstrip(".")))


# --- load steps ------------------------------------------------------------------------------


def _load_btf(obj: ObjectFile) -> int:
    if obj.btf_blob is None:
        return -1
    return bpf.btf_load(obj.btf_blob, name=obj.path)


def _create_map(spec, btf_fd: int) -> Map:
    """Create one map; data section maps are written and, when read-only, frozen."""
    use_btf = btf_fd >= 0 and (spec.btf_key_type_id or spec.btf_value_type_id)
    fd = bpf.map_create(spec.type, spec.key_size, spec.value_size, spec.max_entries, flags=spec.flags,
                        name=spec.kernel_name, btf_fd=btf_fd if use_btf else 0,
                        btf_key_type_id=spec.btf_key_type_id if use_btf else 0,
                        btf_value_type_id=spec.btf_value_type_id if use_btf else 0, map_extra=spec.map_extra)
    m = Map(fd, spec)
    try:
        if spec.data is not None:
            m.update(bytes(4), spec.data)
            if spec.freeze:
                m.freeze()
    except BaseException:
        m.close()
        raise
    return m


_COMPAT_FIELDS = ("type", "key_size", "value_size", "max_entries")


def _reuse_map(spec, fd: int) -> Map:
    """Check that ``fd`` matches ``spec`` and wrap a duplicate of it."""
    info = bpf.map_info(fd)
    flags_mask = ~(bpf.BPF_F_RDONLY | bpf.BPF_F_WRONLY)  # fd-level access flags may differ
    diffs = [f"{f} {getattr(info, f)} != {getattr(spec, f)}" for f in _COMPAT_FIELDS
             if getattr(info, f) != getattr(spec, f)]
    if info.map_flags & flags_mask != spec.flags & flags_mask:
        diffs.append(f"flags {info.map_flags:#x} != {spec.flags:#x}")
    if diffs:
        raise MapIncompatible(f"map '{spec.name}': the map to reuse (id {info.id}) does not match the object: "
                              + ", ".join(diffs))
    return Map(os.dup(fd), spec)


def _write_images(obj: ObjectFile, maps: dict[str, Map]) -> None:
    for name, image in obj.images.items():
        if name in abi.SHARED_MAPS:
            raise ObjectError(obj.path, f"image for shared map '{name}'", "shared maps are never imaged")
        maps[name].update_batch(image.records)


def _load_program(obj: ObjectFile, spec: ProgramSpec, made: _Loading, log_level: int) -> Program:
    insns = _relocate(spec, made.maps)
    btf = {}
    if made.btf_fd >= 0 and spec.func_info:
        btf = dict(prog_btf_fd=made.btf_fd, func_info=spec.func_info, func_info_rec_size=spec.func_info_rec_size,
                   line_info=spec.line_info, line_info_rec_size=spec.line_info_rec_size)
    if not spec.license:
        raise ObjectError(obj.path, f"program '{spec.name}': no license section",
                          'add char _license[] SEC("license") = "GPL";')
    fd = bpf.prog_load(spec.prog_type, insns, spec.license, name=spec.name[:15],
                       expected_attach_type=spec.expected_attach_type, log_level=log_level, **btf)
    return Program(fd, spec, spec.prog_type)


def _relocate(spec: ProgramSpec, maps: dict[str, Map]) -> bytes:
    """Patch each ld_imm64 with the map fd (and value offset for data sections)."""
    insns = bytearray(spec.insns)
    for rel in spec.relocations:
        fd = maps[rel.map].fd
        code, regs, off, _imm = INSN.unpack_from(insns, rel.insn * 8)
        if rel.offset is None:
            src, imm2 = bpf.BPF_PSEUDO_MAP_FD, 0
        else:
            src, imm2 = bpf.BPF_PSEUDO_MAP_VALUE, rel.offset
        INSN.pack_into(insns, rel.insn * 8, code, (regs & 0x0F) | (src << 4), off, fd)
        code2, regs2, off2, _ = INSN.unpack_from(insns, rel.insn * 8 + 8)
        INSN.pack_into(insns, rel.insn * 8 + 8, code2, regs2, off2, imm2)
    return bytes(insns)


def _write_generation(obj: ObjectFile, maps: dict[str, Map]) -> int:
    """Write ``polc_generation`` into ``polc_ctrl[0]``; a no-op for objects without polc_ctrl."""
    gen = obj.generation
    if abi.MAP_CTRL not in maps:
        return 0
    if gen is None:
        raise ObjectError(obj.path, f"map {abi.MAP_CTRL} but no '{abi.GENERATION_SYMBOL}' in .rodata")
    meta_gen = (obj.meta or {}).get("generation")
    if meta_gen is not None and meta_gen != gen:
        raise ObjectError(obj.path, f"generation {gen} in .rodata but {meta_gen} in {abi.META_SECTION}")
    maps[abi.MAP_CTRL].update(abi.CTRL_KEY.pack(0), abi.CTRL_VALUE.pack(gen))
    return gen

