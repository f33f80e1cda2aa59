"""Flow files for ``polc test``: what to send, and the verdict the user expects.

A flow file is a YAML (or JSON) list of mappings::

    - {from: default/tiefighter, to: default/deathstar, proto: TCP, port: 80, expect: allow}
    - {from: 198.19.200.7, to: x/a, proto: ICMP, icmp_type: 8, expect: deny}

``from``/``to`` name a pod as ``namespace/name`` or give an IP address.  Pods with both
address families use the family of the other side when it is an IP, IPv6 for ICMPv6, and
IPv4 otherwise (``family: 6`` picks IPv6).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from polc.compiler import ir
from polc.compiler.errors import CompileError, Location, PolcError, raise_all
from pydantic import ValidationError

from polc.compiler.frontends.common import Model, validation_errors
from polc.compiler.source import Document, load_paths

PROTOS = {"TCP": ir.Proto.TCP, "UDP": ir.Proto.UDP, "SCTP": ir.Proto.SCTP, "ICMP": ir.Proto.ICMP,
          "ICMPV6": ir.Proto.ICMPV6}


class HTTPRequestModel(Model):
    """An HTTP/1.1 request to send on the connection (``raw`` gives the exact bytes)."""

    method: str = "GET"
    path: str = "/"
    host: str | None = None
    headers: list[str] = []
    raw: str | None = None

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw.encode("utf-8")
        lines = [f"{self.method} {self.path} HTTP/1.1"]
        if self.host is not None:
            lines.append(f"Host: {self.host}")
        lines += self.headers
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class DNSQueryModel(Model):
    """A DNS query (type A, class IN) for ``query``."""

    query: str

    def payload(self, tcp: bool) -> bytes:
        name = b"".join(bytes([len(label)]) + label.encode("ascii")
                        for label in self.query.rstrip(".").split(".") if label) + b"\x00"
        msg = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
        return struct.pack("!H", len(msg)) + msg if tcp else msg


class FlowModel(Model):
    """One flow as written in the file."""

    name: str | None = None
    from_: str = Field(alias="from")
    to: str
    proto: str = "TCP"
    port: int | None = Field(default=None, ge=0, le=65535)
    icmp_type: int | None = Field(default=None, alias="icmp_type", ge=0, le=255)
    family: Literal[4, 6] | None = None
    expect: Literal["allow", "deny"] | None = None
    http: HTTPRequestModel | None = None
    dns: DNSQueryModel | None = None


@dataclass(frozen=True)
class Flow:
    """A flow resolved against the inventory: concrete addresses and pods."""

    index: int
    name: str
    src: ir.IPAddress
    dst: ir.IPAddress
    proto: ir.Proto
    port: int
    src_pod: ir.Pod | None
    dst_pod: ir.Pod | None
    expect: str | None
    location: Location
    payload: bytes | None = None

    def describe(self) -> str:
        what = f"{self.proto.name}/{self.port}" if self.proto < ir.Proto.ICMP else f"{self.proto.name} type {self.port}"
        return f"{self.name} {what}"


def _endpoint(text: str, pods: dict[str, ir.Pod]):
    try:
        return ipaddress.ip_address(text), None
    except ValueError:
        pass
    if text.count("/") != 1:
        return None, None
    return None, pods.get(text)


def _pick(pod: ir.Pod, family: int) -> ir.IPAddress | None:
    return next((ip for ip in pod.ips if ip.version == family), None)


def _resolve(doc: Document, i: int, m: FlowModel, pods: dict[str, ir.Pod]) -> Flow:
    loc = doc.location((i,))
    proto = PROTOS.get(m.proto.upper())
    if proto is None:
        raise CompileError(f"unknown protocol {m.proto!r} (want TCP, UDP, SCTP, ICMP or ICMPv6)",
                           doc.location((i, "proto")))
    ends = []
    for key, text in (("from", m.from_), ("to", m.to)):
        ip, pod = _endpoint(text, pods)
        if ip is None and pod is None:
            raise CompileError(f"{key}: {text!r} is neither an IP address nor a pod namespace/name of the "
                               "inventory (pass the cluster with --cluster)", doc.location((i, key)))
        ends.append((ip, pod))
    family = m.family or next((ip.version for ip, _ in ends if ip is not None), 6 if proto == ir.Proto.ICMPV6 else 4)
    addrs = []
    for (ip, pod), key in zip(ends, ("from", "to")):
        addr = ip if ip is not None else _pick(pod, family)
        if addr is None:
            raise CompileError(f"{key}: pod {pod.ref} has no IPv{family} address", doc.location((i, key)))
        addrs.append(addr)
    if addrs[0].version != addrs[1].version:
        raise CompileError("from and to are of different address families", loc)
    if (proto == ir.Proto.ICMP and family == 6) or (proto == ir.Proto.ICMPV6 and family == 4):
        raise CompileError(f"{m.proto} does not go with IPv{family} addresses", doc.location((i, "proto")))
    if proto in (ir.Proto.ICMP, ir.Proto.ICMPV6):
        port = m.icmp_type if m.icmp_type is not None else (8 if proto == ir.Proto.ICMP else 128)
    elif m.port is None:
        raise CompileError(f"a {proto.name} flow needs a port", loc)
    else:
        port = m.port
    name = m.name or f"{m.from_} -> {m.to}"
    payload = None
    if m.http is not None:
        if proto != ir.Proto.TCP:
            raise CompileError("an http flow needs proto TCP", doc.location((i, "proto")))
        payload = m.http.payload()
    if m.dns is not None:
        if proto not in (ir.Proto.UDP, ir.Proto.TCP):
            raise CompileError("a dns flow needs proto UDP or TCP", doc.location((i, "proto")))
        try:
            payload = m.dns.payload(tcp=proto == ir.Proto.TCP)
        except (UnicodeEncodeError, ValueError):
            raise CompileError(f"dns query {m.dns.query!r} is not a valid DNS name", doc.location((i, "dns"))) from None
    return Flow(i, name, addrs[0], addrs[1], proto, port, ends[0][1], ends[1][1], m.expect, loc, payload)


def load_flows(path: str, inventory: ir.Inventory) -> list[Flow]:
    """Parse and resolve a flow file; raises PolcError with positions."""
    docs = load_paths([path])
    pods = {p.ref: p for p in inventory.pods}
    flows: list[Flow] = []
    errors: list[PolcError] = []
    for doc in docs:
        if not isinstance(doc.data, list):
            raise CompileError("a flow file is a list of flows", doc.location(()))
        for i, _ in enumerate(doc.data):
            try:
                model = FlowModel.model_validate(doc.data[i])
            except ValidationError as exc:
                errors.extend(validation_errors(doc, exc, base=(i,)))
                continue
            try:
                flows.append(_resolve(doc, i, model, pods))
            except PolcError as e:
                errors.append(e)
    raise_all(errors)
    return flows
