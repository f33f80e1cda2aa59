"""Parser for the subset of RE2 syntax that polc compiles to byte-level DFAs.

Cilium's L7 rules (HTTP method, path, host) are Go ``regexp`` (RE2) patterns matched against
the whole value.  The datapath walks a DFA over raw bytes, so this parser produces an AST over
bytes:

* ASCII literals are single bytes; non-ASCII literals (and ``\\x{...}``/``\\xHH`` above 0x7f,
  which RE2 reads as code points) become their UTF-8 byte sequence.
* ``.``, negated classes and ``\\D \\W \\S`` range over *bytes*, not code points.  This only
  differs from RE2 when a counted repetition of ``.`` meets non-ASCII input (``^.$`` on ``é``).
* ``^`` / ``\\A`` and ``$`` / ``\\z`` are exact text anchors (RE2 without ``(?m)``); because
  matching is always whole-value (``re.fullmatch``) they are redundant at the ends.

Constructs outside the subset raise :class:`RegexUnsupportedError`, malformed patterns
:class:`RegexSyntaxError`; both carry ``construct`` and the 0-based ``offset`` into the
pattern so the caller can point at the spot in its source file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import CompileError, UnsupportedError

__all__ = [
    "ALL_BYTES",
    "EMPTY",
    "MAX_REPEAT",
    "Alternate",
    "Anchor",
    "ByteSet",
    "Concat",
    "Embed",
    "Node",
    "RegexSyntaxError",
    "RegexUnsupportedError",
    "Repeat",
    "alternate",
    "byte_range",
    "byte_set",
    "concat",
    "literal",
    "parse",
    "repeat",
]

MAX_REPEAT = 1000  # RE2's limit on {n,m}
MAX_NESTING = 200
ALL_BYTES = (1 << 256) - 1
_NL = 1 << 0x0A


# ---------------------------------------------------------------------------------------------
# Errors


class RegexSyntaxError(CompileError):
    """A malformed pattern.  ``construct`` names the bad piece, ``offset`` is 0-based."""

    def __init__(self, message: str, construct: str, offset: int, pattern: str):
        super().__init__(f"invalid regular expression {pattern!r}: {message} at column {offset + 1}")
        self.construct = construct
        self.offset = offset
        self.pattern = pattern


class RegexUnsupportedError(UnsupportedError):
    """Valid RE2 that polc cannot compile to a DFA (backreferences, lookaround, ``\\b`` ...)."""

    def __init__(self, construct: str, offset: int, pattern: str, why: str = ""):
        tail = f" ({why})" if why else ""
        super().__init__(
            f"regular expression {pattern!r}: {construct} at column {offset + 1} is not "
            f"supported{tail}"
        )
        self.construct = construct
        self.offset = offset
        self.pattern = pattern


# ---------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class ByteSet:
    """One byte out of a set; ``mask`` has bit ``b`` set when byte ``b`` is in the set."""

    mask: int


@dataclass(frozen=True)
class Concat:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alternate:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    """``item`` repeated between ``min`` and ``max`` times (``max`` None: unbounded)."""

    item: Node
    min: int
    max: int | None


@dataclass(frozen=True)
class Anchor:
    """Zero-width assertion: ``"start"`` (beginning of text) or ``"end"`` (end of text)."""

    kind: str


@dataclass(frozen=True, eq=False)
class Embed:
    """An already-built ``dfa.DFA`` used as a sub-language (for intersections inside a concat)."""

    dfa: object


Node = ByteSet | Concat | Alternate | Repeat | Anchor | Embed
EMPTY = Concat(())


def byte_set(values: Iterable[int] | bytes) -> ByteSet:
    mask = 0
    for b in values:
        mask |= 1 << b
    return ByteSet(mask)


def byte_range(lo: int, hi: int) -> ByteSet:
    return ByteSet(((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1))


def literal(data: bytes, ignore_case: bool = False) -> Node:
    """The exact byte string ``data``; ``ignore_case`` folds ASCII letters only."""
    if ignore_case:
        return concat(*(ByteSet(_fold_mask(1 << b)) for b in data))
    return concat(*(ByteSet(1 << b) for b in data))


def concat(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        flat.extend(it.items if isinstance(it, Concat) else (it,))
    return flat[0] if len(flat) == 1 else Concat(tuple(flat))


def alternate(*items: Node) -> Node:
    return items[0] if len(items) == 1 else Alternate(tuple(items))


def repeat(item: Node, lo: int, hi: int | None) -> Repeat:
    return Repeat(item, lo, hi)


_UPPER = sum(1 << b for b in range(0x41, 0x5B))
_LOWER = _UPPER << 0x20


def _fold_mask(mask: int) -> int:
    """Add the other ASCII case of every letter in ``mask``."""
    return mask | ((mask & _UPPER) << 0x20) | ((mask & _LOWER) >> 0x20)


def _mask_of(chars: str) -> int:
    return sum(1 << ord(c) for c in set(chars))


_DIGIT = byte_range(0x30, 0x39).mask
_WORD = _DIGIT | _UPPER | _LOWER | (1 << 0x5F)
_SPACE = _mask_of("\t\n\f\r ")  # RE2's \s: no \v
_PERL_CLASSES = {
    "d": _DIGIT,
    "D": ALL_BYTES ^ _DIGIT,
    "w": _WORD,
    "W": ALL_BYTES ^ _WORD,
    "s": _SPACE,
    "S": ALL_BYTES ^ _SPACE,
}
_CONTROL_ESCAPES = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
_UNSUPPORTED_ESCAPES = {
    "b": "word boundary \\b",
    "B": "non-word-boundary \\B",
    "p": "Unicode class \\p",
    "P": "Unicode class \\P",
    "Q": "quoting \\Q...\\E",
    "C": "single-byte escape \\C",
}
_FLAG_LETTERS = "imsU"


# ---------------------------------------------------------------------------------------------
# Parser


class _Flags:
    """Flags in force inside one group; ``(?i)`` changes them for the rest of the group."""

    __slots__ = ("i", "m", "s")

    def __init__(self, i: bool = False, s: bool = False, m: bool = False):
        self.i, self.s, self.m = i, s, m

    def copy(self) -> _Flags:
        return _Flags(self.i, self.s, self.m)


class _Parser:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0
        self.depth = 0

    # -- errors
    def syntax(self, message: str, construct: str, offset: int) -> RegexSyntaxError:
        return RegexSyntaxError(message, construct, offset, self.p)

    def unsupported(self, construct: str, offset: int, why: str = "") -> RegexUnsupportedError:
        return RegexUnsupportedError(construct, offset, self.p, why)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    # -- grammar
    def parse(self) -> Node:
        node = self.alternation(_Flags())
        if self.i < len(self.p):  # only an unmatched ')' stops the top level early
            raise self.syntax("unexpected )", ")", self.i)
        return node

    def alternation(self, flags: _Flags) -> Node:
        branches = [self.sequence(flags)]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence(flags))
        return alternate(*branches)

    def sequence(self, flags: _Flags) -> Node:
        items: list[Node] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            start = self.i
            atom = self.atom(flags)
            if atom is None:  # a flag group like (?i) matches nothing
                continue
            items.append(self.quantified(atom, start))
        return concat(*items) if items else EMPTY

    def quantified(self, atom: Node, start: int) -> Node:
        q = self.quantifier()
        if q is None:
            return atom
        lo, hi, qstart = q
        if isinstance(atom, Anchor):
            raise self.syntax("missing argument to repetition operator", self.p[qstart:self.i], qstart)
        if self.peek() == "?":  # lazy: same language
            self.i += 1
        nested = self.i
        if self.quantifier() is not None:
            raise self.syntax("invalid nested repetition operator", self.p[qstart:self.i], nested)
        return Repeat(atom, lo, hi)

    def quantifier(self) -> tuple[int, int | None, int] | None:
        """Parse ``* + ? {m} {m,} {m,n}`` at the cursor, or return None (cursor unmoved)."""
        c, start = self.peek(), self.i
        if c in ("*", "+", "?") and c:
            self.i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (start,)
        if c != "{":
            return None
        counts = self.repeat_counts()
        if counts is None:
            return None
        lo, hi = counts
        text = self.p[start:self.i]
        if lo > MAX_REPEAT or (hi is not None and hi > MAX_REPEAT):
            raise self.unsupported(f"repeat count {text}", start, f"counts above {MAX_REPEAT}")
        if hi is not None and hi < lo:
            raise self.syntax("invalid repeat count", text, start)
        return lo, hi, start

    def repeat_counts(self) -> tuple[int, int | None] | None:
        """``{m}``, ``{m,}`` or ``{m,n}``; anything else leaves ``{`` a literal (as RE2)."""
        j, p = self.i + 1, self.p
        k = j
        while k < len(p) and p[k].isascii() and p[k].isdigit():
            k += 1
        if k == j:
            return None
        lo = int(p[j:k])
        if k < len(p) and p[k] == "}":
            self.i = k + 1
            return lo, lo
        if k >= len(p) or p[k] != ",":
            return None
        m = k + 1
        while m < len(p) and p[m].isascii() and p[m].isdigit():
            m += 1
        if m >= len(p) or p[m] != "}":
            return None
        hi = int(p[k + 1 : m]) if m > k + 1 else None
        self.i = m + 1
        return lo, hi

    def atom(self, flags: _Flags) -> Node | None:
        c, start = self.p[self.i], self.i
        if c == "(":
            return self.group(flags)
        if c == "[":
            return self.char_class(flags)
        if c == "\\":
            return self.escape(flags)
        if c in "*+?" or (c == "{" and self.repeat_counts_at(start)):
            raise self.syntax("missing argument to repetition operator", c, start)
        self.i += 1
        if c == ".":
            return ByteSet(ALL_BYTES if flags.s else ALL_BYTES ^ _NL)
        if c in "^$":
            return self.anchor("start" if c == "^" else "end", c, start, flags)
        return self.char(ord(c), flags)

    def repeat_counts_at(self, pos: int) -> bool:
        saved = self.i
        self.i = pos
        try:
            return self.repeat_counts() is not None
        finally:
            self.i = saved

    def anchor(self, kind: str, text: str, start: int, flags: _Flags) -> Anchor:
        if flags.m:
            raise self.unsupported(f"anchor {text} in multi-line mode (?m)", start)
        return Anchor(kind)

    def char(self, cp: int, flags: _Flags) -> Node:
        """A literal code point: one byte if ASCII, its UTF-8 sequence otherwise."""
        if cp < 0x80:
            mask = 1 << cp
            return ByteSet(_fold_mask(mask) if flags.i else mask)
        ch = chr(cp)
        variants = {ch}
        if flags.i:
            variants |= {v for v in (ch.lower(), ch.upper(), ch.swapcase()) if len(v) == 1}
        seqs = sorted(v.encode("utf-8", "surrogatepass") for v in variants)
        return alternate(*(literal(s) for s in seqs))

    # -- groups
    def group(self, flags: _Flags) -> Node | None:
        start = self.i
        self.i += 1
        inner = flags.copy()
        if self.peek() == "?":
            inner = self.group_prefix(start, flags)
            if inner is None:  # (?i) form: flags changed in place, nothing to match
                return None
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.unsupported("group nesting", start, f"more than {MAX_NESTING} levels")
        node = self.alternation(inner)
        self.depth -= 1
        if self.peek() != ")":
            raise self.syntax("missing closing )", "(", start)
        self.i += 1
        return node

    def group_prefix(self, start: int, flags: _Flags) -> _Flags | None:
        """Consume ``?...`` after ``(``; return the group's flags, or None for ``(?i)``."""
        rest = self.p[self.i :]
        if rest.startswith("?:"):
            self.i += 2
            return flags.copy()
        for prefix, what in (
            ("?=", "lookahead (?="),
            ("?!", "negative lookahead (?!"),
            ("?<=", "lookbehind (?<="),
            ("?<!", "negative lookbehind (?<!"),
            ("?P=", "named backreference (?P="),
            ("?#", "comment group (?#"),
            ("?>", "atomic group (?>"),
            ("?|", "branch reset (?|"),
        ):
            if rest.startswith(prefix):
                raise self.unsupported(what, start)
        for prefix in ("?P<", "?<"):
            if rest.startswith(prefix):
                self.named_group(start, len(prefix))
                return flags.copy()
        return self.flag_group(start, flags)

    def named_group(self, start: int, skip: int) -> None:
        j = self.i + skip
        end = self.p.find(">", j)
        name = self.p[j:end] if end >= 0 else ""
        if end < 0 or not name or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in name):
            text = self.p[start : (end + 1 if end >= 0 else len(self.p))]
            raise self.syntax("invalid named capture", text, start)
        self.i = end + 1

    def flag_group(self, start: int, flags: _Flags) -> _Flags | None:
        j = self.i + 1
        p = self.p
        new = flags.copy()
        negate = False
        seen = False
        while j < len(p) and p[j] not in ":)":
            ch = p[j]
            if ch == "-" and not negate:
                negate = True
            elif ch in _FLAG_LETTERS:
                seen = True
                if ch != "U":  # ungreedy only changes which match is reported
                    setattr(new, ch, not negate)
            else:
                end = p.find(")", j)
                text = p[start : end + 1] if end >= 0 else p[start:]
                raise self.syntax("invalid or unsupported Perl syntax", text, start)
            j += 1
        if j >= len(p) or not seen or p[j - 1] == "-":
            raise self.syntax("invalid or unsupported Perl syntax", p[start : j + 1], start)
        self.i = j + 1
        if p[j] == ")":  # (?i): applies to the rest of the enclosing group
            flags.i, flags.s, flags.m = new.i, new.s, new.m
            return None
        return new

    # -- escapes and classes
    def escape(self, flags: _Flags) -> Node:
        start = self.i
        item = self.escape_item(in_class=False)
        if isinstance(item, str):  # anchor
            return self.anchor(item, self.p[start : self.i], start, flags)
        kind, value = item
        if kind == "set":
            return ByteSet(value)
        return self.char(value, flags)

    def escape_item(self, in_class: bool) -> tuple[str, int] | str:
        """Parse ``\\X``; returns ("char", code point), ("set", mask) or an anchor kind."""
        start = self.i
        if self.i + 1 >= len(self.p):
            raise self.syntax("trailing backslash at end of expression", "\\", start)
        c = self.p[self.i + 1]
        self.i += 2
        if c in _PERL_CLASSES:
            return "set", _PERL_CLASSES[c]
        if c in _CONTROL_ESCAPES:
            return "char", _CONTROL_ESCAPES[c]
        if c == "x":
            return "char", self.hex_escape(start)
        if c.isascii() and c.isdigit():
            what = "octal escape" if c == "0" else f"backreference \\{c}"
            raise self.unsupported(what, start)
        if c in _UNSUPPORTED_ESCAPES:
            raise self.unsupported(_UNSUPPORTED_ESCAPES[c], start)
        if not in_class and c in "Az":
            return "start" if c == "A" else "end"
        if c.isascii() and not c.isalnum() and c.isprintable() and c != " ":
            return "char", ord(c)
        raise self.syntax("invalid escape sequence", f"\\{c}", start)

    def hex_escape(self, start: int) -> int:
        p = self.p
        if self.peek() == "{":
            end = p.find("}", self.i)
            digits = p[self.i + 1 : end] if end >= 0 else ""
            if end < 0 or not digits or not _is_hex(digits) or int(digits, 16) > 0x10FFFF:
                raise self.syntax("invalid escape sequence", p[start : (end + 1 if end >= 0 else len(p))], start)
            self.i = end + 1
            return int(digits, 16)
        digits = p[self.i : self.i + 2]
        if len(digits) != 2 or not _is_hex(digits):
            raise self.syntax("invalid escape sequence", p[start : self.i + 2], start)
        self.i += 2
        return int(digits, 16)

    def char_class(self, flags: _Flags) -> ByteSet:
        start = self.i
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        mask = 0
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.syntax("missing closing ]", self.p[start:], start)
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self.peek(1) == ":":
                end = self.p.find(":]", self.i)
                text = self.p[self.i : end + 2] if end >= 0 else "[:"
                raise self.unsupported(f"POSIX class {text}", self.i)
            mask |= self.class_range()
        if flags.i:
            mask = _fold_mask(mask)
        return ByteSet(ALL_BYTES ^ mask if negate else mask)

    def class_range(self) -> int:
        start = self.i
        lo = self.class_atom()
        if lo[0] == "set" or self.peek() != "-" or self.peek(1) in ("]", ""):
            return lo[1] if lo[0] == "set" else self.class_char_mask(lo[1], start)
        self.i += 1
        hi_start = self.i
        hi = self.class_atom()
        text = self.p[start : self.i]
        if hi[0] == "set":
            raise self.syntax("invalid character class range", text, start)
        if hi[1] < lo[1]:
            raise self.syntax("invalid character class range", text, start)
        if hi[1] >= 0x80:
            raise self.unsupported(f"non-ASCII character class range {text}", hi_start)
        return byte_range(lo[1], hi[1]).mask

    def class_atom(self) -> tuple[str, int]:
        c = self.p[self.i]
        if c == "\\":
            item = self.escape_item(in_class=True)
            assert not isinstance(item, str)
            return item
        self.i += 1
        return "char", ord(c)

    def class_char_mask(self, cp: int, start: int) -> int:
        if cp >= 0x80:
            raise self.unsupported(f"non-ASCII character {chr(cp)!r} in a character class", start)
        return 1 << cp


def _is_hex(s: str) -> bool:
    return all(ch in "0123456789abcdefABCDEF" for ch in s)


def parse(pattern: str) -> Node:
    """Parse ``pattern`` (RE2 syntax, the subset above) into a byte-level AST.

    Raises RegexSyntaxError for malformed patterns and RegexUnsupportedError for valid RE2
    outside the subset; both carry ``construct`` and ``offset`` (0-based).
    """
    if not isinstance(pattern, str):
        raise TypeError(f"regex pattern must be str, not {type(pattern).__name__}: {pattern!r}")
    return _Parser(pattern).parse()
