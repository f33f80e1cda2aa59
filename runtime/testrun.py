"""The kernel engine of ``polc test``: run one flow through the loaded datapath.

A flow is crafted into a real packet (Ethernet, IPv4 or IPv6, then a TCP SYN, a UDP
datagram, an SCTP INIT or an ICMP message, all with valid checksums) and run with
BPF_PROG_TEST_RUN through ``polc_from_ep`` (the source endpoint's egress) and, if that
passes, ``polc_to_ep`` (the destination endpoint's ingress).  The datapath reports why it
decided in ``skb->cb[0]`` (stage) and ``cb[1]`` (rule id), read back from ``ctx_out``.

Identities depend on where a program runs: a node's own addresses are "host" there and
"remote-node" elsewhere.  Before each program run the engine writes the records of the
node local to that run (``meta["nodes"]``) into the address maps.  Connection tracking is
flushed before each flow so that flows are independent.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from polc import abi

from . import bpf
from .errors import TestRunError
from .loader import Collection

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7  # an L7 denial answered in place (TCP reset, DNS REFUSED)
TCP_SERVER_ISN = 7000
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}
PROTOCOLS = tuple(IPPROTO)
ICMP_ECHO_REQUEST = {"ICMP": 8, "ICMPv6": 128}
SRC_MAC, DST_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
DEFAULT_SRC_PORT = 40000
ICMP_ECHO_ID = 0x1234
_CB_OFFSET = 48  # offsetof(struct __sk_buff, cb)

_UNSET = object()


@dataclass(frozen=True)
class Flow:
    """One connection attempt to judge.

    ``port`` is the destination port (TCP/UDP/SCTP); ``icmp_type`` defaults to echo
    request.  ``src_local_node``/``dst_local_node`` name the node each endpoint runs on
    (``None``: not on any node of the cluster, e.g. an external address).
    """

    src_ip: str
    dst_ip: str
    proto: str = "TCP"
    port: int | None = None
    icmp_type: int | None = None
    src_local_node: str | None = None
    dst_local_node: str | None = None
    src_port: int = DEFAULT_SRC_PORT
    payload: bytes | None = None  # TCP: data sent after the handshake; UDP: the datagram's payload

    def __post_init__(self) -> None:
        src, dst = _parse_ip(self.src_ip, "src_ip"), _parse_ip(self.dst_ip, "dst_ip")
        if src.version != dst.version:
            raise ValueError(f"flow mixes IPv{src.version} source {self.src_ip} and IPv{dst.version} "
                             f"destination {self.dst_ip}")
        if self.proto not in IPPROTO:
            raise ValueError(f"protocol {self.proto!r} is not one of {', '.join(PROTOCOLS)}")
        if self.proto == "ICMP" and src.version != 4 or self.proto == "ICMPv6" and src.version != 6:
            raise ValueError(f"{self.proto} needs IPv{4 if self.proto == 'ICMP' else 6} addresses")
        if self.proto in ("TCP", "UDP", "SCTP") and not (self.port is not None and 0 <= self.port <= 65535):
            raise ValueError(f"{self.proto} flow needs a destination port in 0..65535, got {self.port!r}")
        if self.icmp_type is not None and not 0 <= self.icmp_type <= 255:
            raise ValueError(f"icmp_type must be in 0..255, got {self.icmp_type}")
        if not 0 <= self.src_port <= 65535:
            raise ValueError(f"src_port must be in 0..65535, got {self.src_port}")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src_ip).version


@dataclass(frozen=True)
class ProgramRun:
    """What one program decided: return value, stage name and the deciding rule."""

    program: str
    node: str | None
    retval: int
    stage: str
    stage_id: int
    rule_id: int
    rule: dict | None

    @property
    def passed(self) -> bool:
        return self.retval == TC_ACT_OK


@dataclass(frozen=True)
class FlowResult:
    """The verdict on a flow and the programs that ran (the second only if the first passed)."""

    flow: Flow
    verdict: str  # "allow" or "deny"
    runs: list[ProgramRun] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @property
    def deciding(self) -> ProgramRun:
        """The run that decided: the one that dropped, or the last."""
        return next((r for r in self.runs if not r.passed), self.runs[-1])


def _parse_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None


# --- packets ---------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the SCTP checksum."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _pseudo_header(src, dst, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def _l4(flow: Flow, src, dst, data: bool = False) -> bytes:
    """The transport header (and a little payload) with a valid checksum.

    ``data``: for TCP, the segment carrying ``flow.payload`` after the handshake (PSH|ACK)
    instead of the SYN.
    """
    proto = IPPROTO[flow.proto]
    if flow.proto == "TCP":
        if data:
            seg = struct.pack("!HHIIBBHHH", flow.src_port, flow.port, 2, TCP_SERVER_ISN + 1, 5 << 4, 0x18,
                              65535, 0, 0) + (flow.payload or b"")
        else:
            seg = struct.pack("!HHIIBBHHH", flow.src_port, flow.port, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
        return _with_csum(seg, 16, _csum(_pseudo_header(src, dst, proto, len(seg)) + seg))
    if flow.proto == "UDP":
        body = flow.payload if flow.payload is not None else b"polc"
        seg = struct.pack("!HHHH", flow.src_port, flow.port, 8 + len(body), 0) + body
        cs = _csum(_pseudo_header(src, dst, proto, len(seg)) + seg) or 0xFFFF
        return _with_csum(seg, 6, cs)
    if flow.proto == "SCTP":
        init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x0A0B0C0D, 65535, 1, 1, 1)  # INIT chunk
        seg = struct.pack("!HHII", flow.src_port, flow.port, 0, 0) + init
        return seg[:8] + struct.pack("<I", crc32c(seg)) + seg[12:]
    icmp_type = flow.icmp_type if flow.icmp_type is not None else ICMP_ECHO_REQUEST[flow.proto]
    msg = struct.pack("!BBHHH", icmp_type, 0, 0, ICMP_ECHO_ID, 1) + b"polc-ping"
    pseudo = _pseudo_header(src, dst, proto, len(msg)) if flow.proto == "ICMPv6" else b""
    return _with_csum(msg, 2, _csum(pseudo + msg))


def _with_csum(seg: bytes, offset: int, checksum: int) -> bytes:
    return seg[:offset] + struct.pack("!H", checksum) + seg[offset + 2:]


def build_packet(flow: Flow, data: bool = False) -> bytes:
    """The Ethernet frame for the first packet of ``flow`` (``data``: its TCP data segment)."""
    src, dst = ipaddress.ip_address(flow.src_ip), ipaddress.ip_address(flow.dst_ip)
    payload = _l4(flow, src, dst, data)
    proto = IPPROTO[flow.proto]
    if src.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                          src.packed, dst.packed)
        ip = _with_csum(hdr, 10, _csum(hdr))
        ethertype = ETH_P_IP
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, src.packed, dst.packed)
        ethertype = ETH_P_IPV6
    return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + ip + payload


# --- the engine ------------------------------------------------------------------------------


class KernelEngine:
    """Runs flows through a loaded polc :class:`Collection`.

    ``meta`` defaults to the collection's ``.polc.meta``.  The engine keeps track of
    which node's view the address maps hold and rewrites them only when that changes.
    """

    def __init__(self, collection: Collection, meta: dict | None = None):
        self.collection = collection
        self.meta = meta if meta is not None else (collection.meta or {})
        self.nodes: dict = self.meta.get("nodes") or {}
        self.rules = {r["id"]: r for r in self.meta.get("rules") or [] if isinstance(r, dict) and "id" in r}
        self._from = collection.program(abi.PROG_FROM_EP)
        self._to = collection.program(abi.PROG_TO_EP)

        self._ct = collection.maps.get(abi.MAP_CT)
        self._local = _UNSET
        self._node_keys = {bytes.fromhex(k) for n in self.nodes.values()
                           for part in ("host", "remote") for k, _ in n.get(part, [])}

    def run(self, flow: Flow) -> FlowResult:
        """Judge ``flow``: egress of the source, then (if it passed) ingress of the destination."""
        for node in (flow.src_local_node, flow.dst_local_node):
            if node is not None and self.nodes and node not in self.nodes:
                raise ValueError(f"unknown node {node!r}; the policy knows {sorted(self.nodes)}")
        if self._ct is not None:
            self._ct.clear()
        runs = self._through(flow, build_packet(flow))
        if flow.proto == "TCP" and flow.payload and all(r.passed for r in runs):
            # The handshake passed; now the request, on the connection it opened.
            runs = self._through(flow, build_packet(flow, data=True))
        verdict = "allow" if all(r.passed for r in runs) else "deny"
        return FlowResult(flow, verdict, runs)

    def _through(self, flow: Flow, packet: bytes) -> list[ProgramRun]:
        """Egress of the source, then (if it passed) ingress of the destination."""
        runs = [self._run_program(self._from, flow.src_local_node, packet)]
        if runs[0].passed:
            runs.append(self._run_program(self._to, flow.dst_local_node, packet))
        return runs

    def _run_program(self, program, node: str | None, packet: bytes) -> ProgramRun:
        self.set_local_node(node)
        result = program.test_run(packet, bytes(bpf.SIZEOF_SK_BUFF))
        if result.retval not in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT):
            raise TestRunError(f"program '{program.name}' returned {result.retval}; the datapath may only "
                               f"return TC_ACT_OK ({TC_ACT_OK}), TC_ACT_SHOT ({TC_ACT_SHOT}) or "
                               f"TC_ACT_REDIRECT ({TC_ACT_REDIRECT})")
        stage_id, rule_id = struct.unpack_from("<II", result.ctx_out, _CB_OFFSET)
        stage = abi.STAGES.get(stage_id, f"unknown({stage_id})")
        rule = self.rules.get(rule_id) if rule_id else None
        return ProgramRun(program.name, node, result.retval, stage, stage_id, rule_id, rule)

    def set_local_node(self, node: str | None) -> None:
        """Make the address maps show the cluster as ``node`` sees it (``None``: from outside)."""
        if not self.nodes or node == self._local:
            return
        want: dict[bytes, bytes] = {}
        for name, records in self.nodes.items():
            part = "host" if name == node else "remote"
            for key, value in records.get(part, []):
                want[bytes.fromhex(key)] = bytes.fromhex(value)
        for key in self._node_keys - set(want):
            name, map_key = abi.address_record(key)
            self.collection.map(name).delete(map_key)
        for name, records in abi.address_records_by_map(sorted(want.items())).items():
            if records:
                self.collection.map(name).update_batch(records)
        self._local = node


def run_flow(collection: Collection, flow: Flow, meta: dict | None = None) -> FlowResult:
    """Judge one flow with a fresh :class:`KernelEngine`."""
    return KernelEngine(collection, meta).run(flow)
