"""The contract between the compiler, the object file and the runtime.

Mirrors ``bpf_runtime/polc_abi.h`` (checked by ``tests/test_abi.py``) and describes the
polc-specific parts of the ELF object:

* programs ``polc_from_ep`` (traffic leaving an endpoint: its egress policy; attach where
  packets arrive from the pod, i.e. ingress of the host-side veth) and ``polc_to_ep``
  (traffic entering an endpoint: its ingress policy; egress of the host-side veth);
* BTF-defined maps in ``.maps`` (``MAP_*`` names below), ``.rodata`` with
  ``polc_generation``;
* one section ``.polc.img.<map>`` per map image (``IMAGE_*`` layout below) and a JSON
  metadata section ``.polc.meta``.

A loader creates the maps, writes every image, loads the programs and writes the
generation into ``polc_ctrl[0]`` last: until then every packet is dropped.  The generation
is never 0 (the value of an unwritten ``polc_ctrl``).

``.polc.meta`` (JSON) holds: ``generation``, ``digest`` (sha256 over the metadata and the
images), ``sources`` (``{file, role, sha256}``), ``rules`` (``{id, action, direction, file,
line, col, policy, where}``; ids are what the datapath reports in ``cb[1]``),
``identities``, ``endpoints``, ``classes``, and ``nodes``: ``{node: {"host": [[key_hex,
value_hex], ...], "remote": [...]}}``, two views of the same address records (the node's
own addresses; keys are ``polc_lpm_key``s, stored where :func:`address_record` says).  The
images hold the "remote" view; a loader on node N writes N's "host" records over it.

The datapath writes the stage (``STAGES``; 0 = not written) to ``skb->cb[0]`` and the
deciding rule id (0 = none) to ``cb[1]``; both are meaningful when it returned TC_ACT_OK (0)
or TC_ACT_SHOT (2).
"""

from __future__ import annotations

import ipaddress
import struct

PROG_FROM_EP = "polc_from_ep"
PROG_TO_EP = "polc_to_ep"
PROGRAMS = (PROG_FROM_EP, PROG_TO_EP)

MAP_IPCACHE = "polc_ipcache"
MAP_HOSTS = "polc_hosts"
MAP_PAIRS = "polc_pairs"
MAP_VERDICTS = "polc_verdicts"
MAP_RANGES = "polc_ranges"
MAP_L7 = "polc_l7"
MAP_DFA = "polc_dfa"
MAP_CTRL = "polc_ctrl"
MAP_CT = "polc_ct"
# Maps whose contents survive a policy update (reused by the runtime, never imaged).
SHARED_MAPS = (MAP_CT,)

IMAGE_SECTION_PREFIX = ".polc.img."
META_SECTION = ".polc.meta"
GENERATION_SYMBOL = "polc_generation"
IMAGE_MAGIC = b"PIMG"
IMAGE_VERSION = 1
IMAGE_HEADER = struct.Struct("<4sIIII")  # magic, version, key_size, value_size, count

DIR_INGRESS, DIR_EGRESS = 0, 1
PEER_CLASS_ANY = 0  # polc_pairs: the subject's default profile, for peer classes without their own
PEER_GROUP = 0x80000000  # polc_pairs: peer_class = PEER_GROUP | group, for peers only broad selectors match
NPROTO = 6
ACTION_ALLOW, ACTION_DENY, ACTION_L7 = 1, 2, 3
L7_HTTP, L7_DNS = 1, 2
L7_MAX_BYTES = 1024
DFA_CLASSES = 128
DFA_REJECT, DFA_ACCEPT, DFA_DEAD = 0, 1, 2

STAGES = {
    1: "fail-closed",
    2: "not-policed",
    3: "ct-established",
    4: "ct-reply",
    5: "deny-rule",
    6: "allow-rule",
    7: "not-isolated",
    8: "default-deny",
    9: "malformed",
    10: "not-ip",
    11: "neighbor-discovery",
    12: "l7-allow",
    13: "l7-deny",
}

LPM_KEY = struct.Struct("<I16s")
HOST_KEY = struct.Struct("<16s")
EP_INFO = struct.Struct("<IIIIIII")  # identity, peer_class, subject[2], isolated_by[2], peer_group
PAIR_KEY = struct.Struct("<III")
PAIR_VALUE = struct.Struct("<I")
VERDICT_KEY = struct.Struct("<IB3x")  # profile, proto
VERDICT_VALUE = struct.Struct("<II")  # polc_range_list: first, count
RANGE_KEY = struct.Struct("<I")
RANGE_VALUE = struct.Struct("<HHIII")  # polc_range: lo, hi, rule, action, l7
RANGE_SEARCH_STEPS = 17
L7_KEY = struct.Struct("<I")
L7_VALUE = struct.Struct("<IIII256s")
DFA_KEY = struct.Struct("<I")
DFA_VALUE = struct.Struct(f"<{DFA_CLASSES}II")
CTRL_KEY = struct.Struct("<I")
CTRL_VALUE = struct.Struct("<Q")
CT_KEY = struct.Struct("<16s16sHHBBxx")
CT_VALUE = struct.Struct("<QIIII")


def lpm_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    """The ``polc_lpm_key`` of a prefix; IPv4 is stored IPv4-mapped."""
    if network.version == 4:
        addr = ipaddress.IPv6Address("::ffff:" + str(network.network_address)).packed
        return LPM_KEY.pack(96 + network.prefixlen, addr)
    return LPM_KEY.pack(network.prefixlen, network.network_address.packed)


def address_record(key: bytes) -> tuple[str, bytes]:
    """Where a ``polc_lpm_key`` record lives: whole addresses in ``polc_hosts`` (keyed by the
    address alone), shorter prefixes in the ``polc_ipcache`` trie."""
    prefixlen, addr = LPM_KEY.unpack(key)
    return (MAP_HOSTS, HOST_KEY.pack(addr)) if prefixlen == 128 else (MAP_IPCACHE, key)


def address_records_by_map(records) -> dict[str, list[tuple[bytes, bytes]]]:
    """(``polc_lpm_key``, value) records sorted into the map each belongs in, keyed for it."""
    out: dict[str, list[tuple[bytes, bytes]]] = {MAP_IPCACHE: [], MAP_HOSTS: []}
    for key, value in records:
        name, map_key = address_record(key)
        out[name].append((map_key, value))
    return out


def addr16(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form of an address as the datapath sees it (IPv4-mapped for IPv4)."""
    if address.version == 4:
        return ipaddress.IPv6Address("::ffff:" + str(address)).packed
    return address.packed


def pack_image(key_size: int, value_size: int, records: list[tuple[bytes, bytes]]) -> bytes:
    """Serialise a map image; records are written in the order given (callers sort)."""
    out = [IMAGE_HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, key_size, value_size, len(records))]
    for key, value in records:
        if len(key) != key_size or len(value) != value_size:
            raise ValueError(f"image record of size {len(key)}/{len(value)}, want {key_size}/{value_size}")
        out.append(key)
        out.append(value)
    return b"".join(out)


def unpack_image(blob: bytes) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    """Inverse of :func:`pack_image`; raises ValueError on a corrupt image."""
    if len(blob) < IMAGE_HEADER.size:
        raise ValueError("map image shorter than its header")
    magic, version, ksz, vsz, count = IMAGE_HEADER.unpack_from(blob)
    if magic != IMAGE_MAGIC or version != IMAGE_VERSION:
        raise ValueError(f"not a polc map image (magic {magic!r}, version {version})")
    if len(blob) != IMAGE_HEADER.size + count * (ksz + vsz):
        raise ValueError(f"map image size {len(blob)} does not match {count} records of {ksz}+{vsz} bytes")
    records = []
    off = IMAGE_HEADER.size
    for _ in range(count):
        records.append((blob[off:off + ksz], blob[off + ksz:off + ksz + vsz]))
        off += ksz + vsz
    return ksz, vsz, records
