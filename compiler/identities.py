"""Addresses and identities: who is behind every address the tables must tell apart.

The address space is cut into LPM entries: one per pod and node address, one per prefix
that any CIDR peer or ``except`` names, and the two defaults (IPv4 world and IPv6 world).
Every address takes the entry of its longest matching prefix, and because every CIDR and
except prefix is an entry of its own, all addresses behind one entry match exactly the same
CIDR peers: classes computed per entry are exact.

Identities follow Cilium's numbering: reserved identities below 256, label-set identities
of pods from 256 in a deterministic order, CIDR identities in the local scope (bit 24).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import ir

RESERVED_IDS = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
    "world-ipv4": 9,
    "world-ipv6": 10,
}
FIRST_CLUSTER_ID = 256
LOCAL_SCOPE = 1 << 24

KIND_POD = "pod"
KIND_NODE = "node"  # the local host or a remote node, decided at load time
KIND_WORLD = "world"

WORLD_V4 = ipaddress.ip_network("0.0.0.0/0")
WORLD_V6 = ipaddress.ip_network("::/0")


def reserved_labels(name: str) -> tuple[tuple[tuple[str, str], str], ...]:
    """Labels of a reserved identity; world identities also carry ``reserved:world``."""
    labels = {("reserved", name): ""}
    if name.startswith("world"):
        labels[("reserved", "world")] = ""
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Entry:
    """One LPM entry: a prefix and the identity behind it."""

    network: ir.IPNetwork
    kind: str
    identity: int
    labels: tuple[tuple[tuple[str, str], str], ...]
    pod: ir.Pod | None = None
    node: ir.Node | None = None

    @property
    def label_map(self) -> dict:
        return dict(self.labels)


def _cidr_prefixes(policy: ir.PolicySet) -> set[ir.IPNetwork]:
    prefixes: set[ir.IPNetwork] = set()
    for rule in policy.rules:
        for peer in rule.peers:
            if isinstance(peer, ir.PeerCIDR):
                prefixes.add(peer.cidr)
                prefixes.update(peer.excepts)
    return prefixes


def pod_identities(inventory: ir.Inventory) -> dict[tuple, int]:
    """Label set -> identity, numbered from 256 in sorted label-set order."""
    label_sets = sorted({pod.labels for pod in inventory.pods})
    return {labels: FIRST_CLUSTER_ID + i for i, labels in enumerate(label_sets)}


def build_entries(policy: ir.PolicySet, inventory: ir.Inventory) -> list[Entry]:
    """All LPM entries, sorted by (family, prefix): pods, nodes, CIDR prefixes, defaults."""
    entries: dict[ir.IPNetwork, Entry] = {}
    ids = pod_identities(inventory)
    for pod in inventory.pods:
        for ip in pod.ips:
            net = ipaddress.ip_network(ip)
            entries[net] = Entry(net, KIND_POD, ids[pod.labels], pod.labels, pod=pod)
    for node in inventory.nodes:
        for ip in node.ips:
            net = ipaddress.ip_network(ip)
            if net not in entries:  # a host-network pod address is the node itself
                entries[net] = Entry(net, KIND_NODE, RESERVED_IDS["remote-node"],
                                     reserved_labels("remote-node"), node=node)
    for net in (WORLD_V4, WORLD_V6):
        name = f"world-ipv{net.version}"
        entries[net] = Entry(net, KIND_WORLD, RESERVED_IDS[name], reserved_labels(name))
    cidrs = sorted((p for p in _cidr_prefixes(policy) if p not in entries),
                   key=lambda n: (n.version, n.network_address.packed, n.prefixlen))
    for i, net in enumerate(cidrs):
        world = reserved_labels(f"world-ipv{net.version}")
        labels = tuple(sorted((dict(world) | {("cidr", str(net)): ""}).items()))
        entries[net] = Entry(net, KIND_WORLD, LOCAL_SCOPE + 1 + i, labels)
    return sorted(entries.values(), key=lambda e: (e.network.version, e.network.network_address.packed,
                                                  e.network.prefixlen))


def as_host(entry: Entry) -> Entry:
    """The same node address seen from the node itself: the ``host`` identity."""
    return Entry(entry.network, KIND_NODE, RESERVED_IDS["host"], reserved_labels("host"), node=entry.node)
