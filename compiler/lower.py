"""Policy frontend driver: load policy files, validate them, lower them to ``ir.PolicySet``.

``load_policies(paths)`` returns validated ``LoadedPolicy`` objects (typed model plus the
document it came from); ``lower(policies)`` resolves each policy kind's scoping rules
(namespaces, defaults, entities) into plain IR rules and isolations, in source order,
every one carrying an ``ir.Origin`` that points at its YAML node.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from . import ir
from .errors import CompileError, PolcError, raise_all
from .frontends import cilium, dsl, k8s
from .frontends.common import LabelSelector, LoadedPolicy, parse_cidr, validate
from .source import Document, expand_paths, gc_paused, load_file, path_str

INVENTORY_KINDS = ("Namespace", "Pod", "Node")
POLICY_KINDS = {k8s.KIND: (k8s.API_VERSION, k8s.NetworkPolicy),
                "CiliumNetworkPolicy": (cilium.API_VERSION, cilium.CiliumNetworkPolicy),
                "CiliumClusterwideNetworkPolicy": (cilium.API_VERSION, cilium.CiliumClusterwideNetworkPolicy)}

NS_KEY = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
ALL_PORTS = (0, 65535)
ANY_PROTOS = (ir.Proto.TCP, ir.Proto.UDP, ir.Proto.SCTP)


# --------------------------------------------------------------------------- loading


@gc_paused()
def load_policies(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LoadedPolicy]:
    """Load and validate every policy in ``paths`` (files or directories).

    ``.pol`` files are read by the DSL frontend, everything else as YAML/JSON; both give
    documents of the same shape.  Raises ``CompileError`` (an ``ErrorList`` when there are
    several) with positions.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    docs: list[Document] = []
    errors: list[PolcError] = []
    for file in expand_paths(paths):
        try:
            docs.extend(dsl.load_file(file) if dsl.is_dsl(file) else load_file(file))
        except PolcError as exc:
            errors.append(exc)
    raise_all(errors)
    return parse_policies(docs)


@gc_paused()
def parse_policies(docs: Iterable[Document]) -> list[LoadedPolicy]:
    """Validate already-loaded documents as policies (all errors are collected)."""
    out: list[LoadedPolicy] = []
    errors: list[PolcError] = []
    seen: dict[str, LoadedPolicy] = {}
    for doc in docs:
        try:
            policy = parse_policy(doc)
        except PolcError as exc:
            errors.append(exc)
            continue
        first = seen.setdefault(policy.ref, policy)
        if first is not policy:
            line, _ = first.doc.position(("metadata", "name"))
            errors.append(doc.error(("metadata", "name"),
                                    f"duplicate {policy.ref} (first defined at {first.doc.file}:{line})"))
            continue
        out.append(policy)
    raise_all(errors)
    return out


def parse_policy(doc: Document) -> LoadedPolicy:
    """Validate one document as a NetworkPolicy, CNP or CCNP."""
    if not isinstance(doc.data, dict):
        raise doc.error((), "a policy document must be a mapping (an object with apiVersion and kind)")
    kind, api_version = doc.data.get("kind"), doc.data.get("apiVersion")
    if kind is None:
        raise doc.error((), "document has no 'kind'")
    if kind in INVENTORY_KINDS:
        raise doc.error(("kind",), f"{kind} objects are cluster inventory, not policy: pass them with --cluster")
    if kind not in POLICY_KINDS:
        raise doc.error(("kind",), f"{doc.describe()} ({api_version}) is not a policy kind polc understands "
                                   f"(expected one of {', '.join(POLICY_KINDS)})")
    expected, model = POLICY_KINDS[kind]
    if api_version != expected:
        raise doc.error(("apiVersion",), f"unsupported apiVersion {api_version!r} for {kind} (expected {expected})")
    obj = validate(doc, model)
    namespace = None
    if kind != "CiliumClusterwideNetworkPolicy":
        namespace = obj.metadata.namespace or "default"
    return LoadedPolicy(kind, namespace, obj.metadata.name, obj, doc)


# --------------------------------------------------------------------------- lowering


def lower(policies: Iterable[LoadedPolicy]) -> ir.PolicySet:
    """Lower validated policies to one ``ir.PolicySet`` (rules and isolations in source order)."""
    rules: list[ir.Rule] = []
    isolations: list[ir.Isolation] = []
    sources: list[str] = []
    errors: list[PolcError] = []
    for policy in policies:
        lowerer = _K8sLowerer if policy.kind == k8s.KIND else _CiliumLowerer
        try:
            r, i = lowerer(policy).run()
        except PolcError as exc:
            errors.append(exc)
            continue
        rules += r
        isolations += i
        if policy.doc.file not in sources:
            sources.append(policy.doc.file)
    raise_all(errors)
    return ir.PolicySet(tuple(rules), tuple(isolations), tuple(sources))


def compile_policies(paths) -> ir.PolicySet:
    """``lower(load_policies(paths))``."""
    return lower(load_policies(paths))


class _Lowerer:
    """Shared state of lowering one policy object."""

    def __init__(self, policy: LoadedPolicy):
        self.policy = policy
        self.doc = policy.doc
        self.ns = policy.namespace

    def origin(self, path: tuple) -> ir.Origin:
        line, col = self.doc.position(path)
        return ir.Origin(self.doc.file, line, col, self.policy.ref, path_str(path))


def _req(source: str, key: str, op: ir.Op, values=()) -> ir.Requirement:
    return ir.Requirement(source, key, op, tuple(values))


def _selector(reqs: Iterable[ir.Requirement]) -> ir.Selector:
    """A selector with its requirements sorted and deduplicated (so equal selectors compare equal)."""
    return ir.Selector(tuple(sorted(set(reqs))))


def _ns_in(ns: str) -> ir.Requirement:
    return _req("k8s", NS_KEY, ir.Op.IN, (ns,))


def _selector_reqs(sel: LabelSelector | None, key_fn) -> list[ir.Requirement]:
    """Requirements of a label selector; ``key_fn(key) -> (source, key)``."""
    if sel is None:
        return []
    out = [_req(*key_fn(k), ir.Op.IN, (v,)) for k, v in (sel.match_labels or {}).items()]
    for expr in sel.match_expressions or ():
        out.append(_req(*key_fn(expr.key), ir.Op(expr.operator), expr.values or ()))
    return out


# --------------------------------------------------------------------------- Kubernetes


class _K8sLowerer(_Lowerer):
    """NetworkPolicy -> IR, as Cilium translates it (``pkg/k8s/network_policy.go``)."""

    def run(self):
        spec = self.policy.model.spec
        subject = _selector(_selector_reqs(spec.pod_selector, self._pod_key) + [_ns_in(self.ns)])
        types = spec.effective_policy_types()
        isolations = [ir.Isolation(d, subject, self.origin(self._isolation_path(t)))
                      for t, d in (("Ingress", ir.Direction.INGRESS), ("Egress", ir.Direction.EGRESS))
                      if t in types]
        rules = []
        # Rules of a direction missing from policyTypes do not apply (the policy ignores them).
        if "Ingress" in types:
            rules += self._rules(spec.ingress, "ingress", ir.Direction.INGRESS, subject)
        if "Egress" in types:
            rules += self._rules(spec.egress, "egress", ir.Direction.EGRESS, subject)
        return rules, isolations

    def _isolation_path(self, policy_type: str) -> tuple:
        types = self.doc.data.get("spec", {}).get("policyTypes") or []
        if policy_type in types:
            return ("spec", "policyTypes", types.index(policy_type))
        return ("spec",)

    @staticmethod
    def _pod_key(key: str) -> tuple[str, str]:
        return ("k8s", key)

    @staticmethod
    def _ns_label_key(key: str) -> tuple[str, str]:
        return ("k8s", NS_LABELS_PREFIX + key)

    def _rules(self, rules, section, direction, subject) -> list[ir.Rule]:
        out = []
        for i, rule in enumerate(rules or ()):
            peers_list = rule.from_ if direction is ir.Direction.INGRESS else rule.to
            peers = tuple(self._peer(p) for p in peers_list) if peers_list else (ir.PEER_ALL,)
            ports = tuple(p for port in rule.ports for p in self._port(port)) if rule.ports else None
            out.append(ir.Rule(direction, ir.Action.ALLOW, subject, peers, ports,
                               self.origin(("spec", section, i))))
        return out

    def _peer(self, peer: k8s.NetworkPolicyPeer) -> ir.Peer:
        if peer.ip_block is not None:
            cidr, excepts = peer.ip_block.networks()
            return ir.PeerCIDR(cidr, excepts, include_cluster=True)
        reqs = _selector_reqs(peer.pod_selector, self._pod_key)
        if peer.namespace_selector is None:
            reqs.append(_ns_in(self.ns))
        else:
            ns_reqs = _selector_reqs(peer.namespace_selector, self._ns_label_key)
            # Namespace selectors select pods only (never world or nodes): a positive
            # requirement implies that; without one (empty, or only NotIn/DoesNotExist) say so.
            positive = any(r.op in (ir.Op.IN, ir.Op.EXISTS) for r in ns_reqs)
            reqs += ns_reqs if positive else ns_reqs + [_req("k8s", NS_KEY, ir.Op.EXISTS)]
        return ir.PeerSelector(_selector(reqs))

    @staticmethod
    def _port(port: k8s.NetworkPolicyPort) -> list[ir.Port]:
        proto = ir.Proto[port.protocol or "TCP"]
        if port.port is None:
            return [ir.PortRange(proto, *ALL_PORTS)]
        if isinstance(port.port, str):
            return [ir.NamedPort(proto, port.port)]
        return [ir.PortRange(proto, port.port, port.end_port or port.port)]


# --------------------------------------------------------------------------- Cilium


_SECTIONS = (
    ("ingress", ir.Direction.INGRESS, ir.Action.ALLOW),
    ("ingressDeny", ir.Direction.INGRESS, ir.Action.DENY),
    ("egress", ir.Direction.EGRESS, ir.Action.ALLOW),
    ("egressDeny", ir.Direction.EGRESS, ir.Action.DENY),
)


def _cilium_key(key: str) -> tuple[str, str]:
    """``k8s:app`` -> ``("k8s", "app")``; a key without a source matches any source."""
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else ("any", key)


class _CiliumLowerer(_Lowerer):
    """CNP/CCNP -> IR, scoping selectors as ``pkg/k8s/apis/cilium.io/utils/utils.go`` does."""

    def run(self):
        rules, isolations = [], []
        for path, rule in self.policy.model.rules():
            r, i = self._rule(path, rule)
            rules += r
            isolations += i
        return rules, isolations

    def _rule(self, path: tuple, rule: cilium.Rule):
        subject = self._subject(rule.endpoint_selector)
        matches_init = any(src == "reserved" and key == "init"
                           for src, key in map(_cilium_key, rule.endpoint_selector.keys()))
        isolations = []
        for direction, name in ((ir.Direction.INGRESS, "ingress"), (ir.Direction.EGRESS, "egress")):
            if rule.default_deny(name):
                isolations.append(ir.Isolation(direction, subject, self.origin(self._section_path(path, name))))
        sections = [(self.doc.position(path + (alias,)), alias, d, a) for alias, d, a in _SECTIONS
                    if getattr(rule, _attr(alias))]
        rules = []
        for _, alias, direction, action in sorted(sections, key=lambda s: s[0]):
            for i, item in enumerate(getattr(rule, _attr(alias))):
                peers = self._peers(item, matches_init)
                where = path + (alias, i)
                for ports, l7 in self._port_groups(item, where):
                    rules.append(ir.Rule(direction, action, subject, peers, ports, self.origin(where), l7))
        return rules, isolations

    def _section_path(self, path: tuple, direction: str) -> tuple:
        """Path of the first section (allow, then deny) that turned on default deny."""
        data = self.doc.data
        for part in path:
            data = data[part]
        for alias in (direction, direction + "Deny"):
            if data.get(alias):
                return path + (alias,)
        return path

    def _subject(self, sel: LabelSelector) -> ir.Selector:
        if self.ns is None:
            return _selector(_selector_reqs(sel, _cilium_key))
        # A CNP's subject always lives in the policy's namespace; a matchLabels entry for
        # the namespace key is overwritten, as Cilium's AddMatch does.
        labels = {k: v for k, v in (sel.match_labels or {}).items() if k != "k8s:" + NS_KEY}
        reqs = _selector_reqs(sel.model_copy(update={"match_labels": labels}), _cilium_key)
        return _selector(reqs + [_ns_in(self.ns)])

    def _endpoint_peer(self, sel: LabelSelector, matches_init: bool) -> ir.PeerSelector:
        reqs = _selector_reqs(sel, _cilium_key)
        keys = [(r.source, r.key) for r in reqs]
        if any(src == "reserved" for src, _ in keys):
            return ir.PeerSelector(_selector(reqs))
        has_ns = any(src in ("k8s", "any") and key == NS_KEY for src, key in keys)
        has_ns_labels = any(src in ("k8s", "any") and key.startswith(NS_LABELS_PREFIX) for src, key in keys)
        if not has_ns:
            if self.ns is None:
                if not matches_init:
                    reqs.append(_req("k8s", NS_KEY, ir.Op.EXISTS))
            elif not has_ns_labels:
                reqs.append(_ns_in(self.ns))
        return ir.PeerSelector(_selector(reqs))

    def _peers(self, item, matches_init: bool) -> tuple[ir.Peer, ...]:
        field = _first_nonempty_peer(item)
        if field is None:
            has_l4 = bool(getattr(item, "to_ports", None)) or bool(item.icmps)
            return (ir.PEER_ALL,) if has_l4 else ()
        alias, values = field
        if alias in ("fromEndpoints", "toEndpoints"):
            return tuple(self._endpoint_peer(s, matches_init) for s in values)
        if alias in ("fromCIDR", "toCIDR"):
            return tuple(ir.PeerCIDR(cilium_cidr(c)) for c in values)
        if alias in ("fromCIDRSet", "toCIDRSet"):
            return tuple(ir.PeerCIDR(*r.networks(), include_cluster=False) for r in values)
        if alias in ("fromEntities", "toEntities"):
            return tuple(ir.PeerEntity(e) for e in dict.fromkeys(values) if e != "none")
        raise CompileError(f"internal: peer field {alias} reached lowering")  # validated earlier

    def _port_groups(self, item, where: tuple) -> list[tuple[tuple[ir.Port, ...] | None, tuple | None]]:
        """The rule's ports, split so that each port rule with L7 rules stands alone.

        L7 rules apply to the ports of their own ``toPorts`` entry only; the entries
        without L7 rules stay together as one L3/L4 rule.
        """
        to_ports = getattr(item, "to_ports", None) or ()
        l7_entries = [(j, pr) for j, pr in enumerate(to_ports) if getattr(pr, "l7_kind", None)]
        if not l7_entries:
            return [(self._ports(item), None)]
        groups = []
        plain = [pr for pr in to_ports if not getattr(pr, "l7_kind", None)]
        if plain:
            groups.append((tuple(p for pr in plain for pp in pr.ports or () for p in _cilium_port(pp)), None))
        for j, pr in l7_entries:
            ports = tuple(p for pp in pr.ports or () for p in _cilium_port(pp))
            groups.append((ports, self._l7(pr, where + ("toPorts", j, "rules"))))
        return groups

    def _l7(self, pr, where: tuple) -> tuple[ir.L7Rule, ...]:
        if pr.l7_kind == "http":
            return tuple(ir.HTTPRule(h.method, h.path, h.host, tuple(h.headers or ()),
                                     self.origin(where + ("http", k))) for k, h in enumerate(pr.rules.http))
        return tuple(ir.DNSRule(d.match_name, d.match_pattern, self.origin(where + ("dns", k)))
                     for k, d in enumerate(pr.rules.dns))

    def _ports(self, item) -> tuple[ir.Port, ...] | None:
        if item.icmps:
            return tuple(ir.PortRange(f.proto, f.type_number(), f.type_number())
                         for rule in item.icmps for f in rule.fields or ())
        if item.to_ports:
            return tuple(p for rule in item.to_ports for pp in rule.ports or () for p in _cilium_port(pp))
        return None


def _attr(alias: str) -> str:
    return {"ingress": "ingress", "ingressDeny": "ingress_deny", "egress": "egress",
            "egressDeny": "egress_deny"}[alias]


def _first_nonempty_peer(item) -> tuple[str, list] | None:
    for field, alias in item.PEER_FIELDS:
        value = getattr(item, field)
        if value:
            return alias, value
    return None


def cilium_cidr(text: str) -> ir.IPNetwork:
    """A ``fromCIDR``/``toCIDR`` entry (a bare address is a host prefix)."""
    return parse_cidr(text, allow_bare_ip=True)


def _cilium_port(pp: cilium.PortProtocol) -> list[ir.Port]:
    protos = ANY_PROTOS if pp.protocol in (None, "ANY") else (ir.Proto[pp.protocol],)
    number = pp.number()
    if number is None:
        return [ir.NamedPort(proto, pp.port.lower()) for proto in protos]
    lo, hi = (ALL_PORTS if number == 0 else (number, pp.end_port or number))
    return [ir.PortRange(proto, lo, hi) for proto in protos]
