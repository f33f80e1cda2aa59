"""The RE2-subset parser and DFA construction agree with Python's ``re`` (bytes, fullmatch).

Generated patterns carry two spellings: ours (RE2) and an equivalent one for Python, where
the dialects differ (RE2's ``\\s`` has no ``\\v``; RE2's ``$`` is Python's ``\\Z``).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polc.compiler import dfa as dfa_mod
from polc.compiler.dfa import DFA, compile_regex, complement, difference, intersect, minimise, union
from polc.compiler.errors import CompileError, UnsupportedError
from polc.compiler.regex import RegexSyntaxError, RegexUnsupportedError, parse

ALPHABET = b"abcAB0_ .-\n\t\x0b\xff"

# (ours, python) atom spellings
_ATOMS = [
    ("a", "a"),
    ("b", "b"),
    ("A", "A"),
    ("0", "0"),
    ("\\.", "\\."),
    ("\\-", "\\-"),
    (".", "."),
    ("[a-c]", "[a-c]"),
    ("[^ab]", "[^ab]"),
    ("[]a]", "[]a]"),
    ("[a-]", "[a-]"),
    ("[\\d_]", "[\\d_]"),
    ("\\d", "\\d"),
    ("\\w", "\\w"),
    ("\\W", "\\W"),
    ("\\s", "[\\t\\n\\f\\r ]"),
    ("\\S", "[^\\t\\n\\f\\r ]"),
    ("\\x41", "\\x41"),
    ("\\t", "\\t"),
    ("\\n", "\\n"),
    ("\\xff", None),  # RE2: U+00FF as UTF-8; checked separately
]
_ATOMS = [a for a in _ATOMS if a[1] is not None]

_QUANTS = ["*", "+", "?", "{2}", "{1,}", "{0,2}", "{1,3}", "*?", "+?", "??", "{1,2}?"]


@st.composite
def _body(draw, depth: int):
    """A (ours, python) pattern pair: a sequence of 1-4 pieces, each maybe quantified."""
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 9)) if depth > 0 else 0
        if kind <= 4:
            ours, py = draw(st.sampled_from(_ATOMS))
        else:
            inner = draw(_body(depth - 1))
            if kind <= 6:
                alt = draw(_body(depth - 1))
                ours, py = f"(?:{inner[0]}|{alt[0]})", f"(?:{inner[1]}|{alt[1]})"
            elif kind == 7:
                ours, py = f"({inner[0]})", f"({inner[1]})"
            elif kind == 8:
                ours, py = f"(?i:{inner[0]})", f"(?i:{inner[1]})"
            else:
                ours, py = f"(?:{inner[0]}|)", f"(?:{inner[1]}|)"
        if draw(st.integers(0, 2)) == 0:
            q = draw(st.sampled_from(_QUANTS))
            ours, py = f"(?:{ours}){q}", f"(?:{py}){q}"
        pieces.append((ours, py))
    return "".join(p[0] for p in pieces), "".join(p[1] for p in pieces)


def _regex_pairs(depth: int = 2):
    return st.tuples(_body(depth), st.booleans(), st.booleans(), st.booleans()).map(_decorate)


def _decorate(t):
    (ours, py), caret, dollar, icase = t
    if caret:
        ours, py = "^" + ours, "^" + py
    if dollar:
        ours, py = ours + "$", py + "\\Z"
    if icase:
        ours, py = "(?i)" + ours, "(?i)" + py
    return ours, py


def _strings_for(data, py: re.Pattern) -> list[bytes]:
    out = data.draw(st.lists(st.binary(max_size=8).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)), max_size=12))
    return out + data.draw(st.lists(st.from_regex(py, fullmatch=True), max_size=4))


def _compile(pattern: str) -> DFA:
    """Compile, discarding the rare generated pattern whose DFA is too big for a unit test."""
    try:
        return compile_regex(pattern, max_states=1024)
    except CompileError as err:
        assume("states" not in err.message)
        raise


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(_regex_pairs(), st.data())
def test_dfa_agrees_with_python_re(pair, data):
    ours, py_text = pair
    py = re.compile(py_text.encode())
    d = _compile(ours)
    for s in _strings_for(data, py):
        assert d.matches(s) == bool(py.fullmatch(s)), (ours, py_text, s)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regex_pairs(2), _regex_pairs(2), st.data())
def test_products_agree_with_python_re(p1, p2, data):
    r1, r2 = re.compile(p1[1].encode()), re.compile(p2[1].encode())
    a, b = _compile(p1[0]), _compile(p2[0])
    inter, uni, diff, comp = intersect(a, b), union(a, b), difference(a, b), complement(a)
    for s in _strings_for(data, r1) + _strings_for(data, r2):
        x, y = bool(r1.fullmatch(s)), bool(r2.fullmatch(s))
        assert inter.matches(s) == (x and y)
        assert uni.matches(s) == (x or y)
        assert diff.matches(s) == (x and not y)
        assert comp.matches(s) == (not x)


def _unminimised(pattern: str) -> DFA:
    """The raw subset-construction automaton, wrapped as a DFA for running."""
    nfa = dfa_mod._NFA()
    start, accept = nfa.new(), nfa.new()
    nfa.build(parse(pattern), start, accept)
    trans, accepting, byte_col = dfa_mod._subset(nfa, start, accept, 1 << 20)
    return DFA(bytes(byte_col), max(byte_col) + 1, tuple(map(tuple, trans)), tuple(accepting), 1)


@SETTINGS
@given(_regex_pairs(), st.data())
def test_minimisation_keeps_language_and_shrinks(pair, data):
    ours, py_text = pair
    small = _compile(ours)
    raw = _unminimised(ours)
    # +1: the minimal DFA may add a dead state the raw one did not need.
    assert small.n_states <= raw.n_states + 1
    assert minimise(raw) == small
    assert minimise(small) == small
    for s in _strings_for(data, re.compile(py_text.encode())):
        assert raw.matches(s) == small.matches(s)


@SETTINGS
@given(_regex_pairs())
def test_canonical_form_conventions(pair):
    d = _compile(pair[0])
    _check_conventions(d)
    # Equal languages give identical DFAs.
    assert compile_regex(f"(?:{pair[0]})|(?:{pair[0]})") == d
    assert union(d, d) == d == intersect(d, d)
    assert complement(complement(d)) == d


def _check_conventions(d: DFA) -> None:
    assert len(d.classes) == 256 and max(d.classes) == d.n_classes - 1
    assert d.transitions[0] == (0,) * d.n_classes and not d.accepting[0]
    assert d.start == (0 if d.n_states == 1 else 1)
    assert all(len(row) == d.n_classes for row in d.transitions)
    # Classes are numbered by their smallest byte, so distinct columns differ somewhere.
    seen = []
    for b in range(256):
        if d.classes[b] not in seen:
            seen.append(d.classes[b])
    assert seen == list(range(d.n_classes))
    cols = {tuple(row[c] for row in d.transitions) for c in range(d.n_classes)}
    assert len(cols) == d.n_classes
    # BFS numbering from start over class ids.
    if d.start:
        order, queue = {0: 0, 1: 1}, [1]
        for s in queue:
            for t in d.transitions[s]:
                if t not in order:
                    order[t] = len(order)
                    queue.append(t)
        assert order == {s: s for s in range(d.n_states)}


@pytest.mark.parametrize(
    "a, b",
    [
        ("(a|b)*", "(a*b*)*"),
        ("a{2,3}", "aa|aaa"),
        ("[a-c]", "a|b|c"),
        ("^abc$", "abc"),
        ("(?i)ab", "[aA][bB]"),
        ("x*?y+?", "x*y+"),
        ("(?P<n>a)b", "(?:a)b"),
        ("\\x{e9}", "é"),
        ("(?s).", "[\\x00-\\x7f]|[^\\x00-\\x7f]"),
    ],
)
def test_equal_languages_identical_dfas(a, b):
    assert compile_regex(a) == compile_regex(b)


@pytest.mark.parametrize(
    "pattern, yes, no",
    [
        ("é", ["é".encode()], [b"\xe9", b"e"]),
        ("(?i)é", ["é".encode(), "É".encode()], [b"E"]),
        ("\\xe9", ["é".encode()], [b"\xe9"]),  # RE2 reads \xHH as a code point
        ("a.c", [b"abc", b"a\xffc"], [b"a\nc"]),
        ("(?s)a.c", [b"a\nc"], []),
        ("a{,2}", [b"a{,2}"], [b"aa"]),  # RE2: not a repeat, a literal
        ("a{", [b"a{"], []),
        ("a^b", [], [b"ab", b"a^b"]),
        ("a$|b", [b"a", b"b"], [b"a\n"]),
        ("\\Aab\\z", [b"ab"], []),
        ("(?i)a(?-i)b", [b"Ab"], [b"AB"]),
        ("(?i:a)b|c", [b"Ab", b"c"], [b"C", b"AB"]),
        ("x(?i)b|c", [b"xB", b"C"], [b"X"]),  # (?i) lasts to the end of the group, across |
        ("\\s", [b" ", b"\t"], [b"\x0b"]),  # RE2's \s has no \v
        ("[\\s]", [b"\r"], [b"\x0b"]),
        ("", [b""], [b"a"]),
        ("()|a", [b"", b"a"], [b"aa"]),
    ],
)
def test_re2_details(pattern, yes, no):
    d = compile_regex(pattern)
    for s in yes:
        assert d.matches(s), s
    for s in no:
        assert not d.matches(s), s


@pytest.mark.parametrize(
    "pattern, offset, construct_part",
    [
        ("(a)\\1", 3, "backreference"),
        ("a(?=b)", 1, "lookahead"),
        ("a(?!b)", 1, "lookahead"),
        ("(?<=a)b", 0, "lookbehind"),
        ("(?<!a)b", 0, "lookbehind"),
        ("\\bfoo", 0, "word boundary"),
        ("foo\\B", 3, "non-word-boundary"),
        ("\\pL", 0, "Unicode class"),
        ("x\\p{Greek}", 1, "Unicode class"),
        ("[[:alpha:]]", 1, "POSIX class"),
        ("a{1001}", 1, "repeat count"),
        ("a{2,5000}", 1, "repeat count"),
        ("ab[é]", 3, "non-ASCII"),
        ("\\Qa.b\\E", 0, "quoting"),
        ("(?m)^a", 4, "multi-line"),
        ("x\\C", 1, "\\C"),
        ("a(?>b)", 1, "atomic"),
        ("\\0", 0, "octal"),
    ],
)
def test_unsupported_constructs_name_offset(pattern, offset, construct_part):
    with pytest.raises(UnsupportedError) as info:
        compile_regex(pattern)
    err = info.value
    assert isinstance(err, RegexUnsupportedError)
    assert err.offset == offset, err.message
    assert construct_part in err.construct
    assert f"column {offset + 1}" in err.message


@pytest.mark.parametrize(
    "pattern, offset",
    [
        ("(ab", 0),
        ("ab)", 2),
        ("[ab", 0),
        ("*a", 0),
        ("a|+", 2),
        ("a**", 2),
        ("a{3,2}", 1),
        ("[z-a]", 1),
        ("\\", 0),
        ("ab\\q", 2),
        ("\\xZ1", 0),
        ("(?x)a", 0),
        ("(?P<>a)", 0),
        ("^*", 1),
        ("(?i)*", 4),
    ],
)
def test_syntax_errors_name_offset(pattern, offset):
    with pytest.raises(CompileError) as info:
        compile_regex(pattern)
    err = info.value
    assert isinstance(err, RegexSyntaxError) and not isinstance(err, UnsupportedError)
    assert err.offset == offset, err.message
    assert err.construct


def test_max_states_limit():
    # (a|b)*a(a|b){n}: the classic 2^n blow-up.
    with pytest.raises(CompileError, match="DFA needs more than 64 states"):
        compile_regex("(a|b)*a(a|b){8}", max_states=64)
    assert compile_regex("(a|b)*a(a|b){5}").n_states == 2**6 + 1


def test_nfa_size_limit():
    with pytest.raises(CompileError, match="too large"):
        compile_regex("((a{1000}){1000}){10}")


def test_empty_language_shape():
    d = compile_regex("a^")
    assert d == DFA(bytes(256), 1, ((0,),), (False,), 0)
    assert d.is_empty() and not d.matches(b"")
