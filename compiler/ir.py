"""The policy IR: what every frontend lowers to and what the optimizer consumes.

Everything here is plain, frozen data.  Frontends (Kubernetes NetworkPolicy, Cilium
policies, the DSL) resolve their own scoping rules (namespaces, defaults, entities) while
lowering, so the optimizer and the backend never need to know which kind of policy a rule
came from.

Conventions
-----------
* Identity labels are ``"source:key" -> value`` (``k8s:app``, ``reserved:host``).  A
  selector requirement carries a source; ``any`` matches a label of every source.
* ``Rule.peers`` is a tuple of alternatives (OR).  The empty tuple matches no peer;
  ``(PeerEntity("all"),)`` matches every peer.
* ``Rule.ports`` ``None`` means every protocol and port (ICMP and others included); a tuple
  lists alternatives (OR); the empty tuple matches nothing.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Direction(enum.IntEnum):
    """Which side of the local endpoint the policy guards (value used by the datapath)."""

    INGRESS = 0  # traffic entering the endpoint: subject = destination, peer = source
    EGRESS = 1  # traffic leaving the endpoint: subject = source, peer = destination


class Action(enum.IntEnum):
    """Verdict of a rule (values used by the datapath)."""

    ALLOW = 1
    DENY = 2


class Proto(enum.IntEnum):
    """Protocol index used by the decision tables (not the IP protocol number)."""

    TCP = 0
    UDP = 1
    SCTP = 2
    ICMP = 3
    ICMPV6 = 4
    OTHER = 5  # any other IP protocol; only rules with ``ports=None`` match it


IP_PROTO_NUMBER = {Proto.TCP: 6, Proto.UDP: 17, Proto.SCTP: 132, Proto.ICMP: 1, Proto.ICMPV6: 58}


class Op(enum.Enum):
    """Label selector operators (Kubernetes ``matchExpressions``); ordered by name for sorting."""

    def __lt__(self, other: "Op") -> bool:
        return self.value < other.value

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, order=True)
class Origin:
    """Where a rule or an isolation came from, for error messages and verdict reports."""

    file: str
    line: int
    col: int
    policy: str  # "CiliumNetworkPolicy default/allow-web", "NetworkPolicy x/deny-all", ...
    where: str = ""  # path inside the object, e.g. "spec.ingress[0]"

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}:{self.col}"
        what = f"{self.policy} {self.where}".strip()
        return f"{loc} ({what})" if what else loc


@dataclass(frozen=True, order=True)
class Requirement:
    """One label requirement.  ``source`` is ``any`` or a label source such as ``k8s``."""

    source: str
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: "Labels") -> bool:
        """Whether an identity with ``labels`` satisfies this requirement."""
        present = [v for (src, k), v in labels.items() if k == self.key and self.source in ("any", src)]
        if self.op is Op.EXISTS:
            return bool(present)
        if self.op is Op.DOES_NOT_EXIST:
            return not present
        if self.op is Op.IN:
            return any(v in self.values for v in present)
        return not any(v in self.values for v in present)  # NotIn: absent keys match


@dataclass(frozen=True, order=True)
class Selector:
    """A conjunction of requirements over identity labels; empty selects every identity."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: "Labels") -> bool:
        return all(r.matches(labels) for r in self.requirements)


# Identity labels: {(source, key): value}
Labels = dict


@dataclass(frozen=True)
class PeerSelector:
    """Peers whose identity labels match (pods, and reserved identities via ``reserved:`` keys)."""

    selector: Selector


@dataclass(frozen=True)
class PeerCIDR:
    """Addresses in ``cidr`` but in none of ``excepts``.

    ``include_cluster`` is True for Kubernetes ipBlock (it matches pod and node addresses
    too) and False for Cilium CIDR peers, which select only addresses outside the cluster.
    """

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()
    include_cluster: bool = False


ENTITIES = (
    "all", "world", "cluster", "host", "remote-node", "kube-apiserver",
    "init", "health", "unmanaged", "ingress",
)


@dataclass(frozen=True)
class PeerEntity:
    """A Cilium entity (one of ``ENTITIES``); ``all`` matches every peer."""

    entity: str


Peer = Union[PeerSelector, PeerCIDR, PeerEntity]
PEER_ALL = PeerEntity("all")


@dataclass(frozen=True, order=True)
class PortRange:
    """Ports ``lo..hi`` inclusive of ``proto``; for ICMP/ICMPv6 the 'port' is the type."""

    proto: Proto
    lo: int
    hi: int


@dataclass(frozen=True, order=True)
class NamedPort:
    """A container port name, resolved on the destination pod of the flow."""

    proto: Proto
    name: str


Port = Union[PortRange, NamedPort]


@dataclass(frozen=True, order=True)
class HTTPRule:
    """Cilium ``rules.http`` entry: RE2 regexes matched against the whole value (None = any)."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] = ()  # "Name: value" (exact) or "Name" (present)
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, order=True)
class DNSRule:
    """Cilium ``rules.dns`` entry: one of ``match_name`` or ``match_pattern``."""

    match_name: str | None = None
    match_pattern: str | None = None
    origin: Origin | None = field(default=None, compare=False)


L7Rule = Union[HTTPRule, DNSRule]


@dataclass(frozen=True)
class Rule:
    """One allow or deny rule: subject x peers x ports, for one direction.

    ``l7`` (allow rules only) lists HTTP or DNS matchers: the connection is allowed, and
    each request on it must match one of them.
    """

    direction: Direction
    action: Action
    subject: Selector
    peers: tuple[Peer, ...]
    ports: tuple[Port, ...] | None
    origin: Origin
    l7: tuple[L7Rule, ...] | None = None


@dataclass(frozen=True)
class Isolation:
    """Endpoints matching ``subject`` are default-deny for ``direction``."""

    direction: Direction
    subject: Selector
    origin: Origin


@dataclass(frozen=True)
class PolicySet:
    """All rules and isolations of one compile, in source order."""

    rules: tuple[Rule, ...] = ()
    isolations: tuple[Isolation, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerPort:
    name: str
    proto: Proto
    port: int


@dataclass(frozen=True)
class Pod:
    """A pod of the inventory; ``labels`` are its identity labels (see inventory lowering)."""

    namespace: str
    name: str
    labels: tuple[tuple[tuple[str, str], str], ...]  # sorted ((source, key), value) pairs
    ips: tuple[IPAddress, ...]
    ports: tuple[ContainerPort, ...]
    node: str | None
    origin: Origin

    @property
    def label_map(self) -> Labels:
        return dict(self.labels)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[IPAddress, ...]
    origin: Origin


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...]
    origin: Origin


@dataclass(frozen=True)
class Inventory:
    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    nodes: tuple[Node, ...] = ()
    sources: tuple[str, ...] = field(default=())
