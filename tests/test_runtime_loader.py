"""The ELF reader and the collection loader against small clang-built objects."""

from __future__ import annotations

import errno
import os
import struct
import uuid

import pytest

from polc import abi
from polc.runtime import bpf
from polc.runtime.elfobj import ObjectFile
from polc.runtime.errors import BPFError, MapIncompatible, ObjectError, VerifierError
from polc.runtime.loader import Collection
from runtime_helpers import PRELUDE, add_sections, compile_bpf, require_bpf

MAPS_C = PRELUDE + r"""
struct lpm_key { __u32 prefixlen; __u8 addr[4]; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 4); } arr SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u32); __uint(max_entries, 16); } hsh SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __type(key, struct lpm_key); __type(value, __u32);
         __uint(max_entries, 16); __uint(map_flags, BPF_F_NO_PREALLOC); } lpm SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, __u64); __type(value, __u64); __uint(max_entries, 64); } lru SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 1); } polc_ctrl SEC(".maps");

const volatile __u32 magic = 0x1234;
const volatile __u64 polc_generation = 7;
__u32 hits = 5;
__u32 runs;

SEC("tc") int prog_a(struct __sk_buff *skb)
{
	__u32 k0 = 0, k1 = 1;
	struct lpm_key lk = {32, {10, 1, 2, 3}};
	__u64 *a = bpf_map_lookup_elem(&arr, &k0);
	__u32 *h = bpf_map_lookup_elem(&hsh, &k1);
	__u32 *l = bpf_map_lookup_elem(&lpm, &lk);
	__u64 *g = bpf_map_lookup_elem(&polc_ctrl, &k0);
	__u64 len = skb->len, one = 1;
	skb->cb[0] = a ? *a : 0xffff;
	skb->cb[1] = h ? *h : 0xffff;
	skb->cb[2] = l ? *l : 0xffff;
	skb->cb[3] = magic;
	skb->cb[4] = hits;
	runs++;
	bpf_map_update_elem(&lru, &len, &one, 0);
	return g && *g == polc_generation ? 0 : 2;
}

SEC("tc") int prog_with_a_long_name(struct __sk_buff *skb)
{
	return magic == 0x1234 ? 2 : 0;
}
char _license[] SEC("license") = "GPL";
"""

BAD_C = PRELUDE + r"""
SEC("tc") int bad(struct __sk_buff *skb)
{
	/* a packet read without a bounds check: the verifier must refuse it */
	return *(__u32 *)(long)skb->data;
}
char _license[] SEC("license") = "GPL";
"""

CALL_C = PRELUDE + r"""
__attribute__((noinline)) int helper(int x) { return x * 3; }
SEC("tc") int caller(struct __sk_buff *skb) { return helper(skb->len); }
char _license[] SEC("license") = "GPL";
"""

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


@pytest.fixture(scope="module")
def maps_obj(tmp_path_factory):
    return compile_bpf(tmp_path_factory.mktemp("maps"), MAPS_C, "maps")


def test_object_specs(maps_obj):
    obj = ObjectFile.from_path(maps_obj)
    assert obj.license == "GPL"
    assert set(obj.programs) == {"prog_a", "prog_with_a_long_name"}
    want = {
        "arr": (bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0),
        "hsh": (bpf.BPF_MAP_TYPE_HASH, 4, 4, 16, 0),
        "lpm": (bpf.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 16, bpf.BPF_F_NO_PREALLOC),
        "lru": (bpf.BPF_MAP_TYPE_LRU_HASH, 8, 8, 64, 0),
        ".rodata": (bpf.BPF_MAP_TYPE_ARRAY, 4, 16, 1, bpf.BPF_F_RDONLY_PROG),
        ".data": (bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0),
        ".bss": (bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0),
    }
    for name, fields in want.items():
        m = obj.maps[name]
        assert (m.type, m.key_size, m.value_size, m.max_entries, m.flags) == fields, name
    assert obj.maps[".rodata"].kernel_name == "maps.rodata"
    assert obj.maps[".rodata"].freeze and not obj.maps[".data"].freeze
    assert obj.generation == 7
    # Two functions share section "tc": each is its own program with its own relocations.
    a, b = obj.programs["prog_a"], obj.programs["prog_with_a_long_name"]
    assert a.section == b.section == "tc" and b.section_offset == len(a.insns)
    assert {r.map for r in a.relocations} == {"arr", "hsh", "lpm", "lru", "polc_ctrl", ".rodata", ".data", ".bss"}
    gen = [r for r in a.relocations if r.symbol == "polc_generation"]
    assert gen and gen[0].offset == obj.symbols["polc_generation"][1] == 8
    assert [r.map for r in b.relocations] == [".rodata"]


def test_load_and_test_run(maps_obj):
    require_bpf()
    obj = ObjectFile.from_path(maps_obj)
    with Collection.load(obj) as coll:
        coll.map("arr").update(U32.pack(0), U64.pack(42))
        coll.map("hsh").update_batch([(U32.pack(1), U32.pack(43)), (U32.pack(2), U32.pack(0))])
        coll.map("lpm").update_batch([(bytes([24, 0, 0, 0, 10, 1, 2, 0]), U32.pack(44))])  # batch falls back
        assert coll.map("polc_ctrl").lookup(U32.pack(0)) == U64.pack(7)  # generation written
        res = coll.program("prog_a").test_run(bytes(64), bytes(bpf.SIZEOF_SK_BUFF))
        assert res.retval == 0
        assert struct.unpack_from("<5I", res.ctx_out, 48) == (42, 43, 44, 0x1234, 5)
        assert res.data_out == bytes(64)
        assert coll.map(".bss").lookup(U32.pack(0)) == U32.pack(1)
        assert list(coll.map("lru").items()) == [(U64.pack(64), U64.pack(1))]
        assert coll.program("prog_with_a_long_name").test_run(bytes(14)).retval == 2
        info = coll.program("prog_with_a_long_name").info()
        assert info.name == "prog_with_a_lon" and info.type == bpf.BPF_PROG_TYPE_SCHED_CLS
        assert info.btf_id > 0  # BTF (with func/line info) was accepted
        rodata = coll.map(".rodata").info()
        assert rodata.name == "maps.rodata" and rodata.map_flags & bpf.BPF_F_RDONLY_PROG
        with pytest.raises(BPFError) as err:  # frozen: user space may not write .rodata
            coll.map(".rodata").update(U32.pack(0), bytes(16))
        assert err.value.errno == errno.EPERM and "map '.rodata': update" in str(err.value)
    assert coll.map("arr").closed


def test_map_helpers(maps_obj):
    require_bpf()
    with Collection.load(ObjectFile.from_path(maps_obj)) as coll:
        hsh, arr = coll.map("hsh"), coll.map("arr")
        hsh.update_batch([(U32.pack(i), U32.pack(i * i)) for i in range(10)])
        assert sorted(U32.unpack(k)[0] for k in hsh.keys()) == list(range(10))
        assert hsh.delete(U32.pack(3)) and not hsh.delete(U32.pack(3))
        assert hsh.lookup(U32.pack(3)) is None and hsh.lookup(U32.pack(4)) == U32.pack(16)
        hsh.clear()
        assert list(hsh.keys()) == []
        arr.update(U32.pack(2), U64.pack(9))
        arr.clear()
        assert all(v == bytes(8) for _, v in arr.items())
        with pytest.raises(ValueError, match="key of 8 bytes, want 4"):
            hsh.lookup(bytes(8))
        with pytest.raises(BPFError, match="BPF_NOEXIST"):
            hsh.update(U32.pack(1), U32.pack(1))
            hsh.update(U32.pack(1), U32.pack(1), bpf.BPF_NOEXIST)


def test_fill_false_is_fail_closed(maps_obj):
    require_bpf()
    with Collection.load(ObjectFile.from_path(maps_obj), fill=False) as coll:
        assert coll.map("polc_ctrl").lookup(U32.pack(0)) == U64.pack(0)
        assert coll.program("prog_a").test_run(bytes(64)).retval == 2
        coll.write_generation()
        assert coll.program("prog_a").test_run(bytes(64)).retval == 0


def test_reuse_maps(maps_obj):
    require_bpf()
    obj = ObjectFile.from_path(maps_obj)
    with Collection.load(obj) as first:
        first.map("lru").update(U64.pack(99), U64.pack(1))
        with Collection.load(obj, reuse_maps={"lru": first.map("lru").fd}) as second:
            assert second.map("lru").info().id == first.map("lru").info().id
            assert second.map("lru").lookup(U64.pack(99)) == U64.pack(1)
        assert not first.map("lru").closed  # the caller's fd is not closed with the second
        assert first.map("lru").lookup(U64.pack(99)) == U64.pack(1)
        with pytest.raises(MapIncompatible, match=r"map 'hsh'.*key_size 8 != 4"):
            Collection.load(obj, reuse_maps={"hsh": first.map("lru").fd})


def test_images_and_meta(tmp_path):
    require_bpf()
    path = compile_bpf(tmp_path, MAPS_C, "img")
    img = abi.pack_image(4, 4, [(U32.pack(1), U32.pack(77))])
    add_sections(path, {".polc.img.hsh": img, ".polc.meta": b'{"generation": 7, "rules": []}'})
    obj = ObjectFile.from_path(path)
    assert obj.meta == {"generation": 7, "rules": []}
    assert obj.images["hsh"].records == [(U32.pack(1), U32.pack(77))]
    with Collection.load(obj) as coll:
        assert coll.map("hsh").lookup(U32.pack(1)) == U32.pack(77)
        res = coll.program("prog_a").test_run(bytes(64), bytes(bpf.SIZEOF_SK_BUFF))
        assert U32.unpack_from(res.ctx_out, 52)[0] == 77
    with Collection.load(obj, fill=False) as coll:
        assert coll.map("hsh").lookup(U32.pack(1)) is None


def test_image_for_unknown_map_or_bad_size(tmp_path):
    path = compile_bpf(tmp_path, MAPS_C, "img")
    add_sections(path, {".polc.img.nosuch": abi.pack_image(4, 4, [])})
    with pytest.raises(ObjectError, match="image section for map 'nosuch'"):
        ObjectFile.from_path(path)
    path = compile_bpf(tmp_path, MAPS_C, "img2")
    add_sections(path, {".polc.img.hsh": abi.pack_image(8, 4, [])})
    with pytest.raises(ObjectError, match="key/value size 8/4, the map 4/4"):
        ObjectFile.from_path(path)


def test_meta_generation_mismatch(tmp_path):
    require_bpf()
    path = compile_bpf(tmp_path, MAPS_C, "gen")
    add_sections(path, {".polc.meta": b'{"generation": 8}'})
    with pytest.raises(ObjectError, match=r"generation 7 in .rodata but 8 in .polc.meta"):
        Collection.load(ObjectFile.from_path(path))


def test_verifier_error_keeps_log(tmp_path):
    require_bpf()
    obj = ObjectFile.from_path(compile_bpf(tmp_path, BAD_C, "bad"))
    with pytest.raises(VerifierError) as err:
        Collection.load(obj)
    e = err.value
    assert e.errno == errno.EACCES and e.op == "program 'bad': load"
    assert "invalid access to packet" in e.log or "R1 invalid mem access" in e.log
    text = str(e)
    assert text.startswith("program 'bad': load: Permission denied")
    assert "verifier log" in text and len(text.splitlines()) <= 2 + 20 + 1


def test_verifier_log_grows(tmp_path):
    """A tiny first log buffer is grown on ENOSPC until the whole log fits."""
    require_bpf()
    spec = ObjectFile.from_path(compile_bpf(tmp_path, BAD_C, "bad")).programs["bad"]
    with pytest.raises(VerifierError) as err:
        bpf.prog_load(bpf.BPF_PROG_TYPE_SCHED_CLS, spec.insns, "GPL", name="bad", log_size=16)
    log = err.value.log
    assert not err.value.truncated and len(log) > 16
    assert log.startswith("0: R1=ctx() R10=fp0") or log.startswith("0:"), log[:80]
    assert "processed" in log.splitlines()[-1]


def test_bpf_to_bpf_call_rejected(tmp_path):
    path = compile_bpf(tmp_path, CALL_C, "call")
    with pytest.raises(ObjectError, match=r"call\.o: .*(global functions in \.text|bpf-to-bpf call)"):
        ObjectFile.from_path(path)


@pytest.mark.parametrize("mangle, message", [
    (lambda d: b"not an elf at all", "corrupt ELF object"),
    (lambda d: d[:200], "corrupt ELF object"),
    (lambda d: d[:18] + b"\x3e\x00" + d[20:], "not a BPF object"),
])
def test_corrupt_objects(maps_obj, mangle, message):
    data = mangle(maps_obj.read_bytes())
    with pytest.raises(ObjectError, match=message) as err:
        ObjectFile.from_bytes(data, name="broken")
    assert str(err.value).startswith("<broken>: ")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ObjectError, match="nosuch.o: cannot read"):
        ObjectFile.from_path(tmp_path / "nosuch.o")


def test_pin_and_get(maps_obj):
    require_bpf()
    base = "/sys/fs/bpf"
    if not os.path.ismount(base):
        pytest.skip("bpffs is not mounted at /sys/fs/bpf")
    pin_dir = os.path.join(base, f"polc-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(pin_dir)
    try:
        with Collection.load(ObjectFile.from_path(maps_obj)) as coll:
            coll.pin(pin_dir)
            assert sorted(os.listdir(pin_dir)) == sorted(
                ["arr", "hsh", "lpm", "lru", "polc_ctrl", "rodata", "data", "bss", "prog_a", "prog_with_a_long_name"])
            coll.map("hsh").update(U32.pack(5), U32.pack(6))
            fd = bpf.obj_get(os.path.join(pin_dir, "hsh"))
            try:
                assert bpf.map_lookup(fd, U32.pack(5), 4) == U32.pack(6)
            finally:
                os.close(fd)
            with pytest.raises(BPFError, match="already pinned"):
                coll.map("hsh").pin(os.path.join(pin_dir, "hsh"))
        with pytest.raises(BPFError, match="is bpffs mounted"):
            bpf.obj_get(os.path.join(pin_dir, "nosuch"))
    finally:
        for name in os.listdir(pin_dir):
            os.unlink(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)


SECTIONS_C = PRELUDE + r"""
SEC("tcx/ingress") int in(struct __sk_buff *skb) { return 0; }
SEC("tcx/egress") int out(struct __sk_buff *skb) { return 2; }
char _license[] SEC("license") = "GPL";
"""


def test_section_names_give_program_types(tmp_path):
    obj = ObjectFile.from_path(compile_bpf(tmp_path, SECTIONS_C, "sections"))
    assert {p.name: (p.prog_type, p.expected_attach_type) for p in obj.programs.values()} == {
        "in": (bpf.BPF_PROG_TYPE_SCHED_CLS, bpf.BPF_TCX_INGRESS),
        "out": (bpf.BPF_PROG_TYPE_SCHED_CLS, bpf.BPF_TCX_EGRESS)}
    require_bpf()
    with Collection.load(obj) as coll:
        assert [coll.program(n).test_run(bytes(14)).retval for n in ("in", "out")] == [0, 2]
    bad = compile_bpf(tmp_path, SECTIONS_C.replace('"tcx/egress"', '"kprobe/foo"'), "badsec")
    with pytest.raises(ObjectError, match="program section 'kprobe/foo' has no known program type"):
        ObjectFile.from_path(bad)


def test_generation_zero_is_refused(tmp_path):
    """polc_ctrl starts at 0: an object of generation 0 would be open without its tables."""
    path = compile_bpf(tmp_path, MAPS_C.replace("polc_generation = 7", "polc_generation = 0"), "gen0")
    with pytest.raises(ObjectError, match="'polc_generation' is 0"):
        Collection.load(ObjectFile.from_path(path))
