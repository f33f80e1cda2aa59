"""Read a BPF ELF object into plain specs: programs, maps, data sections, images, metadata.

This is the blueprint half of the loader (cilium/ebpf's ``CollectionSpec``): nothing here
asks the kernel anything, so an :class:`ObjectFile` can be inspected without privileges.
:mod:`polc.runtime.loader` turns it into live maps and programs.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from polc import abi

from . import bpf
from .btf import BTF, KIND_DATASEC, BTFParseError
from .errors import ObjectError

EM_BPF = 247
R_BPF_64_64 = 1
R_BPF_64_32 = 10  # call instructions: bpf-to-bpf calls and kfuncs
INSN = struct.Struct("<BBhi")  # code, dst:4|src:4, off, imm
OP_LD_IMM64 = 0x18
OP_CALL = 0x85
BPF_PSEUDO_CALL = 1

MAPS_SECTION = ".maps"
LICENSE_SECTION = "license"
_DATA_PREFIXES = (".rodata", ".data", ".bss")

# Program section names (libbpf's conventions) -> (program type, expected attach type).
PROGRAM_SECTIONS = {
    "tc": (bpf.BPF_PROG_TYPE_SCHED_CLS, 0),
    "classifier": (bpf.BPF_PROG_TYPE_SCHED_CLS, 0),
    "tcx/ingress": (bpf.BPF_PROG_TYPE_SCHED_CLS, bpf.BPF_TCX_INGRESS),
    "tcx/egress": (bpf.BPF_PROG_TYPE_SCHED_CLS, bpf.BPF_TCX_EGRESS),
    "xdp": (6, 37),  # BPF_PROG_TYPE_XDP, BPF_XDP
    "cgroup_skb/ingress": (8, 0),  # BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS
    "cgroup_skb/egress": (8, 1),
}

# Fields a BTF map definition may set, and the MapSpec attribute each one feeds.
_MAP_FIELDS = {"type", "max_entries", "map_flags", "key_size", "value_size", "numa_node", "map_extra",
               "pinning"}


@dataclass(frozen=True)
class Relocation:
    """A ld_imm64 at ``insn`` (index in the program) that must point at a map.

    ``map`` is the key of the target in :attr:`ObjectFile.maps` (a ``.maps`` variable
    name, or a data section name like ``.rodata``); ``offset`` is the byte offset into
    the value for data sections (BPF_PSEUDO_MAP_VALUE) and ``None`` for map fds.
    """

    insn: int
    symbol: str
    map: str
    offset: int | None


@dataclass
class ProgramSpec:
    """A program: one global function of an executable section."""

    name: str
    section: str
    insns: bytes
    license: str
    section_offset: int
    prog_type: int = bpf.BPF_PROG_TYPE_SCHED_CLS
    expected_attach_type: int = 0
    relocations: list[Relocation] = field(default_factory=list)
    func_info: bytes = b""  # kernel-ready struct bpf_func_info records (insn indices)
    func_info_rec_size: int = 0
    line_info: bytes = b""  # kernel-ready struct bpf_line_info records
    line_info_rec_size: int = 0

    @property
    def insn_count(self) -> int:
        return len(self.insns) // 8


@dataclass
class MapSpec:
    """A map to create.

    ``name`` is the key in :attr:`ObjectFile.maps` (the variable, or ``.rodata`` for a
    data section), ``kernel_name`` what the kernel is told (at most 15 bytes).  A data
    section map has ``data`` (its single value) and ``freeze`` when it is read-only.
    """

    name: str
    kernel_name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    map_extra: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    data: bytes | None = None
    freeze: bool = False
    pinning: int = 0

    @property
    def type_name(self) -> str:
        return bpf.MAP_TYPE_NAMES.get(self.type, f"type{self.type}")

    def describe(self) -> str:
        """One line for messages: ``hash key 4 value 8 max 16 flags 0x1``."""
        return (f"{self.type_name} key {self.key_size} value {self.value_size} max {self.max_entries}"
                f" flags {self.flags:#x}")


@dataclass
class Image:
    """The contents polc's compiler prepared for a map (``.polc.img.<map>``)."""

    map: str
    key_size: int
    value_size: int
    records: list[tuple[bytes, bytes]]


class ObjectFile:
    """A parsed BPF ELF object. Build it with :meth:`from_path` or :meth:`from_bytes`."""

    def __init__(self, name: str, path: str):
        self.name = name  # object name, the prefix of data section map names
        self.path = path  # for messages
        self.license = ""
        self.programs: dict[str, ProgramSpec] = {}
        self.maps: dict[str, MapSpec] = {}
        self.images: dict[str, Image] = {}
        self.meta: dict | None = None
        self.btf: BTF | None = None
        self.btf_blob: bytes | None = None  # kernel-loadable (fixed up) .BTF
        self.symbols: dict[str, tuple[str, int, int]] = {}  # name -> (section, value, size)
        self._section_symbols: dict[str, dict[str, int]] = {}  # section -> {name: value}
        self._section_data: dict[str, bytes] = {}

    # --- construction ------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ObjectFile:
        """Parse the object at ``path``."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ObjectError(path, f"cannot read: {e.strerror}") from e
        return cls.from_bytes(data, name=_object_name(path), path=path)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "obj", path: str | None = None) -> ObjectFile:
        """Parse an object held in memory; ``name`` prefixes data section map names."""
        obj = cls(_sanitize(name), path or f"<{name}>")
        try:
            elf = ELFFile(io.BytesIO(bytes(data)))
            obj._parse(elf)
        except ObjectError:
            raise
        except (ELFError, struct.error, IndexError, KeyError, ValueError, UnicodeDecodeError) as e:
            raise ObjectError(obj.path, f"corrupt ELF object: {e}") from e
        return obj

    def _error(self, message: str, hint: str | None = None) -> ObjectError:
        return ObjectError(self.path, message, hint)

    def _parse(self, elf: ELFFile) -> None:
        self._check_header(elf)
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise self._error("no symbol table (.symtab)", "was the object stripped?")
        sections = list(elf.iter_sections())
        self._read_symbols(symtab, sections)
        lic = elf.get_section_by_name(LICENSE_SECTION)
        self.license = lic.data().split(b"\0", 1)[0].decode() if lic is not None else ""
        self._read_btf(elf)
        self._read_maps(elf)
        self._read_data_sections(sections)
        self._read_programs(elf, sections, symtab)
        self._read_btf_ext(elf)
        self._read_polc_sections(sections)

    def _check_header(self, elf: ELFFile) -> None:
        if elf.header["e_machine"] not in ("EM_BPF", EM_BPF):
            raise self._error(f"not a BPF object (machine {elf.header['e_machine']})",
                              "compile with clang -target bpf")
        if elf.elfclass != 64 or not elf.little_endian:
            raise self._error("only 64-bit little-endian BPF objects are supported")
        if elf.header["e_type"] != "ET_REL":
            raise self._error(f"not a relocatable object (e_type {elf.header['e_type']})")

    def _read_symbols(self, symtab: SymbolTableSection, sections: list) -> None:
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            if not sym.name or not isinstance(shndx, int) or shndx >= len(sections):
                continue
            if sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            secname = sections[shndx].name
            self._section_symbols.setdefault(secname, {})[sym.name] = sym["st_value"]
            if sym.name in self.symbols and sym["st_info"]["bind"] == "STB_LOCAL":
                continue  # a static of the same name elsewhere; globals win the by-name lookup
            self.symbols[sym.name] = (secname, sym["st_value"], sym["st_size"])

    # --- BTF and maps ------------------------------------------------------------------

    def _read_btf(self, elf: ELFFile) -> None:
        sec = elf.get_section_by_name(".BTF")
        if sec is None:
            return
        try:
            self.btf = BTF(sec.data())
        except BTFParseError as e:
            raise self._error(f".BTF: {e}") from e
        sizes = {s.name: s.data_size for s in elf.iter_sections()}
        try:
            self.btf_blob = self.btf.fixup(sizes, self._section_symbols)
        except BTFParseError as e:
            raise self._error(f".BTF: {e}") from e

    def _read_maps(self, elf: ELFFile) -> None:
        sec = elf.get_section_by_name(MAPS_SECTION)
        if sec is None:
            return
        if self.btf is None:
            raise self._error("section .maps but no .BTF to describe it", "compile with -g")
        try:
            defs = self.btf.map_definitions(MAPS_SECTION)
        except BTFParseError as e:
            raise self._error(f".maps: {e}") from e
        for d in defs:
            self.maps[d.name] = self._map_spec(d)
        for sym in self._section_symbols.get(MAPS_SECTION, {}):
            if sym not in self.maps:
                raise self._error(f"symbol '{sym}' in .maps has no BTF map definition")

    def _map_spec(self, d) -> MapSpec:
        unknown = set(d.fields) - _MAP_FIELDS
        if unknown:
            raise self._error(f"map '{d.name}': unsupported map definition fields {sorted(unknown)}",
                              "inner maps (values) and other extensions are not supported")
        if "type" not in d.fields:
            raise self._error(f"map '{d.name}': no map type")
        key_size = self._member_size(d, "key", d.key_type)
        value_size = self._member_size(d, "value", d.value_type)
        return MapSpec(d.name, d.name, d.fields["type"], key_size, value_size, d.fields.get("max_entries", 0),
                       d.fields.get("map_flags", 0), d.fields.get("map_extra", 0), d.key_type, d.value_type,
                       pinning=d.fields.get("pinning", 0))

    def _member_size(self, d, what: str, type_id: int) -> int:
        explicit = d.fields.get(f"{what}_size")
        if not type_id:
            return explicit or 0
        size = self.btf.size_of(type_id)
        if explicit is not None and explicit != size:
            raise self._error(f"map '{d.name}': {what}_size {explicit} but the {what} type has {size} bytes")
        return size

    def _read_data_sections(self, sections: list) -> None:
        for sec in sections:
            if not sec.name.startswith(_DATA_PREFIXES) or not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC:
                continue
            if sec.data_size == 0:
                continue
            readonly = sec.name.startswith(".rodata")
            data = bytes(sec.data_size) if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            self._section_data[sec.name] = data
            datasec = self.btf.find(sec.name, KIND_DATASEC) if self.btf else None
            self.maps[sec.name] = MapSpec(
                sec.name, _data_map_name(self.name, sec.name), bpf.BPF_MAP_TYPE_ARRAY, 4, len(data), 1,
                bpf.BPF_F_RDONLY_PROG if readonly else 0,
                btf_value_type_id=datasec.id if datasec else 0, data=data, freeze=readonly)

    # --- programs ------------------------------------------------------------------------

    def _read_programs(self, elf: ELFFile, sections: list, symtab: SymbolTableSection) -> None:
        code_sections = {}
        for idx, sec in enumerate(sections):
            if sec["sh_type"] == "SHT_PROGBITS" and sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec.data_size:
                code_sections[idx] = sec
        for idx, sec in code_sections.items():
            funcs = sorted((s for s in symtab.iter_symbols()
                            if s["st_shndx"] == idx and s["st_info"]["type"] == "STT_FUNC"
                            and s["st_info"]["bind"] == "STB_GLOBAL"), key=lambda s: s["st_value"])
            if sec.name == ".text":
                if funcs:
                    raise self._error(f"global functions in .text ({', '.join(f.name for f in funcs)})",
                                      "bpf-to-bpf calls and subprograms are not supported; "
                                      "put each program in its own section, e.g. SEC(\"tc\")")
                continue
            if not funcs:
                raise self._error(f"section {sec.name} holds code but no global function symbol")
            if sec.name not in PROGRAM_SECTIONS:
                raise self._error(f"program section '{sec.name}' has no known program type",
                                  f"use one of {', '.join(PROGRAM_SECTIONS)}")
            data = sec.data()
            for sym in funcs:
                self._add_program(sec.name, data, sym)
        for sec in sections:
            if isinstance(sec, RelocationSection) and sec["sh_info"] in code_sections:
                target = code_sections[sec["sh_info"]]
                self._apply_relocation_section(target.name, sec, symtab, sections)

    def _add_program(self, secname: str, data: bytes, sym) -> None:
        start, size = sym["st_value"], sym["st_size"]
        if size == 0 or size % 8 or start % 8 or start + size > len(data):
            raise self._error(f"program '{sym.name}' in {secname}: bad symbol value/size {start}/{size}")
        if sym.name in self.programs:
            raise self._error(f"program '{sym.name}' defined twice")
        insns = data[start:start + size]
        for i in range(size // 8):
            code, regs, _off, _imm = INSN.unpack_from(insns, 8 * i)
            if code == OP_CALL and regs >> 4 == BPF_PSEUDO_CALL:
                raise self._error(f"program '{sym.name}': bpf-to-bpf call at instruction {i}",
                                  "subprograms are not supported; mark helpers __always_inline")
        prog_type, attach_type = PROGRAM_SECTIONS[secname]
        self.programs[sym.name] = ProgramSpec(sym.name, secname, insns, self.license, start, prog_type, attach_type)

    def _program_at(self, secname: str, offset: int) -> ProgramSpec | None:
        for p in self.programs.values():
            if p.section == secname and p.section_offset <= offset < p.section_offset + len(p.insns):
                return p
        return None

    def _apply_relocation_section(self, secname: str, relsec, symtab, sections: list) -> None:
        for rel in relsec.iter_relocations():
            prog = self._program_at(secname, rel["r_offset"])
            sym = symtab.get_symbol(rel["r_info_sym"])
            symname = sym.name
            if not symname and isinstance(sym["st_shndx"], int):
                symname = sections[sym["st_shndx"]].name  # section symbols are unnamed
            if prog is None:
                raise self._error(f"relocation at {secname}+{rel['r_offset']} (symbol '{symname}') "
                                  "is outside every program")
            prog.relocations.append(self._relocation(prog, rel, sym, symname, sections))

    def _relocation(self, prog: ProgramSpec, rel, sym, symname: str, sections: list) -> Relocation:
        where = f"program '{prog.name}': relocation against '{symname}'"
        insn = (rel["r_offset"] - prog.section_offset) // 8
        rtype = rel["r_info_type"]
        if rtype == R_BPF_64_32:
            raise self._error(f"{where}: call relocation", "bpf-to-bpf calls and kfuncs are not supported")
        if rtype != R_BPF_64_64:
            raise self._error(f"{where}: unsupported relocation type {rtype}")
        code, _regs, _off, imm = INSN.unpack_from(prog.insns, insn * 8)
        if code != OP_LD_IMM64 or insn + 1 >= prog.insn_count:
            raise self._error(f"{where}: instruction {insn} (opcode {code:#x}) is not ld_imm64")
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int) or shndx == 0:
            raise self._error(f"{where}: undefined (extern) symbol",
                              "externs, kconfig and CO-RE are not supported")
        secname = sections[shndx].name
        if secname == MAPS_SECTION:
            if symname not in self.maps:
                raise self._error(f"{where}: no map definition called '{symname}'")
            return Relocation(insn, symname, symname, None)
        if secname in self.maps and self.maps[secname].data is not None:
            # Section symbols carry the offset in imm; variable symbols in st_value (+ imm).
            value = 0 if sym["st_info"]["type"] == "STT_SECTION" else sym["st_value"]
            return Relocation(insn, symname, secname, value + imm)
        raise self._error(f"{where}: symbol lives in section {secname}, not in .maps or a data section")

    def _read_btf_ext(self, elf: ELFFile) -> None:
        sec = elf.get_section_by_name(".BTF.ext")
        if sec is None or self.btf is None:
            return
        try:
            ext = _parse_btf_ext(sec.data(), self.btf)
        except (struct.error, ValueError, BTFParseError) as e:
            raise self._error(f".BTF.ext: {e}") from e
        if ext["core"]:
            secs = sorted(ext["core"])
            raise self._error(f"CO-RE relocations in {', '.join(secs)}", "CO-RE is not supported")
        for prog in self.programs.values():
            prog.func_info_rec_size, prog.func_info = _slice_records(ext["func"], prog)
            prog.line_info_rec_size, prog.line_info = _slice_records(ext["line"], prog)

    # --- polc sections -------------------------------------------------------------------

    def _read_polc_sections(self, sections: list) -> None:
        for sec in sections:
            if sec.name.startswith(abi.IMAGE_SECTION_PREFIX):
                self._read_image(sec.name[len(abi.IMAGE_SECTION_PREFIX):], sec.data())
            elif sec.name == abi.META_SECTION:
                try:
                    meta = json.loads(sec.data().rstrip(b"\0").decode())
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise self._error(f"{abi.META_SECTION} is not valid JSON: {e}") from e
                if not isinstance(meta, dict):
                    raise self._error(f"{abi.META_SECTION} is a JSON {type(meta).__name__}, want an object")
                self.meta = meta

    def _read_image(self, mapname: str, blob: bytes) -> None:
        try:
            ksz, vsz, records = abi.unpack_image(blob)
        except ValueError as e:
            raise self._error(f"image of map '{mapname}': {e}") from e
        spec = self.maps.get(mapname)
        if spec is None:
            raise self._error(f"image section for map '{mapname}', which the object does not define")
        if (ksz, vsz) != (spec.key_size, spec.value_size):
            raise self._error(f"image of map '{mapname}' has key/value size {ksz}/{vsz}, "
                              f"the map {spec.key_size}/{spec.value_size}")
        if len(records) > spec.max_entries:
            raise self._error(f"image of map '{mapname}' has {len(records)} records, max_entries is "
                              f"{spec.max_entries}")
        self.images[mapname] = Image(mapname, ksz, vsz, records)

    # --- queries ---------------------------------------------------------------------------

    def section_data(self, name: str) -> bytes | None:
        """Contents of a data section (``.rodata``, ``.data``, ``.bss``...)."""
        return self._section_data.get(name)

    def symbol_value(self, name: str, size: int | None = None) -> bytes:
        """The bytes of a variable in a data section, e.g. ``polc_generation``."""
        if name not in self.symbols:
            raise self._error(f"no symbol '{name}'")
        secname, value, symsize = self.symbols[name]
        data = self._section_data.get(secname)
        if data is None:
            raise self._error(f"symbol '{name}' lives in {secname}, not a data section")
        size = symsize if size is None else size
        if value + size > len(data):
            raise self._error(f"symbol '{name}' runs past the end of {secname}")
        return data[value:value + size]

    @property
    def generation(self) -> int | None:
        """``polc_generation`` from ``.rodata``, or ``None`` if the object has none."""
        if abi.GENERATION_SYMBOL not in self.symbols:
            return None
        raw = self.symbol_value(abi.GENERATION_SYMBOL)
        if len(raw) != 8:
            raise self._error(f"'{abi.GENERATION_SYMBOL}' is {len(raw)} bytes, want a u64")
        return int.from_bytes(raw, "little")


# --- helpers -------------------------------------------------------------------------------


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "obj"


def _object_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".o", ".bpf"):
        base = base.removesuffix(suffix)
    return _sanitize(base)


def _data_map_name(obj_name: str, section: str) -> str:
    """libbpf's internal map name: up to 8 chars of the object name + the section name."""
    suffix = section[:15]
    prefix_len = min(15 - len(suffix), len(obj_name), 8)
    return (obj_name[:max(prefix_len, 0)] + suffix)[:15]


_BTF_EXT_HEADER = struct.Struct("<HBBIIIII")


def _parse_btf_ext(data: bytes, btf: BTF) -> dict:
    """func_info/line_info records per section, insn offsets in bytes; CO-RE sections."""
    magic, version, _flags, hdr_len, fi_off, fi_len, li_off, li_len = _BTF_EXT_HEADER.unpack_from(data)
    if magic != 0xEB9F or version != 1:
        raise ValueError(f"bad .BTF.ext magic/version {magic:#x}/{version}")
    out = {"func": _ext_info(data, hdr_len + fi_off, fi_len, btf),
           "line": _ext_info(data, hdr_len + li_off, li_len, btf), "core": {}}
    if hdr_len >= 32:
        core_off, core_len = struct.unpack_from("<II", data, 24)
        out["core"] = {k: v for k, v in _ext_info(data, hdr_len + core_off, core_len, btf).items() if v[1]}
    return out


def _ext_info(data: bytes, off: int, length: int, btf: BTF) -> dict[str, tuple[int, list[bytes]]]:
    if length == 0:
        return {}
    (rec_size,) = struct.unpack_from("<I", data, off)
    pos, end, out = off + 4, off + length, {}
    while pos < end:
        sec_off, count = struct.unpack_from("<II", data, pos)
        pos += 8
        recs = [data[pos + i * rec_size:pos + (i + 1) * rec_size] for i in range(count)]
        out[btf.string(sec_off)] = (rec_size, recs)
        pos += count * rec_size
    return out


def _slice_records(info: dict, prog: ProgramSpec) -> tuple[int, bytes]:
    """The records of ``prog``, insn_off rebased to the program and turned into an index."""
    rec_size, recs = info.get(prog.section, (0, []))
    out = []
    for rec in recs:
        (off,) = struct.unpack_from("<I", rec)
        if prog.section_offset <= off < prog.section_offset + len(prog.insns):
            out.append(struct.pack("<I", (off - prog.section_offset) // 8) + rec[4:])
    return rec_size, b"".join(out)
