"""The byte languages the datapath checks for Cilium L7 rules, as canonical DFAs.

HTTP: ``http_head_dfa(rules)`` accepts exactly the complete HTTP/1.x request heads (request
line, header lines, empty line, and nothing after it) that at least one rule allows.  The
request target must be origin-form with no dot segments and no percent-encoded ``.``, ``/`` or
``\\`` in the path, so a path regex is never judged on a path the server will normalise into
something else.  Header requirements are order-independent: each is a "the head has a line
like X" language and a rule is their intersection.

DNS: ``dns_name_dfa(matchers)`` accepts query names as the walker feeds them: lowercased,
labels joined by ``.``, no trailing dot (the root name is the empty string).  Semantics follow
Cilium's ``matchpattern.ToAnchoredRegexp``.

Errors in user input raise ``CompileError`` (``UnsupportedError`` for valid RE2 we cannot
compile) with attributes ``field`` (``"method"``, ``"path"``, ``"host"``, ``"headers"``,
``"matchName"``, ``"matchPattern"``), ``offset`` (0-based into that field's string, or None) and
``rule_index`` so the caller can add the file position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from .dfa import DEFAULT_MAX_STATES, DFA, compile_node, difference, empty_language, intersect, union
from .errors import CompileError
from .regex import (
    ALL_BYTES,
    ByteSet,
    Embed,
    Node,
    alternate,
    byte_range,
    byte_set,
    concat,
    literal,
    parse,
    repeat,
)

__all__ = [
    "DNSMatch",
    "HTTPMatch",
    "dns_match_dfa",
    "dns_name_dfa",
    "http_head_dfa",
    "http_rule_dfa",
    "parse_header_entry",
]


@dataclass(frozen=True)
class HTTPMatch:
    """One Cilium ``toPorts.rules.http`` entry.  None (or no headers) matches anything."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class DNSMatch:
    """One Cilium ``toPorts.rules.dns`` entry: exactly one of ``name`` / ``pattern``."""

    name: str | None = None
    pattern: str | None = None


def _error(message: str, field: str, offset: int | None, rule_index: int | None) -> CompileError:
    err = CompileError(message)
    err.field, err.offset, err.rule_index = field, offset, rule_index
    return err


def _tag(err: CompileError, field: str, rule_index: int | None) -> CompileError:
    err.field = field
    err.rule_index = rule_index
    if not hasattr(err, "offset"):
        err.offset = None
    return err


# ---------------------------------------------------------------------------------------------
# HTTP building blocks (RFC 9110 / 9112)

_TCHAR_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TCHAR = byte_set(_TCHAR_BYTES)
_TOKEN = repeat(_TCHAR, 1, None)
_VCHAR = byte_range(0x21, 0x7E)
_OBS_TEXT = byte_range(0x80, 0xFF)
_WS = byte_set(b" \t")
_FIELD_BYTE = ByteSet(_WS.mask | _VCHAR.mask | _OBS_TEXT.mask)
_FIELD_NONWS = ByteSet(_VCHAR.mask | _OBS_TEXT.mask)
_CRLF = literal(b"\r\n")
_SP = literal(b" ")
_VERSION = concat(literal(b"HTTP/1."), byte_set(b"01"), _CRLF)
_ANY_LINE = concat(_TOKEN, literal(b":"), repeat(_FIELD_BYTE, 0, None), _CRLF)
# The first CRLF-terminated line; the strict request line is intersected in elsewhere.
_LOOSE_REQUEST_LINE = concat(repeat(ByteSet(ALL_BYTES ^ ((1 << 13) | (1 << 10))), 0, None), _CRLF)

_SEG_CHAR = ByteSet(_VCHAR.mask & ~sum(1 << b for b in b"/?#\\"))
_QUERY_CHAR = ByteSet(_VCHAR.mask & ~(1 << ord("#")))


@cache
def _target_dfa() -> DFA:
    """Origin-form targets whose path needs no normalisation (see module docstring)."""
    any_seg = compile_node(repeat(_SEG_CHAR, 0, None))
    # "." and "..", also with ;params (servlet containers treat "..;" as "..").
    dot_seg = compile_node(
        concat(literal(b"."), repeat(literal(b"."), 0, 1), repeat(concat(literal(b";"), repeat(_SEG_CHAR, 0, None)), 0, 1))
    )
    # Percent-encoded '.', '/', '\' that a server or backend may decode before routing.
    anything = repeat(ByteSet(ALL_BYTES), 0, None)
    encoded = compile_node(
        concat(anything, literal(b"%"), alternate(literal(b"2e", True), literal(b"2f", True), literal(b"5c", True)), anything)
    )
    seg = difference(difference(any_seg, dot_seg), encoded)
    path = repeat(concat(literal(b"/"), Embed(seg)), 1, None)
    query = concat(literal(b"?"), repeat(_QUERY_CHAR, 0, None))
    return compile_node(concat(path, repeat(query, 0, 1)))


@cache
def _trimmed_value_dfa() -> DFA:
    """Header values as seen after OWS trimming: no leading or trailing SP/HTAB."""
    inner = concat(_FIELD_NONWS, repeat(concat(repeat(_FIELD_BYTE, 0, None), _FIELD_NONWS), 0, 1))
    return compile_node(repeat(inner, 0, 1))


@cache
def _token_dfa() -> DFA:
    return compile_node(_TOKEN)


def _regex_dfa(pattern: str, field: str, rule_index: int | None, max_states: int) -> DFA:
    try:
        return compile_node(parse(pattern), max_states)
    except CompileError as err:
        raise _tag(err, field, rule_index) from None


def _head(request_line: Node, lines: Node) -> Node:
    return concat(request_line, lines, _CRLF)


def _named_line(name: str, value: DFA | None) -> Node:
    v = repeat(_FIELD_BYTE, 0, None) if value is None else concat(
        repeat(_WS, 0, None), Embed(intersect(value, _trimmed_value_dfa())), repeat(_WS, 0, None)
    )
    return concat(literal(name.encode("ascii"), ignore_case=True), literal(b":"), v, _CRLF)


def _other_name_line(name: str) -> Node:
    other = difference(_token_dfa(), compile_node(literal(name.encode("ascii"), ignore_case=True)))
    return concat(Embed(other), literal(b":"), repeat(_FIELD_BYTE, 0, None), _CRLF)


def _exactly_one(name: str, value: DFA, max_states: int) -> DFA:
    """Heads with exactly one ``name`` header line, whose trimmed value is in ``value``.

    Exactly one, not "some": with duplicates a proxy would join or pick values, and a
    "some line matches" check could be satisfied by a decoy line.
    """
    others = repeat(_other_name_line(name), 0, None)
    return compile_node(_head(_LOOSE_REQUEST_LINE, concat(others, _named_line(name, value), others)), max_states)


def _at_most_one(name: str, max_states: int) -> DFA:
    others = repeat(_other_name_line(name), 0, None)
    one = repeat(concat(_named_line(name, None), others), 0, 1)
    return compile_node(_head(_LOOSE_REQUEST_LINE, concat(others, one)), max_states)


def _present(name: str, max_states: int) -> DFA:
    anyl = repeat(_ANY_LINE, 0, None)
    return compile_node(_head(_LOOSE_REQUEST_LINE, concat(anyl, _named_line(name, None), anyl)), max_states)


def parse_header_entry(entry: str, rule_index: int | None = None) -> tuple[str, bytes | None]:
    """Split a Cilium ``headers`` entry: ``"Name: value"`` -> (name, value), ``"Name"`` -> (name, None).

    The value is compared exactly after trimming SP/HTAB; the name must be an HTTP token.
    """
    if not isinstance(entry, str):
        raise _error(f"header entry must be a string, not {entry!r}", "headers", None, rule_index)
    colon = entry.find(":")
    name_part = entry if colon < 0 else entry[:colon]
    name = name_part.strip(" \t")
    lead = len(name_part) - len(name_part.lstrip(" \t"))
    if not name:
        raise _error(f"header entry {entry!r} has no header name", "headers", 0, rule_index)
    for k, ch in enumerate(name):
        if ch.encode("utf-8") not in [bytes([b]) for b in _TCHAR_BYTES]:
            raise _error(
                f"header entry {entry!r}: {ch!r} at column {lead + k + 1} is not allowed in a header name",
                "headers",
                lead + k,
                rule_index,
            )
    if colon < 0:
        return name, None
    value = entry[colon + 1 :].strip(" \t").encode("utf-8")
    for k, b in enumerate(value):
        if not (_FIELD_BYTE.mask >> b) & 1:
            raise _error(
                f"header entry {entry!r}: byte {b:#04x} is not allowed in a header value",
                "headers",
                colon + 1,
                rule_index,
            )
    return name, value


def http_rule_dfa(rule: HTTPMatch, rule_index: int | None = None, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Complete request heads allowed by one rule (see module docstring)."""
    if not isinstance(rule, HTTPMatch):
        raise TypeError(f"expected HTTPMatch, got {rule!r}")
    method = _token_dfa()
    if rule.method is not None:
        method = intersect(method, _regex_dfa(rule.method, "method", rule_index, max_states), max_states=max_states)
    target = _target_dfa()
    if rule.path is not None:
        target = intersect(target, _regex_dfa(rule.path, "path", rule_index, max_states), max_states=max_states)
    request_line = concat(Embed(method), _SP, Embed(target), _SP, _VERSION)
    parts = [compile_node(_head(request_line, repeat(_ANY_LINE, 0, None)), max_states)]
    if rule.host is not None:
        parts.append(_exactly_one("host", _regex_dfa(rule.host, "host", rule_index, max_states), max_states))
    for entry in rule.headers:
        name, value = parse_header_entry(entry, rule_index)
        if value is None:
            parts.append(_present(name, max_states))
        else:
            parts.append(_exactly_one(name, compile_node(literal(value)), max_states))
    return intersect(*parts, max_states=max_states)


def http_head_dfa(rules: Sequence[HTTPMatch], max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Complete HTTP/1.x request heads allowed by at least one of ``rules``.

    Heads with more than one Host line are always rejected (RFC 9112 requires a 400).
    No rules: the empty language.
    """
    if not rules:
        return empty_language()
    allowed = union(*(http_rule_dfa(r, i, max_states) for i, r in enumerate(rules)), max_states=max_states)
    return intersect(allowed, _at_most_one("host", max_states), max_states=max_states)


# ---------------------------------------------------------------------------------------------
# DNS

MAX_FQDN_LENGTH = 255  # Cilium's limit on matchName / matchPattern
_DNS_CHAR = byte_set(b"-_0123456789abcdefghijklmnopqrstuvwxyz")
_LABEL = repeat(_DNS_CHAR, 1, None)
_DOT = literal(b".")
# One or more whole labels: what a leading "**." stands for.
_LABELS = concat(_LABEL, repeat(concat(_DOT, _LABEL), 0, None))
_NAME_CHARS = frozenset("-_.0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_dns_syntax(text: str, field: str, allowed: frozenset[str], rule_index: int | None) -> None:
    """Cilium's schema: ``^([-a-zA-Z0-9_]+[.]?)+$`` (``*`` also allowed in patterns), <= 255."""
    if not text:
        raise _error(f"{field} is empty", field, 0, rule_index)
    if len(text) > MAX_FQDN_LENGTH:
        raise _error(f"{field} {text!r} is longer than {MAX_FQDN_LENGTH} characters", field, MAX_FQDN_LENGTH, rule_index)
    for k, ch in enumerate(text):
        if ch not in allowed:
            extra = ", '*'" if "*" in allowed else ""
            raise _error(
                f"{field} {text!r}: {ch!r} at column {k + 1} is not allowed "
                f"(only a-z, A-Z, 0-9, '-', '_', '.'{extra})",
                field,
                k,
                rule_index,
            )
    if text[0] == ".":
        raise _error(f"{field} {text!r} starts with '.'", field, 0, rule_index)
    empty = text.find("..")
    if empty >= 0:
        raise _error(f"{field} {text!r} has an empty label at column {empty + 2}", field, empty + 1, rule_index)


def _is_match_all(pattern: str) -> bool:
    """``*``, ``**``, ``*.``, ``**.`` ...: Cilium's match-everything wildcard."""
    body = pattern.removesuffix(".")
    return bool(body) and set(body) == {"*"}


def _pattern_node(pattern: str) -> Node:
    if _is_match_all(pattern):
        return repeat(_LABELS, 0, 1)  # every name made of DNS characters, and the root
    pattern = pattern.removesuffix(".")
    items: list[Node] = []
    stars = len(pattern) - len(pattern.lstrip("*"))
    i = 0
    if stars >= 2 and pattern[stars : stars + 1] == ".":
        items.append(concat(_LABELS, _DOT))  # "**." : subdomains at any depth, not the apex
        i = stars + 1
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
            items.append(repeat(_DNS_CHAR, 0, None))  # within one label: never a dot
        else:
            items.append(literal(ch.encode("ascii")))
        i += 1
    return concat(*items) if items else literal(b"")


def dns_match_dfa(m: DNSMatch, rule_index: int | None = None, max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Names (lowercase, no trailing dot) one matcher allows."""
    if not isinstance(m, DNSMatch):
        raise TypeError(f"expected DNSMatch, got {m!r}")
    if (m.name is None) == (m.pattern is None):
        raise _error("a DNS rule needs exactly one of matchName and matchPattern", "matchName", None, rule_index)
    if m.name is not None:
        _check_dns_syntax(m.name, "matchName", _NAME_CHARS, rule_index)
        name = m.name.lower()
        name = name.removesuffix(".")
        return compile_node(literal(name.encode("ascii")), max_states)
    pattern = m.pattern
    _check_dns_syntax(pattern, "matchPattern", _NAME_CHARS | {"*"}, rule_index)
    return compile_node(_pattern_node(pattern.lower()), max_states)


def dns_name_dfa(matchers: Sequence[DNSMatch], max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """Names allowed by at least one matcher (no matchers: the empty language)."""
    dfas = [dns_match_dfa(m, i, max_states) for i, m in enumerate(matchers)]
    return union(*dfas, max_states=max_states) if dfas else empty_language()
