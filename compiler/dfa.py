"""Byte-level DFAs: Thompson NFA, subset construction, products, minimisation, byte classes.

Every DFA this module returns is *canonical*: minimal, complete over the 256 byte values,
with bytes grouped into classes (bytes that move every state to the same place share a class,
class ids numbered by their smallest byte) and states numbered in BFS order from the start
over class ids.  State 0 is always the dead state (non-accepting, every transition to 0), and
``start`` is 1 unless the language is empty (then the DFA is just state 0).  Hence two regular
expressions with the same language compile to identical ``DFA`` values, and ``a == b`` is
language equality.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import CompileError
from .regex import Alternate, Anchor, ByteSet, Concat, Embed, Node, Repeat, parse

__all__ = [
    "DEFAULT_MAX_STATES",
    "DFA",
    "compile_node",
    "compile_regex",
    "complement",
    "difference",
    "empty_language",
    "intersect",
    "minimise",
    "union",
]

DEFAULT_MAX_STATES = 4096
# Intermediate automata (before minimisation) may be larger than the result; this bounds the
# work without rejecting a language whose minimal DFA fits.
_INTERMEDIATE_FACTOR = 8
MAX_NFA_STATES = 200_000


@dataclass(frozen=True)
class DFA:
    """A complete, minimal, canonically numbered DFA over bytes.

    ``classes[b]`` is the class id of byte ``b``; ``transitions[s][c]`` the next state of
    state ``s`` on class ``c``.  State 0 is dead; ``start`` is 1, or 0 for the empty language.
    """

    classes: bytes
    n_classes: int
    transitions: tuple[tuple[int, ...], ...]
    accepting: tuple[bool, ...]
    start: int

    @property
    def n_states(self) -> int:
        return len(self.transitions)

    def step(self, state: int, byte: int) -> int:
        return self.transitions[state][self.classes[byte]]

    def run(self, data: bytes, state: int | None = None) -> int:
        """The state reached after feeding ``data`` from ``state`` (default: start)."""
        s = self.start if state is None else state
        trans, classes = self.transitions, self.classes
        for b in data:
            s = trans[s][classes[b]]
        return s

    def matches(self, data: bytes) -> bool:
        """Whether the whole of ``data`` is in the language (like ``re.fullmatch``)."""
        return self.accepting[self.run(data)]

    def is_empty(self) -> bool:
        return self.start == 0

    def class_bytes(self) -> list[bytes]:
        """The bytes of each class, by class id."""
        out: list[bytearray] = [bytearray() for _ in range(self.n_classes)]
        for b, c in enumerate(self.classes):
            out[c].append(b)
        return [bytes(x) for x in out]


def empty_language() -> DFA:
    return DFA(bytes(256), 1, ((0,),), (False,), 0)


# ---------------------------------------------------------------------------------------------
# Thompson NFA


class _NFA:
    """States with byte edges (mask, target), epsilon edges and anchor edges (kind, target)."""

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []
        self.eps: list[list[int]] = []
        self.anchors: list[list[tuple[str, int]]] = []

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise CompileError(f"regular expression too large (NFA needs more than {MAX_NFA_STATES} states)")
        self.edges.append([])
        self.eps.append([])
        self.anchors.append([])
        return len(self.eps) - 1

    def build(self, node: Node, start: int, end: int) -> None:
        """Add a fragment for ``node`` from ``start`` to ``end``.

        Invariant: a fragment never adds edges into ``start`` nor out of ``end`` (loops use
        fresh states), so fragments may share their start and end states safely.
        """
        if isinstance(node, ByteSet):
            if node.mask:
                self.edges[start].append((node.mask, end))
        elif isinstance(node, Concat):
            cur = start
            for k, item in enumerate(node.items):
                nxt = end if k == len(node.items) - 1 else self.new()
                self.build(item, cur, nxt)
                cur = nxt
            if not node.items:
                self.eps[start].append(end)
        elif isinstance(node, Alternate):
            for item in node.items:
                self.build(item, start, end)
        elif isinstance(node, Repeat):
            self.build_repeat(node, start, end)
        elif isinstance(node, Anchor):
            self.anchors[start].append((node.kind, end))
        elif isinstance(node, Embed):
            self.build_embed(node.dfa, start, end)
        else:
            raise TypeError(f"not a regex node: {node!r}")

    def build_repeat(self, node: Repeat, start: int, end: int) -> None:
        cur = start
        for _ in range(node.min):
            nxt = self.new()
            self.build(node.item, cur, nxt)
            cur = nxt
        if node.max is None:
            loop, back = self.new(), self.new()
            self.eps[cur].append(loop)
            self.build(node.item, loop, back)
            self.eps[back].append(loop)
            self.eps[loop].append(end)
            return
        for _ in range(node.max - node.min):
            nxt = self.new()
            self.eps[cur].append(end)
            self.build(node.item, cur, nxt)
            cur = nxt
        self.eps[cur].append(end)

    def build_embed(self, dfa: DFA, start: int, end: int) -> None:
        if dfa.start == 0:
            return
        class_masks = [0] * dfa.n_classes
        for b, c in enumerate(dfa.classes):
            class_masks[c] |= 1 << b
        ids = [self.new() if s else -1 for s in range(dfa.n_states)]
        self.eps[start].append(ids[dfa.start])
        for s in range(1, dfa.n_states):
            by_target: dict[int, int] = defaultdict(int)
            for c, t in enumerate(dfa.transitions[s]):
                if t:
                    by_target[t] |= class_masks[c]
            for t, mask in by_target.items():
                self.edges[ids[s]].append((mask, ids[t]))
            if dfa.accepting[s]:
                self.eps[ids[s]].append(end)


def _byte_partition(masks: Sequence[int]) -> list[int]:
    """Map each byte to a column so that bytes in one column are in exactly the same masks."""
    sig = [0] * 256
    for mask in set(masks):
        ids: dict[tuple[int, int], int] = {}
        for b in range(256):
            key = (sig[b], (mask >> b) & 1)
            sig[b] = ids.setdefault(key, len(ids))
    return sig


def _closures(nfa: _NFA, accept: int, at_start_of: int) -> tuple[list[frozenset[int]], list[bool], tuple]:
    """Epsilon closure of every NFA state, reduced to what a DFA state needs.

    A DFA state is identified by the NFA states in it that have byte edges, plus whether it
    accepts; anchors are resolved here.  ``$`` moves into an "ended" mode in which no byte may
    be consumed, only acceptance reached; ``^`` is only passable from ``at_start_of`` before any
    byte.  Returns per-state (byte-edge states, accepts) and the same for the start state.
    """

    def closure(q: int, at_start: bool) -> tuple[frozenset[int], bool]:
        seen = {(q, False)}
        stack = [(q, False)]
        live: set[int] = set()
        acc = False
        while stack:
            p, ended = stack.pop()
            if p == accept:
                acc = True
            if not ended and nfa.edges[p]:
                live.add(p)
            nxt = [(t, ended) for t in nfa.eps[p]]
            for kind, t in nfa.anchors[p]:
                if kind == "end":
                    nxt.append((t, True))
                elif at_start:
                    nxt.append((t, ended))
            for item in nxt:
                if item not in seen:
                    seen.add(item)
                    stack.append(item)
        return frozenset(live), acc

    n = len(nfa.eps)
    live, acc = [], []
    for q in range(n):
        lv, ac = closure(q, False)
        live.append(lv)
        acc.append(ac)
    return live, acc, closure(at_start_of, True)


def _subset(nfa: _NFA, start: int, accept: int, limit: int) -> tuple[list[list[int]], list[bool], list[int]]:
    """Subset construction; returns (transitions over columns, accepting, byte->column)."""
    byte_col = _byte_partition([m for es in nfa.edges for m, _ in es])
    n_cols = max(byte_col) + 1
    reps = [byte_col.index(c) for c in range(n_cols)]
    # Per NFA state with byte edges: column -> target states.
    moves: dict[int, dict[int, list[int]]] = {}
    for q, es in enumerate(nfa.edges):
        if not es:
            continue
        d: dict[int, list[int]] = defaultdict(list)
        for mask, t in es:
            for c, r in enumerate(reps):
                if (mask >> r) & 1:
                    d[c].append(t)
        moves[q] = d
    live, acc, first = _closures(nfa, accept, start)

    dead = (frozenset(), False)
    index: dict[tuple[frozenset[int], bool], int] = {dead: 0}
    states = [dead]
    if first not in index:
        index[first] = 1
        states.append(first)
    memo: dict[frozenset[int], int] = {frozenset(): 0}
    trans: list[list[int]] = []
    k = 0
    while k < len(states):
        per_col: dict[int, set[int]] = defaultdict(set)
        for q in states[k][0]:
            for c, ts in moves[q].items():
                per_col[c].update(ts)
        row = [0] * n_cols
        for c, ts in per_col.items():
            key = frozenset(ts)
            j = memo.get(key)
            if j is None:
                lv: set[int] = set()
                ac = False
                for t in ts:
                    lv |= live[t]
                    ac = ac or acc[t]
                target = (frozenset(lv), ac)
                j = index.get(target)
                if j is None:
                    if len(states) >= limit:
                        raise _too_big(limit)
                    j = index[target] = len(states)
                    states.append(target)
                memo[key] = j
            row[c] = j
        trans.append(row)
        k += 1
    return trans, [a for _, a in states], byte_col


def _too_big(limit: int) -> CompileError:
    if limit > 1 and limit % _INTERMEDIATE_FACTOR == 0:
        return CompileError(
            f"DFA needs more than {limit // _INTERMEDIATE_FACTOR} states "
            f"(construction stopped at {limit} intermediate states)"
        )
    return CompileError(f"DFA needs more than {limit} states")


# ---------------------------------------------------------------------------------------------
# Minimisation and canonical form


def _hopcroft(trans: list[list[int]], accepting: list[bool]) -> list[int]:
    """Hopcroft's partition refinement; returns the block id of every state."""
    n = len(trans)
    k = len(trans[0]) if n else 0
    inv: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(k)]
    for s, row in enumerate(trans):
        for c, t in enumerate(row):
            inv[c][t].append(s)
    acc = [s for s in range(n) if accepting[s]]
    rej = [s for s in range(n) if not accepting[s]]
    blocks: list[set[int]] = [set(b) for b in (acc, rej) if b]
    block_of = [0] * n
    for i, b in enumerate(blocks):
        for s in b:
            block_of[s] = i
    work = [min(range(len(blocks)), key=lambda i: len(blocks[i]))] if len(blocks) == 2 else []
    in_work = set(work)
    while work:
        a = work.pop()
        in_work.discard(a)
        splitter = list(blocks[a])
        for c in range(k):
            invc = inv[c]
            touched: dict[int, list[int]] = defaultdict(list)
            for t in splitter:
                for s in invc.get(t, ()):
                    touched[block_of[s]].append(s)
            for b, members in touched.items():
                y = blocks[b]
                if len(members) == len(y):
                    continue
                new = set(members)
                y -= new
                nb = len(blocks)
                blocks.append(new)
                for s in new:
                    block_of[s] = nb
                if b in in_work:
                    work.append(nb)
                    in_work.add(nb)
                else:
                    smaller = nb if len(new) <= len(y) else b
                    work.append(smaller)
                    in_work.add(smaller)
    return block_of


def _finish(
    trans: list[list[int]] | Sequence[Sequence[int]],
    accepting: Sequence[bool],
    start: int,
    byte_col: Sequence[int],
    max_states: int,
) -> DFA:
    """Trim, minimise, compress byte classes and renumber canonically."""
    # Reachable part only.
    order = [start]
    seen = {start}
    for s in order:
        for t in trans[s]:
            if t not in seen:
                seen.add(t)
                order.append(t)
    local = {s: i for i, s in enumerate(order)}
    rtrans = [[local[t] for t in trans[s]] for s in order]
    racc = [bool(accepting[s]) for s in order]

    block_of = _hopcroft(rtrans, racc)
    n_blocks = max(block_of) + 1
    qtrans = [None] * n_blocks
    qacc = [False] * n_blocks
    for s, row in enumerate(rtrans):
        b = block_of[s]
        if qtrans[b] is None:
            qtrans[b] = [block_of[t] for t in row]
            qacc[b] = racc[s]
    qstart = block_of[0]
    dead = next((b for b in range(n_blocks) if not qacc[b] and all(t == b for t in qtrans[b])), None)
    if dead is None:
        dead = n_blocks
        qtrans.append([dead] * len(rtrans[0]))
        qacc.append(False)
        n_blocks += 1
    if qstart == dead:
        return empty_language()

    # Byte classes: bytes whose columns agree in every state.
    col_of_key: dict[tuple[int, ...], int] = {}
    classes = bytearray(256)
    class_col: list[int] = []
    for b in range(256):
        col = byte_col[b]
        key = tuple(row[col] for row in qtrans)
        cid = col_of_key.get(key)
        if cid is None:
            cid = col_of_key[key] = len(class_col)
            class_col.append(col)
        classes[b] = cid

    # BFS numbering: dead = 0, start = 1.
    number = {dead: 0, qstart: 1}
    bfs = [qstart]
    for s in bfs:
        for col in class_col:
            t = qtrans[s][col]
            if t not in number:
                number[t] = len(number)
                bfs.append(t)
    if len(number) > max_states:
        raise _too_big(max_states)
    out_trans: list[tuple[int, ...]] = [tuple([0] * len(class_col))]
    out_acc = [False]
    for s in bfs:
        out_trans.append(tuple(number[qtrans[s][col]] for col in class_col))
        out_acc.append(qacc[s])
    return DFA(bytes(classes), len(class_col), tuple(out_trans), tuple(out_acc), 1)


def minimise(dfa: DFA, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Canonical minimal form of ``dfa`` (a no-op on DFAs this module returned)."""
    return _finish(dfa.transitions, dfa.accepting, dfa.start, dfa.classes, max_states)


# ---------------------------------------------------------------------------------------------
# Front doors


def _nfa_size(node: Node) -> int:
    """Upper bound on the NFA states ``node`` expands to, checked before building."""
    if isinstance(node, (Concat, Alternate)):
        return sum(_nfa_size(x) for x in node.items) + len(node.items) + 1
    if isinstance(node, Repeat):
        copies = node.min + 1 if node.max is None else node.max
        return (_nfa_size(node.item) + 2) * max(copies, 1) + 2
    if isinstance(node, Embed):
        return node.dfa.n_states + 1
    return 1


def compile_node(node: Node, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """The canonical DFA of a regex AST (whole-value match)."""
    if _nfa_size(node) > MAX_NFA_STATES:
        raise CompileError(f"regular expression too large (NFA needs more than {MAX_NFA_STATES} states)")
    nfa = _NFA()
    start, accept = nfa.new(), nfa.new()
    nfa.build(node, start, accept)
    trans, accepting, byte_col = _subset(nfa, start, accept, max_states * _INTERMEDIATE_FACTOR)
    return _finish(trans, accepting, 1 if len(trans) > 1 else 0, byte_col, max_states)


def compile_regex(pattern: str, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """The canonical DFA of an RE2 ``pattern`` matched against the whole value."""
    return compile_node(parse(pattern), max_states)


def _product(a: DFA, b: DFA, combine: Callable[[bool, bool], bool], limit: int) -> tuple:
    keys: dict[tuple[int, int], int] = {}
    byte_col = [keys.setdefault((a.classes[x], b.classes[x]), len(keys)) for x in range(256)]
    cols = list(keys)
    index = {(0, 0): 0, (a.start, b.start): 1} if (a.start, b.start) != (0, 0) else {(0, 0): 0}
    pairs = list(index)
    trans: list[list[int]] = []
    for sa, sb in pairs:
        ra, rb = a.transitions[sa], b.transitions[sb]
        row = []
        for ca, cb in cols:
            key = (ra[ca], rb[cb])
            j = index.get(key)
            if j is None:
                if len(pairs) >= limit:
                    raise _too_big(limit)
                j = index[key] = len(pairs)
                pairs.append(key)
            row.append(j)
        trans.append(row)
    accepting = [combine(a.accepting[x], b.accepting[y]) for x, y in pairs]
    start = index[(a.start, b.start)]
    return trans, accepting, start, byte_col


def _fold(dfas: Sequence[DFA], combine: Callable[[bool, bool], bool], max_states: int, what: str) -> DFA:
    if not dfas:
        raise ValueError(f"{what} needs at least one DFA")
    acc = dfas[0]
    for d in dfas[1:]:
        trans, accepting, start, byte_col = _product(acc, d, combine, max_states * _INTERMEDIATE_FACTOR)
        acc = _finish(trans, accepting, start, byte_col, max_states)
    return acc if len(dfas) > 1 else minimise(acc, max_states)


def intersect(*dfas: DFA, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """The language accepted by every one of ``dfas``."""
    return _fold(dfas, lambda x, y: x and y, max_states, "intersect")


def union(*dfas: DFA, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """The language accepted by at least one of ``dfas`` (empty language for none)."""
    if not dfas:
        return empty_language()
    return _fold(dfas, lambda x, y: x or y, max_states, "union")


def difference(a: DFA, b: DFA, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Strings accepted by ``a`` and not by ``b``."""
    return _fold((a, b), lambda x, y: x and not y, max_states, "difference")


def complement(dfa: DFA, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Every byte string ``dfa`` rejects."""
    acc = [not x for x in dfa.accepting]
    return _finish(dfa.transitions, acc, dfa.start, dfa.classes, max_states)
