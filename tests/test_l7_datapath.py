"""L7 in the kernel: HTTP heads and DNS queries judged by DFAs, denials answered in place."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from kernel_helpers import loaded_engine, ones_complement_sum, skip_unless_root

from polc import abi

CLUSTER = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: default, labels: {app: server}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.2.10}, {ip: "2001:db8::10"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: default, labels: {app: client}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {podIPs: [{ip: 198.18.2.11}, {ip: "2001:db8::11"}]}
- {apiVersion: v1, kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/"}
        - {method: POST}
        - {method: GET, path: "/private", headers: ["X-Very-Secret-Token: 42"]}
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{path: "/api/.*"}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "53", protocol: ANY}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.cilium.io"}, {matchName: "example.com"}]
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8080", protocol: TCP}]}]
"""

SERVER, CLIENT = "198.18.2.10", "198.18.2.11"
SERVER6, CLIENT6 = "2001:db8::10", "2001:db8::11"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    skip_unless_root()
    with loaded_engine(tmp_path_factory.mktemp("l7"), CLUSTER, POLICY, "l7") as eng:
        yield eng


def http(method="GET", path="/", headers=(), host="server"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run(engine, payload, port=80, proto="TCP", src=CLIENT, dst=SERVER):
    from polc.runtime.testrun import Flow

    res = engine.run(Flow(src_ip=src, dst_ip=dst, proto=proto, port=port, payload=payload,
                          src_local_node="n1", dst_local_node="n1"))
    return res.verdict, res.runs[-1].stage


@pytest.mark.parametrize("payload,want", [
    (http(), ("allow", "l7-allow")),
    (http("POST", "/anything"), ("allow", "l7-allow")),
    (http("GET", "/index.html"), ("deny", "l7-deny")),
    (http("get", "/"), ("deny", "l7-deny")),                                  # methods are case-sensitive
    (http("GET", "/private"), ("deny", "l7-deny")),
    (http("GET", "/private", ["X-Very-Secret-Token: 42"]), ("allow", "l7-allow")),
    (http("GET", "/private", ["x-very-secret-token:   42  "]), ("allow", "l7-allow")),
    (http("GET", "/private", ["X-Very-Secret-Token: 420"]), ("deny", "l7-deny")),
    (http("GET", "/public/../private", ["X-Very-Secret-Token: 1"]), ("deny", "l7-deny")),
    (b"GET http://server/ HTTP/1.1\r\nHost: server\r\n\r\n", ("deny", "l7-deny")),   # absolute form
    (http() + http("GET", "/private"), ("deny", "l7-deny")),                 # pipelined denied request
    (http() + http("POST", "/x"), ("allow", "l7-allow")),                    # pipelined, both allowed
    (http() + b"GET /", ("deny", "l7-deny")),                                # pipelined, second incomplete
    (http("POST", "/x") + b"body", ("deny", "l7-deny")),                     # a body: not judged, denied
    (b"GET / HTTP/1.1\r\nHost: ser", ("deny", "l7-deny")),                    # head split across segments
    (b"GET / HTTP/1.1\r\nHost: server\r\nX: " + b"a" * 1100 + b"\r\n\r\n", ("deny", "l7-deny")),  # oversize
])
def test_http_requests(engine, payload, want):
    assert run(engine, payload) == want


def test_l4_allow_of_same_port_makes_l7_moot(engine):
    assert run(engine, http("DELETE", "/other"), port=8080) == ("allow", "ct-established")


def test_http_ipv6(engine):
    assert run(engine, http(), src=CLIENT6, dst=SERVER6) == ("allow", "l7-allow")
    assert run(engine, http("GET", "/x"), src=CLIENT6, dst=SERVER6) == ("deny", "l7-deny")


def dns_query(name: str, tcp=False) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    msg = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1)
    msg += b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # an EDNS OPT record in the additional section
    return struct.pack("!H", len(msg)) + msg if tcp else msg


@pytest.mark.parametrize("name,want", [
    ("www.cilium.io", "allow"), ("WWW.CILIUM.IO", "allow"), ("cilium.io", "deny"),
    ("a.b.cilium.io", "deny"), ("example.com", "allow"), ("www.example.com", "deny"),
])
def test_dns_queries(engine, name, want):
    assert run(engine, dns_query(name), port=53, proto="UDP")[0] == want
    assert run(engine, dns_query(name, tcp=True), port=53, proto="TCP")[0] == want


def _direct(engine, program, flow, data=False):
    from polc.runtime.testrun import build_packet

    return engine.collection.program(program).test_run(build_packet(flow, data=data), bytes(192))


@pytest.mark.parametrize("family", [4, 6])
def test_refused_answer_is_a_valid_dns_response(engine, family):
    from polc.runtime.testrun import Flow

    src, dst = (CLIENT, SERVER) if family == 4 else (CLIENT6, SERVER6)
    engine.collection.map(abi.MAP_CT).clear()
    flow = Flow(src_ip=src, dst_ip=dst, proto="UDP", port=53, src_port=45678, payload=dns_query("evil.org"))
    res = _direct(engine, abi.PROG_FROM_EP, flow)
    assert res.retval == 7  # TC_ACT_REDIRECT: sent back to the client
    pkt = res.data_out
    assert pkt[:6] == bytes.fromhex("020000000001") and pkt[6:12] == bytes.fromhex("020000000002")
    if family == 4:
        ip, l4 = pkt[14:34], pkt[34:]
        assert ip[9] == 17 and ones_complement_sum(ip) == 0xFFFF
        assert ipaddress.ip_address(ip[12:16]) == ipaddress.ip_address(dst)
        assert ipaddress.ip_address(ip[16:20]) == ipaddress.ip_address(src)
        assert struct.unpack("!H", ip[2:4])[0] == len(ip) + len(l4)
    else:
        ip, l4 = pkt[14:54], pkt[54:]
        assert ip[6] == 17 and struct.unpack("!H", ip[4:6])[0] == len(l4)
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(l4), 17)
        assert ones_complement_sum(pseudo + l4) == 0xFFFF
    sport, dport, length, _ = struct.unpack("!HHHH", l4[:8])
    assert (sport, dport, length) == (53, 45678, len(l4))
    msg = l4[8:]
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    assert ident == 0xBEEF and flags & 0x8000 and flags & 0x000F == 5 and flags & 0x0100  # QR, REFUSED, RD kept
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    assert msg[12:] == b"\x04evil\x03org\x00\x00\x01\x00\x01"


@pytest.mark.parametrize("family", [4, 6])
def test_denied_http_request_resets_the_client(engine, family):
    from polc.runtime.testrun import TCP_SERVER_ISN, Flow

    src, dst = (CLIENT, SERVER) if family == 4 else (CLIENT6, SERVER6)
    engine.collection.map(abi.MAP_CT).clear()
    engine.set_local_node("n1")
    flow = Flow(src_ip=src, dst_ip=dst, proto="TCP", port=80, src_port=41000, payload=http("GET", "/nope"))
    assert _direct(engine, abi.PROG_TO_EP, flow).retval == 0  # the SYN opens the connection
    payload_len = len(flow.payload)
    res = _direct(engine, abi.PROG_TO_EP, flow, data=True)
    assert res.retval == 7
    pkt = res.data_out
    l4 = pkt[34:] if family == 4 else pkt[54:]
    assert len(l4) == 20
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", l4[:14])
    assert (sport, dport) == (80, 41000)
    assert seq == TCP_SERVER_ISN + 1 and ack == 2 + payload_len
    assert flags == 0x14 and off == 5 << 4  # RST|ACK
    if family == 4:
        pseudo = pkt[26:30] + pkt[30:34] + struct.pack("!BBH", 0, 6, 20)
        assert ones_complement_sum(pkt[14:34]) == 0xFFFF
    else:
        pseudo = pkt[22:54] + struct.pack("!IxxxB", 20, 6)
    assert ones_complement_sum(pseudo + l4) == 0xFFFF
