"""Optimizer: the policy IR and the inventory become decision tables (pure data).

Per packet the datapath does a fixed number of lookups whatever the number of rules:

1. address -> entry -> (identity, peer class, subject class per direction, isolation, peer group);
2. (direction, subject class, peer class) -> profile, the rule set that applies between them;
   a miss falls back to (subject class, peer group), then to the subject's default;
3. (profile, protocol) -> the profile's port intervals; a binary search over them gives
   allow/deny and the deciding rule.

Classes group what the rules cannot tell apart: endpoints with the same applicable rules
share a subject class, addresses that match the same peer selectors share a peer class, and
ports between the same boundaries of a profile's rules share an interval.  The identity x port cross
product is never built: entries grow with classes and profiles.

Broad peer selectors (``namespaceSelector: env In (prod)`` matches most of a cluster) would
relate every subject that uses them to most peer classes.  Their rules are stored per *peer
group* instead: peer classes that match the same broad selectors share a group, so such a
rule costs one pair per group, not one per peer class.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from polc import abi

from . import ir
from .l7 import build_l7
from .identities import KIND_NODE, KIND_POD, KIND_WORLD, RESERVED_IDS, Entry, as_host, build_entries
from .selectors import LabelIndex, iter_bits

FULL = {ir.Proto.ICMP: 255, ir.Proto.ICMPV6: 255, ir.Proto.OTHER: 0}
ALL_PROTOS = tuple(ir.Proto)
LOCALHOST_ORIGIN = ir.Origin("<polc>", 0, 0, "allow-localhost",
                             "the local host may reach its endpoints (Cilium's allow-localhost)")


def proto_max(proto: ir.Proto) -> int:
    return FULL.get(proto, 65535)


@dataclass(frozen=True)
class RuleRef:
    """A rule with its numeric id (ids are shared with isolations; 0 means none)."""

    id: int
    rule: ir.Rule


@dataclass
class Tables:
    """The decision tables plus what reports need to explain them."""

    entries: list[Entry]
    entry_values: list[tuple[int, ...]]  # polc_ep_info per entry
    host_values: dict[str, list[tuple[Entry, tuple]]]  # node -> its entries seen as host
    pairs: dict[tuple[int, int, int], int]  # (dir, subject class, peer class) -> profile
    verdicts: dict[tuple[int, int], tuple[int, int]]  # (profile, proto) -> (first, count) in ranges
    ranges: list[tuple[int, int, int, int, int]]  # port intervals: (first port, last port, rule, action, l7)
    rules: list[dict]  # id-ordered descriptions of rules, isolations and implicit rules
    subject_classes: list[int] = field(default_factory=list)  # count per direction
    peer_class_count: int = 0
    peer_group_count: int = 0  # groups of broad selectors, group 0 (none) not counted
    profile_count: int = 0
    # polc_l7 rows (kind, start state, rule, pad, classes) and polc_dfa rows (next x 64, accept);
    # index 0 of polc_l7 is unused (0 means "no L7" in verdicts and connection tracking).
    l7_profiles: list[tuple] = field(default_factory=list)
    dfa_states: list[tuple] = field(default_factory=list)
    l7_info: list[dict] = field(default_factory=list)  # per L7 profile: kind, rules, states, classes


def _entity_matches(entity: str, entry: Entry) -> bool:
    if entity == "all":
        return True
    if entity == "world":
        return entry.kind == KIND_WORLD
    if entity == "cluster":
        return entry.kind in (KIND_POD, KIND_NODE)
    return entry.identity == RESERVED_IDS.get(entity)


def _named_ports(pod: ir.Pod | None, names: frozenset) -> tuple:
    """The (proto, name) -> port resolutions of ``pod`` for the names rules use."""
    if pod is None or not names:
        return ()
    return tuple(sorted((p.proto, p.name, p.port) for p in pod.ports if (p.proto, p.name) in names))


def _used_names(rules: list[RuleRef], direction: ir.Direction) -> frozenset:
    return frozenset((p.proto, p.name) for r in rules if r.rule.direction == direction
                     for p in (r.rule.ports or ()) if isinstance(p, ir.NamedPort))


def _prefix_key(net: ir.IPNetwork, length: int) -> tuple[int, int, int]:
    """(version, length, the first ``length`` bits of ``net``) -- a hashable supernet."""
    return net.version, length, int(net.network_address) >> (net.max_prefixlen - length)


class _CIDRAtoms:
    """Finds the CIDR peers an LPM entry falls in by looking up its supernets, not every CIDR."""

    def __init__(self, atoms: list):
        self.by_prefix: dict[tuple, list[int]] = {}
        self.lengths: dict[int, set[int]] = {4: set(), 6: set()}
        self.atoms = atoms
        for i, atom in enumerate(atoms):
            if isinstance(atom, ir.PeerCIDR):
                self.by_prefix.setdefault(_prefix_key(atom.cidr, atom.cidr.prefixlen), []).append(i)
                self.lengths[atom.cidr.version].add(atom.cidr.prefixlen)

    def matching(self, entry: Entry) -> list[int]:
        net = entry.network
        out = []
        for length in self.lengths[net.version]:
            if length > net.prefixlen:
                continue
            for i in self.by_prefix.get(_prefix_key(net, length), ()):
                atom = self.atoms[i]
                if entry.kind != KIND_WORLD and not atom.include_cluster:
                    continue
                if not any(e.version == net.version and e.prefixlen <= net.prefixlen
                           and _prefix_key(net, e.prefixlen) == _prefix_key(e, e.prefixlen) for e in atom.excepts):
                    out.append(i)
        return out


class _Builder:
    """Relates rules, endpoints and peers; one instance per compile."""

    def __init__(self, policy: ir.PolicySet, entries: list[Entry]):
        self.refs = [RuleRef(i + 1, r) for i, r in enumerate(policy.rules)]
        n = len(self.refs)
        self.isolations = [(n + 1 + i, iso) for i, iso in enumerate(policy.isolations)]
        localhost = ir.Rule(ir.Direction.INGRESS, ir.Action.ALLOW, ir.Selector(),
                            (ir.PeerEntity("host"),), None, LOCALHOST_ORIGIN)
        self.refs.append(RuleRef(n + len(self.isolations) + 1, localhost))
        self.atoms = sorted({p for r in self.refs for p in r.rule.peers}, key=repr)
        self.names = {d: _used_names(self.refs, d) for d in ir.Direction}
        label_sets = sorted({e.labels for e in entries} | {as_host(e).labels for e in entries if e.node})
        self.label_pos = {labels: i for i, labels in enumerate(label_sets)}
        index = LabelIndex(label_sets)
        n_sets = len(label_sets)
        # Per label set: the rule ids whose subject selects it, per direction, in id order.
        self.rules_of = {d: [[] for _ in range(n_sets)] for d in ir.Direction}
        for ref in self.refs:
            for pos in iter_bits(index.selector(ref.rule.subject)):
                self.rules_of[ref.rule.direction][pos].append(ref.id)
        self.isolated = {d: [0] * n_sets for d in ir.Direction}
        for iso_id, iso in self.isolations:
            marks = self.isolated[iso.direction]
            for pos in iter_bits(index.selector(iso.subject)):
                marks[pos] = marks[pos] or iso_id
        # Per label set: the selector atoms it matches.
        self.selector_atoms: list[list[int]] = [[] for _ in range(n_sets)]
        for i, atom in enumerate(self.atoms):
            if isinstance(atom, ir.PeerSelector):
                for pos in iter_bits(index.selector(atom.selector)):
                    self.selector_atoms[pos].append(i)
        self.entity_atoms = [(i, a.entity) for i, a in enumerate(self.atoms) if isinstance(a, ir.PeerEntity)]
        self.cidr_atoms = _CIDRAtoms(self.atoms)

    # -- peer classes -------------------------------------------------------------------
    def peer_signature(self, entry: Entry) -> tuple:
        matched = list(self.selector_atoms[self.label_pos[entry.labels]])
        matched += self.cidr_atoms.matching(entry)
        matched += [i for i, entity in self.entity_atoms if _entity_matches(entity, entry)]
        return tuple(sorted(matched)), _named_ports(entry.pod, self.names[ir.Direction.EGRESS])

    # -- subject classes ----------------------------------------------------------------
    def subject_signature(self, pod: ir.Pod, direction: ir.Direction) -> tuple:
        rules = tuple(self.rules_of[direction][self.label_pos[pod.labels]])
        names = self.names[direction] if direction == ir.Direction.INGRESS else frozenset()
        return rules, _named_ports(pod, names)

    def isolated_by(self, pod: ir.Pod, direction: ir.Direction) -> int:
        return self.isolated[direction][self.label_pos[pod.labels]]


# An atom is broad when it matches at least this many peer classes; broad atoms are taken
# (largest first) while the peer groups they cut stay at most MAX_PEER_GROUPS.
BROAD_MIN_CLASSES = 32
MAX_PEER_GROUPS = 128


def _peer_groups(atom_classes: dict[int, set], peer_classes: list[int]) -> tuple[set[int], dict[int, int]]:
    """The broad atoms and each peer class's group (0: matches no broad atom)."""
    broad: list[int] = []
    member: dict[int, tuple] = {pc: () for pc in peer_classes}
    for atom in sorted(atom_classes, key=lambda i: (-len(atom_classes[i]), i)):
        classes = atom_classes[atom]
        if len(classes) < BROAD_MIN_CLASSES:
            break
        trial = {pc: sig + (atom,) if pc in classes else sig for pc, sig in member.items()}
        if len(set(trial.values())) > MAX_PEER_GROUPS:
            continue
        broad.append(atom)
        member = trial
    groups: dict[tuple, int] = {(): 0}
    group_of = {pc: groups.setdefault(sig, len(groups)) for pc, sig in sorted(member.items())}
    return set(broad), group_of


def _intern(table: dict, key) -> int:
    """Class numbering: first come, first numbered, from 1."""
    if key not in table:
        table[key] = len(table) + 1
    return table[key]


def _resolve_ports(ports, resolutions: tuple) -> tuple | None:
    """Named ports become the numbers the relevant pod serves; unknown names match nothing."""
    if ports is None:
        return None
    out = []
    for p in ports:
        if isinstance(p, ir.NamedPort):
            out.extend(ir.PortRange(p.proto, num, num) for proto, name, num in resolutions
                       if (proto, name) == (p.proto, p.name))
        else:
            out.append(p)
    return tuple(sorted(set(out)))


def build_tables(policy: ir.PolicySet, inventory: ir.Inventory) -> Tables:
    """Lower a policy set and an inventory to decision tables."""
    entries = build_entries(policy, inventory)
    b = _Builder(policy, entries)
    rule_by_id = {r.id: r.rule for r in b.refs}

    peer_classes: dict = {}
    subject_classes = {d: {} for d in ir.Direction}
    peer_sig_of: dict[int, tuple] = {}
    subject_sig_of: dict[tuple[int, int], tuple] = {}

    def ep_value(entry: Entry) -> tuple:
        sig = b.peer_signature(entry)
        pc = _intern(peer_classes, sig)
        peer_sig_of[pc] = sig
        subj, iso = [0, 0], [0, 0]
        if entry.kind == KIND_POD:
            for d in ir.Direction:
                ssig = b.subject_signature(entry.pod, d)
                sc = _intern(subject_classes[d], ssig)
                subject_sig_of[(d, sc)] = ssig
                subj[d] = sc
                iso[d] = b.isolated_by(entry.pod, d)
        return (entry.identity, pc, subj[0], subj[1], iso[0], iso[1])

    values = [ep_value(e) for e in entries]
    host_values: dict[str, list] = {}
    for e in entries:
        if e.kind == KIND_NODE:
            h = as_host(e)
            host_values.setdefault(e.node.name, []).append((h, ep_value(h)))

    # Which peer classes each peer atom matches, to relate subjects and peers per rule.
    atom_classes = {i: set() for i in range(len(b.atoms))}
    for pc, (matched, _) in peer_sig_of.items():
        for i in matched:
            atom_classes[i].add(pc)
    atom_index = {a: i for i, a in enumerate(b.atoms)}
    broad, group_of = _peer_groups(atom_classes, list(peer_sig_of))
    atom_groups = {i: {group_of[pc] for pc in atom_classes[i]} for i in broad}
    values = [v + (group_of[v[1]],) for v in values]
    host_values = {n: [(h, v + (group_of[v[1]],)) for h, v in items] for n, items in host_values.items()}

    profiles: dict = {}
    pairs: dict[tuple[int, int, int], int] = {}

    memo: dict[tuple, int] = {}
    resolved: dict[tuple, tuple] = {}

    def rule_part(rid: int, names: tuple) -> tuple:
        """(rule id, kind, ports with named ports resolved); memoised, names are few."""
        found = resolved.get((rid, names))
        if found is None:
            rule = rule_by_id[rid]
            found = resolved[(rid, names)] = (rid, _kind(rule), _resolve_ports(rule.ports, names))
        return found

    def profile_of(d, rids, names) -> int:
        """The profile of a rule list (memoised: many pairs share their rules)."""
        token = (d, tuple(rids), names)
        found = memo.get(token)
        if found is None:
            key = tuple(k for k in (rule_part(rid, names) for rid in rids) if k[2] != ())
            found = memo[token] = _intern(profiles, (int(d), key)) if key else 0
        return found

    for (d, sc), (rule_ids, subj_names) in sorted(subject_sig_of.items()):
        # Rules for every peer (whose ports do not depend on the peer) form the subject's
        # default profile, stored once under peer class 0 instead of once per peer class.
        # Rules whose ports depend on the peer (egress named ports) are related per peer
        # class; the others through broad atoms per peer group.
        everywhere, related, grouped = [], {}, {}
        ingress = d == ir.Direction.INGRESS
        for rid in rule_ids:
            rule = rule_by_id[rid]
            per_peer = not ingress and _has_named_ports(rule)
            if ir.PEER_ALL in rule.peers and not per_peer:
                everywhere.append(rid)
                continue
            for p in rule.peers:
                atom = atom_index[p]
                if atom in broad and not per_peer:
                    for g in atom_groups[atom]:
                        grouped.setdefault(g, set()).add(rid)
                    continue
                for pc in atom_classes[atom]:
                    related.setdefault(pc, set()).add(rid)
        default = profile_of(d, everywhere, subj_names if ingress else ())
        if default:
            pairs[(int(d), sc, abi.PEER_CLASS_ANY)] = default
        fallback = {}
        for g, rids in sorted(grouped.items()):
            profile = fallback[g] = profile_of(d, sorted(rids.union(everywhere)), subj_names if ingress else ())
            if profile != default:
                pairs[(int(d), sc, abi.PEER_GROUP | g)] = profile
        for pc, rids in sorted(related.items()):
            g = group_of[pc]
            names = subj_names if ingress else peer_sig_of[pc][1]
            profile = profile_of(d, sorted(rids.union(everywhere, grouped.get(g, ()))), names)
            if profile != fallback.get(g, default):
                pairs[(int(d), sc, pc)] = profile

    verdicts, ranges, l7_sets = _range_tables(profiles)
    l7_profiles, dfa_states, l7_info = build_l7(l7_sets, rule_by_id)
    rules = _rule_descriptions(b)
    return Tables(
        entries=entries, entry_values=values, host_values=host_values, pairs=pairs,
        verdicts=verdicts, ranges=ranges, rules=rules,
        subject_classes=[len(subject_classes[d]) for d in ir.Direction],
        peer_class_count=len(peer_classes), peer_group_count=len(set(group_of.values()) - {0}),
        profile_count=len(profiles),
        l7_profiles=l7_profiles, dfa_states=dfa_states, l7_info=l7_info,
    )


def _ranges(ports: tuple | None):
    """(proto, lo, hi) triples a resolved port list covers; None covers everything."""
    if ports is None:
        return [(p, 0, proto_max(p)) for p in ALL_PROTOS]
    return [(p.proto, p.lo, p.hi) for p in ports]


_L7 = 3  # the kind of an allow rule with L7 matchers, in profile keys
_RANK = {ir.Action.DENY: 0, ir.Action.ALLOW: 1, _L7: 2}


def _combine(a: tuple | None, b: tuple) -> tuple:
    """Two (rank, rule, L7 rules) outcomes for one port: the better rank and rule, all L7 rules."""
    if a is None:
        return b
    best = min((a[0], a[1]), (b[0], b[1]))
    return (*best, a[2] | b[2])


def _has_named_ports(rule: ir.Rule) -> bool:
    return any(isinstance(p, ir.NamedPort) for p in rule.ports or ())


def _kind(rule: ir.Rule):
    return _L7 if rule.l7 else rule.action


def _range_tables(profiles: dict):
    """Per (profile, protocol): the profile's own port intervals and their verdicts.

    Each interval list is cut at the profile's rule boundaries only (not at every rule's),
    so a wide range costs one interval however many other rules cut the port space.
    Identical lists are stored once.
    """
    heads: dict[tuple[int, int], tuple[int, int]] = {}
    ranges: list[tuple[int, int, int, int, int]] = []
    stored: dict[tuple, int] = {}
    l7_sets: dict[frozenset, int] = {}

    def value(cell) -> tuple[int, int, int]:
        rank, rid, l7_rules = cell
        if rank == 2:  # only L7 allows cover this port: each request is judged
            return (rid, abi.ACTION_L7, _intern(l7_sets, l7_rules))
        # a deny wins; an L3/L4 allow of the same port and peer makes L7 rules moot
        return (rid, abi.ACTION_DENY if rank == 0 else abi.ACTION_ALLOW, 0)

    for (_, key), profile in profiles.items():
        per_proto: dict[int, list] = {}
        for rid, kind, ports in key:
            cell = (_RANK[kind], rid, frozenset([rid]) if _RANK[kind] == 2 else frozenset())
            for proto, lo, hi in _ranges(ports):
                per_proto.setdefault(int(proto), []).append((lo, hi, cell))
        for p, items in sorted(per_proto.items()):
            top = proto_max(ir.Proto(p))
            cuts = sorted({0}.union(*(((lo, hi + 1) if hi < top else (lo,)) for lo, hi, _ in items)))
            cells: list = [None] * len(cuts)
            for lo, hi, cell in items:
                for c in range(bisect.bisect_left(cuts, lo), bisect.bisect_right(cuts, hi)):
                    cells[c] = _combine(cells[c], cell)
            rows: list[tuple] = []  # (lo, hi, rule, action, l7); ports no rule covers are left out
            for c, (lo, cell) in enumerate(zip(cuts, cells)):
                if cell is None:
                    continue
                hi = cuts[c + 1] - 1 if c + 1 < len(cuts) else top
                v = value(cell)
                if rows and rows[-1][1] == lo - 1 and rows[-1][2:] == v:
                    rows[-1] = (rows[-1][0], hi, *v)
                else:
                    rows.append((lo, hi, *v))
            if not rows:
                continue
            rows = tuple(rows)
            first = stored.get(rows)
            if first is None:
                first = stored[rows] = len(ranges)
                ranges.extend(rows)
            heads[(profile, p)] = (first, len(rows))
    return heads, ranges, [set_ for set_, _ in sorted(l7_sets.items(), key=lambda kv: kv[1])]


def _origin_dict(origin: ir.Origin) -> dict:
    return {"file": origin.file, "line": origin.line, "col": origin.col, "policy": origin.policy,
            "where": origin.where}


def _rule_descriptions(b: _Builder) -> list[dict]:
    out = [{"id": r.id, "action": r.rule.action.name.lower(), "direction": r.rule.direction.name.lower(),
            **_origin_dict(r.rule.origin)} for r in b.refs]
    out += [{"id": i, "action": "isolate", "direction": iso.direction.name.lower(), **_origin_dict(iso.origin)}
            for i, iso in b.isolations]
    return sorted(out, key=lambda r: r["id"])
