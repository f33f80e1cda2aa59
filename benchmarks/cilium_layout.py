"""How many entries Cilium's per-endpoint policy maps would need for the same policy.

Cilium keys its policy map by (direction, peer identity, protocol, destination port
prefix) per endpoint (``bpf/lib/policy.h``, ``pkg/maps/policymap``); port ranges become
port/mask prefixes (Cilium 1.16+), an L3-only rule one wildcard-port entry per peer
identity, and every CIDR (and every ``except`` prefix) of a policy its own local identity.

We count distinct keys **per subject identity** (endpoints with the same identity have the
same map contents).  Cilium keeps one map per endpoint, so the node total is larger still:
``per_endpoint`` multiplies by the endpoints of each identity (the whole cluster here).
Both are lower bounds: Cilium also adds allow-all entries for the host, health and
proxy redirects, which we leave out.
"""

from __future__ import annotations

from collections import Counter

from polc.compiler import ir
from polc.compiler.identities import KIND_POD
from polc.compiler.tables import Tables, _Builder, proto_max

ALL_PROTOS = (ir.Proto.TCP, ir.Proto.UDP, ir.Proto.SCTP)


def port_prefixes(lo: int, hi: int) -> int:
    """Number of port/mask prefixes that cover ``lo..hi`` exactly."""
    n = 0
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        lo += size
        n += 1
    return n


def _port_keys(ports) -> list[tuple]:
    if ports is None:
        return [("any",)]
    out = []
    for p in ports:
        if isinstance(p, ir.NamedPort):
            out.append((int(p.proto), "name", p.name))
            continue
        if p.proto in (ir.Proto.ICMP, ir.Proto.ICMPV6):
            out.extend((int(p.proto), t) for t in range(p.lo, p.hi + 1))
        elif p.lo == 0 and p.hi == proto_max(p.proto):
            out.append((int(p.proto), "all"))
        else:
            out.extend((int(p.proto), p.lo, p.hi, i) for i in range(port_prefixes(p.lo, p.hi)))
    return out


def count(policy: ir.PolicySet, inventory: ir.Inventory, tables: Tables) -> dict:
    """Entries of the identity x port layout: per subject identity and per endpoint."""
    entries = tables.entries
    b = _Builder(policy, entries)
    rule_by_id = {r.id: r.rule for r in b.refs if r.rule.origin.policy != "allow-localhost"}
    # Peer atom -> bitset over distinct identities (CIDR entries are identities of their own).
    ident_pos: dict[int, int] = {}
    atom_bits = [0] * len(b.atoms)
    for e in entries:
        pos = ident_pos.setdefault(e.identity, len(ident_pos))
        matched, _ = b.peer_signature(e)
        for i in matched:
            atom_bits[i] |= 1 << pos
    atom_index = {a: i for i, a in enumerate(b.atoms)}
    rule_peer_bits: dict[int, int] = {}
    for rid, rule in rule_by_id.items():
        bits = 0
        for p in rule.peers:
            bits |= atom_bits[atom_index[p]]
        rule_peer_bits[rid] = bits
    # Subject identities: one label set per pod identity.
    pods_per_labels = Counter(e.labels for e in entries if e.kind == KIND_POD)
    per_identity = 0
    per_endpoint = 0
    for labels, n_endpoints in pods_per_labels.items():
        pos = b.label_pos[labels]
        total = 0
        for d in ir.Direction:
            keys: dict[tuple, int] = {}
            for rid in b.rules_of[d][pos]:
                rule = rule_by_id.get(rid)
                if rule is None:
                    continue
                for k in _port_keys(rule.ports):
                    keys[k] = keys.get(k, 0) | rule_peer_bits[rid]
            total += sum(bin(bits).count("1") for bits in keys.values())
        per_identity += total
        per_endpoint += total * n_endpoints
    return {"per_identity": per_identity, "per_endpoint": per_endpoint,
            "subject_identities": len(pods_per_labels), "identities": len(ident_pos)}
