"""Optimizer: the policy IR and the inventory become decision tables (pure data).

Per packet the datapath does a fixed number of lookups whatever the number of rules:

1. address -> LPM entry -> (identity, peer class, subject class per direction, isolation);
2. (direction, subject class, peer class) -> profile, the rule set that applies between them;
3. (direction, protocol, port) -> port class, one array index;
4. (profile, protocol, port class) -> allow/deny and the deciding rule.

Classes group what the rules cannot tell apart: endpoints with the same applicable rules
share a subject class, addresses that match the same peer selectors share a peer class, and
ports between the same rule boundaries share a port class.  The identity x port cross
product is never built: entries grow with classes and profiles.
"""

from __future__ import annotations

import array
import bisect
from dataclasses import dataclass, field

from polc import abi

from . import ir
from .errors import CompileError
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
    entry_values: list[tuple[int, int, int, int, int, int]]  # polc_ep_info per entry
    host_values: dict[str, list[tuple[Entry, tuple]]]  # node -> its entries seen as host
    pairs: dict[tuple[int, int, int], int]  # (dir, subject class, peer class) -> profile
    port_classes: dict[tuple[int, int], array.array]  # (dir, proto) -> class per port
    port_class_count: dict[tuple[int, int], int]
    verdicts: dict[tuple[int, int, int], tuple[int, int, int]]  # (profile, class, proto) -> (rule, action, l7)
    rules: list[dict]  # id-ordered descriptions of rules, isolations and implicit rules
    subject_classes: list[int] = field(default_factory=list)  # count per direction
    peer_class_count: int = 0
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

    profiles: dict = {}
    pairs: dict[tuple[int, int, int], int] = {}

    memo: dict[tuple, int] = {}

    def profile_of(d, rids, names) -> int:
        """The profile of a rule list (memoised: many pairs share their rules)."""
        token = (d, tuple(rids), names)
        found = memo.get(token)
        if found is None:
            key = tuple((rid, _kind(rule_by_id[rid]), _resolve_ports(rule_by_id[rid].ports, names))
                        for rid in rids)
            key = tuple(k for k in key if k[2] != ())
            found = memo[token] = _intern(profiles, (int(d), key)) if key else 0
        return found

    for (d, sc), (rule_ids, subj_names) in sorted(subject_sig_of.items()):
        # Rules for every peer (whose ports do not depend on the peer) form the subject's
        # default profile, stored once under peer class 0 instead of once per peer class.
        everywhere, related = [], {}
        for rid in rule_ids:
            rule = rule_by_id[rid]
            if ir.PEER_ALL in rule.peers and (d == ir.Direction.INGRESS or not _has_named_ports(rule)):
                everywhere.append(rid)
                continue
            classes = set().union(*(atom_classes[atom_index[p]] for p in rule.peers)) if rule.peers else set()
            for pc in classes:
                related.setdefault(pc, []).append(rid)
        default = profile_of(d, everywhere, subj_names if d == ir.Direction.INGRESS else ())
        if default:
            pairs[(int(d), sc, abi.PEER_CLASS_ANY)] = default
        for pc, rids in sorted(related.items()):
            names = subj_names if d == ir.Direction.INGRESS else peer_sig_of[pc][1]
            profile = profile_of(d, sorted(rids + everywhere), names)
            if profile != default:
                pairs[(int(d), sc, pc)] = profile

    port_classes, class_count, verdicts, l7_sets = _port_tables(profiles)
    l7_profiles, dfa_states, l7_info = build_l7(l7_sets, rule_by_id)
    rules = _rule_descriptions(b)
    return Tables(
        entries=entries, entry_values=values, host_values=host_values, pairs=pairs,
        port_classes=port_classes, port_class_count=class_count, verdicts=verdicts, rules=rules,
        subject_classes=[len(subject_classes[d]) for d in ir.Direction],
        peer_class_count=len(peer_classes), profile_count=len(profiles),
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


def _port_tables(profiles: dict):
    """Cut each (direction, protocol) port space at every rule boundary, then fill verdicts."""
    bounds: dict[tuple[int, int], set[int]] = {}
    for (d, key) in profiles:
        for _, _, ports in key:
            for proto, lo, hi in _ranges(ports):
                s = bounds.setdefault((d, int(proto)), {0})
                s.add(lo)
                if hi < proto_max(proto):  # the datapath never sees a larger port
                    s.add(hi + 1)
    starts = {k: sorted(v) for k, v in bounds.items()}
    for (_, p), st in starts.items():
        if len(st) >= abi.PORT_CLASS_ANY:
            raise CompileError(f"the rules cut the {ir.Proto(p).name} port space into {len(st)} classes; "
                               f"polc supports at most {abi.PORT_CLASS_ANY - 1}")
    port_classes: dict[tuple[int, int], array.array] = {}
    for k, st in starts.items():
        arr = array.array("H", bytes(131072))
        for c, lo in enumerate(st):
            hi = st[c + 1] if c + 1 < len(st) else 65536
            arr[lo:hi] = array.array("H", [c]) * (hi - lo)
        port_classes[k] = arr
    verdicts: dict[tuple[int, int, int], tuple[int, int, int]] = {}
    l7_sets: dict[frozenset, int] = {}

    def value(cell) -> tuple[int, int, int]:
        rank, rid, l7_rules = cell
        if rank == 2:  # only L7 allows cover this port: each request is judged
            return (rid, abi.ACTION_L7, _intern(l7_sets, l7_rules))
        # a deny wins; an L3/L4 allow of the same port and peer makes L7 rules moot
        return (rid, abi.ACTION_DENY if rank == 0 else abi.ACTION_ALLOW, 0)

    for (d, key), profile in profiles.items():
        # Per protocol: `base` from the rules covering every port (stored once, under
        # PORT_CLASS_ANY), `cells` per port class from the others (stored where they change
        # the outcome).  Rules for every port never walk the classes one by one.
        base: dict[int, tuple] = {}
        cells: dict[tuple[int, int], tuple] = {}
        for rid, kind, ports in key:
            cell = (_RANK[kind], rid, frozenset([rid]) if _RANK[kind] == 2 else frozenset())
            for proto, lo, hi in _ranges(ports):
                p = int(proto)
                if lo == 0 and hi == proto_max(proto):
                    base[p] = _combine(base.get(p), cell)
                    continue
                st = starts[(d, p)]
                for c in range(bisect.bisect_right(st, lo) - 1, bisect.bisect_right(st, hi)):
                    cells[(c, p)] = _combine(cells.get((c, p)), cell)
        for p, cell in base.items():
            verdicts[(profile, abi.PORT_CLASS_ANY, p)] = value(cell)
        for (c, p), cell in cells.items():
            v = value(_combine(base.get(p), cell))
            if p not in base or v != value(base[p]):
                verdicts[(profile, c, p)] = v
    class_count = {k: len(v) for k, v in starts.items()}
    return port_classes, class_count, verdicts, [set_ for set_, _ in sorted(l7_sets.items(), key=lambda kv: kv[1])]


def _origin_dict(origin: ir.Origin) -> dict:
    return {"file": origin.file, "line": origin.line, "col": origin.col, "policy": origin.policy,
            "where": origin.where}


def _rule_descriptions(b: _Builder) -> list[dict]:
    out = [{"id": r.id, "action": r.rule.action.name.lower(), "direction": r.rule.direction.name.lower(),
            **_origin_dict(r.rule.origin)} for r in b.refs]
    out += [{"id": i, "action": "isolate", "direction": iso.direction.name.lower(), **_origin_dict(iso.origin)}
            for i, iso in b.isolations]
    return sorted(out, key=lambda r: r["id"])
