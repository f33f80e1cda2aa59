"""Evaluate many label selectors against many label sets at once.

A compile with 100,000 rules over 10,000 identities cannot afford rules x identities
selector checks.  Instead every distinct label set gets a bit position, the label index
maps each label to the bitset of label sets that carry it, and a requirement becomes a few
big-integer ORs (and a complement for NotIn/DoesNotExist).  Selectors are cached, so the
many rules that share a selector cost one evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

from . import ir


def iter_bits(bits: int) -> Iterator[int]:
    """Positions of the set bits of ``bits``, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


class LabelIndex:
    """Bitset evaluation of selectors over a fixed list of label sets."""

    def __init__(self, label_sets: Iterable[tuple]):
        self.label_sets = list(label_sets)
        self.all = (1 << len(self.label_sets)) - 1
        # key -> source -> value -> positions of the label sets carrying it.  Bitsets are made
        # only for the labels selectors ask about: a CIDR label is on one label set of
        # hundreds of thousands, and a bitset per such label would take gigabytes.
        self._index: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(dict))
        for i, labels in enumerate(self.label_sets):
            for (source, key), value in labels:
                self._index[key][source].setdefault(value, []).append(i)
        self._bitsets: dict[tuple[str, str, str | None], int] = {}
        self._cache: dict[ir.Selector, int] = {}

    def _label_bits(self, key: str, source: str, value: str | None) -> int:
        """Bitset of the label sets with ``key`` = ``value`` from ``source`` (None: any value)."""
        bits = self._bitsets.get((key, source, value))
        if bits is None:
            by_value = self._index[key][source]
            lists = by_value.values() if value is None else [by_value.get(value, ())]
            buf = bytearray((len(self.label_sets) + 7) // 8)
            for positions in lists:
                for p in positions:
                    buf[p >> 3] |= 1 << (p & 7)
            bits = self._bitsets[(key, source, value)] = int.from_bytes(buf, "little")
        return bits

    def _with(self, req: ir.Requirement, values: Iterable[str] | None) -> int:
        """Label sets carrying ``req.key`` (from ``req.source``) with one of ``values`` (None: any)."""
        bits = 0
        for source, by_value in self._index.get(req.key, {}).items():
            if req.source not in ("any", source):
                continue
            if values is None:
                bits |= self._label_bits(req.key, source, None)
                continue
            for v in values:
                if v in by_value:
                    bits |= self._label_bits(req.key, source, v)
        return bits

    def requirement(self, req: ir.Requirement) -> int:
        if req.op is ir.Op.IN:
            return self._with(req, req.values)
        if req.op is ir.Op.NOT_IN:
            return self.all & ~self._with(req, req.values)
        if req.op is ir.Op.EXISTS:
            return self._with(req, None)
        return self.all & ~self._with(req, None)

    def selector(self, sel: ir.Selector) -> int:
        """Bitset of the label sets ``sel`` selects."""
        bits = self._cache.get(sel)
        if bits is None:
            bits = self.all
            for req in sel.requirements:
                bits &= self.requirement(req)
                if not bits:
                    break
            self._cache[sel] = bits
        return bits
