"""Just enough BTF to load what clang and LLVM emit for BPF objects.

Two uses: reading BTF-defined map definitions from the ``.maps`` DATASEC, and turning the
object's ``.BTF`` into a blob the kernel accepts.  LLVM leaves every DATASEC size and VAR
offset at 0 in relocatable objects (the linker would fill them); :meth:`BTF.fixup` fills
them from the ELF section sizes and symbol values, as libbpf's ``btf_fixup_datasec`` does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO = 8, 9, 10, 11, 12, 13
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 16, 17, 18, 19

KIND_NAMES = {
    0: "void", 1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union", 6: "enum", 7: "fwd",
    8: "typedef", 9: "volatile", 10: "const", 11: "restrict", 12: "func", 13: "func_proto", 14: "var",
    15: "datasec", 16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64",
}
MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
_SIZED = (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_DATASEC, KIND_FLOAT, KIND_ENUM64)

# Bytes of kind-specific data after the 12-byte common header: (fixed, per vlen entry).
_TRAILER = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8), KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0), KIND_ENUM64: (0, 12),
}


class BTFParseError(ValueError):
    """The BTF data is malformed or uses a kind this parser does not know."""


@dataclass
class BTFType:
    """One BTF type record.

    ``ref`` is the size for sized kinds and the referenced type id otherwise; ``members``
    holds (name, type, offset) for struct/union members, (name, type, 0) for func_proto
    parameters and (type, offset, size) for DATASEC entries.  ``offset`` is the byte
    offset of the record inside the type section (used when patching).
    """

    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    ref: int
    offset: int
    array: tuple[int, int, int] | None = None  # elem type, index type, nelems
    members: list[tuple] = field(default_factory=list)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind{self.kind}")


@dataclass(frozen=True)
class MapDefinition:
    """A BTF-defined map from ``.maps``: its variable name and the fields it sets.

    ``fields`` maps ``type``/``max_entries``/``map_flags``/... to integers; ``key_type``
    and ``value_type`` are the type ids ``key``/``value`` point to (0 when absent).
    """

    name: str
    fields: dict[str, int]
    key_type: int
    value_type: int


class BTF:
    """Parsed ``.BTF`` section data: the types (id 0 is void) and the string table."""

    def __init__(self, data: bytes):
        self.raw = bytes(data)
        if len(data) < _HEADER.size:
            raise BTFParseError("shorter than the BTF header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise BTFParseError(f"bad magic {magic:#x} (big-endian BTF is not supported)")
        if version != 1:
            raise BTFParseError(f"unsupported BTF version {version}")
        end = hdr_len + max(type_off + type_len, str_off + str_len)
        if hdr_len < _HEADER.size or end > len(data):
            raise BTFParseError(f"sections run past the end ({end} > {len(data)} bytes)")
        self.hdr_len = hdr_len
        self.type_start = hdr_len + type_off
        self.strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self.types: list[BTFType] = [BTFType(0, 0, "", 0, False, 0, -1)]
        self._parse_types(data[self.type_start:self.type_start + type_len])

    def string(self, off: int) -> str:
        """The NUL-terminated string at ``off`` in the string table."""
        if off >= len(self.strings):
            raise BTFParseError(f"string offset {off} outside the string table ({len(self.strings)} bytes)")
        end = self.strings.index(b"\0", off)
        return self.strings[off:end].decode(errors="replace")

    def _parse_types(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if pos + 12 > len(data):
                raise BTFParseError(f"truncated type record at offset {pos}")
            name_off, info, ref = struct.unpack_from("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            if kind not in KIND_NAMES or kind == 0:
                raise BTFParseError(f"unknown BTF kind {kind} (type id {len(self.types)})")
            fixed, per = _TRAILER.get(kind, (0, 0))
            end = pos + 12 + fixed + per * vlen
            if end > len(data):
                raise BTFParseError(f"type id {len(self.types)} runs past the type section")
            t = BTFType(len(self.types), kind, self.string(name_off), vlen, kflag, ref, pos)
            self._parse_trailer(t, data, pos + 12)
            self.types.append(t)
            pos = end

    def _parse_trailer(self, t: BTFType, data: bytes, pos: int) -> None:
        if t.kind == KIND_ARRAY:
            t.array = struct.unpack_from("<III", data, pos)
        elif t.kind in (KIND_STRUCT, KIND_UNION):
            for i in range(t.vlen):
                name_off, mtype, moff = struct.unpack_from("<III", data, pos + 12 * i)
                t.members.append((self.string(name_off), mtype, moff))
        elif t.kind == KIND_FUNC_PROTO:
            for i in range(t.vlen):
                name_off, ptype = struct.unpack_from("<II", data, pos + 8 * i)
                t.members.append((self.string(name_off), ptype, 0))
        elif t.kind == KIND_DATASEC:
            t.members = [struct.unpack_from("<III", data, pos + 12 * i) for i in range(t.vlen)]

    # --- queries -----------------------------------------------------------------------

    def type(self, type_id: int) -> BTFType:
        """The type with id ``type_id``."""
        if not 0 <= type_id < len(self.types):
            raise BTFParseError(f"type id {type_id} out of range (have {len(self.types) - 1} types)")
        return self.types[type_id]

    def find(self, name: str, kind: int) -> BTFType | None:
        """The first type of ``kind`` called ``name``."""
        return next((t for t in self.types if t.kind == kind and t.name == name), None)

    def skip_modifiers(self, type_id: int) -> BTFType:
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type."""
        t = self.type(type_id)
        for _ in range(64):
            if t.kind not in MODIFIERS:
                return t
            t = self.type(t.ref)
        raise BTFParseError(f"modifier chain from type id {type_id} does not end")

    def size_of(self, type_id: int) -> int:
        """Size in bytes of a type, resolving modifiers, arrays, pointers and VARs."""
        t = self.skip_modifiers(type_id)
        if t.kind in _SIZED:
            return t.ref
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            return t.array[2] * self.size_of(t.array[0])
        if t.kind == KIND_VAR:
            return self.size_of(t.ref)
        raise BTFParseError(f"type id {type_id} ({t.kind_name} {t.name!r}) has no size")

    def map_definitions(self, section: str = ".maps") -> list[MapDefinition]:
        """The BTF-defined maps of the DATASEC ``section``, in declaration order."""
        datasec = self.find(section, KIND_DATASEC)
        if datasec is None:
            return []
        return [self._map_definition(self.type(var_id)) for var_id, _off, _size in datasec.members]

    def _map_definition(self, var: BTFType) -> MapDefinition:
        if var.kind != KIND_VAR:
            raise BTFParseError(f".maps entry type id {var.id} is a {var.kind_name}, not a variable")
        st = self.skip_modifiers(var.ref)
        if st.kind != KIND_STRUCT:
            raise BTFParseError(f"map '{var.name}' is a {st.kind_name}, not a struct")
        fields, key_type, value_type = {}, 0, 0
        for mname, mtype, _moff in st.members:
            ptr = self.skip_modifiers(mtype)
            if ptr.kind != KIND_PTR:
                raise BTFParseError(f"map '{var.name}': member '{mname}' is a {ptr.kind_name}, "
                                    "want __uint()/__type() (a pointer)")
            if mname == "key":
                key_type = ptr.ref
            elif mname == "value":
                value_type = ptr.ref
            else:
                arr = self.skip_modifiers(ptr.ref)
                if arr.kind != KIND_ARRAY:
                    raise BTFParseError(f"map '{var.name}': member '{mname}' is not __uint() (int (*)[N])")
                fields[mname] = arr.array[2]
        return MapDefinition(var.name, fields, key_type, value_type)

    # --- making the blob loadable -------------------------------------------------------

    def fixup(self, section_sizes: dict[str, int], symbol_offsets: dict[str, dict[str, int]]) -> bytes:
        """A copy of the raw BTF with DATASEC sizes and VAR offsets filled in.

        ``section_sizes`` maps ELF section names to sizes, ``symbol_offsets`` maps a
        section name to {symbol name: value}.  DATASECs whose section is missing from the
        ELF (LLVM never emits those) are left alone; an unknown variable is an error.
        """
        out = bytearray(self.raw)
        for t in self.types:
            if t.kind != KIND_DATASEC or t.name not in section_sizes:
                continue
            base = self.type_start + t.offset
            struct.pack_into("<I", out, base + 8, section_sizes[t.name])
            symbols = symbol_offsets.get(t.name, {})
            entries = []
            for var_id, _off, size in t.members:
                var = self.type(var_id)
                if var.name not in symbols:
                    raise BTFParseError(f"DATASEC {t.name}: no ELF symbol for variable '{var.name}'")
                entries.append((var_id, symbols[var.name], size))
            # The kernel wants the entries in increasing offset order; LLVM writes them in
            # declaration order, which need not match the symbol layout.
            entries.sort(key=lambda e: e[1])
            for i, entry in enumerate(entries):
                struct.pack_into("<III", out, base + 12 + 12 * i, *entry)
        return bytes(out)
