"""compiler/elfwrite.py: sections appended to the object LLVM wrote, read back by others."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "starwars")


@pytest.fixture(scope="module")
def spec():
    from polc.compiler.pipeline import compile_paths

    return compile_paths([os.path.join(EXAMPLE, "policy.yaml")], [os.path.join(EXAMPLE, "cluster.yaml")]).spec


@pytest.fixture(scope="module")
def code(spec):
    """The datapath object exactly as LLVM emits it, without polc's sections."""
    from polc.compiler.backend import datapath_object

    return datapath_object(spec)


def _elf(data: bytes):
    from elftools.elf.elffile import ELFFile

    return ELFFile(io.BytesIO(data))


def _sections(data: bytes) -> list[dict]:
    return [{"name": s.name, "header": dict(s.header), "data": s.data()} for s in _elf(data).iter_sections()]


def _symbols(data: bytes) -> list[tuple]:
    symtab = _elf(data).get_section_by_name(".symtab")
    return [(s.name, s["st_value"], s["st_size"], s["st_info"]["type"], s["st_info"]["bind"], s["st_shndx"])
            for s in symtab.iter_symbols()]


def _relocations(data: bytes) -> dict[str, list[tuple]]:
    from elftools.elf.relocation import RelocationSection

    return {s.name: [(r["r_offset"], r["r_info_sym"], r["r_info_type"]) for r in s.iter_relocations()]
            for s in _elf(data).iter_sections() if isinstance(s, RelocationSection)}


NEW = [
    (".polc.img.a", bytes(range(256)) * 3 + b"\x01", 8),
    (".polc.empty", b"", 8),
    (".odd", b"\x7f\x00\xff", 1),
    (".polc.meta", b'{"generation": 3}', 16),
    (".four", b"abcd" * 5, 4),
]


def _append(code: bytes, new=NEW, flags=None) -> bytes:
    from polc.compiler import elfwrite

    flags = elfwrite.SHF_ALLOC if flags is None else flags
    return elfwrite.append_sections(code, [elfwrite.Section(n, d, flags=flags, align=a) for n, d, a in new])


def test_sections_read_back_byte_exact(code):
    out = _append(code)
    elf = _elf(out)
    for name, data, align in NEW:
        sec = elf.get_section_by_name(name)
        assert sec is not None, name
        assert sec.data() == data
        assert (sec["sh_type"], sec["sh_flags"], sec["sh_addralign"]) == ("SHT_PROGBITS", 0x2, align)
        assert sec["sh_offset"] % align == 0
    assert elf.num_sections() == _elf(code).num_sections() + len(NEW)
    assert elf["e_shoff"] % 8 == 0


def test_old_sections_symbols_relocations_unchanged(code):
    before, after = _sections(code), _sections(_append(code))
    strndx = _elf(code)["e_shstrndx"]
    assert _elf(_append(code))["e_shstrndx"] == strndx
    for i, (old, new) in enumerate(zip(before, after)):
        assert new["name"] == old["name"]
        skip = ("sh_offset", "sh_size") if i == strndx else ()
        assert {k: v for k, v in new["header"].items() if k not in skip} == \
               {k: v for k, v in old["header"].items() if k not in skip}
        if i == strndx:  # grown at the end only: every name offset stays valid
            assert new["data"].startswith(old["data"])
        else:
            assert new["data"] == old["data"], old["name"]
    assert _symbols(_append(code)) == _symbols(code)
    assert _relocations(_append(code)) == _relocations(code)


def test_deterministic_and_input_kept(code):
    """Same input, same bytes; the input stays a prefix (bar e_shoff/e_shnum in the header).

    emit_object as a whole is checked across processes by test_backend's
    test_same_input_same_bytes: a second LLVM compile in one process can order BTF types
    differently (seen with llvmlite's LLVM, before this writer existed too).
    """
    out = _append(code)
    assert out == _append(code)
    assert out[64:len(code)] == code[64:]
    assert out[:0x28] == code[:0x28] and out[0x30:0x3C] == code[0x30:0x3C] and out[0x3E:64] == code[0x3E:64]


_new_sections = st.lists(
    st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=20)
              .map(lambda n: ".t." + n),
              st.binary(max_size=300), st.sampled_from([1, 2, 4, 8, 16, 64])),
    max_size=6, unique_by=lambda t: t[0])


@settings(max_examples=60)
@given(new=_new_sections)
def test_any_sections_read_back(code, new):
    out = _append(code, new)
    elf = _elf(out)
    assert elf.num_sections() == _elf(code).num_sections() + len(new)
    for name, data, align in new:
        sec = elf.get_section_by_name(name)
        assert sec.data() == data and sec["sh_addralign"] == align and sec["sh_offset"] % align == 0
    assert _symbols(out) == _symbols(code)


def test_append_twice(code):
    """The writer's output is valid input: names from both rounds resolve."""
    twice = _append(_append(code, NEW[:2]), NEW[2:])
    once = _append(code)
    assert [s["name"] for s in _sections(twice)] == [s["name"] for s in _sections(once)]
    for name, data, _ in NEW:
        assert _elf(twice).get_section_by_name(name).data() == data


def test_emit_object_carries_spec_sections(spec):
    from polc.compiler.backend import POLC_SECTION_FLAGS, emit_object
    from polc.runtime.elfobj import ObjectFile

    data = emit_object(spec)
    elf = _elf(data)
    for name, blob in spec.sections.items():
        sec = elf.get_section_by_name(name)
        assert sec.data() == blob and sec["sh_flags"] == POLC_SECTION_FLAGS
    obj = ObjectFile.from_bytes(data, name="w")
    from polc import abi

    for name, blob in spec.images.items():
        ksz, vsz, records = abi.unpack_image(blob)
        assert (obj.images[name].key_size, obj.images[name].value_size, obj.images[name].records) == \
               (ksz, vsz, records)
    assert obj.meta["generation"] == spec.generation == obj.generation


def _bad(code: bytes, message: str, new=(("x", b"", 8),), mutate=None):
    from polc.compiler import elfwrite

    data = bytearray(code)
    if mutate:
        mutate(data)
    with pytest.raises(elfwrite.ELFWriteError, match=message):
        _append(bytes(data), list(new))


def test_rejects_bad_input(code):
    _bad(b"not an elf at all" * 8, "not an ELF file")
    _bad(code, "ELF64 little-endian", mutate=lambda d: d.__setitem__(4, 1))
    _bad(code, "ELF64 little-endian", mutate=lambda d: d.__setitem__(5, 2))
    _bad(code, "no section header table", mutate=lambda d: struct.pack_into("<Q", d, 0x28, 0))
    _bad(code, "runs past the end", mutate=lambda d: struct.pack_into("<Q", d, 0x28, len(code)))
    _bad(code, "string table index", mutate=lambda d: struct.pack_into("<H", d, 0x3E, 0))
    _bad(code, "already exists", new=[(".maps", b"", 8)])
    _bad(code, "already exists", new=[(".n", b"", 8), (".n", b"1", 8)])
    _bad(code, "bad section name", new=[("a\0b", b"", 8)])
    _bad(code, "bad section name", new=[("", b"", 8)])
    _bad(code, "power of two", new=[(".n", b"", 3)])
    _bad(code, "power of two", new=[(".n", b"", 0)])


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_readelf_accepts_without_warnings(code, tmp_path):
    path = tmp_path / "w.o"
    path.write_bytes(_append(code))
    proc = subprocess.run(["readelf", "-a", "-W", str(path)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    for name, _, _ in NEW:
        assert name in proc.stdout


def _llvm_readelf():
    return shutil.which("llvm-readelf-19") or shutil.which("llvm-readelf")


@pytest.mark.skipif(_llvm_readelf() is None, reason="llvm-readelf not installed")
def test_llvm_readelf_accepts(code, tmp_path):
    path = tmp_path / "w.o"
    path.write_bytes(_append(code))
    proc = subprocess.run([_llvm_readelf(), "--sections", "--symbols", "--relocations", str(path)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed (tests/run installs it)")
def test_bpftool_loadall_with_large_section(code, tmp_path, needs_kernel):
    """libbpf loads the programs (BTF, relocations, maps intact) and skips our sections."""
    path = tmp_path / "w.o"
    path.write_bytes(_append(code, NEW + [(".polc.big", bytes(range(251)) * 20000, 8)]))
    pin = f"/sys/fs/bpf/polc-elfwrite-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(["bpftool", "prog", "loadall", str(path), pin], check=False,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(pin)) == ["polc_from_ep", "polc_to_ep"]
    finally:
        shutil.rmtree(pin, ignore_errors=True)
