"""The reference evaluator: SEMANTICS.md as plain code, our executable specification.

It answers "is this connection allowed?" directly from the parsed policy models (the pydantic
objects of ``frontends/k8s.py`` and ``frontends/cilium.py``) and the inventory.  It shares no
code with the lowering (``lower.py``), the IR selectors, the optimizer (``tables.py``) or the
backend, so that the property tests that compare it with the kernel catch bugs in any of
them.  It is slow on purpose: every question walks every rule of every policy.

A connection is judged like the datapath judges its first packet:

1. egress of the source endpoint, when the source is a pod;
2. then (if that allowed it) ingress of the destination endpoint, when the destination is a pod.

In each direction, for the endpoint being guarded (the *subject*) and the other side (the
*peer*): a matching deny rule denies; else an endpoint that is not isolated (default deny
off) allows; else a matching allow rule allows; else default deny.

Decisions that SEMANTICS.md leaves open follow the implementation; each is marked
"(polc's choice)" where it is made.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import ir, reference_l7
from .frontends import cilium, k8s
from .frontends.common import LabelSelector, LoadedPolicy, parse_cidr
from .source import path_str

INGRESS, EGRESS = "ingress", "egress"
NS_KEY = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
NS_NAME_LABEL = "kubernetes.io/metadata.name"

_PROTO_NAMES = {"TCP": ir.Proto.TCP, "UDP": ir.Proto.UDP, "SCTP": ir.Proto.SCTP,
                "ICMP": ir.Proto.ICMP, "ICMPV6": ir.Proto.ICMPV6}
_L4 = (ir.Proto.TCP, ir.Proto.UDP, ir.Proto.SCTP)
_ICMP = (ir.Proto.ICMP, ir.Proto.ICMPV6)

# Stage names, as the datapath reports them (polc/abi.py STAGES).
NOT_POLICED, DENY_RULE, NOT_ISOLATED, ALLOW_RULE, DEFAULT_DENY = (
    "not-policed", "deny-rule", "not-isolated", "allow-rule", "default-deny")

L7_ALLOW, L7_DENY = "l7-allow", "l7-deny"
LOCALHOST_RULE = {"file": "<polc>", "line": 0, "col": 0, "policy": "allow-localhost",
                  "where": "the local host may reach its endpoints (Cilium's allow-localhost)"}


# --------------------------------------------------------------------------- the parties


@dataclass(frozen=True)
class Party:
    """Who is behind an address, as seen from one node.

    ``kind`` is ``pod``, ``host`` (an address of the node the evaluation runs on),
    ``remote-node`` (an address of another node) or ``world`` (anything else).
    ``labels`` are identity labels ``{(source, key): value}``.
    """

    ip: ir.IPAddress
    kind: str
    labels: dict = field(hash=False, compare=False)
    pod: ir.Pod | None = None
    node: ir.Node | None = None

    def describe(self) -> str:
        if self.pod is not None:
            return f"pod {self.pod.ref} ({self.ip})"
        if self.node is not None:
            return f"{self.kind} {self.node.name} ({self.ip})"
        return f"world ({self.ip})"


@dataclass(frozen=True)
class DirectionResult:
    """What one direction decided, in the shape ``polc test`` reports for the kernel."""

    direction: str
    verdict: str  # allow / deny
    stage: str
    rule: dict | None  # file, line, col, policy, where of the deciding rule or isolation
    node: str | None
    subject: str

    def explain(self) -> str:
        rule = self.rule
        where = ""
        if rule:
            where = f" by {rule['policy']} {rule['where']}".rstrip()
            if rule["file"] != "<polc>":
                where += f" ({rule['file']}:{rule['line']}:{rule['col']})"
        return f"{self.direction} of {self.subject}: {self.verdict} ({self.stage}{where})"


@dataclass(frozen=True)
class Decision:
    """The verdict on a connection and the direction results that led to it."""

    verdict: str
    runs: tuple[DirectionResult, ...]

    def explain(self) -> str:
        return "; ".join(r.explain() for r in self.runs)


def parse_proto(proto: Any) -> ir.Proto:
    """``"TCP"``, ``"icmpv6"`` or an ``ir.Proto`` -> ``ir.Proto`` (flows are TCP/UDP/SCTP/ICMP/ICMPv6)."""
    if isinstance(proto, ir.Proto):
        return proto
    if isinstance(proto, str) and proto.upper() in _PROTO_NAMES:
        return _PROTO_NAMES[proto.upper()]
    raise ValueError(f"unknown protocol {proto!r} (want TCP, UDP, SCTP, ICMP or ICMPv6)")


# --------------------------------------------------------------------------- label matching


def _requirement(present: list[str], op: str, values) -> bool:
    """One matchExpressions requirement over the values a label key has (none if absent)."""
    if op == "Exists":
        return bool(present)
    if op == "DoesNotExist":
        return not present
    if op == "In":
        return any(v in values for v in present)
    return not any(v in values for v in present)  # NotIn: an absent key matches


def k8s_selector_matches(sel: LabelSelector | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector over plain ``key -> value`` labels; missing/``{}`` = all."""
    if sel is None:
        return True
    for key, value in (sel.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in sel.match_expressions or ():
        present = [labels[req.key]] if req.key in labels else []
        if not _requirement(present, req.operator, req.values or ()):
            return False
    return True


def cilium_key(key: str) -> tuple[str, str]:
    """``"k8s:app"`` -> ``("k8s", "app")``; a key without a source prefix matches any source."""
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else ("any", key)


def _cilium_values(labels: dict, key: str) -> list[str]:
    source, name = cilium_key(key)
    return [v for (src, k), v in labels.items() if k == name and source in ("any", src)]


def cilium_selector_matches(sel: LabelSelector, labels: dict, skip_match_labels=()) -> bool:
    """A Cilium endpoint selector over identity labels ``{(source, key): value}``.

    (polc's choice) With an ``any`` source, NotIn/DoesNotExist look at the key in every source.
    """
    for key, value in (sel.match_labels or {}).items():
        if key in skip_match_labels:
            continue
        if value not in _cilium_values(labels, key):
            return False
    for req in sel.match_expressions or ():
        if not _requirement(_cilium_values(labels, req.key), req.operator, req.values or ()):
            return False
    return True


def _in_cidr(ip: ir.IPAddress, cidr, excepts) -> bool:
    """``ip`` in ``cidr`` and in none of ``excepts`` (different families never match)."""
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(ip.version == e.version and ip in e for e in excepts)


# --------------------------------------------------------------------------- the evaluator


class ReferenceEvaluator:
    """Judges connections from parsed policies and an inventory, independently of the compiler.

    ``policies`` come from ``lower.load_policies`` (only the validated models are used),
    ``inventory`` from ``inventory.load_inventory``.
    """

    def __init__(self, policies: list[LoadedPolicy], inventory: ir.Inventory):
        self.policies = list(policies)
        self.inventory = inventory
        # (polc's choice) When a node address is also a pod address, the pod wins.
        self.pods_by_ip = {ip: pod for pod in inventory.pods for ip in pod.ips}
        self.nodes_by_ip = {ip: node for node in inventory.nodes for ip in node.ips}
        self.pods_by_ref = {pod.ref: pod for pod in inventory.pods}
        self.ns_labels = {ns.name: dict(ns.labels) for ns in inventory.namespaces}

    # -- public API -----------------------------------------------------------------------
    def verdict(self, src_ip, dst_ip, proto, port_or_icmp_type: int, src_node: str | None = None,
                dst_node: str | None = None) -> tuple[str, str]:
        """``("allow" | "deny", explanation)`` for the first packet of a connection.

        ``src_node``/``dst_node`` name the node each side's evaluation runs on; ``None``
        means the node the pod runs on (as ``polc test`` does).  Addresses of that node are
        ``host``, addresses of other nodes ``remote-node``.
        """
        decision = self.decide(src_ip, dst_ip, proto, port_or_icmp_type, src_node, dst_node)
        return decision.verdict, decision.explain()

    def decide(self, src_ip, dst_ip, proto, port: int, src_node: str | None = None,
               dst_node: str | None = None, payload: bytes | None = None) -> Decision:
        """Like :meth:`verdict`, with the per-direction results.

        ``payload``: the request sent on the connection once it is open (an HTTP request
        head, or a DNS query; for DNS over TCP with its length prefix); L7 rules judge it.
        """
        src, dst = ipaddress.ip_address(str(src_ip)), ipaddress.ip_address(str(dst_ip))
        if src.version != dst.version:
            raise ValueError(f"source {src} and destination {dst} are of different address families")
        proto = parse_proto(proto)
        src_pod, dst_pod = self.pods_by_ip.get(src), self.pods_by_ip.get(dst)
        # Egress of the source runs on the source pod's node, ingress on the destination's.
        egress_node = src_node if src_node is not None else (src_pod.node if src_pod else None)
        ingress_node = dst_node if dst_node is not None else (dst_pod.node if dst_pod else None)
        runs = [self._direction(EGRESS, src, dst, proto, port, egress_node, dst_pod, payload)]
        if runs[0].verdict == "allow":
            runs.append(self._direction(INGRESS, dst, src, proto, port, ingress_node, dst_pod, payload))
        verdict = "allow" if all(r.verdict == "allow" for r in runs) else "deny"
        return Decision(verdict, tuple(runs))

    def party(self, ip: ir.IPAddress, local_node: str | None) -> Party:
        """Who ``ip`` is when seen from ``local_node``."""
        pod = self.pods_by_ip.get(ip)
        if pod is not None:
            return Party(ip, "pod", dict(pod.labels), pod=pod)
        node = self.nodes_by_ip.get(ip)
        if node is not None:
            kind = "host" if node.name == local_node else "remote-node"
            return Party(ip, kind, {("reserved", kind): ""}, node=node)
        # (polc's choice) World addresses carry reserved:world and reserved:world-ipv4/-ipv6,
        # so that endpoint selectors on reserved:world match them.
        family = f"world-ipv{ip.version}"
        return Party(ip, "world", {("reserved", "world"): "", ("reserved", family): ""})

    # -- one direction ----------------------------------------------------------------------
    def _direction(self, direction: str, subject_ip, peer_ip, proto, port, node, dst_pod,
                   payload: bytes | None = None) -> DirectionResult:
        subject = self.party(subject_ip, node)
        if subject.kind != "pod":
            # Only pods are endpoints with policy; nodes and the world are not policed here.
            return DirectionResult(direction, "allow", NOT_POLICED, None, node, subject.describe())
        peer = self.party(peer_ip, node)
        pod = subject.pod
        verdicts = list(self._matching_rules(direction, pod, peer, proto, port, dst_pod))
        desc = subject.describe()
        deny = next((origin for action, origin in verdicts if action == "deny"), None)
        if deny is not None:  # deny rules beat every allow, isolated or not
            return DirectionResult(direction, "deny", DENY_RULE, deny, node, desc)
        allow = next((origin for action, origin in verdicts if action == "allow"), None)
        if allow is None and direction == INGRESS and peer.kind == "host":
            allow = LOCALHOST_RULE  # Cilium's allow-localhost: the pod's own node may reach it
        l7 = [found for action, found in verdicts if action == "l7"]
        if l7 and allow is None:
            # Only L7 rules allow this port for this peer: each request must match one of them
            # (an L3/L4 allow of the same port and peer would make them moot).
            return self._l7_result(direction, l7, proto, payload, node, desc)
        isolation = self._isolation(direction, pod)
        if isolation is None:  # a direction no policy isolates allows everything
            return DirectionResult(direction, "allow", NOT_ISOLATED, None, node, desc)
        if allow is not None:
            return DirectionResult(direction, "allow", ALLOW_RULE, allow, node, desc)
        return DirectionResult(direction, "deny", DEFAULT_DENY, isolation, node, desc)

    @staticmethod
    def _l7_result(direction, l7, proto, payload, node, desc) -> DirectionResult:
        origin = l7[0][0]
        if payload is None:  # the connection opens; requests are judged when they come
            return DirectionResult(direction, "allow", ALLOW_RULE, origin, node, desc)
        port_rules = [pr for _, pr in l7]
        if port_rules[0].rules.http:
            ok = reference_l7.http_allowed([h for pr in port_rules for h in pr.rules.http or ()], payload)
        else:
            name = reference_l7.parse_dns_query(payload, tcp=proto == ir.Proto.TCP)
            ok = reference_l7.dns_allowed([d for pr in port_rules for d in pr.rules.dns or ()], name)
        return DirectionResult(direction, "allow" if ok else "deny", L7_ALLOW if ok else L7_DENY, origin, node, desc)

    def _isolation(self, direction: str, pod: ir.Pod) -> dict | None:
        """The first policy part that makes ``pod`` default-deny in ``direction``, if any."""
        for policy in self.policies:
            if policy.kind == k8s.KIND:
                origin = self._k8s_isolation(policy, direction, pod)
            else:
                origin = self._cilium_isolation(policy, direction, pod)
            if origin is not None:
                return origin
        return None

    def _matching_rules(self, direction, pod, peer, proto, port, dst_pod) -> Iterator[tuple[str, dict]]:
        """``(action, origin)`` of every rule of ``direction`` that selects ``pod`` and matches."""
        for policy in self.policies:
            if policy.kind == k8s.KIND:
                yield from self._k8s_rules(policy, direction, pod, peer, proto, port, dst_pod)
            else:
                yield from self._cilium_rules(policy, direction, pod, peer, proto, port, dst_pod)

    @staticmethod
    def _origin(policy: LoadedPolicy, path: tuple) -> dict:
        line, col = policy.doc.position(path)
        return {"file": policy.doc.file, "line": line, "col": col, "policy": policy.ref, "where": path_str(path)}

    # -- named ports ----------------------------------------------------------------------
    @staticmethod
    def _named_port(dst_pod: ir.Pod | None, name: str, proto: ir.Proto, port: int) -> bool:
        """A named port is resolved on the destination pod; a name it does not serve matches nothing."""
        if dst_pod is None:
            return False
        return any(cp.name == name and cp.proto == proto and cp.port == port for cp in dst_pod.ports)

    # ===================================================================== Kubernetes
    def _k8s_pod_labels(self, pod: ir.Pod) -> dict[str, str]:
        """A pod's own labels: its identity labels of source ``k8s``."""
        return {key: value for (source, key), value in pod.labels if source == "k8s"}

    def _k8s_namespace_labels(self, namespace: str) -> dict[str, str]:
        """A namespace's labels; the API server always adds kubernetes.io/metadata.name."""
        labels = dict(self.ns_labels.get(namespace, {}))
        labels[NS_NAME_LABEL] = namespace
        return labels

    @staticmethod
    def _k8s_types(spec: k8s.NetworkPolicySpec) -> set[str]:
        """policyTypes, defaulted: Ingress always, Egress when there are egress rules."""
        if spec.policy_types:
            return set(spec.policy_types)
        return {"Ingress", "Egress"} if spec.egress else {"Ingress"}

    def _k8s_selects(self, policy: LoadedPolicy, pod: ir.Pod) -> bool:
        """A NetworkPolicy selects pods of its own namespace that match podSelector ({} = all)."""
        spec = policy.model.spec
        return pod.namespace == policy.namespace and k8s_selector_matches(spec.pod_selector,
                                                                           self._k8s_pod_labels(pod))

    def _k8s_isolation(self, policy: LoadedPolicy, direction: str, pod: ir.Pod) -> dict | None:
        # Isolation is per direction: the policy selects the pod and lists the direction's type.
        if direction.capitalize() not in self._k8s_types(policy.model.spec) or not self._k8s_selects(policy, pod):
            return None
        types = policy.model.spec.policy_types or []
        name = direction.capitalize()
        path = ("spec", "policyTypes", types.index(name)) if name in types else ("spec",)
        return self._origin(policy, path)

    def _k8s_rules(self, policy, direction, pod, peer, proto, port, dst_pod):
        spec = policy.model.spec
        # Rules of a direction missing from policyTypes do not apply.
        if direction.capitalize() not in self._k8s_types(spec) or not self._k8s_selects(policy, pod):
            return
        for i, rule in enumerate((spec.ingress if direction == INGRESS else spec.egress) or ()):
            peers = rule.from_ if direction == INGRESS else rule.to
            # Missing or empty from/to = every peer; missing or empty ports = every port and protocol.
            peer_ok = not peers or any(self._k8s_peer(policy, p, peer) for p in peers)
            ports_ok = not rule.ports or any(self._k8s_port(p, proto, port, dst_pod) for p in rule.ports)
            if peer_ok and ports_ok:
                yield "allow", self._origin(policy, ("spec", direction, i))

    def _k8s_peer(self, policy: LoadedPolicy, p: k8s.NetworkPolicyPeer, peer: Party) -> bool:
        if p.ip_block is not None:
            # (polc's choice, as the upstream e2e tests expect) ipBlock matches any address,
            # pods and nodes included.
            cidr = parse_cidr(p.ip_block.cidr, allow_bare_ip=False)
            excepts = [parse_cidr(e, allow_bare_ip=False) for e in p.ip_block.except_ or ()]
            return _in_cidr(peer.ip, cidr, excepts)
        if peer.kind != "pod":  # pod and namespace selectors select pods only
            return False
        pod = peer.pod
        if p.namespace_selector is None:  # podSelector alone: pods of the policy's namespace
            ns_ok = pod.namespace == policy.namespace
        else:  # namespaceSelector ({} = every namespace), ANDed with podSelector when both given
            ns_ok = k8s_selector_matches(p.namespace_selector, self._k8s_namespace_labels(pod.namespace))
        return ns_ok and k8s_selector_matches(p.pod_selector, self._k8s_pod_labels(pod))

    def _k8s_port(self, p: k8s.NetworkPolicyPort, proto: ir.Proto, port: int, dst_pod) -> bool:
        want = ir.Proto[p.protocol or "TCP"]  # protocol defaults to TCP
        if proto != want:
            return False
        if p.port is None:  # a protocol without port: every port of it
            return True
        if isinstance(p.port, str):
            return self._named_port(dst_pod, p.port, proto, port)
        return p.port <= port <= (p.end_port if p.end_port is not None else p.port)  # endPort inclusive

    # ===================================================================== Cilium
    def _cilium_selects(self, policy: LoadedPolicy, rule: cilium.Rule, pod: ir.Pod) -> bool:
        """endpointSelector; in a CNP it is limited to the policy's namespace.

        As Cilium's AddMatch, a CNP's matchLabels entry for k8s:io.kubernetes.pod.namespace is
        replaced by the policy's namespace (other spellings of the key stay and AND).
        """
        labels = dict(pod.labels)
        if policy.namespace is None:
            return cilium_selector_matches(rule.endpoint_selector, labels)
        return pod.namespace == policy.namespace and cilium_selector_matches(
            rule.endpoint_selector, labels, skip_match_labels=("k8s:" + NS_KEY,))

    @staticmethod
    def _section_on(rule: cilium.Rule, direction: str) -> bool:
        """A direction's section counts when its allow or deny list has an item (even ``{}``)."""
        if direction == INGRESS:
            return bool(rule.ingress) or bool(rule.ingress_deny)
        return bool(rule.egress) or bool(rule.egress_deny)

    def _cilium_isolation(self, policy: LoadedPolicy, direction: str, pod: ir.Pod) -> dict | None:
        for path, rule in self._cilium_rule_list(policy):
            if not self._section_on(rule, direction) or not self._cilium_selects(policy, rule, pod):
                continue
            # Default deny comes with a section, unless enableDefaultDeny turns it off.
            explicit = getattr(rule.enable_default_deny, direction) if rule.enable_default_deny else None
            if explicit is False:
                continue
            section = direction if getattr(rule, direction) else direction + "Deny"
            return self._origin(policy, path + (section,))
        return None

    @staticmethod
    def _cilium_rule_list(policy: LoadedPolicy) -> list[tuple[tuple, cilium.Rule]]:
        model = policy.model
        out = [(("spec",), model.spec)] if model.spec is not None else []
        return out + [(("specs", i), r) for i, r in enumerate(model.specs or ())]

    def _cilium_rules(self, policy, direction, pod, peer, proto, port, dst_pod):
        for path, rule in self._cilium_rule_list(policy):
            if not self._cilium_selects(policy, rule, pod):
                continue
            matches_init = any(cilium_key(k) == ("reserved", "init") for k in rule.endpoint_selector.keys())
            for section, action in ((direction, "allow"), (direction + "Deny", "deny")):
                items = getattr(rule, "ingress_deny" if section == "ingressDeny" else
                                "egress_deny" if section == "egressDeny" else section) or ()
                for i, item in enumerate(items):
                    if not self._cilium_peer(policy, item, peer, matches_init):
                        continue
                    origin = self._origin(policy, path + (section, i))
                    l7 = [pr for pr in self._l7_port_rules(item, proto, port, dst_pod)] if action == "allow" else []
                    if l7 and not self._plain_port_match(item, proto, port, dst_pod):
                        yield from (("l7", (origin, pr)) for pr in l7)
                    elif self._cilium_port(item, proto, port, dst_pod):
                        yield action, origin

    def _l7_port_rules(self, item, proto, port, dst_pod) -> list:
        """The port rules of ``item`` with L7 rules that cover (proto, port)."""
        return [pr for pr in getattr(item, "to_ports", None) or ()
                if getattr(pr, "rules", None) and (pr.rules.http or pr.rules.dns)
                and any(self._cilium_port_protocol(pp, proto, port, dst_pod) for pp in pr.ports or ())]

    def _plain_port_match(self, item, proto, port, dst_pod) -> bool:
        """Whether a port rule of ``item`` without L7 rules covers (proto, port)."""
        return any(not (getattr(pr, "rules", None) and (pr.rules.http or pr.rules.dns))
                   and any(self._cilium_port_protocol(pp, proto, port, dst_pod) for pp in pr.ports or ())
                   for pr in getattr(item, "to_ports", None) or ())

    def _cilium_peer(self, policy: LoadedPolicy, item, peer: Party, matches_init: bool) -> bool:
        field_ = next(((alias, value) for name, alias in item.PEER_FIELDS
                       if (value := getattr(item, name))), None)
        if field_ is None:
            # No peer: with toPorts or icmps every peer (world and host included);
            # (polc's choice) with neither, the rule matches nothing.
            return bool(getattr(item, "to_ports", None)) or bool(item.icmps)
        alias, values = field_
        if alias in ("fromEndpoints", "toEndpoints"):
            return any(self._endpoint_peer(policy, sel, peer, matches_init) for sel in values)
        if alias in ("fromCIDR", "toCIDR", "fromCIDRSet", "toCIDRSet"):
            # (polc's choice) Cilium CIDR peers select only addresses outside the cluster.
            if peer.kind != "world":
                return False
            for entry in values:
                if isinstance(entry, str):  # fromCIDR: a prefix or a bare address (a host prefix)
                    if _in_cidr(peer.ip, parse_cidr(entry, allow_bare_ip=True), ()):
                        return True
                else:
                    excepts = [parse_cidr(e, allow_bare_ip=False) for e in entry.except_ or ()]
                    if _in_cidr(peer.ip, parse_cidr(entry.cidr, allow_bare_ip=False), excepts):
                        return True
            return False
        if alias in ("fromEntities", "toEntities"):
            return any(self._entity(e, peer) for e in values)
        raise AssertionError(f"unsupported peer field {alias} passed validation")

    def _endpoint_peer(self, policy: LoadedPolicy, sel: LabelSelector, peer: Party, matches_init: bool) -> bool:
        """fromEndpoints/toEndpoints, with Cilium's namespace scoping.

        A selector naming a ``reserved:`` label is used as written.  Otherwise, without a
        namespace key: in a CNP it is limited to the policy's namespace -- (polc's choice)
        unless it selects on namespace labels (io.cilium.k8s.namespace.labels.*); in a CCNP to
        pods of any namespace (not reserved identities) unless the rule's subject selects
        reserved:init.
        """
        keys = [cilium_key(k) for k in sel.keys()]
        if not any(source == "reserved" for source, _ in keys):
            scoped = lambda name: any(s in ("k8s", "any") and name(k) for s, k in keys)  # noqa: E731
            has_ns = scoped(lambda k: k == NS_KEY)
            has_ns_labels = scoped(lambda k: k.startswith(NS_LABELS_PREFIX))
            if not has_ns:
                if policy.namespace is not None:
                    if not has_ns_labels and not (peer.kind == "pod" and peer.pod.namespace == policy.namespace):
                        return False
                elif not matches_init and peer.kind != "pod":
                    return False
        return cilium_selector_matches(sel, peer.labels)

    @staticmethod
    def _entity(entity: str, peer: Party) -> bool:
        if entity == "all":
            return True
        if entity == "world":
            return peer.kind == "world"
        if entity == "cluster":  # endpoints and nodes (init, health, ... do not occur in an inventory)
            return peer.kind in ("pod", "host", "remote-node")
        if entity in ("host", "remote-node"):
            return peer.kind == entity
        return False  # none, kube-apiserver, init, health, unmanaged, ingress: no such parties here

    def _cilium_port(self, item, proto: ir.Proto, port: int, dst_pod) -> bool:
        if item.icmps:  # ICMP types; a field without family is IPv4
            return any(proto == (ir.Proto.ICMPV6 if f.family == "IPv6" else ir.Proto.ICMP)
                       and port == f.type_number() for rule in item.icmps for f in rule.fields or ())
        if item.to_ports:
            return any(self._cilium_port_protocol(pp, proto, port, dst_pod)
                       for rule in item.to_ports for pp in rule.ports or ())
        return True  # no L4 part: every protocol and port, ICMP included

    def _cilium_port_protocol(self, pp: cilium.PortProtocol, proto, port, dst_pod) -> bool:
        protos = _L4 if pp.protocol in (None, "ANY") else (ir.Proto[pp.protocol],)  # ANY: not ICMP
        if proto not in protos:
            return False
        if pp.port is None:
            return True
        text = str(pp.port)
        if not text.isdigit():
            # (polc's choice) Cilium port names are matched lowercased.
            return self._named_port(dst_pod, text.lower(), proto, port)
        number = int(text)
        if number == 0:  # port 0 = every port
            return True
        return number <= port <= (pp.end_port if pp.end_port is not None else number)
