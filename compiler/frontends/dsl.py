"""The polc policy language: parse ``.pol`` text into YAML-shaped policy documents.

Stages, one direction of data:

1. ``grammar/polc.lark`` (LALR, contextual lexer) parses text into a lark tree; syntax
   errors become positioned ``CompileError``s, with friendly messages for known mistakes
   (lark's ``match_examples``).
2. ``_ToAst`` (one Transformer) builds the typed AST below; every node has a ``Pos``.
3. ``_Builder`` turns each ``Policy`` into the data a YAML file would hold for the same
   object (``apiVersion``, ``kind``, ``metadata``, ``spec``/``specs``) plus a position for
   every path, and wraps it in a ``source.Document``.  The document goes through the very
   models and lowering the YAML frontends use, so a DSL policy means exactly what its YAML
   form means, and model errors and ``ir.Origin``s point into the ``.pol`` file.

Why documents rather than models directly: the models already own every validation
rule (and its message), and ``lower`` reads section order and isolation positions from
the document; one shape for both inputs keeps a single source of truth.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, Union

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import CompileError, Location, PolcError, raise_all
from ..source import Document

SUFFIX = ".pol"
KINDS = {"k8s": ("networking.k8s.io/v1", "NetworkPolicy"),
         "cnp": ("cilium.io/v2", "CiliumNetworkPolicy"),
         "ccnp": ("cilium.io/v2", "CiliumClusterwideNetworkPolicy")}
KIND_KEYWORDS = {"NetworkPolicy": "k8s policy", "CiliumNetworkPolicy": "cilium policy",
                 "CiliumClusterwideNetworkPolicy": "cilium clusterwide policy"}


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a node's first character."""

    line: int
    col: int


@dataclass(frozen=True)
class Val:
    """A scalar as written (number or decoded string) and where."""

    value: Any
    pos: Pos


@dataclass(frozen=True)
class SelTerm:
    """``key=value`` (op ``=``), ``key in (...)``, ``key notin (...)``, ``key``, ``!key``."""

    key: Val
    op: str  # "=", "In", "NotIn", "Exists", "DoesNotExist"
    values: tuple[Val, ...]
    pos: Pos


@dataclass(frozen=True)
class Selector:
    terms: tuple[SelTerm, ...]
    pos: Pos


@dataclass(frozen=True)
class PeerSelector:
    """``{...}`` (pods / endpoints), optionally ``in namespaces {...}`` (Kubernetes)."""

    selector: Selector
    namespaces: Selector | None
    pos: Pos


@dataclass(frozen=True)
class PeerNamespaces:
    selector: Selector
    pos: Pos


@dataclass(frozen=True)
class PeerCIDR:
    cidr: Val
    excepts: tuple[Val, ...] | None
    pos: Pos


@dataclass(frozen=True)
class PeerEntity:
    name: Val
    pos: Pos


@dataclass(frozen=True)
class PeerFQDN:
    field: str  # "matchName" or "matchPattern"
    value: Val
    pos: Pos


Peer = Union[PeerSelector, PeerNamespaces, PeerCIDR, PeerEntity, PeerFQDN]


@dataclass(frozen=True)
class Port:
    """``80``, ``80-90/TCP``, ``http``, ``*/UDP``; ``start`` None for ``*``."""

    start: Val | None
    end: Val | None
    proto: Val | None
    pos: Pos


@dataclass(frozen=True)
class HTTPRule:
    fields: tuple[tuple[str, Val], ...]  # ("method"|"path"|"host"|"header", value)
    pos: Pos


@dataclass(frozen=True)
class DNSRule:
    field: str  # "matchName" or "matchPattern"
    value: Val
    pos: Pos


@dataclass(frozen=True)
class L7:
    rules: tuple[Union[HTTPRule, DNSRule], ...]
    pos: Pos


@dataclass(frozen=True)
class PortsClause:
    ports: tuple[Port, ...]
    l7: L7 | None
    pos: Pos


@dataclass(frozen=True)
class ICMPType:
    family: str | None  # "IPv4", "IPv6" or None
    type: Val
    pos: Pos


@dataclass(frozen=True)
class ICMPClause:
    types: tuple[ICMPType, ...]
    pos: Pos


@dataclass(frozen=True)
class RuleItem:
    """One ``ingress|egress allow|deny`` statement."""

    direction: str  # "ingress" or "egress"
    action: str  # "allow" or "deny"
    peers: tuple[Peer, ...] | None
    peers_pos: Pos | None
    clauses: tuple[Union[PortsClause, ICMPClause], ...]
    pos: Pos


@dataclass(frozen=True)
class Setting:
    """``select``, ``nodes``, ``types``, ``description`` or ``default-deny``."""

    name: str
    value: Any  # Selector, tuple[Val] (types), Val (description), tuple[(dir, Val)] (default-deny)
    pos: Pos


@dataclass(frozen=True)
class RuleBlock:
    items: tuple[Union[Setting, RuleItem], ...]
    pos: Pos
    end: Pos  # the closing brace


@dataclass(frozen=True)
class Policy:
    kind: str  # "k8s", "cnp", "ccnp"
    name: Val
    namespace: Val | None
    items: tuple[Union[Setting, RuleItem, RuleBlock], ...]
    pos: Pos
    end: Pos  # the closing brace


@dataclass(frozen=True)
class Comment:
    text: str
    pos: Pos


@dataclass(frozen=True)
class File:
    policies: tuple[Policy, ...]
    comments: tuple[Comment, ...] = field(default=())


# --------------------------------------------------------------------------- parsing


@lru_cache(maxsize=None)
def grammar_text() -> str:
    """The grammar shipped in ``polc.grammar`` (``grammar/polc.lark``)."""
    return resources.files("polc.grammar").joinpath("polc.lark").read_text(encoding="utf-8")


class _Collector(threading.local):
    collected: list | None = None


_COMMENTS = _Collector()


def _on_comment(tok: Token) -> Token:
    # lark drops ignored tokens; the formatter needs comments, so the lexer hands them here.
    if _COMMENTS.collected is not None:
        _COMMENTS.collected.append(Comment(str(tok).rstrip(), _pos(tok)))
    return tok


@lru_cache(maxsize=None)
def parser() -> Lark:
    """The LALR parser (built once; tree only, the AST is built by ``_ToAst``)."""
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False, lexer_callbacks={"COMMENT": _on_comment})


def _pos(meta_or_token) -> Pos:
    return Pos(getattr(meta_or_token, "line", 1) or 1, getattr(meta_or_token, "column", 1) or 1)


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def decode_string(text: str) -> str:
    """The value of a STRING token (quotes removed; ``\\"``, ``\\\\``, ``\\n``, ``\\t`` decoded)."""
    body = text[1:-1]
    return re.sub(r'\\(.)', lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


def _val(tok: Token) -> Val:
    text = str(tok)
    if tok.type == "STRING":
        value: Any = decode_string(text)
    elif tok.type == "INT":
        value = int(text)
    else:
        value = text
    return Val(value, _pos(tok))


class _ToAst(Transformer):
    """Lark tree -> AST dataclasses (the only place that knows the tree's shape)."""

    # --- scalars
    def obj_name(self, c):
        return _val(c[0])

    def label_key(self, c):
        return _val(c[0])

    label_value = label_key
    cidr = label_key

    def label_values(self, c):
        return tuple(c)

    def cidr_list(self, c):
        return tuple(c)

    # --- selectors
    @v_args(meta=True)
    def selector(self, meta, c):
        return Selector(tuple(c), _pos(meta))

    @v_args(meta=True)
    def sel_eq(self, meta, c):
        return SelTerm(c[0], "=", (c[1],), _pos(meta))

    @v_args(meta=True)
    def sel_in(self, meta, c):
        return SelTerm(c[0], "In", c[1], _pos(meta))

    @v_args(meta=True)
    def sel_notin(self, meta, c):
        return SelTerm(c[0], "NotIn", c[1], _pos(meta))

    @v_args(meta=True)
    def sel_exists(self, meta, c):
        return SelTerm(c[0], "Exists", (), _pos(meta))

    @v_args(meta=True)
    def sel_not_exists(self, meta, c):
        return SelTerm(c[0], "DoesNotExist", (), _pos(meta))

    # --- peers
    @v_args(meta=True)
    def peer_selector(self, meta, c):
        return PeerSelector(c[0], c[1] if len(c) > 1 else None, _pos(meta))

    @v_args(meta=True)
    def peer_namespaces(self, meta, c):
        return PeerNamespaces(c[0], _pos(meta))

    @v_args(meta=True)
    def peer_cidr(self, meta, c):
        return PeerCIDR(c[0], c[1] if len(c) > 1 else None, _pos(meta))

    @v_args(meta=True)
    def peer_entity(self, meta, c):
        return PeerEntity(_val(c[0]), _pos(meta))

    @v_args(meta=True)
    def peer_fqdn_name(self, meta, c):
        return PeerFQDN("matchName", _val(c[0]), _pos(meta))

    @v_args(meta=True)
    def peer_fqdn_pattern(self, meta, c):
        return PeerFQDN("matchPattern", _val(c[0]), _pos(meta))

    @v_args(meta=True)
    def peers(self, meta, c):
        return (tuple(c), _pos(meta))

    # --- ports, ICMP, L7
    def port_number(self, c):
        return _val(c[0])

    port_name = port_number

    def port_any(self, c):
        return None

    @v_args(meta=True)
    def port(self, meta, c):
        start, rest = c[0], c[1:]
        end = next((_val(t) for t in rest if t.type == "INT"), None)
        proto = next((Val(str(t).upper(), _pos(t)) for t in rest if t.type == "PROTO"), None)
        return Port(start, end, proto, _pos(meta))

    @v_args(meta=True)
    def ports_clause(self, meta, c):
        l7 = c[-1] if c and isinstance(c[-1], L7) else None
        ports = tuple(p for p in c if isinstance(p, Port))
        return PortsClause(ports, l7, _pos(meta))

    def ipv4(self, c):
        return "IPv4"

    def ipv6(self, c):
        return "IPv6"

    @v_args(meta=True)
    def icmp_type(self, meta, c):
        family = c[0] if len(c) > 1 else None
        return ICMPType(family, _val(c[-1]), _pos(meta))

    @v_args(meta=True)
    def icmp_clause(self, meta, c):
        return ICMPClause(tuple(c), _pos(meta))

    @v_args(meta=True)
    def l7(self, meta, c):
        return L7(tuple(c), _pos(meta))

    @v_args(meta=True)
    def http_rule(self, meta, c):
        return HTTPRule(tuple(c), _pos(meta))

    def http_method(self, c):
        return ("method", _val(c[0]))

    def http_path(self, c):
        return ("path", _val(c[0]))

    def http_host(self, c):
        return ("host", _val(c[0]))

    def http_header(self, c):
        return ("header", _val(c[0]))

    @v_args(meta=True)
    def dns_name(self, meta, c):
        return DNSRule("matchName", _val(c[0]), _pos(meta))

    @v_args(meta=True)
    def dns_pattern(self, meta, c):
        return DNSRule("matchPattern", _val(c[0]), _pos(meta))

    # --- rule items
    def allow(self, c):
        return "allow"

    def deny(self, c):
        return "deny"

    @v_args(meta=True)
    def dir_ingress(self, meta, c):
        return Val("ingress", _pos(meta))

    @v_args(meta=True)
    def dir_egress(self, meta, c):
        return Val("egress", _pos(meta))

    def _rule(self, direction, meta, c):
        action, rest = c[0], c[1:]
        peers, peers_pos = None, None
        if rest and isinstance(rest[0], tuple):
            (peers, peers_pos), rest = rest[0], rest[1:]
        return RuleItem(direction, action, peers, peers_pos, tuple(rest), _pos(meta))

    @v_args(meta=True)
    def ingress_rule(self, meta, c):
        return self._rule("ingress", meta, c)

    @v_args(meta=True)
    def egress_rule(self, meta, c):
        return self._rule("egress", meta, c)

    # --- settings
    @v_args(meta=True)
    def select(self, meta, c):
        return Setting("select", c[0], _pos(meta))

    @v_args(meta=True)
    def nodes(self, meta, c):
        return Setting("nodes", c[0], _pos(meta))

    @v_args(meta=True)
    def types(self, meta, c):
        return Setting("types", tuple(c), _pos(meta))

    @v_args(meta=True)
    def description(self, meta, c):
        return Setting("description", _val(c[0]), _pos(meta))

    def dd_item(self, c):
        return (c[0], Val(str(c[1]) == "true", _pos(c[1])))

    @v_args(meta=True)
    def default_deny(self, meta, c):
        return Setting("default-deny", tuple(c), _pos(meta))

    @v_args(meta=True)
    def rule_block(self, meta, c):
        return RuleBlock(tuple(c), _pos(meta), Pos(meta.end_line, max(1, meta.end_column - 1)))

    # --- policies
    def kind_k8s(self, c):
        return "k8s"

    def kind_cnp(self, c):
        return "cnp"

    def kind_ccnp(self, c):
        return "ccnp"

    def namespace(self, c):
        return c[0]

    @v_args(meta=True)
    def policy(self, meta, c):
        kind, name, rest = c[0], c[1], c[2:]
        namespace = None
        if rest and isinstance(rest[0], Val):
            namespace, rest = rest[0], rest[1:]
        end = Pos(meta.end_line, max(1, meta.end_column - 1))
        return Policy(kind, name, namespace, tuple(rest), _pos(meta), end)

    def start(self, c):
        return File(tuple(c))


# Known mistakes -> friendly messages (lark's match_examples: the parser state of each
# example's error is compared with the user's).
_EXAMPLES: dict[str, list[str]] = {
    "a policy starts with 'k8s policy', 'cilium policy' or 'cilium clusterwide policy'": [
        "policy x {}", "networkpolicy x {}", "cilium x {}", "k8s x {}", "cnp x {}",
    ],
    "a selector is written in braces, e.g. select {app=web}": [
        "k8s policy x { select app=web }", "k8s policy x { select app }",
        "cilium policy x { ingress allow from app=web }",
    ],
    "labels are written key=value (not key: value)": [
        "k8s policy x { select {app: web} }", "k8s policy x { select {app=web, b: c} }",
    ],
    "say whether the rule allows or denies: 'ingress allow ...' or 'ingress deny ...'": [
        "k8s policy x { ingress from {} }", "k8s policy x { egress to {} }",
        "k8s policy x { ingress ports 80 }", "k8s policy x { egress }", "k8s policy x { ingress }",
    ],
    "ingress rules name their peers with 'from'": [
        "k8s policy x { ingress allow to {} }",
    ],
    "egress rules name their peers with 'to'": [
        "k8s policy x { egress allow from {} }",
    ],
    "several except prefixes go in parentheses: except (10.1.0.0/16, 10.2.0.0/16)": [
        "k8s policy x { ingress allow from cidr 10.0.0.0/8 except 10.1.0.0/16, 10.2.0.0/16 }",
    ],
    "a port is a number, a range (8000-8080), a name (http) or '*', optionally followed by /PROTOCOL": [
        "k8s policy x { ingress allow ports TCP/80 }",
        "k8s policy x { ingress allow ports 80:TCP }", "k8s policy x { ingress allow ports 80 TCP }",
    ],
    "missing '}' to close the policy": [
        "k8s policy x {", "k8s policy x { select {}", "k8s policy x { select {a=b}",
        "k8s policy x { ingress allow from {}", "k8s policy x { ingress allow from {a=b}",
        "k8s policy x { ingress allow ports 80", "k8s policy x { ingress allow ports 80/TCP",
        "k8s policy x { ingress allow", "k8s policy x { types ingress",
        "cilium policy x { egress allow to world", "cilium policy x { egress allow to cidr 1.2.3.4/32",
        "cilium policy x { description \"a\"", "cilium policy x { rule { select {} }",
    ],
    "missing '}' to close the selector": [
        "k8s policy x { select {app=web", "k8s policy x { select {app=web ingress allow }",
    ],
    "a policy needs a name (and then an optional 'in NAMESPACE')": [
        "k8s policy {}", "cilium policy {}", "k8s policy in x {}",
    ],
    "'=' needs a value; write key=\"\" for an empty value": [
        "k8s policy x { select {app=} }",
    ],
    "a list of values goes in parentheses: key in (a, b)": [
        "k8s policy x { select {app in a} }", "k8s policy x { select {app notin a} }",
    ],
}


@lru_cache(maxsize=None)
def _example_signatures() -> tuple[dict, dict]:
    """``{(lalr state, token type): message}`` and ``{lalr state: message}`` of the examples.

    lark's ``match_examples`` compares whole parser states, stack depth included, so an
    example only matches mistakes at the same nesting; we key on the LALR state (and the
    offending token) alone, which is what identifies the mistake.
    """
    exact: dict = {}
    loose: dict = {}
    for message, examples in _EXAMPLES.items():
        for example in examples:
            try:
                parser().parse(example)
            except UnexpectedInput as exc:
                key = _signature(exc)
                if key is None:
                    continue
                exact.setdefault(key, message)
                loose.setdefault(key[0], message)
            # (an example that parses is a bug caught by tests/test_dsl_errors.py)
    return exact, loose


def _signature(exc: UnexpectedInput) -> tuple | None:
    state = getattr(exc, "state", None)
    if state is None or not getattr(state, "state_stack", None):
        return None
    token = getattr(exc, "token", None)
    return (state.position, getattr(token, "type", None) if token is not None else "$CHAR")


def _friendly(exc: UnexpectedInput) -> str | None:
    """The friendly message for a known mistake (lark's match_examples technique)."""
    key = _signature(exc)
    if key is None:
        return None
    exact, loose = _example_signatures()
    return exact.get(key) or loose.get(key[0])


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    return repr(str(tok))


def _expected(names: Sequence[str]) -> str:
    p = parser()
    shown = []
    for name in sorted(set(names)):
        term = next((t for t in p.terminals if t.name == name), None)
        if term is not None and term.pattern.type == "str":
            shown.append(repr(term.pattern.value))
        elif name != "$END":
            shown.append(name.lower().replace("_", " "))
    if len(shown) > 8:
        shown = shown[:8] + ["..."]
    return ", ".join(shown)


def _syntax_error(exc: UnexpectedInput, file: str, lines: Sequence[str]) -> CompileError:
    line, col = getattr(exc, "line", None), getattr(exc, "column", None)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        line, col = (len(lines), len(lines[-1]) + 1) if lines else (1, 1)
    if line is None or line < 1:
        line, col = 1, 1
    friendly = _friendly(exc)
    if isinstance(exc, UnexpectedCharacters):
        char = exc.char
        detail = f"unexpected character {char!r}"
        if char == '"':
            detail = "unterminated string (strings end on the same line)"
    elif isinstance(exc, UnexpectedToken):
        detail = f"unexpected {_describe_token(exc.token)}"
        expected = _expected(exc.accepts or exc.expected)
        if expected and not friendly:
            detail += f" (expected {expected})"
    else:
        detail = "unexpected end of file"
    message = f"{detail}: {friendly}" if friendly else detail
    text = lines[line - 1] if 0 < line <= len(lines) else None
    return CompileError(message, Location(file, line, col, text))


def parse_text(text: str, file: str = "<string>") -> File:
    """Parse DSL ``text`` into the AST (with comments); raise a positioned ``CompileError``."""
    lines = text.splitlines()
    _COMMENTS.collected = []
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, file, lines) from None
    finally:
        comments, _COMMENTS.collected = _COMMENTS.collected, None
    try:
        ast = _ToAst().transform(tree)
    except VisitError as exc:  # a bug in the transformer, not in the input
        raise exc.orig_exc from None
    return File(ast.policies, tuple(comments))


# --------------------------------------------------------------------------- AST -> documents


class _DocBuilder:
    """Builds the YAML-shaped data and position maps of one policy."""

    def __init__(self, policy: Policy, file: str, lines: Sequence[str], index: int):
        self.policy = policy
        self.file = file
        self.lines = lines
        self.index = index
        self.positions: dict = {}
        self.key_positions: dict = {}
        self.errors: list[PolcError] = []
        api_version, kind = KINDS[policy.kind]
        self.kind = kind
        self.k8s = policy.kind == "k8s"

    # --- helpers
    def at(self, path: tuple, pos: Pos, key: bool = True) -> None:
        """Record ``pos`` for ``path`` (and for its key unless one is known already)."""
        self.positions.setdefault(path, (pos.line, pos.col))
        if key:
            self.key_positions.setdefault(path, (pos.line, pos.col))

    def error(self, pos: Pos, message: str) -> None:
        text = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else None
        obj = f"{self.kind} {self.policy.name.value}"
        self.errors.append(CompileError(message, Location(self.file, pos.line, pos.col, text), obj))

    # --- whole policy
    def build(self) -> Document | None:
        p = self.policy
        api_version, kind = KINDS[p.kind]
        data: dict = {"apiVersion": api_version, "kind": kind}
        self.at((), p.pos)
        self.at(("apiVersion",), p.pos)
        self.at(("kind",), p.pos)
        meta: dict = {"name": p.name.value}
        self.at(("metadata",), p.name.pos)
        self.at(("metadata", "name"), p.name.pos)
        if p.namespace is not None:
            meta["namespace"] = p.namespace.value
            self.at(("metadata", "namespace"), p.namespace.pos)
        data["metadata"] = meta
        direct = [i for i in p.items if not isinstance(i, RuleBlock)]
        blocks = [i for i in p.items if isinstance(i, RuleBlock)]
        if self.k8s:
            for b in blocks:
                self.error(b.pos, "rule blocks are for Cilium policies ('specs'); "
                                  "a Kubernetes policy has one spec: write its items directly")
            data["spec"] = self.k8s_spec(direct)
            self.at(("spec",), p.pos)
        else:
            if direct or not blocks:
                data["spec"] = self.cilium_rule(("spec",), direct, p.pos)
            if blocks:
                data["specs"] = [self.cilium_rule(("specs", i), b.items, b.pos) for i, b in enumerate(blocks)]
                self.at(("specs",), blocks[0].pos)
        if self.errors:
            return None
        return Document(self.file, self.index, data, self.positions, self.lines, self.key_positions)

    # --- selectors
    def selector(self, path: tuple, sel: Selector) -> dict:
        self.at(path, sel.pos)
        labels: dict = {}
        exprs: list = []
        for term in sel.terms:
            key = term.key.value
            if term.op == "=":
                if key in labels:
                    self.error(term.key.pos, f"label '{key}' is given twice in this selector")
                    continue
                labels[key] = term.values[0].value
                self.at(path + ("matchLabels",), term.pos)
                self.at(path + ("matchLabels", key), term.key.pos)
                self.positions[path + ("matchLabels", key)] = (term.values[0].pos.line, term.values[0].pos.col)
                continue
            i = len(exprs)
            expr: dict = {"key": key, "operator": term.op}
            base = path + ("matchExpressions", i)
            self.at(path + ("matchExpressions",), term.pos)
            self.at(base, term.pos)
            self.at(base + ("key",), term.key.pos)
            self.at(base + ("operator",), term.pos)
            if term.values:
                expr["values"] = [v.value for v in term.values]
                for j, v in enumerate(term.values):
                    self.at(base + ("values", j), v.pos)
                self.at(base + ("values",), term.values[0].pos)
            exprs.append(expr)
        out: dict = {}
        if labels:
            out["matchLabels"] = labels
        if exprs:
            out["matchExpressions"] = exprs
        return out

    # --- Kubernetes
    def k8s_spec(self, items) -> dict:
        spec: dict = {}
        for item in items:
            if isinstance(item, RuleItem):
                self.k8s_rule(spec, item)
            elif item.name == "select":
                self.once(spec, "podSelector", item)
                spec["podSelector"] = self.selector(("spec", "podSelector"), item.value)
            elif item.name == "types":
                self.once(spec, "policyTypes", item)
                spec["policyTypes"] = [t.value.capitalize() for t in item.value]
                for j, t in enumerate(item.value):
                    self.at(("spec", "policyTypes", j), t.pos)
                self.at(("spec", "policyTypes"), item.pos)
            else:
                hint = {"nodes": "host policies are Cilium policies",
                        "description": "a Kubernetes NetworkPolicy has no description; use a # comment",
                        "default-deny": "Kubernetes isolation is set with 'types ingress, egress'"}[item.name]
                self.error(item.pos, f"'{item.name}' is not part of a Kubernetes policy ({hint})")
        return spec

    def once(self, spec: dict, key: str, item) -> None:
        if key in spec:
            line = self.positions[("spec", key)][0] if ("spec", key) in self.positions else "?"
            self.error(item.pos, f"'{item.name}' is given twice (first at line {line})")

    def k8s_rule(self, spec: dict, item: RuleItem) -> None:
        if item.action == "deny":
            self.error(item.pos, "a Kubernetes NetworkPolicy has no deny rules "
                                 "(use a cilium policy for 'ingress deny' / 'egress deny')")
            return
        section = item.direction
        rules = spec.setdefault(section, [])
        i = len(rules)
        path = ("spec", section, i)
        self.at(("spec", section), item.pos)
        self.at(path, item.pos)
        rule: dict = {}
        if item.peers is not None:
            field_ = "from" if section == "ingress" else "to"
            self.at(path + (field_,), item.peers_pos)
            rule[field_] = [self.k8s_peer(path + (field_, j), peer) for j, peer in enumerate(item.peers)]
        ports: list = []
        for clause in item.clauses:
            if isinstance(clause, ICMPClause):
                self.error(clause.pos, "a Kubernetes NetworkPolicy cannot match ICMP (use a cilium policy)")
                continue
            if clause.l7 is not None:
                self.error(clause.l7.pos, "L7 rules need a cilium policy")
            self.at(path + ("ports",), clause.pos)
            for port in clause.ports:
                ports.append(self.port(path + ("ports", len(ports)), port, cilium=False))
        if ports:
            rule["ports"] = ports
        rules.append(rule)

    def k8s_peer(self, path: tuple, peer: Peer) -> dict:
        self.at(path, peer.pos)
        if isinstance(peer, PeerSelector):
            out = {"podSelector": self.selector(path + ("podSelector",), peer.selector)}
            if peer.namespaces is not None:
                out["namespaceSelector"] = self.selector(path + ("namespaceSelector",), peer.namespaces)
            return out
        if isinstance(peer, PeerNamespaces):
            return {"namespaceSelector": self.selector(path + ("namespaceSelector",), peer.selector)}
        if isinstance(peer, PeerCIDR):
            return {"ipBlock": self.cidr_block(path + ("ipBlock",), peer)}
        what = "entities" if isinstance(peer, PeerEntity) else "FQDN peers"
        self.error(peer.pos, f"{what} are Cilium features: a Kubernetes peer is {{pod selector}}, "
                             "'namespaces {...}' or 'cidr ...' (use a cilium policy)")
        return {}

    def cidr_block(self, path: tuple, peer: PeerCIDR) -> dict:
        self.at(path, peer.pos)
        self.at(path + ("cidr",), peer.cidr.pos)
        out: dict = {"cidr": peer.cidr.value}
        if peer.excepts is not None:
            out["except"] = [e.value for e in peer.excepts]
            for j, e in enumerate(peer.excepts):
                self.at(path + ("except", j), e.pos)
            if peer.excepts:
                self.at(path + ("except",), peer.excepts[0].pos)
        return out

    def port(self, path: tuple, port: Port, cilium: bool) -> dict:
        self.at(path, port.pos)
        out: dict = {}
        if port.start is not None:
            value = port.start.value
            # Cilium's CRD types port as a string ("80"); Kubernetes takes an int or a name.
            out["port"] = str(value) if cilium else value
            self.at(path + ("port",), port.start.pos)
        if port.end is not None:
            out["endPort"] = port.end.value
            self.at(path + ("endPort",), port.end.pos)
        if port.proto is not None:
            out["protocol"] = port.proto.value
            self.at(path + ("protocol",), port.proto.pos)
        return out

    # --- Cilium
    def cilium_rule(self, path: tuple, items, pos: Pos) -> dict:
        rule: dict = {}
        self.at(path, pos)
        for item in items:
            if isinstance(item, RuleItem):
                self.cilium_item(path, rule, item)
                continue
            key = {"select": "endpointSelector", "nodes": "nodeSelector", "description": "description",
                   "default-deny": "enableDefaultDeny", "types": None}[item.name]
            if key is None:
                self.error(item.pos, "'types' is for Kubernetes policies; a Cilium rule is default-deny "
                                     "for each direction it has rules for (see 'default-deny')")
                continue
            if key in rule:
                line = self.positions.get(path + (key,), (item.pos.line,))[0]
                self.error(item.pos, f"'{item.name}' is given twice in one rule (first at line {line})")
                continue
            self.at(path + (key,), item.pos)
            if item.name in ("select", "nodes"):
                rule[key] = self.selector(path + (key,), item.value)
            elif item.name == "description":
                rule[key] = item.value.value
                self.positions[path + (key,)] = (item.value.pos.line, item.value.pos.col)
            else:
                rule[key] = {}
                for direction, flag in item.value:
                    if direction.value in rule[key]:
                        self.error(direction.pos, f"default-deny {direction.value} is given twice")
                    rule[key][direction.value] = flag.value
                    self.at(path + (key, direction.value), direction.pos)
                    self.positions[path + (key, direction.value)] = (flag.pos.line, flag.pos.col)
        return rule

    def cilium_item(self, base: tuple, rule: dict, item: RuleItem) -> None:
        section = item.direction + ("Deny" if item.action == "deny" else "")
        entries = rule.setdefault(section, [])
        path = base + (section, len(entries))
        self.at(base + (section,), item.pos)
        self.at(path, item.pos)
        out: dict = {}
        prefix = "from" if item.direction == "ingress" else "to"
        for peer in item.peers or ():
            self.cilium_peer(path, prefix, out, peer)
        for clause in item.clauses:
            if isinstance(clause, ICMPClause):
                icmps = out.setdefault("icmps", [])
                ipath = path + ("icmps", len(icmps))
                self.at(path + ("icmps",), clause.pos)
                self.at(ipath, clause.pos)
                self.at(ipath + ("fields",), clause.pos)
                fields = []
                for j, t in enumerate(clause.types):
                    fpath = ipath + ("fields", j)
                    self.at(fpath, t.pos)
                    self.at(fpath + ("type",), t.type.pos)
                    f: dict = {}
                    if t.family:
                        f["family"] = t.family
                        self.at(fpath + ("family",), t.pos)
                    f["type"] = t.type.value
                    fields.append(f)
                icmps.append({"fields": fields})
                continue
            to_ports = out.setdefault("toPorts", [])
            ppath = path + ("toPorts", len(to_ports))
            self.at(path + ("toPorts",), clause.pos)
            self.at(ppath, clause.pos)
            entry: dict = {}
            if clause.ports:
                self.at(ppath + ("ports",), clause.pos)
                entry["ports"] = [self.port(ppath + ("ports", j), p, cilium=True)
                                  for j, p in enumerate(clause.ports)]
            if clause.l7 is not None:
                entry["rules"] = self.l7(ppath + ("rules",), clause.l7)
            to_ports.append(entry)
        entries.append(out)

    def cilium_peer(self, path: tuple, prefix: str, out: dict, peer: Peer) -> None:
        if isinstance(peer, PeerSelector):
            if peer.namespaces is not None:
                self.error(peer.namespaces.pos, "'in namespaces' is Kubernetes syntax; in a Cilium policy put "
                                                "the namespace in the selector: {k8s:io.kubernetes.pod.namespace=NS} "
                                                "or {k8s:io.cilium.k8s.namespace.labels.KEY=VALUE}")
                return
            key = prefix + "Endpoints"
            self.add(path, out, key, peer.pos, self.selector(path + (key, len(out.get(key, []))), peer.selector))
        elif isinstance(peer, PeerNamespaces):
            self.error(peer.pos, "'namespaces {...}' is Kubernetes syntax; in a Cilium policy select "
                                 "namespaces by label: {k8s:io.cilium.k8s.namespace.labels.KEY=VALUE}")
        elif isinstance(peer, PeerCIDR):
            if peer.excepts is None and (prefix + "CIDRSet") not in out:
                key = prefix + "CIDR"
                self.add(path, out, key, peer.pos, peer.cidr.value)
                self.positions[path + (key, len(out[key]) - 1)] = (peer.cidr.pos.line, peer.cidr.pos.col)
            else:
                self.cidr_set(path, prefix, out, peer)
        elif isinstance(peer, PeerEntity):
            self.add(path, out, prefix + "Entities", peer.pos, peer.name.value)
        elif prefix == "to" and path[-2] == "egress":
            self.add(path, out, "toFQDNs", peer.pos, {peer.field: peer.value.value})
        else:
            self.error(peer.pos, "fqdn peers are for egress allow rules only ('egress allow to fqdn ...')")

    def cidr_set(self, path: tuple, prefix: str, out: dict, peer: PeerCIDR) -> None:
        """Move plain CIDRs of this rule into the CIDR set (Cilium allows one peer kind per rule)."""
        plain, key = prefix + "CIDR", prefix + "CIDRSet"
        if plain in out:
            moved = out.pop(plain)
            plain_pos = self.key_positions.get(path + (plain,))
            for j, cidr in enumerate(moved):
                line, col = self.positions[path + (plain, j)]
                entry = {"cidr": cidr}
                self.add(path, out, key, Pos(line, col), entry)
                self.at(path + (key, j, "cidr"), Pos(line, col))
            if plain_pos:
                self.key_positions[path + (key,)] = plain_pos
                self.positions[path + (key,)] = plain_pos
        j = len(out.get(key, []))
        self.add(path, out, key, peer.pos, self.cidr_block(path + (key, j), peer))

    def add(self, path: tuple, out: dict, key: str, pos: Pos, value: Any) -> None:
        items = out.setdefault(key, [])
        self.at(path + (key,), pos)
        self.at(path + (key, len(items)), pos)
        items.append(value)

    def l7(self, path: tuple, l7: L7) -> dict:
        self.at(path, l7.pos)
        out: dict = {}
        for rule in l7.rules:
            if isinstance(rule, HTTPRule):
                http = out.setdefault("http", [])
                rpath = path + ("http", len(http))
                self.at(path + ("http",), rule.pos)
                self.at(rpath, rule.pos)
                entry: dict = {}
                for name, value in rule.fields:
                    if name == "header":
                        entry.setdefault("headers", []).append(value.value)
                        self.at(rpath + ("headers",), value.pos)
                        continue
                    if name in entry:
                        self.error(value.pos, f"http rule gives '{name}' twice")
                    entry[name] = value.value
                    self.at(rpath + (name,), value.pos)
                http.append(entry)
            else:
                dns = out.setdefault("dns", [])
                self.at(path + ("dns",), rule.pos)
                self.at(path + ("dns", len(dns)), rule.pos)
                dns.append({rule.field: rule.value.value})
        return out


def to_documents(ast: File, file: str, lines: Sequence[str]) -> list[Document]:
    """The documents of all policies in ``ast`` (errors of all policies raised together)."""
    docs: list[Document] = []
    errors: list[PolcError] = []
    for index, policy in enumerate(ast.policies):
        builder = _DocBuilder(policy, file, lines, index)
        doc = builder.build()
        errors += builder.errors
        if doc is not None:
            docs.append(doc)
    raise_all(errors)
    return docs


def load_text(text: str, file: str = "<string>") -> list[Document]:
    """Parse DSL ``text`` into policy documents (YAML-shaped data with ``.pol`` positions)."""
    return to_documents(parse_text(text, file), file, text.splitlines())


def read(path: str | os.PathLike) -> str:
    name = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CompileError(f"cannot read file: {exc.strerror or exc}", Location(name)) from None
    except UnicodeDecodeError as exc:
        raise CompileError(f"file is not UTF-8 text: {exc.reason}", Location(name)) from None


def load_file(path: str | os.PathLike) -> list[Document]:
    """Load one ``.pol`` file."""
    return load_text(read(path), str(path))


def is_dsl(path: str | os.PathLike) -> bool:
    return str(path).endswith(SUFFIX)
