"""BTF parsing, map definitions and the DATASEC fixup LLVM leaves to the loader."""

from __future__ import annotations

import struct

import pytest
from elftools.elf.elffile import ELFFile

from polc.runtime import bpf
from polc.runtime.btf import BTF, KIND_DATASEC, BTFParseError
from polc.runtime.elfobj import ObjectFile
from runtime_helpers import PRELUDE, compile_bpf, require_bpf

SOURCE = PRELUDE + r"""
typedef struct { __u32 prefixlen; __u8 addr[16]; } lpm_key_t;
typedef const lpm_key_t ckey_t;
struct value { __u64 a; __u16 b[3]; };
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __type(key, ckey_t); __type(value, struct value[2]);
         __uint(max_entries, 3); __uint(map_flags, BPF_F_NO_PREALLOC); } typed SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(key_size, 4); __uint(value_size, 12); __uint(max_entries, 2); } sized SEC(".maps");
const volatile __u64 second = 2;
const volatile __u32 first = 1;
const volatile __u8 third[5] = {3};
SEC("tc") int p(struct __sk_buff *skb)
{
	lpm_key_t k = {};
	void *v = bpf_map_lookup_elem(&typed, &k);
	__u32 z = 0;
	return (v ? 1 : 0) + first + second + third[0] + (bpf_map_lookup_elem(&sized, &z) ? 1 : 0);
}
char _license[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def obj_path(tmp_path_factory):
    return compile_bpf(tmp_path_factory.mktemp("btf"), SOURCE, "btfobj")


def test_map_definitions_resolve_types(obj_path):
    obj = ObjectFile.from_path(obj_path)
    typed, sized = obj.maps["typed"], obj.maps["sized"]
    assert (typed.type, typed.key_size, typed.value_size, typed.max_entries, typed.flags) == (
        bpf.BPF_MAP_TYPE_LPM_TRIE, 20, 2 * 16, 3, bpf.BPF_F_NO_PREALLOC)
    assert typed.btf_key_type_id and typed.btf_value_type_id
    assert (sized.key_size, sized.value_size, sized.btf_key_type_id) == (4, 12, 0)


def test_fixup_fills_datasec(obj_path):
    with open(obj_path, "rb") as f:
        elf = ELFFile(f)
        raw = elf.get_section_by_name(".BTF").data()
        rodata_size = elf.get_section_by_name(".rodata").data_size
    btf = BTF(raw)
    sec = btf.find(".rodata", KIND_DATASEC)
    assert sec.ref == 0 and all(off == 0 for _, off, _ in sec.members)  # what LLVM leaves us
    obj = ObjectFile.from_path(obj_path)
    fixed = BTF(obj.btf_blob).find(".rodata", KIND_DATASEC)
    assert fixed.ref == rodata_size
    placed = [(BTF(obj.btf_blob).type(t).name, off, size) for t, off, size in fixed.members]
    offsets = [off for _, off, _ in placed]
    assert offsets == sorted(offsets)  # the kernel insists on increasing offsets
    assert {name: (off, size) for name, off, size in placed} == {
        name: (obj.symbols[name][1], obj.symbols[name][2]) for name in ("first", "second", "third")}


def test_fixed_btf_loads_and_maps_carry_it(obj_path):
    require_bpf()
    from polc.runtime.loader import Collection
    with Collection.load(ObjectFile.from_path(obj_path)) as coll:
        info = coll.map("typed").info()
        assert info.btf_id and info.btf_key_type_id == coll.object.maps["typed"].btf_key_type_id
        assert coll.map(".rodata").info().btf_value_type_id == coll.object.btf.find(".rodata", KIND_DATASEC).id
        assert coll.program("p").test_run(bytes(64)).retval == 0 + 1 + 2 + 3 + 1  # typed empty, sized an array


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:10], "shorter than the BTF header"),
    (lambda d: b"\xeb\x9f" + d[2:], "bad magic"),
    (lambda d: d[:-40], "run past the end"),
    (lambda d: d[:31] + b"\x1f" + d[32:], "unknown BTF kind 31"),  # kind of type id 1
    (lambda d: d[:24] + struct.pack("<I", 1 << 20) + d[28:], "string offset 1048576 outside"),
])
def test_corrupt_btf(obj_path, mangle, message):
    with open(obj_path, "rb") as f:
        raw = ELFFile(f).get_section_by_name(".BTF").data()
    with pytest.raises(BTFParseError, match=message):
        BTF(mangle(raw))
