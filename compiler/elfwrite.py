"""Append data sections to an ELF64 little-endian relocatable object.

The backend lets LLVM compile only the datapath and adds the map images and metadata
(tens to hundreds of MB for large policies) here, as raw bytes: written into LLVM IR they
cost a text escape of every byte, an IR parse and a copy through LLVM's object writer.
pyelftools only reads ELF, and llvm-objcopy is not a dependency of polc, hence this
writer.  It does the least that keeps the object intact:

* the bytes of the input stay where they are, so every existing section keeps its index,
  offset and contents: symbols (``st_shndx``), relocation sections (``sh_info``,
  ``sh_link``), ``.BTF`` and ``.BTF.ext`` are untouched;
* the new sections' data go after the end of the input, each aligned as asked;
* the section name string table (``e_shstrndx``) is copied after them with the new names
  appended, so every old name offset stays valid -- LLVM shares that table with
  ``.symtab``, whose ``st_name`` offsets stay valid too.  The old copy is left in the file
  unreferenced (a few hundred bytes);
* a new section header table follows: the old headers (only the string table's
  ``sh_offset``/``sh_size`` changed), then one header per new section; the ELF header's
  ``e_shoff`` and ``e_shnum`` point at it.

Same input, same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
SHT_PROGBITS = 1
SHT_STRTAB = 3
SHF_ALLOC = 0x2
SHN_LORESERVE = 0xFF00  # e_shnum/e_shstrndx at or above this use extended numbering
SHN_XINDEX = 0xFFFF


class ELFWriteError(ValueError):
    """The input is not an object this writer can extend, or a new section is malformed."""


@dataclass(frozen=True)
class Section:
    """A section to add: ``data`` goes into the file as is."""

    name: str
    data: bytes
    flags: int = 0
    align: int = 8
    type: int = SHT_PROGBITS


class _Shdr(NamedTuple):
    """An Elf64_Shdr, in SHDR's field order."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True)
class _Header:
    """What the writer needs from the input's ELF header."""

    shoff: int
    shnum: int
    shstrndx: int


def _read_header(obj: bytes) -> _Header:
    if len(obj) < EHDR.size or obj[:4] != ELFMAG:
        raise ELFWriteError("not an ELF file")
    if obj[4] != ELFCLASS64 or obj[5] != ELFDATA2LSB:
        raise ELFWriteError(f"only ELF64 little-endian is supported (class {obj[4]}, data {obj[5]})")
    (_ident, _type, _machine, _version, _entry, _phoff, shoff, _flags, ehsize, _phentsize, _phnum,
     shentsize, shnum, shstrndx) = EHDR.unpack_from(obj)
    if ehsize != EHDR.size or shentsize != SHDR.size:
        raise ELFWriteError(f"unexpected header sizes (e_ehsize {ehsize}, e_shentsize {shentsize})")
    if shoff == 0 or shnum == 0:
        raise ELFWriteError("no section header table (or extended section numbering, which is not supported)")
    if shoff + shnum * SHDR.size > len(obj):
        raise ELFWriteError(f"section header table at {shoff} ({shnum} entries) runs past the end of the "
                            f"file ({len(obj)} bytes)")
    if shstrndx == 0 or shstrndx >= shnum:
        raise ELFWriteError(f"bad section name string table index {shstrndx} ({shnum} sections)")
    return _Header(shoff, shnum, shstrndx)


def _names(strtab: bytes, headers: list[_Shdr]) -> set[bytes]:
    if not strtab.endswith(b"\0"):
        raise ELFWriteError("the section name string table does not end with NUL")
    out = set()
    for h in headers[1:]:
        end = strtab.find(b"\0", h.name)
        if end < 0:
            raise ELFWriteError(f"section name offset {h.name} is outside the string table")
        out.add(strtab[h.name:end])
    return out


def _check_new(sections: Sequence[Section], existing: set[bytes]) -> list[bytes]:
    names = []
    for s in sections:
        name = s.name.encode()
        if not name or b"\0" in name:
            raise ELFWriteError(f"bad section name {s.name!r}")
        if name in existing or name in names:
            raise ELFWriteError(f"section {s.name!r} already exists")
        if s.align < 1 or s.align & (s.align - 1):
            raise ELFWriteError(f"section {s.name!r}: alignment {s.align} is not a power of two")
        names.append(name)
    return names


def append_sections(obj: bytes, sections: Sequence[Section]) -> bytes:
    """``obj`` with ``sections`` added after its existing ones (see the module docstring).

    Raises :class:`ELFWriteError` for input that is not an ELF64 little-endian object with a
    section header table, for names that are empty, hold NUL or already exist, and for
    alignments that are not powers of two.
    """
    hdr = _read_header(obj)
    headers = [_Shdr(*SHDR.unpack_from(obj, hdr.shoff + i * SHDR.size)) for i in range(hdr.shnum)]
    if hdr.shnum + len(sections) >= SHN_LORESERVE:
        raise ELFWriteError(f"{hdr.shnum + len(sections)} sections need extended section numbering, "
                            "which is not supported")
    str_hdr = headers[hdr.shstrndx]
    if str_hdr.type != SHT_STRTAB or str_hdr.offset + str_hdr.size > len(obj):
        raise ELFWriteError(f"section {hdr.shstrndx} (e_shstrndx) is not a string table inside the file")
    strtab = obj[str_hdr.offset:str_hdr.offset + str_hdr.size]
    names = _check_new(sections, _names(strtab, headers))

    parts: list = [b"", memoryview(obj)[EHDR.size:]]  # [0] becomes the patched ELF header
    pos = len(obj)

    def put(data: bytes, align: int) -> int:
        nonlocal pos
        pad = -pos % align
        parts.append(bytes(pad))
        parts.append(data)
        pos += pad
        start = pos
        pos += len(data)
        return start

    new_headers = []
    name_off = len(strtab)
    for s, name in zip(sections, names):
        offset = put(s.data, s.align)
        new_headers.append(_Shdr(name_off, s.type, s.flags, 0, offset, len(s.data), 0, 0, s.align, 0))
        name_off += len(name) + 1
    new_strtab = strtab + b"".join(n + b"\0" for n in names)
    str_offset = put(new_strtab, max(1, str_hdr.addralign))
    headers[hdr.shstrndx] = str_hdr._replace(offset=str_offset, size=len(new_strtab))
    shoff = put(b"".join(SHDR.pack(*h) for h in headers + new_headers), 8)

    fields = list(EHDR.unpack_from(obj))
    fields[6], fields[12] = shoff, hdr.shnum + len(sections)  # e_shoff, e_shnum
    parts[0] = EHDR.pack(*fields)
    return b"".join(parts)
