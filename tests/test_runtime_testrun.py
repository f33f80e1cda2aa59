"""The kernel engine of ``polc test`` against the real datapath (bpf_runtime/datapath.c).

The object is built with clang-19 from datapath.c and given hand-written tables as polc
map images, so these tests pin down the runtime half of the contract independently of
the compiler.
"""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
from kernel_helpers import ones_complement_sum

from polc import abi
from polc.runtime.elfobj import ObjectFile
from polc.runtime.loader import Collection
from polc.runtime.testrun import Flow, KernelEngine, build_packet, crc32c
from runtime_helpers import REPO, add_sections, compile_bpf, require_bpf

DATAPATH = REPO / "bpf_runtime" / "datapath.c"
GENERATION = 9
TCP, UDP, SCTP, ICMP, ICMPV6 = range(5)
INGRESS, EGRESS = abi.DIR_INGRESS, abi.DIR_EGRESS


def ep(identity, peer, subject=(0, 0), isolated=(0, 0), group=0) -> bytes:
    return abi.EP_INFO.pack(identity, peer, *subject, *isolated, group)


def host_key(ip: str) -> bytes:
    return abi.lpm_key(ipaddress.ip_network(ip))


IPCACHE = [
    (host_key("10.0.0.1/32"), ep(100, 1, (1, 1))),
    (host_key("fd00::1/128"), ep(100, 1, (1, 1))),
    (host_key("10.0.0.2/32"), ep(200, 2, (2, 2), (7, 0))),  # isolated for ingress by rule 7
    (host_key("fd00::2/128"), ep(200, 2, (2, 2), (7, 0))),
    (host_key("10.0.0.3/32"), ep(300, 4, (0, 1), group=1)),  # only a broad selector (group 1) matches it
    (host_key("10.0.0.4/32"), ep(400, 5, (0, 1), group=1)),  # ... and a rule of its own
    (host_key("10.9.0.0/16"), ep(16777217, 10, (0, 1), group=1)),  # a prefix in group 1
    (host_key("::/0"), ep(2, 9)),  # world
]
NODES = {
    name: {"host": [[host_key(ip).hex(), ep(1, 3).hex()]], "remote": [[host_key(ip).hex(), ep(6, 4).hex()]]}
    for name, ip in (("n1", "192.168.0.1/32"), ("n2", "192.168.0.2/32"))
}
PAIRS = [
    (abi.PAIR_KEY.pack(INGRESS, 2, 1), abi.PAIR_VALUE.pack(5)),  # into B from A: profile 5
    (abi.PAIR_KEY.pack(INGRESS, 2, 3), abi.PAIR_VALUE.pack(6)),  # into B from the local host: profile 6
    (abi.PAIR_KEY.pack(INGRESS, 2, abi.PEER_GROUP | 1), abi.PAIR_VALUE.pack(5)),  # from group 1: profile 5
    (abi.PAIR_KEY.pack(INGRESS, 2, 5), abi.PAIR_VALUE.pack(6)),  # peer class 5 over its group: profile 6
]
# Profile 5: rule 7 allows TCP 80, UDP 53, SCTP 9, ICMP echo request, ICMPv6 echo request;
# rule 9 denies TCP 22.  Profile 6: rule 8 allows every TCP port but 80.  Intervals per
# (profile, protocol): (first port, last port, rule, action, l7).
ALLOW, DENY = abi.ACTION_ALLOW, abi.ACTION_DENY
INTERVALS = {
    (5, TCP): [(22, 22, 9, DENY, 0), (80, 80, 7, ALLOW, 0)],
    (5, UDP): [(53, 53, 7, ALLOW, 0)],
    (5, SCTP): [(9, 9, 7, ALLOW, 0)],
    (5, ICMP): [(8, 8, 7, ALLOW, 0)],
    (5, ICMPV6): [(128, 128, 7, ALLOW, 0)],
    (6, TCP): [(0, 79, 8, ALLOW, 0), (81, 65535, 8, ALLOW, 0)],
}


def interval_images() -> tuple[bytes, bytes]:
    lists, ranges = [], []
    for key, rows in INTERVALS.items():
        lists.append((abi.VERDICT_KEY.pack(*key), abi.VERDICT_VALUE.pack(len(ranges), len(rows))))
        ranges += [(abi.RANGE_KEY.pack(len(ranges) + i), abi.RANGE_VALUE.pack(*row)) for i, row in enumerate(rows)]
    return (abi.pack_image(abi.VERDICT_KEY.size, abi.VERDICT_VALUE.size, sorted(lists)),
            abi.pack_image(abi.RANGE_KEY.size, abi.RANGE_VALUE.size, ranges))
RULES = [{"id": 7, "name": "allow-from-a"}, {"id": 8, "name": "allow-host"}, {"id": 9, "name": "deny-ssh"}]


@pytest.fixture(scope="module")
def datapath_obj(tmp_path_factory):
    caps = [f"-DPOLC_CAP_{n}=64" for n in ("IPCACHE", "HOSTS", "PAIRS", "VERDICTS", "RANGES", "L7", "DFA")]
    path = compile_bpf(tmp_path_factory.mktemp("dp"), DATAPATH.read_text(), "datapath",
                       extra=[*caps, f"-DPOLC_GENERATION={GENERATION}", f"-I{DATAPATH.parent}"])
    meta = {"generation": GENERATION, "rules": RULES, "nodes": NODES}
    # Whole addresses go to polc_hosts except 10.0.0.1, which stays in the trie: both work.
    maps: dict[str, list] = {abi.MAP_IPCACHE: [], abi.MAP_HOSTS: []}
    for key, value in IPCACHE:
        name, map_key = abi.address_record(key) if key != host_key("10.0.0.1/32") else (abi.MAP_IPCACHE, key)
        maps[name].append((map_key, value))
    verdicts, ranges = interval_images()
    add_sections(path, {
        ".polc.img.polc_ipcache": abi.pack_image(abi.LPM_KEY.size, abi.EP_INFO.size, sorted(maps[abi.MAP_IPCACHE])),
        ".polc.img.polc_hosts": abi.pack_image(abi.HOST_KEY.size, abi.EP_INFO.size, sorted(maps[abi.MAP_HOSTS])),
        ".polc.img.polc_pairs": abi.pack_image(abi.PAIR_KEY.size, abi.PAIR_VALUE.size, PAIRS),
        ".polc.img.polc_verdicts": verdicts,
        ".polc.img.polc_ranges": ranges,
        ".polc.meta": json.dumps(meta).encode(),
    })
    return ObjectFile.from_path(path)


@pytest.fixture(scope="module")
def engine(datapath_obj):
    require_bpf()
    with Collection.load(datapath_obj) as coll:
        yield KernelEngine(coll)


def stages(result):
    return [(r.program, r.stage, r.rule_id) for r in result.runs]


@pytest.mark.parametrize("flow, verdict, to_ep", [
    (Flow("10.0.0.1", "10.0.0.2", "TCP", 80), "allow", ("allow-rule", 7)),
    (Flow("fd00::1", "fd00::2", "TCP", 80), "allow", ("allow-rule", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "TCP", 81), "deny", ("default-deny", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "TCP", 22), "deny", ("deny-rule", 9)),
    (Flow("10.0.0.1", "10.0.0.2", "UDP", 53), "allow", ("allow-rule", 7)),
    (Flow("fd00::1", "fd00::2", "UDP", 53), "allow", ("allow-rule", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "UDP", 54), "deny", ("default-deny", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "SCTP", 9), "allow", ("allow-rule", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "ICMP"), "allow", ("allow-rule", 7)),
    (Flow("10.0.0.1", "10.0.0.2", "ICMP", icmp_type=13), "deny", ("default-deny", 7)),
    (Flow("fd00::1", "fd00::2", "ICMPv6"), "allow", ("allow-rule", 7)),
    (Flow("10.0.0.3", "10.0.0.2", "TCP", 80), "allow", ("allow-rule", 7)),  # the group's profile
    (Flow("10.9.1.2", "10.0.0.2", "TCP", 22), "deny", ("deny-rule", 9)),
    (Flow("10.0.0.4", "10.0.0.2", "TCP", 80), "deny", ("default-deny", 7)),  # its class's own profile wins
    (Flow("10.0.0.4", "10.0.0.2", "TCP", 443), "allow", ("allow-rule", 8)),
])
def test_flows(engine, flow, verdict, to_ep):
    result = engine.run(flow)
    assert result.verdict == verdict
    assert stages(result) == [(abi.PROG_FROM_EP, "not-isolated", 0), (abi.PROG_TO_EP, *to_ep)]
    assert result.runs[1].rule == next(r for r in RULES if r["id"] == to_ep[1])


def test_flows_are_independent(engine):
    """Connection tracking is flushed: the same flow twice is judged by the rules twice."""
    flow = Flow("10.0.0.1", "10.0.0.2", "TCP", 80)
    assert engine.run(flow).runs[1].stage == "allow-rule"
    assert engine.run(flow).runs[1].stage == "allow-rule"
    engine._ct.clear = lambda: None  # without the flush the datapath remembers the connection
    try:
        assert engine.run(flow).runs[1].stage == "ct-established"
    finally:
        del engine._ct.clear


def test_host_identity_follows_the_local_node(engine):
    flow = dict(src_ip="192.168.0.1", dst_ip="10.0.0.2", proto="TCP", port=443)
    on_n1 = engine.run(Flow(**flow, src_local_node="n1", dst_local_node="n1"))
    assert on_n1.verdict == "allow"
    assert stages(on_n1) == [(abi.PROG_FROM_EP, "not-policed", 0), (abi.PROG_TO_EP, "allow-rule", 8)]
    on_n2 = engine.run(Flow(**flow, src_local_node="n1", dst_local_node="n2"))
    assert stages(on_n2)[1] == (abi.PROG_TO_EP, "default-deny", 7)
    assert engine.run(Flow(**flow, dst_local_node="n1")).verdict == "allow"  # switching back works
    with pytest.raises(ValueError, match="unknown node 'n3'"):
        engine.run(Flow(**flow, dst_local_node="n3"))


def test_external_source(engine):
    result = engine.run(Flow("8.8.8.8", "10.0.0.2", "TCP", 80))
    assert stages(result) == [(abi.PROG_FROM_EP, "not-policed", 0), (abi.PROG_TO_EP, "default-deny", 7)]


def test_unfilled_tables_fail_closed(datapath_obj):
    require_bpf()
    with Collection.load(datapath_obj, fill=False) as coll:
        result = KernelEngine(coll).run(Flow("10.0.0.1", "10.0.0.2", "TCP", 80))
    assert result.verdict == "deny"
    assert stages(result) == [(abi.PROG_FROM_EP, "fail-closed", 0)]


# --- packets (no kernel needed) -----------------------------------------------------------


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("flow", [
    Flow("10.0.0.1", "10.0.0.2", "TCP", 80), Flow("10.0.0.1", "10.0.0.2", "UDP", 53),
    Flow("fd00::1", "fd00::2", "TCP", 443), Flow("fd00::1", "fd00::2", "UDP", 53),
    Flow("fd00::1", "fd00::2", "ICMPv6"), Flow("10.0.0.1", "10.0.0.2", "ICMP"),
])
def test_checksums_verify(flow):
    pkt = build_packet(flow)
    src, dst = ipaddress.ip_address(flow.src_ip), ipaddress.ip_address(flow.dst_ip)
    if src.version == 4:
        assert pkt[12:14] == b"\x08\x00" and ones_complement_sum(pkt[14:34]) == 0xFFFF
        l4, proto = pkt[34:], pkt[23]
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, proto, len(l4))
    else:
        assert pkt[12:14] == b"\x86\xdd" and struct.unpack("!H", pkt[18:20])[0] == len(pkt) - 54
        l4, proto = pkt[54:], pkt[20]
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(l4), proto)
    if flow.proto == "ICMP":
        pseudo = b""
    assert ones_complement_sum(pseudo + l4) == 0xFFFF
    if flow.proto in ("TCP", "UDP"):
        assert struct.unpack("!HH", l4[:4]) == (flow.src_port, flow.port)
    if flow.proto == "TCP":
        assert l4[13] == 0x02  # SYN


def test_sctp_init():
    pkt = build_packet(Flow("10.0.0.1", "10.0.0.2", "SCTP", 9))
    sctp = pkt[34:]
    assert struct.unpack("!HH", sctp[:4]) == (40000, 9) and sctp[12] == 1  # INIT chunk
    assert struct.unpack("<I", sctp[8:12])[0] == crc32c(sctp[:8] + bytes(4) + sctp[12:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(src_ip="10.0.0.1", dst_ip="fd00::2", proto="TCP", port=80), "mixes IPv4"),
    (dict(src_ip="10.0.0.1", dst_ip="10.0.0.2", proto="GRE"), "not one of"),
    (dict(src_ip="10.0.0.1", dst_ip="10.0.0.2", proto="TCP"), "needs a destination port"),
    (dict(src_ip="fd00::1", dst_ip="fd00::2", proto="ICMP"), "ICMP needs IPv4"),
    (dict(src_ip="10.0.0.300", dst_ip="10.0.0.2", proto="UDP", port=1), "src_ip '10.0.0.300'"),
])
def test_flow_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Flow(**kwargs)


def test_llvmlite_object_loads(tmp_path):
    """The compiler's path: datapath.ll through llvmlite's BPF backend, no clang involved."""
    require_bpf()
    from polc.compiler import ir
    from polc.compiler.backend import emit_object, object_spec
    from polc.compiler.tables import build_tables

    spec = object_spec(build_tables(ir.PolicySet(), ir.Inventory()), [], "test")
    obj = ObjectFile.from_bytes(emit_object(spec), name="datapath")
    with Collection.load(obj) as coll:
        assert coll.program(abi.PROG_TO_EP).info().btf_id > 0
        result = KernelEngine(coll).run(Flow("198.18.9.1", "198.18.9.2", "UDP", 53))
    assert stages(result) == [(abi.PROG_FROM_EP, "not-policed", 0), (abi.PROG_TO_EP, "not-policed", 0)]
