"""HTTP request-head and DNS name languages: accept/reject tables, evasions, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polc.compiler.dfa import DFA
from polc.compiler.errors import CompileError, UnsupportedError
from polc.compiler.l7lang import DNSMatch, HTTPMatch, dns_name_dfa, http_head_dfa, parse_header_entry


def _req(line: str, *headers: str, tail: bytes = b"") -> bytes:
    head = line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode("latin-1") + tail


GET_ROOT = [HTTPMatch(method="GET", path="/")]
POST_ONLY = [HTTPMatch(method="POST")]
SECRET = [HTTPMatch(method="GET", path="/private", headers=("X-Very-Secret-Token: 42",))]
PUBLIC = [HTTPMatch(method="GET", path="/public(/.*)?")]


@pytest.fixture(scope="module")
def dfas() -> dict[str, DFA]:
    return {
        "get_root": http_head_dfa(GET_ROOT),
        "post": http_head_dfa(POST_ONLY),
        "secret": http_head_dfa(SECRET),
        "public": http_head_dfa(PUBLIC),
        "host": http_head_dfa([HTTPMatch(host="api\\.example\\.com(:[0-9]+)?")]),
        "presence": http_head_dfa([HTTPMatch(headers=("X-Debug",))]),
        "either": http_head_dfa(GET_ROOT + POST_ONLY),
    }


HTTP_CASES = [
    # (dfa, request, allowed, why)
    ("get_root", _req("GET / HTTP/1.1", "Host: x"), True, "plain"),
    ("get_root", _req("GET / HTTP/1.0"), True, "HTTP/1.0, no Host"),
    ("get_root", _req("GET /x HTTP/1.1", "Host: x"), False, "path is whole-value"),
    ("get_root", _req("get / HTTP/1.1", "Host: x"), False, "method is case-sensitive"),
    ("get_root", _req("GET  / HTTP/1.1"), False, "double space"),
    ("get_root", _req("GET / HTTP/2.0"), False, "not HTTP/1.x"),
    ("get_root", _req("GET http://x/ HTTP/1.1", "Host: x"), False, "absolute-form"),
    ("get_root", _req("GET / HTTP/1.1", "Host: x") + _req("GET / HTTP/1.1"), False, "pipelined"),
    ("get_root", _req("GET / HTTP/1.1", "Host: x", tail=b"body"), False, "body after head"),
    ("get_root", b"GET / HTTP/1.1\r\nHost: x\r\n", False, "incomplete head"),
    ("get_root", b"GET / HTTP/1.1\nHost: x\n\n", False, "bare LF"),
    ("get_root", _req("GET / HTTP/1.1", "Host: a", "Host: b"), False, "two Host lines"),
    ("get_root", _req("GET / HTTP/1.1", " Host: x"), False, "obs-fold / leading space"),
    ("get_root", _req("GET / HTTP/1.1", "Host : x"), False, "space before colon"),
    ("get_root", _req("GET / HTTP/1.1", "Bad\x00: x"), False, "NUL in name"),
    ("get_root", _req("GET / HTTP/1.1", "A: b\x00c"), False, "NUL in value"),
    ("get_root", _req("GET / HTTP/1.1", "A: caf\xe9"), True, "obs-text value"),
    ("post", _req("POST /anything?x=1 HTTP/1.1", "Host: x", "Content-Length: 0"), True, "POST"),
    ("post", _req("GET / HTTP/1.1"), False, "not POST"),
    ("post", _req("POSTX / HTTP/1.1"), False, "method is whole-value"),
    ("secret", _req("GET /private HTTP/1.1", "Host: x", "X-Very-Secret-Token: 42"), True, "token"),
    ("secret", _req("GET /private HTTP/1.1", "x-very-secret-token:42"), True, "name case, no OWS"),
    ("secret", _req("GET /private HTTP/1.1", "X-VERY-SECRET-TOKEN: \t42 \t", "A: b"), True, "OWS trimmed"),
    ("secret", _req("GET /private HTTP/1.1", "A: b", "X-Very-Secret-Token: 42", "C: d"), True, "any order"),
    ("secret", _req("GET /private HTTP/1.1", "Host: x"), False, "header absent"),
    ("secret", _req("GET /private HTTP/1.1", "X-Very-Secret-Token: 43"), False, "wrong value"),
    ("secret", _req("GET /private HTTP/1.1", "X-Very-Secret-Token: 420"), False, "value is exact"),
    ("secret", _req("GET /private HTTP/1.1", "X-Very-Secret-Token: 4 2"), False, "value is exact"),
    ("secret", _req("GET /private HTTP/1.1", "X-Very-Secret-Token-2: 42"), False, "other header name"),
    ("secret", _req("GET /private HTTP/1.1", "X-Very-Secret-Token: 1", "X-Very-Secret-Token: 42"), False, "decoy line"),
    ("secret", _req("GET /public HTTP/1.1", "X-Very-Secret-Token: 42"), False, "wrong path"),
    ("public", _req("GET /public/a/b?q=1 HTTP/1.1"), True, "prefix path with query"),
    ("public", _req("GET /public/../private HTTP/1.1"), False, "dot-dot segment"),
    ("public", _req("GET /public/./x HTTP/1.1"), False, "dot segment"),
    ("public", _req("GET /public/.. HTTP/1.1"), False, "trailing dot-dot"),
    ("public", _req("GET /public/..;/private HTTP/1.1"), False, "dot-dot with ;params"),
    ("public", _req("GET /public/%2e%2e/private HTTP/1.1"), False, "encoded dots"),
    ("public", _req("GET /public/%2E%2E/private HTTP/1.1"), False, "encoded dots, upper"),
    ("public", _req("GET /public/.%2e/private HTTP/1.1"), False, "half-encoded"),
    ("public", _req("GET /public/..%2fprivate HTTP/1.1"), False, "encoded slash"),
    ("public", _req("GET /public\\..\\private HTTP/1.1"), False, "backslash"),
    ("public", _req("GET /public/a..b/.x HTTP/1.1"), True, "dots inside names are fine"),
    ("public", _req("GET /public/x?next=/../%2e HTTP/1.1"), True, "query is not a path"),
    ("public", _req("GET /public/x#frag HTTP/1.1"), False, "fragment"),
    ("public", _req("GET /publicity HTTP/1.1"), False, "regex is whole-value"),
    ("host", _req("GET / HTTP/1.1", "Host: api.example.com"), True, "host"),
    ("host", _req("GET / HTTP/1.1", "hOsT:api.example.com:8080 "), True, "host with port, name case"),
    ("host", _req("GET / HTTP/1.1", "Host: evil.com"), False, "wrong host"),
    ("host", _req("GET / HTTP/1.1", "Host: api.example.com.evil.com"), False, "host is whole-value"),
    ("host", _req("GET / HTTP/1.1"), False, "no host"),
    ("host", _req("GET / HTTP/1.1", "Host: evil.com", "Host: api.example.com"), False, "two hosts"),
    ("host", _req("GET / HTTP/1.1", "X-Host: api.example.com"), False, "other header"),
    ("presence", _req("GET / HTTP/1.1", "x-debug: anything"), True, "present"),
    ("presence", _req("GET / HTTP/1.1", "X-Debug:"), True, "present, empty"),
    ("presence", _req("GET / HTTP/1.1", "X-Debugger: 1"), False, "absent"),
    ("either", _req("GET / HTTP/1.1"), True, "rule 1"),
    ("either", _req("POST /x HTTP/1.1"), True, "rule 2"),
    ("either", _req("GET /x HTTP/1.1"), False, "neither"),
]


@pytest.mark.parametrize("name, request_bytes, allowed, why", HTTP_CASES, ids=[c[3] for c in HTTP_CASES])
def test_http_heads(dfas, name, request_bytes, allowed, why):
    assert dfas[name].matches(request_bytes) == allowed


def test_http_no_rules_and_empty_rule():
    assert http_head_dfa([]).is_empty()
    anyreq = http_head_dfa([HTTPMatch()])
    assert anyreq.matches(_req("DELETE /a/b?c HTTP/1.0", "X: y"))
    assert not anyreq.matches(_req("DELETE a HTTP/1.0"))


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "get", "PATCH"]),
    path=st.lists(st.sampled_from(["a", "private", "..", ".", "%2e", "b.c"]), max_size=3),
    headers=st.lists(st.sampled_from(["Host: x", "X-Very-Secret-Token: 42", "x-very-secret-token: 7", "A: 1"]), max_size=3),
)
def test_http_secret_rule_reference(dfas, method, path, headers):
    """The secret rule against a direct reading of the rule, on generated requests."""
    target = "/" + "/".join(path)
    req = _req(f"{method} {target} HTTP/1.1", *headers)
    tokens = [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("x-very-secret-token:")]
    expected = (
        method == "GET"
        and target == "/private"
        and tokens == ["42"]
        and sum(h.lower().startswith("host:") for h in headers) <= 1
    )
    assert dfas["secret"].matches(req) == expected


@pytest.mark.parametrize(
    "rule, field, offset, exc",
    [
        (HTTPMatch(path="/a(?=b)"), "path", 2, UnsupportedError),
        (HTTPMatch(method="(GET"), "method", 0, CompileError),
        (HTTPMatch(host="\\bx"), "host", 0, UnsupportedError),
        (HTTPMatch(headers=("Bad Name: 1",)), "headers", 3, CompileError),
        (HTTPMatch(headers=(": 1",)), "headers", 0, CompileError),
    ],
)
def test_http_rule_errors(rule, field, offset, exc):
    with pytest.raises(exc) as info:
        http_head_dfa([HTTPMatch(), rule])
    assert info.value.field == field
    assert info.value.offset == offset
    assert info.value.rule_index == 1


def test_header_entry_parsing():
    assert parse_header_entry("X-Token: 42") == ("X-Token", b"42")
    assert parse_header_entry("X-Token:  a b ") == ("X-Token", b"a b")
    assert parse_header_entry("X-Token") == ("X-Token", None)
    assert parse_header_entry("X-Token:") == ("X-Token", b"")


DNS_CASES = [
    # (matchers, name, allowed)
    ([DNSMatch(name="cilium.io")], "cilium.io", True),
    ([DNSMatch(name="Cilium.IO.")], "cilium.io", True),
    ([DNSMatch(name="cilium.io")], "www.cilium.io", False),
    ([DNSMatch(name="cilium.io")], "ciliumxio", False),
    ([DNSMatch(pattern="*.cilium.io")], "www.cilium.io", True),
    ([DNSMatch(pattern="*.cilium.io")], "blog.cilium.io", True),
    ([DNSMatch(pattern="*.cilium.io")], "cilium.io", False),
    ([DNSMatch(pattern="*.cilium.io")], "a.b.cilium.io", False),
    ([DNSMatch(pattern="*.cilium.io")], "www.cilium.io.evil.com", False),
    ([DNSMatch(pattern="*.CILIUM.io.")], "x-y_z.cilium.io", True),
    ([DNSMatch(pattern="sub*.cilium.io")], "sub.cilium.io", True),
    ([DNSMatch(pattern="sub*.cilium.io")], "subdomain.cilium.io", True),
    ([DNSMatch(pattern="sub*.cilium.io")], "www.cilium.io", False),
    ([DNSMatch(pattern="*cilium.io")], "cilium.io", True),
    ([DNSMatch(pattern="*cilium.io")], "xcilium.io", True),
    ([DNSMatch(pattern="*cilium.io")], "www.cilium.io", False),
    ([DNSMatch(pattern="a*b*c.io")], "abbbc.io", True),
    ([DNSMatch(pattern="**.example.com")], "a.example.com", True),
    ([DNSMatch(pattern="**.example.com")], "a.b.c.example.com", True),
    ([DNSMatch(pattern="**.example.com")], "example.com", False),
    ([DNSMatch(pattern="**.example.com")], ".example.com", False),
    ([DNSMatch(pattern="**.example.com")], "a..example.com", False),
    ([DNSMatch(pattern="***.example.com")], "a.b.example.com", True),
    ([DNSMatch(pattern="*")], "anything.at.all", True),
    ([DNSMatch(pattern="*")], "com", True),
    ([DNSMatch(pattern="*")], "", True),  # the root
    ([DNSMatch(pattern="**.")], "x.y", True),
    ([DNSMatch(pattern="*")], "a..b", False),
    ([DNSMatch(pattern="*")], "sp ace", False),
    ([DNSMatch(pattern="*")], "Upper.case", False),  # the walker lowercases first
    ([DNSMatch(name="a.com"), DNSMatch(pattern="*.b.com")], "x.b.com", True),
    ([DNSMatch(name="a.com"), DNSMatch(pattern="*.b.com")], "a.com", True),
    ([DNSMatch(name="a.com"), DNSMatch(pattern="*.b.com")], "b.com", False),
    ([], "a.com", False),
]


@pytest.mark.parametrize("matchers, name, allowed", DNS_CASES)
def test_dns_names(matchers, name, allowed):
    assert dns_name_dfa(matchers).matches(name.encode()) == allowed


@pytest.mark.parametrize(
    "matcher, field, offset",
    [
        (DNSMatch(name="exa mple.com"), "matchName", 3),
        (DNSMatch(name="*.example.com"), "matchName", 0),
        (DNSMatch(name="a..b"), "matchName", 2),
        (DNSMatch(name=".a"), "matchName", 0),
        (DNSMatch(pattern="ex[a].com"), "matchPattern", 2),
        (DNSMatch(pattern="a+.com"), "matchPattern", 1),
        (DNSMatch(pattern=""), "matchPattern", 0),
        (DNSMatch(pattern="a" * 256), "matchPattern", 255),
        (DNSMatch(), "matchName", None),
        (DNSMatch(name="a", pattern="b"), "matchName", None),
    ],
)
def test_dns_validation(matcher, field, offset):
    with pytest.raises(CompileError) as info:
        dns_name_dfa([DNSMatch(name="ok.com"), matcher])
    assert info.value.field == field
    assert info.value.offset == offset
    assert info.value.rule_index == 1


def test_sizes_stay_small():
    """Guard rails for the walker's tables (states, classes) on the connectivity-test rules."""
    for rules in (GET_ROOT, POST_ONLY, SECRET):
        d = http_head_dfa(rules)
        assert d.n_states < 256 and d.n_classes < 64
    for p in ("*.cilium.io", "**.example.com", "*"):
        d = dns_name_dfa([DNSMatch(pattern=p)])
        assert d.n_states < 32 and d.n_classes < 16
