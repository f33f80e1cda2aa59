"""L7 profiles: the rule sets that judge requests, as DFAs packed for the datapath.

Every (port class, peer, subject) cell whose only allows carry L7 rules names a set of
those rules; each distinct set becomes one profile with one minimised DFA (the union of
its rules' languages, see ``l7lang``).  The datapath walks it over a request head (HTTP)
or a query name (DNS): ``bpf_runtime/l7.h``.
"""

from __future__ import annotations

from polc import abi

from . import ir
from .dfa import DFA
from .errors import CompileError, Location
from .l7lang import DNSMatch, HTTPMatch, dns_name_dfa, http_head_dfa

# How many DFA states all profiles of one object may use together.
MAX_DFA_STATES = 1 << 20


def _located(err: CompileError, rules: list[ir.L7Rule]) -> CompileError:
    """Point an l7lang error at the rule it is about (its index is in the matcher list)."""
    index = getattr(err, "rule_index", None)
    rule = rules[index] if index is not None and 0 <= index < len(rules) else rules[0]
    field = getattr(err, "field", None)
    offset = getattr(err, "offset", None)
    where = f" (in {field}" + (f", at character {offset + 1}" if offset is not None else "") + ")" if field else ""
    origin = rule.origin
    loc = Location(origin.file, origin.line, origin.col) if origin else None
    return CompileError(f"{err.message}{where}", loc, origin.policy if origin else None)


def _dfa(kind: type, matchers: list[ir.L7Rule]) -> DFA:
    try:
        if kind is ir.HTTPRule:
            return http_head_dfa([HTTPMatch(m.method, m.path, m.host, tuple(m.headers)) for m in matchers])
        return dns_name_dfa([DNSMatch(m.match_name, m.match_pattern) for m in matchers])
    except CompileError as err:
        raise _located(err, matchers) from None


def _kind_of(rules: list[ir.Rule]) -> type:
    kinds = {type(m) for r in rules for m in r.l7}
    if len(kinds) > 1:
        http = next(r for r in rules if isinstance(r.l7[0], ir.HTTPRule))
        dns = next(r for r in rules if isinstance(r.l7[0], ir.DNSRule))
        raise CompileError(f"HTTP rules ({http.origin}) and DNS rules ({dns.origin}) apply to the same port "
                           "and peer; one port speaks one L7 protocol", None, dns.origin.policy)
    return kinds.pop()


def _pack(dfa: DFA, base: int, origin: ir.Origin | None) -> list[tuple]:
    if dfa.n_classes > abi.DFA_CLASSES:
        raise CompileError(f"L7 rules need {dfa.n_classes} byte classes; the datapath walks at most "
                           f"{abi.DFA_CLASSES} (simplify the character classes of the regexes)",
                           Location(origin.file, origin.line, origin.col) if origin else None)
    rows = []
    for s, row in enumerate(dfa.transitions):
        nxt = [base + t for t in row] + [base] * (abi.DFA_CLASSES - dfa.n_classes)  # unused classes: dead
        accept = abi.DFA_DEAD if s == 0 else abi.DFA_ACCEPT if dfa.accepting[s] else abi.DFA_REJECT
        rows.append((*nxt, accept))
    return rows


def build_l7(l7_sets: list[frozenset], rule_by_id: dict[int, ir.Rule]):
    """polc_l7 rows, polc_dfa rows and a description per profile, for the given rule-id sets.

    Profile index 0 is a placeholder: 0 means "no L7" in verdicts and connection tracking.
    """
    profiles: list[tuple] = [(0, 0, 0, 0, bytes(256))]
    states: list[tuple] = []
    info: list[dict] = []
    cache: dict[tuple, DFA] = {}
    for rule_ids in l7_sets:
        ids = sorted(rule_ids)
        rules = [rule_by_id[i] for i in ids]
        kind = _kind_of(rules)
        matchers = list(dict.fromkeys(m for r in rules for m in r.l7))
        key = (kind, tuple(matchers))
        if key not in cache:
            cache[key] = _dfa(kind, matchers)
        dfa = cache[key]
        base = len(states)
        states += _pack(dfa, base, matchers[0].origin)
        if len(states) > MAX_DFA_STATES:
            raise CompileError(f"the L7 rules need more than {MAX_DFA_STATES} DFA states in all")
        code = abi.L7_HTTP if kind is ir.HTTPRule else abi.L7_DNS
        profiles.append((code, base + dfa.start, ids[0], 0, dfa.classes))
        info.append({"id": len(profiles) - 1, "kind": "http" if code == abi.L7_HTTP else "dns", "rules": ids,
                     "states": dfa.n_states, "classes": dfa.n_classes})
    return profiles, states, info
