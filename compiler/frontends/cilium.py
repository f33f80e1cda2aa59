"""Typed models of ``cilium.io/v2`` CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.

Validation follows Cilium's CRD schema and ``Rule.Sanitize`` (``pkg/policy/api/
rule_validation.go``): one peer kind per rule, ``icmps`` not together with ``toPorts``,
``except`` inside ``cidr``, known entities, ICMP type names per family (``icmp.go``).
Features polc does not implement yet are accepted by the parser and rejected here with a
positioned ``UnsupportedError`` -- never silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from .. import ir, regex
from .common import (
    IntOrStr, LabelSelector, Model, ObjectMeta, Str, cidr_networks, check_port_name, fail,
    parse_cidr, unsupported, validate_cidr_except,
)

API_VERSION = "cilium.io/v2"
KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")

# pkg/policy/api/icmp.go: icmpIpv4TypeNameToCode / icmpIpv6TypeNameToCode.
ICMPV4_TYPES = {
    "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
    "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
    "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}
ICMPV6_TYPES = {
    "DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
    "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130,
    "MulticastListenerReport": 131, "MulticastListenerDone": 132, "RouterSolicitation": 133,
    "RouterAdvertisement": 134, "NeighborSolicitation": 135, "NeighborAdvertisement": 136,
    "RedirectMessage": 137, "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146,
    "MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
    "DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160,
    "ExtendedEchoReply": 161,
}

# Entities polc can express (ir.ENTITIES) plus `none`, which selects nothing.
ENTITIES = ir.ENTITIES + ("none",)
UNSUPPORTED_ENTITIES = ("world-ipv4", "world-ipv6")


class CIDRRule(Model):
    cidr: Str | None = None
    except_: list[Str] | None = Field(None, alias="except")
    cidr_group_ref: Any = Field(None, alias="cidrGroupRef")
    cidr_group_selector: Any = Field(None, alias="cidrGroupSelector")

    @model_validator(mode="after")
    def _cidrs(self):
        if self.cidr_group_ref is not None:
            raise unsupported("cidrGroupRef", "CiliumCIDRGroup references")
        if self.cidr_group_selector is not None:
            raise unsupported("cidrGroupSelector", "CiliumCIDRGroup selectors")
        if self.cidr is None:
            raise fail("missing required field 'cidr'")
        validate_cidr_except(self.cidr, self.except_, strict=False)
        return self

    def networks(self):
        return cidr_networks(self.cidr, self.except_)


class PortProtocol(Model):
    port: IntOrStr | None = None
    end_port: int | None = Field(None, alias="endPort", strict=True)
    protocol: Literal["TCP", "UDP", "SCTP", "ANY"] | None = None

    @model_validator(mode="after")
    def _port(self):
        number = self.number()
        if isinstance(self.port, str) and number is None:
            problem = check_port_name(self.port.lower())
            if problem:
                raise fail(problem, "port")
        if number is not None and not 0 <= number <= 65535:
            raise fail(f"port {number} is out of range 0..65535", "port")
        if self.end_port is not None:
            if not number:
                raise fail("endPort needs a numeric, non-zero port", "endPort", key=True)
            if not number <= self.end_port <= 65535:
                raise fail(f"endPort {self.end_port} must be between port {number} and 65535", "endPort")
        return self

    def number(self) -> int | None:
        """The port as a number (``"80"`` -> 80), 0 when missing, None for a named port."""
        if self.port is None:
            return 0
        if isinstance(self.port, int):
            return self.port
        return int(self.port) if re.fullmatch(r"[0-9]+", self.port) else None


class PortDenyRule(Model):
    ports: list[PortProtocol] | None = None


class PortRuleHTTP(Model):
    """``rules.http[]``: method, path and host are RE2 regexes; headers "Name: value" or "Name"."""

    method: Str | None = None
    path: Str | None = None
    host: Str | None = None
    headers: list[Str] | None = None
    header_matches: Any = Field(None, alias="headerMatches")

    @model_validator(mode="after")
    def _checks(self):
        if self.header_matches:
            raise unsupported("headerMatches", "HTTP headerMatches (secrets, mismatch actions)")
        for field in ("method", "path", "host"):
            _check_regex(getattr(self, field), field)
        for i, header in enumerate(self.headers or ()):
            name = header.split(":", 1)[0].strip()
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise fail(f"header {header!r}: {name!r} is not an HTTP header name", "headers", i)
        return self


def _check_regex(pattern: str | None, field: str) -> None:
    """Reject a regex the DFA builder cannot compile, naming the construct and its place."""
    if pattern is None:
        return
    try:
        regex.parse(pattern)
    except (regex.RegexSyntaxError, regex.RegexUnsupportedError) as err:
        raise fail(f"{field}: {err.message}", field,
                   unsupported=isinstance(err, regex.RegexUnsupportedError)) from None


class PortRuleDNS(Model):
    """``rules.dns[]``: exactly one of matchName / matchPattern."""

    match_name: Str | None = Field(None, alias="matchName")
    match_pattern: Str | None = Field(None, alias="matchPattern")

    @model_validator(mode="after")
    def _one(self):
        if (self.match_name is None) == (self.match_pattern is None):
            raise fail("a DNS rule needs exactly one of matchName and matchPattern")
        return self


class L7Rules(Model):
    """``toPorts[].rules``: HTTP or DNS (Kafka and generic L7 are not supported)."""

    http: list[PortRuleHTTP] | None = None
    dns: list[PortRuleDNS] | None = None
    kafka: Any = None
    l7proto: Any = None
    l7: Any = None

    @model_validator(mode="after")
    def _checks(self):
        for field, what in (("kafka", "Kafka rules"), ("l7proto", "generic L7 parsers"), ("l7", "generic L7 rules")):
            if getattr(self, field):
                raise unsupported(field, what)
        if self.http and self.dns:
            raise fail("a port rule takes HTTP or DNS rules, not both", "dns", key=True)
        return self

    @property
    def kind(self) -> str | None:
        return "http" if self.http else "dns" if self.dns else None


class PortRule(PortDenyRule):
    rules: L7Rules | None = None
    server_names: Any = Field(None, alias="serverNames")
    originating_tls: Any = Field(None, alias="originatingTLS")
    terminating_tls: Any = Field(None, alias="terminatingTLS")
    listener: Any = None

    @model_validator(mode="after")
    def _l7(self):
        kind = self.rules.kind if self.rules else None
        if kind:
            self._check_l7_ports(kind)
        for field, alias, what in (
            ("server_names", "serverNames", "TLS server names"),
            ("originating_tls", "originatingTLS", "TLS origination"),
            ("terminating_tls", "terminatingTLS", "TLS termination"),
            ("listener", "listener", "Envoy listeners"),
        ):
            if getattr(self, field):
                raise unsupported(alias, what)
        return self

    def _check_l7_ports(self, kind: str) -> None:
        """Cilium's sanitize: L7 needs explicit ports; HTTP is TCP only; DNS takes no ranges."""
        if not self.ports:
            raise fail(f"{kind.upper()} rules need explicit ports", "rules", key=True)
        for i, pp in enumerate(self.ports):
            if pp.number() == 0:
                raise fail(f"{kind.upper()} rules cannot apply to port 0 (every port)", "ports", i, "port")
            if pp.end_port is not None:
                raise fail(f"{kind.upper()} rules cannot apply to a port range", "ports", i, "endPort", key=True)
            if kind == "http" and pp.protocol not in ("TCP", None):
                raise fail(f"HTTP rules apply to TCP only, not {pp.protocol}", "ports", i, "protocol")

    @property
    def l7_kind(self) -> str | None:
        return self.rules.kind if self.rules else None


class ICMPField(Model):
    family: Literal["IPv4", "IPv6"] | None = None
    type: IntOrStr

    @model_validator(mode="after")
    def _type(self):
        if self.type_number() is None:
            names = ICMPV6_TYPES if self.family == "IPv6" else ICMPV4_TYPES
            raise fail(f"unknown ICMP type {self.type!r} for {self.family or 'IPv4'} "
                       f"(expected 0..255 or one of {', '.join(names)})", "type")
        return self

    def type_number(self) -> int | None:
        value = self.type
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
            value = int(value)
        if isinstance(value, int):
            return value if 0 <= value <= 255 else None
        names = ICMPV6_TYPES if self.family == "IPv6" else ICMPV4_TYPES
        return names.get(value)

    @property
    def proto(self) -> ir.Proto:
        return ir.Proto.ICMPV6 if self.family == "IPv6" else ir.Proto.ICMP


class ICMPRule(Model):
    fields: list[ICMPField] | None = None


def _entity(value: str) -> str:
    if value in UNSUPPORTED_ENTITIES:
        raise PydanticCustomError("polc_unsupported", "{message}", {
            "message": f"entity '{value}' is not supported by polc yet"})
    if value not in ENTITIES:
        raise PydanticCustomError("polc", "{message}", {
            "message": f"unknown entity '{value}' (expected one of {', '.join(ENTITIES)})"})
    return value


Entity = Annotated[StrictStr, AfterValidator(_entity)]


def _cidr_or_ip(value: str) -> str:
    parse_cidr(value, allow_bare_ip=True)
    return value


CIDR = Annotated[StrictStr, AfterValidator(_cidr_or_ip)]


class _CommonRule(Model):
    """Fields shared by all four rule kinds; subclasses name the peer fields."""

    PEER_FIELDS: ClassVar[tuple] = ()
    UNSUPPORTED: ClassVar[tuple] = ()

    @model_validator(mode="after")
    def _checks(self):
        for field, alias, what in self.UNSUPPORTED:
            if getattr(self, field):
                raise unsupported(alias, what)
        used = [alias for field, alias in self.PEER_FIELDS if getattr(self, field)]
        if len(used) > 1:
            raise fail(f"cannot combine {used[0]} and {used[1]} in one rule; write one rule per peer kind",
                       used[1], key=True)
        if getattr(self, "icmps", None) and getattr(self, "to_ports", None):
            raise fail("icmps and toPorts cannot be used in the same rule; write a separate rule",
                       "icmps", key=True)
        return self

    def peer_field(self) -> tuple[str, Any] | None:
        """``(alias, value)`` of the (at most one) peer field that is set, even if empty."""
        for field, alias in self.PEER_FIELDS:
            value = getattr(self, field)
            if value is not None:
                return alias, value
        return None


_INGRESS_PEERS = (("from_endpoints", "fromEndpoints"), ("from_cidr", "fromCIDR"),
                  ("from_cidr_set", "fromCIDRSet"), ("from_entities", "fromEntities"),
                  ("from_nodes", "fromNodes"), ("from_groups", "fromGroups"))
_INGRESS_UNSUPPORTED = (("from_requires", "fromRequires", "fromRequires"),
                        ("from_nodes", "fromNodes", "node peers"),
                        ("from_groups", "fromGroups", "cloud-provider groups"))
_EGRESS_DENY_PEERS = (("to_endpoints", "toEndpoints"), ("to_cidr", "toCIDR"), ("to_cidr_set", "toCIDRSet"),
                      ("to_entities", "toEntities"), ("to_services", "toServices"),
                      ("to_groups", "toGroups"), ("to_nodes", "toNodes"))
_EGRESS_PEERS = _EGRESS_DENY_PEERS + (("to_fqdns", "toFQDNs"),)
_EGRESS_UNSUPPORTED = (("to_requires", "toRequires", "toRequires"),
                       ("to_services", "toServices", "service peers"),
                       ("to_groups", "toGroups", "cloud-provider groups"),
                       ("to_nodes", "toNodes", "node peers"))


class _IngressCommon(_CommonRule):
    PEER_FIELDS: ClassVar[tuple] = _INGRESS_PEERS
    UNSUPPORTED: ClassVar[tuple] = _INGRESS_UNSUPPORTED

    from_endpoints: list[LabelSelector] | None = Field(None, alias="fromEndpoints")
    from_requires: Any = Field(None, alias="fromRequires")
    from_cidr: list[CIDR] | None = Field(None, alias="fromCIDR")
    from_cidr_set: list[CIDRRule] | None = Field(None, alias="fromCIDRSet")
    from_entities: list[Entity] | None = Field(None, alias="fromEntities")
    from_groups: Any = Field(None, alias="fromGroups")
    from_nodes: Any = Field(None, alias="fromNodes")
    icmps: list[ICMPRule] | None = None


class IngressRule(_IngressCommon):
    to_ports: list[PortRule] | None = Field(None, alias="toPorts")
    authentication: Any = None
    UNSUPPORTED: ClassVar[tuple] = _INGRESS_UNSUPPORTED + (
        ("authentication", "authentication", "mutual authentication"),)

    @model_validator(mode="after")
    def _no_ingress_dns(self):
        for i, pr in enumerate(self.to_ports or ()):
            if pr.l7_kind == "dns":
                raise fail("DNS rules apply to egress only", "toPorts", i, "rules", "dns", key=True)
        return self


class IngressDenyRule(_IngressCommon):
    to_ports: list[PortDenyRule] | None = Field(None, alias="toPorts")


class _EgressCommon(_CommonRule):
    PEER_FIELDS: ClassVar[tuple] = _EGRESS_DENY_PEERS
    UNSUPPORTED: ClassVar[tuple] = _EGRESS_UNSUPPORTED

    to_endpoints: list[LabelSelector] | None = Field(None, alias="toEndpoints")
    to_requires: Any = Field(None, alias="toRequires")
    to_cidr: list[CIDR] | None = Field(None, alias="toCIDR")
    to_cidr_set: list[CIDRRule] | None = Field(None, alias="toCIDRSet")
    to_entities: list[Entity] | None = Field(None, alias="toEntities")
    to_services: Any = Field(None, alias="toServices")
    to_groups: Any = Field(None, alias="toGroups")
    to_nodes: Any = Field(None, alias="toNodes")
    icmps: list[ICMPRule] | None = None


class EgressRule(_EgressCommon):
    PEER_FIELDS: ClassVar[tuple] = _EGRESS_PEERS

    to_ports: list[PortRule] | None = Field(None, alias="toPorts")
    to_fqdns: Any = Field(None, alias="toFQDNs")
    authentication: Any = None
    UNSUPPORTED: ClassVar[tuple] = _EGRESS_UNSUPPORTED + (
        ("to_fqdns", "toFQDNs", "FQDN peers"), ("authentication", "authentication", "mutual authentication"))


class EgressDenyRule(_EgressCommon):
    to_ports: list[PortDenyRule] | None = Field(None, alias="toPorts")


class DefaultDeny(Model):
    ingress: bool | None = Field(None, strict=True)
    egress: bool | None = Field(None, strict=True)


class Rule(Model):
    """One Cilium rule (``spec`` or an item of ``specs``)."""

    endpoint_selector: LabelSelector | None = Field(None, alias="endpointSelector")
    node_selector: Any = Field(None, alias="nodeSelector")
    ingress: list[IngressRule] | None = None
    ingress_deny: list[IngressDenyRule] | None = Field(None, alias="ingressDeny")
    egress: list[EgressRule] | None = None
    egress_deny: list[EgressDenyRule] | None = Field(None, alias="egressDeny")
    enable_default_deny: DefaultDeny | None = Field(None, alias="enableDefaultDeny")
    labels: list[Any] | None = None
    description: Str | None = None

    @model_validator(mode="after")
    def _subject(self):
        if self.endpoint_selector is not None and self.node_selector is not None:
            raise fail("a rule cannot have both endpointSelector and nodeSelector", "nodeSelector", key=True)
        if self.node_selector is not None:
            raise unsupported("nodeSelector", "host policies")
        if self.endpoint_selector is None:
            raise fail("a rule needs an endpointSelector ({} selects every endpoint)")
        return self

    def default_deny(self, direction: str) -> bool:
        """Whether this rule turns on default deny for ``direction`` (``"ingress"``/``"egress"``).

        As ``Rule.Sanitize``: on when the direction has an allow or deny section (even an
        empty list item), unless ``enableDefaultDeny`` says otherwise.
        """
        explicit = getattr(self.enable_default_deny, direction, None) if self.enable_default_deny else None
        if explicit is not None:
            return explicit and self._has_section(direction)
        return self._has_section(direction)

    def _has_section(self, direction: str) -> bool:
        if direction == "ingress":
            return bool(self.ingress) or bool(self.ingress_deny)
        return bool(self.egress) or bool(self.egress_deny)


class _CiliumPolicy(Model):
    api_version: Literal["cilium.io/v2"] = Field(alias="apiVersion")
    metadata: ObjectMeta
    spec: Rule | None = None
    specs: list[Rule] | None = None
    status: Any = None

    @model_validator(mode="after")
    def _has_rules(self):
        if self.spec is None and self.specs is None:
            raise fail(f"a {self.kind} needs 'spec' or 'specs'")
        return self

    def rules(self) -> list[tuple[tuple, Rule]]:
        """``(path, rule)`` for ``spec`` then each item of ``specs``."""
        out = [(("spec",), self.spec)] if self.spec is not None else []
        out += [(("specs", i), r) for i, r in enumerate(self.specs or ())]
        return out


class CiliumNetworkPolicy(_CiliumPolicy):
    kind: Literal["CiliumNetworkPolicy"]


class CiliumClusterwideNetworkPolicy(_CiliumPolicy):
    kind: Literal["CiliumClusterwideNetworkPolicy"]

    @model_validator(mode="after")
    def _cluster_scoped(self):
        if self.metadata.namespace is not None:
            raise fail("CiliumClusterwideNetworkPolicy is cluster-scoped: remove metadata.namespace",
                       "metadata", "namespace", key=True)
        return self
