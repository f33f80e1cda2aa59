"""Reference semantics of L7 rules, written directly (no DFAs): the specification that the
kernel's DFA walk (``compiler/l7lang.py`` + ``bpf_runtime/l7.h``) is checked against.

HTTP: the bytes given must be complete HTTP/1.x request heads, one after another (pipelined),
nothing before, between or after them (no body), and each is judged; a target the server would normalise (absolute form, dot
segments, percent-encoded ``.``, ``/`` or ``\\``), a malformed line, a second ``Host`` or an
oversize head is denied.  Then a rule allows it when its method, path (the whole target,
query included) and host regexes match the whole value (``re.fullmatch``) and every header
entry is present ("Name") or present with exactly that value ("Name: value"; names are
case-insensitive, values trimmed of spaces and tabs).

DNS: the query must be a standard query with one question; its name, lowercased without the
trailing dot, must equal a ``matchName`` or match a ``matchPattern`` (``*`` is zero or more
of ``[-a-z0-9_]`` within a label, a lone ``*`` matches every name of such characters, a
leading ``**.`` any number of labels before the rest but not none); a label holding a dot
makes the name ambiguous and the query is denied.
"""

from __future__ import annotations

import re
import struct

MAX_HEAD = 1024
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.[01]")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_NORMALISED_AWAY = re.compile(rb"%(2e|2f|5c)", re.I)
_DNS_CHARS = "[-a-z0-9_]"


def _target_is_plain(target: bytes) -> bool:
    """Origin form, and nothing a server would rewrite before routing on it."""
    if not target.startswith(b"/") or b"#" in target:
        return False
    path = target.split(b"?", 1)[0]
    if b"\\" in path or _NORMALISED_AWAY.search(path):
        return False
    # Dot segments, and the ".;"/"..;" forms servlet containers read as them.
    return not any(seg in (b".", b"..") or seg.startswith((b".;", b"..;")) for seg in path.split(b"/")[1:])


def parse_http_head(payload: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """(method, target, [(lowercase name, trimmed value)]) of a lone request head, else None."""
    if len(payload) > MAX_HEAD or payload.find(b"\r\n\r\n") != len(payload) - 4:
        return None
    request, *lines = payload[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(request)
    if m is None or not _target_is_plain(m.group(2)):
        return None
    headers = []
    for line in lines:
        h = _HEADER_LINE.fullmatch(line)
        if h is None:
            return None
        headers.append((h.group(1).lower(), h.group(2).strip(b" \t")))
    if sum(name == b"host" for name, _ in headers) > 1:
        return None
    return m.group(1), m.group(2), headers


def _full(pattern: str | None, value: bytes) -> bool:
    return pattern is None or re.fullmatch(pattern.encode("utf-8"), value) is not None


def _header_present(entry: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """"Name": some line has that name.  "Name: value": exactly one line has that name, and
    its value is ``value`` (so a decoy line with another value cannot stand in for it)."""
    name, sep, value = entry.partition(":")
    key = name.strip().lower().encode()
    values = [v for n, v in headers if n == key]
    if not sep:
        return bool(values)
    return values == [value.strip(" \t").encode()]


def split_heads(payload: bytes) -> list[bytes] | None:
    """Pipelined request heads, each ending with its empty line; None if the bytes do not end
    exactly at the end of a head (a split head, a body) or exceed the limit."""
    if len(payload) > MAX_HEAD:
        return None
    heads, rest = [], payload
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            return None
        heads.append(rest[:end + 4])
        rest = rest[end + 4:]
    return heads or None


def http_allowed(rules, payload: bytes) -> bool:
    """Whether ``rules`` (models with method/path/host/headers) allow every request in ``payload``."""
    heads = split_heads(payload)
    return heads is not None and all(_head_allowed(rules, h) for h in heads)


def _head_allowed(rules, payload: bytes) -> bool:
    head = parse_http_head(payload)
    if head is None:
        return False
    method, target, headers = head
    hosts = [v for n, v in headers if n == b"host"]
    for rule in rules:
        if not (_full(rule.method, method) and _full(rule.path, target)):
            continue
        if rule.host is not None and not (len(hosts) == 1 and _full(rule.host, hosts[0])):
            continue
        if all(_header_present(entry, headers) for entry in rule.headers or ()):
            return True
    return False


def parse_dns_query(payload: bytes, tcp: bool) -> str | None:
    """The question name of a lone standard query (lowercase, no trailing dot), else None."""
    if tcp:
        if len(payload) < 2 or struct.unpack("!H", payload[:2])[0] != len(payload) - 2:
            return None
        payload = payload[2:]
    if len(payload) < 17 or payload[2] & 0xF8 or payload[4:6] != b"\x00\x01":
        return None
    labels, pos = [], 12
    while True:
        if pos >= len(payload):
            return None
        n = payload[pos]
        pos += 1
        if n == 0:
            break
        if n > 63 or pos + n > len(payload):
            return None
        label = payload[pos:pos + n].decode("latin-1").lower()
        if "." in label:  # the joined name would be ambiguous
            return None
        labels.append(label)
        pos += n
    name = ".".join(labels)
    if not name or len(name) > 254 or pos + 4 > len(payload):
        return None
    return name


def _pattern_regex(pattern: str) -> str:
    pattern = pattern.lower().rstrip(".")
    if pattern.rstrip(".") in ("*", "**"):  # every name made of DNS characters
        return rf"(?:{_DNS_CHARS}+(?:\.{_DNS_CHARS}+)*)?"
    prefix = ""
    if pattern.startswith("**."):
        prefix, pattern = rf"(?:{_DNS_CHARS}+\.)+", pattern[3:]
    return prefix + "".join(f"{_DNS_CHARS}*" if c == "*" else re.escape(c) for c in pattern)


def dns_allowed(rules, name: str | None) -> bool:
    """Whether one of ``rules`` (models with match_name/match_pattern) allows ``name``."""
    if name is None:
        return False
    for rule in rules:
        if rule.match_name is not None and name == rule.match_name.lower().rstrip("."):
            return True
        if rule.match_pattern is not None and re.fullmatch(_pattern_regex(rule.match_pattern), name):
            return True
    return False
