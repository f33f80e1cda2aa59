"""Lowering of representative Kubernetes and Cilium policies to the IR."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from polc.compiler import ir
from polc.compiler.ir import Action, Direction, NamedPort, Op, PeerCIDR, PeerEntity, PeerSelector, PortRange, Proto
from polc.compiler.lower import load_policies, lower

DATA = Path(__file__).parent / "data" / "frontend" / "lower"
NS = "io.kubernetes.pod.namespace"


def req(source, key, op=Op.IN, *values):
    return ir.Requirement(source, key, op, tuple(values))


def sel(*reqs):
    return ir.Selector(tuple(sorted(reqs)))


def net(text):
    return ipaddress.ip_network(text)


@pytest.fixture(scope="module")
def k8s() -> ir.PolicySet:
    return lower(load_policies([DATA / "k8s.yaml"]))


@pytest.fixture(scope="module")
def cilium() -> ir.PolicySet:
    return lower(load_policies([DATA / "cilium.yaml"]))


def of(items, policy):
    return [x for x in items if x.origin.policy == policy]


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_subject_is_pod_selector_in_policy_namespace(k8s):
    (rule,) = of(k8s.rules, "NetworkPolicy prod/web")
    assert rule.subject == sel(req("k8s", "app", Op.IN, "web"), req("k8s", "tier", Op.NOT_IN, "db", "cache"),
                               req("k8s", NS, Op.IN, "prod"))
    assert (rule.direction, rule.action) == (Direction.INGRESS, Action.ALLOW)


def test_k8s_peers(k8s):
    (rule,) = of(k8s.rules, "NetworkPolicy prod/web")
    assert rule.peers == (
        PeerSelector(sel(req("k8s", "role", Op.IN, "frontend"), req("k8s", NS, Op.IN, "prod"))),
        PeerSelector(sel(req("k8s", "io.cilium.k8s.namespace.labels.team", Op.IN, "ops"))),
        PeerSelector(sel(req("k8s", "monitoring", Op.EXISTS), req("k8s", NS, Op.EXISTS))),
        PeerCIDR(net("172.16.0.0/12"), (net("172.16.5.0/24"),), include_cluster=True),
    )


def test_k8s_ports(k8s):
    (rule,) = of(k8s.rules, "NetworkPolicy prod/web")
    assert rule.ports == (
        PortRange(Proto.TCP, 8080, 8080),
        NamedPort(Proto.UDP, "metrics"),
        PortRange(Proto.TCP, 30000, 32767),
        PortRange(Proto.SCTP, 0, 65535),
    )


def test_k8s_policy_types_default_and_isolations(k8s):
    web = of(k8s.isolations, "NetworkPolicy prod/web")
    assert [i.direction for i in web] == [Direction.INGRESS]  # egress rules ignored: not in policyTypes
    egress_only = of(k8s.isolations, "NetworkPolicy default/egress-only")
    assert [i.direction for i in egress_only] == [Direction.INGRESS, Direction.EGRESS]
    assert egress_only[0].subject == sel(req("k8s", NS, Op.IN, "default"))
    (rule,) = of(k8s.rules, "NetworkPolicy default/egress-only")
    assert rule.direction is Direction.EGRESS
    assert rule.peers == (PeerSelector(sel(req("k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
                                               Op.IN, "kube-system"))),)
    assert rule.ports == (PortRange(Proto.UDP, 53, 53),)


def test_k8s_empty_rule_allows_everything(k8s):
    (rule,) = of(k8s.rules, "NetworkPolicy prod/allow-all")
    assert rule.peers == (ir.PEER_ALL,) and rule.ports is None
    assert [i.direction for i in of(k8s.isolations, "NetworkPolicy prod/allow-all")] == [
        Direction.INGRESS, Direction.EGRESS]


def test_k8s_origins_point_at_rules(k8s):
    (rule,) = of(k8s.rules, "NetworkPolicy prod/web")
    assert (rule.origin.line, rule.origin.col, rule.origin.where) == (15, 5, "spec.ingress[0]")
    assert rule.origin.file == str(DATA / "k8s.yaml")
    iso = of(k8s.isolations, "NetworkPolicy prod/web")[0]
    assert iso.origin.where == "spec.policyTypes[0]"


# --------------------------------------------------------------------------- Cilium

API = "CiliumNetworkPolicy shop/api"
API_SUBJECT = sel(req("any", "app", Op.IN, "api"), req("k8s", NS, Op.IN, "shop"))


def test_cnp_subject_is_forced_into_policy_namespace(cilium):
    assert {r.subject for r in of(cilium.rules, API)} == {API_SUBJECT}


def test_cnp_endpoint_peers_are_namespace_scoped(cilium):
    rule = of(cilium.rules, API)[0]
    assert rule.peers == (
        PeerSelector(sel(req("any", "app", Op.IN, "web"), req("k8s", NS, Op.IN, "shop"))),
        PeerSelector(sel(req("k8s", "app", Op.IN, "prometheus"), req("k8s", NS, Op.IN, "monitoring"))),
        PeerSelector(sel(req("k8s", NS, Op.IN, "shop"))),
        PeerSelector(sel(req("reserved", "host", Op.IN, ""))),  # reserved: no namespace added
        PeerSelector(sel(req("k8s", "io.cilium.k8s.namespace.labels.team", Op.IN, "ops"))),
    )


def test_cnp_ports(cilium):
    rules = of(cilium.rules, API)
    assert rules[0].ports == (
        PortRange(Proto.TCP, 8080, 8080),
        NamedPort(Proto.TCP, "https"), NamedPort(Proto.UDP, "https"), NamedPort(Proto.SCTP, "https"),
        PortRange(Proto.UDP, 9000, 9100),
    )
    # toPorts without a peer field: every peer; port "0": every port.
    assert rules[1].peers == (ir.PEER_ALL,)
    assert rules[1].ports == (PortRange(Proto.SCTP, 0, 65535),)


def test_cnp_entities_and_empty_rule(cilium):
    rules = of(cilium.rules, API)
    assert rules[2].peers == (PeerEntity("world"), PeerEntity("cluster")) and rules[2].ports is None
    assert rules[3].peers == () and rules[3].ports is None  # `{}`: matches nothing


def test_cnp_deny_with_icmp_and_cidrs(cilium):
    (deny,) = [r for r in of(cilium.rules, API) if r.action is Action.DENY]
    assert deny.direction is Direction.INGRESS
    assert deny.peers == (PeerCIDR(net("192.0.2.1/32")), PeerCIDR(net("2001:db8::/32")))
    assert deny.ports == (PortRange(Proto.ICMP, 8, 8), PortRange(Proto.ICMPV6, 128, 128))
    egress = of(cilium.rules, API)[-1]
    assert egress.peers == (PeerCIDR(net("0.0.0.0/0"), (net("10.0.0.0/8"),), include_cluster=False),)


def test_cnp_rules_in_source_order(cilium):
    assert [r.origin.where for r in of(cilium.rules, API)] == [
        "spec.ingress[0]", "spec.ingress[1]", "spec.ingress[2]", "spec.ingress[3]",
        "spec.ingressDeny[0]", "spec.egress[0]"]


def test_cnp_default_deny_per_direction(cilium):
    isos = of(cilium.isolations, API)
    assert [(i.direction, i.origin.where) for i in isos] == [
        (Direction.INGRESS, "spec.ingress"), (Direction.EGRESS, "spec.egress")]


CCNP = "CiliumClusterwideNetworkPolicy cluster-wide"


def test_ccnp_peers_match_every_namespace(cilium):
    rules = of(cilium.rules, CCNP)
    assert rules[0].subject == sel()
    assert rules[0].peers == (
        PeerSelector(sel(req("any", "app", Op.IN, "dns"), req("k8s", NS, Op.EXISTS))),
        PeerSelector(sel(req("any", NS, Op.IN, "kube-system"))),
    )
    assert rules[1].peers == (PeerSelector(sel(req("k8s", NS, Op.EXISTS))),)
    # A subject selecting initializing endpoints gets no namespace requirement on peers.
    assert rules[2].peers == (PeerSelector(sel(req("any", "app", Op.IN, "dns"))),)


def test_ccnp_enable_default_deny_false(cilium):
    isos = of(cilium.isolations, CCNP)
    assert [i.origin.where for i in isos] == ["specs[0].egress", "specs[2].egress"]


def test_ingress_empty_rule_turns_on_default_deny(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: lockdown}\n"
        "spec:\n  endpointSelector: {}\n  ingress: [{}]\n")
    ps = lower(load_policies([tmp_path / "p.yaml"]))
    assert [i.direction for i in ps.isolations] == [Direction.INGRESS]
    assert ps.isolations[0].subject == sel(req("k8s", NS, Op.IN, "default"))
    assert [(r.peers, r.ports) for r in ps.rules] == [((), None)]


def test_starwars_example_lowers():
    root = Path(__file__).parent.parent / "examples" / "starwars"
    ps = lower(load_policies([root / "policy.yaml"]))
    (rule,) = ps.rules
    assert rule.subject == sel(req("any", "org", Op.IN, "empire"), req("any", "class", Op.IN, "deathstar"),
                               req("k8s", NS, Op.IN, "default"))
    assert rule.peers == (PeerSelector(sel(req("any", "org", Op.IN, "empire"), req("k8s", NS, Op.IN, "default"))),)
    assert rule.ports == (PortRange(Proto.TCP, 80, 80),)
    assert [i.direction for i in ps.isolations] == [Direction.INGRESS]
