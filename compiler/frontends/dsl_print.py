"""Print policy documents as polc DSL text in the canonical layout (``polc fmt``, ``convert``).

The printer reads the YAML-shaped data of a ``source.Document`` -- what a YAML file holds,
or what ``dsl._DocBuilder`` built from a ``.pol`` file -- so both directions of ``polc
convert`` and ``polc fmt`` share one printer, and ``fmt`` works on files whose features
the compiler does not support yet (L7 rules).  Data the DSL cannot say raises a positioned
``CompileError``; object fields without effect on enforcement (``metadata.labels``,
``annotations``, rule ``labels``, ``status``) are dropped and named in a comment.

Layout: one statement per line, two-space indent, a blank line between policies; a rule
longer than ``WIDTH`` puts each clause on its own continuation line; L7 rules always go in
an indented block.  Printing depends only on the data, so formatting is idempotent.
Comments (``fmt``) are re-attached by source line: a comment before a statement stays
before it, a comment after a statement on the same line stays at the end of that line.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from ..errors import PolcError, raise_all
from ..source import Document, path_str
from .dsl import KIND_KEYWORDS, Comment

WIDTH = 100
INDENT = "  "

_OBJNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LKEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]*")
_LVALUE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PORTNAME = re.compile(r"[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*")
_CIDR = re.compile(r"[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*(/[0-9]+)?")
_PROTO = re.compile(r"[A-Za-z]+")
_PEER_KEYWORDS = ("namespaces", "cidr", "fqdn")
_ICMP_KEYWORDS = ("ipv4", "ipv6")

# Fields with no effect on what is enforced; dropped with a note.
_METADATA_DROPPED = ("labels", "annotations", "generateName", "uid", "resourceVersion", "generation",
                     "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                     "managedFields", "finalizers", "ownerReferences", "selfLink")


def quote(text: str) -> str:
    """``text`` as a DSL string literal (the inverse of ``dsl.decode_string``).

    A backslash is doubled only where the parser would otherwise read an escape, so
    regexes such as ``"/v1/\\d+"`` print as written.
    """
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch == "\\":
            out.append("\\\\" if nxt in ('"', "\\", "n", "t", "") else "\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _word(value: Any, pattern: re.Pattern, reserved: Sequence[str] = ()) -> str:
    text = str(value)
    if pattern.fullmatch(text) and text not in reserved:
        return text
    return quote(text)


class _Printer:
    """Prints one document; collects errors about data the DSL cannot express."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.errors: list[PolcError] = []
        self.dropped: list[str] = []

    def fail(self, path: tuple, message: str) -> None:
        self.errors.append(self.doc.error(path, message, key=True))

    def unexpressible(self, path: tuple, what: str | None = None) -> None:
        name = path_str(path)
        self.fail(path, f"{what or repr(path[-1])} cannot be written in the polc DSL ({name})")

    def check_keys(self, data: dict, path: tuple, known: Iterable[str], dropped: Iterable[str] = ()) -> None:
        known, dropped = tuple(known), tuple(dropped)
        for key, value in data.items():
            if key in known:
                continue
            if key in dropped:
                if value not in (None, [], {}):
                    self.dropped.append(path_str(path + (key,)))
                continue
            self.unexpressible(path + (key,))

    def line_of(self, path: tuple) -> tuple[int, int]:
        return self.doc.position(path)

    # --- scalars and selectors
    def selector(self, sel: Any, path: tuple) -> str:
        if sel is None:
            return "{}"
        if not isinstance(sel, dict):
            self.fail(path, "a selector must be a mapping")
            return "{}"
        self.check_keys(sel, path, ("matchLabels", "matchExpressions"))
        terms = [f"{_word(k, _LKEY)}={_word(v, _LVALUE)}" for k, v in (sel.get("matchLabels") or {}).items()]
        for i, expr in enumerate(sel.get("matchExpressions") or ()):
            epath = path + ("matchExpressions", i)
            key, op = _word(expr.get("key"), _LKEY), expr.get("operator")
            values = ", ".join(_word(v, _LVALUE) for v in expr.get("values") or ())
            if op == "In":
                terms.append(f"{key} in ({values})")
            elif op == "NotIn":
                terms.append(f"{key} notin ({values})")
            elif op == "Exists":
                terms.append(key)
            elif op == "DoesNotExist":
                terms.append(f"!{key}")
            else:
                self.fail(epath + ("operator",), f"unknown operator {op!r}")
        return "{" + ", ".join(terms) + "}"

    def port(self, port: dict, path: tuple) -> str:
        self.check_keys(port, path, ("port", "endPort", "protocol"))
        value, end, proto = port.get("port"), port.get("endPort"), port.get("protocol")
        if value is None:
            if end is not None:
                self.fail(path + ("endPort",), "endPort needs a port")
            text = "*"
        elif isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            text = str(int(value))
        elif isinstance(value, str) and _PORTNAME.fullmatch(value):
            text = value
        else:
            self.fail(path + ("port",), f"port {value!r} cannot be written in the polc DSL")
            text = "*"
        if end is not None:
            text += f"-{end}"
        if proto is not None:
            if not (isinstance(proto, str) and _PROTO.fullmatch(proto)):
                self.fail(path + ("protocol",), f"protocol {proto!r} cannot be written in the polc DSL")
            text += f"/{str(proto).upper()}"
        return text

    def cidr(self, text: Any) -> str:
        return _word(text, _CIDR)

    def cidr_block(self, block: dict, path: tuple) -> str:
        self.check_keys(block, path, ("cidr", "except"))
        text = f"cidr {self.cidr(block.get('cidr'))}"
        excepts = block.get("except")
        if excepts:
            inner = ", ".join(self.cidr(e) for e in excepts)
            text += f" except {inner}" if len(excepts) == 1 else f" except ({inner})"
        return text

    # --- policies
    def policy(self, comments: "_Comments") -> list[str]:
        data = self.doc.data
        self.check_keys(data, (), ("apiVersion", "kind", "metadata", "spec", "specs"), ("status",))
        kind = data.get("kind")
        meta = data.get("metadata") or {}
        self.check_keys(meta, ("metadata",), ("name", "namespace"), _METADATA_DROPPED)
        header = f"{KIND_KEYWORDS[kind]} {_word(meta.get('name'), _OBJNAME)}"
        if meta.get("namespace") is not None:
            header += f" in {_word(meta['namespace'], _OBJNAME)}"
        out = comments.before(self.line_of(()), "")
        out.append(comments.trailing(header + " {", self.line_of(())))
        if kind == "NetworkPolicy":
            self.k8s_spec(data.get("spec") or {}, out, comments)
        else:
            if data.get("spec") is not None:
                self.cilium_rule(data["spec"], ("spec",), INDENT, out, comments)
            for i, rule in enumerate(data.get("specs") or ()):
                path = ("specs", i)
                out += comments.before(self.line_of(path), INDENT)
                out.append(comments.trailing(INDENT + "rule {", self.line_of(path)))
                self.cilium_rule(rule, path, INDENT * 2, out, comments)
                out += comments.before(comments.end_of(path), INDENT * 2)
                out.append(INDENT + "}")
        if self.dropped:
            out.insert(0, "# polc convert: dropped (no effect on enforcement): "
                       + ", ".join(self.dropped))
        out += comments.before(comments.policy_end, INDENT)
        out.append("}")
        return out

    def emit(self, out: list, comments: "_Comments", indent: str, path: tuple, lines: list[str]) -> None:
        out += comments.before(self.line_of(path), indent)
        first, rest = lines[0], lines[1:]
        out.append(comments.trailing(indent + first, self.line_of(path)))
        out += [indent + line for line in rest]

    # --- Kubernetes
    def k8s_spec(self, spec: dict, out: list, comments: "_Comments") -> None:
        self.check_keys(spec, ("spec",), ("podSelector", "policyTypes", "ingress", "egress"))
        if spec.get("podSelector") is not None:
            self.emit(out, comments, INDENT, ("spec", "podSelector"),
                      [f"select {self.selector(spec['podSelector'], ('spec', 'podSelector'))}"])
        if spec.get("policyTypes"):
            types = ", ".join(str(t).lower() for t in spec["policyTypes"])
            self.emit(out, comments, INDENT, ("spec", "policyTypes"), [f"types {types}"])
        for section in self._section_order(spec, ("spec",), ("ingress", "egress")):
            for i, rule in enumerate(spec.get(section) or ()):
                path = ("spec", section, i)
                self.emit(out, comments, INDENT, path, self.k8s_rule(rule or {}, section, path))

    def k8s_rule(self, rule: dict, section: str, path: tuple) -> list[str]:
        field = "from" if section == "ingress" else "to"
        self.check_keys(rule, path, (field, "ports"))
        head = f"{section} allow"
        peers = [self.k8s_peer(p or {}, path + (field, j)) for j, p in enumerate(rule.get(field) or ())]
        if peers:
            head += f" {field} " + ", ".join(peers)
        clauses = []
        if rule.get("ports"):
            clauses.append([("ports " + ", ".join(self.port(p or {}, path + ("ports", j))
                                                  for j, p in enumerate(rule["ports"])))])
        return _layout(head, clauses)

    def k8s_peer(self, peer: dict, path: tuple) -> str:
        self.check_keys(peer, path, ("podSelector", "namespaceSelector", "ipBlock"))
        if peer.get("ipBlock") is not None:
            if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
                self.fail(path + ("ipBlock",), "ipBlock cannot be combined with selectors in one peer")
            return self.cidr_block(peer["ipBlock"], path + ("ipBlock",))
        pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
        if pods is None and namespaces is None:
            self.fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
            return "{}"
        if pods is None:
            return "namespaces " + self.selector(namespaces, path + ("namespaceSelector",))
        text = self.selector(pods, path + ("podSelector",))
        if namespaces is not None:
            text += " in namespaces " + self.selector(namespaces, path + ("namespaceSelector",))
        return text

    # --- Cilium
    def cilium_rule(self, rule: dict, path: tuple, indent: str, out: list, comments: "_Comments") -> None:
        if not isinstance(rule, dict):
            self.fail(path, "a rule must be a mapping")
            return
        sections = ("ingress", "ingressDeny", "egress", "egressDeny")
        self.check_keys(rule, path, ("endpointSelector", "nodeSelector", "description",
                                     "enableDefaultDeny") + sections, ("labels",))
        if rule.get("description") is not None:
            self.emit(out, comments, indent, path + ("description",),
                      [f"description {quote(str(rule['description']))}"])
        for key, word in (("endpointSelector", "select"), ("nodeSelector", "nodes")):
            if rule.get(key) is not None:
                self.emit(out, comments, indent, path + (key,),
                          [f"{word} {self.selector(rule[key], path + (key,))}"])
        dd = rule.get("enableDefaultDeny") or {}
        self.check_keys(dd, path + ("enableDefaultDeny",), ("ingress", "egress"))
        flags = [f"{d}={'true' if dd[d] else 'false'}" for d in ("ingress", "egress") if dd.get(d) is not None]
        if flags:
            self.emit(out, comments, indent, path + ("enableDefaultDeny",), ["default-deny " + ", ".join(flags)])
        for section in self._section_order(rule, path, sections):
            direction = "ingress" if section.startswith("ingress") else "egress"
            action = "deny" if section.endswith("Deny") else "allow"
            for i, item in enumerate(rule.get(section) or ()):
                ipath = path + (section, i)
                self.emit(out, comments, indent, ipath, self.cilium_item(item or {}, direction, action, ipath))

    def _section_order(self, data: dict, path: tuple, sections: Sequence[str]) -> list[str]:
        """Sections in source order (lowering orders rules by where their section starts)."""
        present = [s for s in sections if data.get(s)]
        return sorted(present, key=lambda s: self.doc.position(path + (s,)))

    def cilium_item(self, item: dict, direction: str, action: str, path: tuple) -> list[str]:
        prefix = "from" if direction == "ingress" else "to"
        peer_keys = [prefix + k for k in ("Endpoints", "CIDR", "CIDRSet", "Entities")]
        if direction == "egress":
            peer_keys.append("toFQDNs")
        self.check_keys(item, path, peer_keys + ["toPorts", "icmps"])
        peers: list[str] = []
        for key in peer_keys:
            for j, value in enumerate(item.get(key) or ()):
                peers.append(self.cilium_peer(key[len(prefix):], value, path + (key, j)))
        head = f"{direction} {action}"
        if peers:
            head += f" {prefix} " + ", ".join(peers)
        clauses = []
        for j, entry in enumerate(item.get("toPorts") or ()):
            clauses.append(self.to_ports(entry or {}, path + ("toPorts", j)))
        for j, entry in enumerate(item.get("icmps") or ()):
            clauses.append([self.icmp(entry or {}, path + ("icmps", j))])
        return _layout(head, clauses)

    def cilium_peer(self, kind: str, value: Any, path: tuple) -> str:
        if kind == "Endpoints":
            return self.selector(value, path)
        if kind == "CIDR":
            return f"cidr {self.cidr(value)}"
        if kind == "CIDRSet":
            return self.cidr_block(value if isinstance(value, dict) else {}, path)
        if kind == "Entities":
            if not (_NAME.fullmatch(str(value)) and value not in _PEER_KEYWORDS):
                self.fail(path, f"entity {value!r} cannot be written in the polc DSL")
            return str(value)
        # toFQDNs
        self.check_keys(value, path, ("matchName", "matchPattern"))
        if value.get("matchName") is not None and value.get("matchPattern") is None:
            return f"fqdn {quote(str(value['matchName']))}"
        if value.get("matchPattern") is not None and value.get("matchName") is None:
            return f"fqdn pattern {quote(str(value['matchPattern']))}"
        self.fail(path, "an FQDN selector needs exactly one of matchName and matchPattern")
        return "fqdn \"\""

    def to_ports(self, entry: dict, path: tuple) -> list[str]:
        self.check_keys(entry, path, ("ports", "rules"))
        ports = ", ".join(self.port(p or {}, path + ("ports", j)) for j, p in enumerate(entry.get("ports") or ()))
        text = "ports" + (f" {ports}" if ports else "")
        rules = entry.get("rules")
        if not rules:
            return [text]
        rpath = path + ("rules",)
        self.check_keys(rules, rpath, ("http", "dns"))
        inner = []
        for j, http in enumerate(rules.get("http") or ()):
            hpath = rpath + ("http", j)
            self.check_keys(http, hpath, ("method", "path", "host", "headers"))
            words = ["http"]
            if http.get("method") is not None:
                words.append(f"method {_word(http['method'], _NAME)}")
            for key in ("path", "host"):
                if http.get(key) is not None:
                    words.append(f"{key} {quote(str(http[key]))}")
            words += [f"header {quote(str(h))}" for h in http.get("headers") or ()]
            inner.append(" ".join(words))
        for j, dns in enumerate(rules.get("dns") or ()):
            dpath = rpath + ("dns", j)
            self.check_keys(dns, dpath, ("matchName", "matchPattern"))
            if dns.get("matchName") is not None and dns.get("matchPattern") is None:
                inner.append(f"dns name {quote(str(dns['matchName']))}")
            elif dns.get("matchPattern") is not None and dns.get("matchName") is None:
                inner.append(f"dns pattern {quote(str(dns['matchPattern']))}")
            else:
                self.fail(dpath, "a DNS rule needs exactly one of matchName and matchPattern")
        return [text + " {"] + [INDENT + line for line in inner] + ["}"]

    def icmp(self, entry: dict, path: tuple) -> str:
        self.check_keys(entry, path, ("fields",))
        fields = entry.get("fields") or ()
        if not fields:
            self.fail(path, "an icmps entry without fields (which matches nothing) cannot be written "
                            "in the polc DSL")
        types = []
        for j, f in enumerate(fields):
            fpath = path + ("fields", j)
            self.check_keys(f, fpath, ("family", "type"))
            value = f.get("type")
            text = str(int(value)) if isinstance(value, int) or str(value).isdigit() else \
                _word(value, _NAME, _ICMP_KEYWORDS)
            family = f.get("family")
            if family is not None:
                if family not in ("IPv4", "IPv6"):
                    self.fail(fpath + ("family",), f"unknown ICMP family {family!r}")
                text = f"{str(family).lower()} {text}"
            types.append(text)
        return "icmp " + ", ".join(types)


def _layout(head: str, clauses: list[list[str]]) -> list[str]:
    """One line when it fits and no clause spans lines; else one clause per continuation line."""
    if all(len(c) == 1 for c in clauses[:-1]):
        line = " ".join([head] + [c[0] for c in clauses])
        if len(line) <= WIDTH:
            return [line] + (clauses[-1][1:] if clauses else [])
    out = [head]
    for clause in clauses:
        out += [INDENT * 2 + line for line in clause]
    return out


class _Comments:
    """Source comments, handed to the statements they belong to (``fmt`` only).

    A first, dry printing pass records the source line of every statement and closing
    brace (``anchor``); each comment then belongs to the statement on its own line (it
    trails it) or to the first statement after it (it leads it), so comments follow their
    statement when the canonical layout reorders statements.
    """

    def __init__(self, comments: Sequence[Comment]):
        self.comments = sorted(comments, key=lambda c: (c.pos.line, c.pos.col))
        self.anchors: set[tuple[int, int]] = set()
        self.leading: dict[tuple, list[str]] | None = None
        self.trailer: dict[tuple, str] = {}
        self.rest_: list[str] = []
        self.policy_end = (0, 0)
        self.ends: dict = {}

    def assign(self) -> None:
        """End the dry run: attach every comment to an anchor (line, column)."""
        anchors = sorted(self.anchors)
        self.leading = {}
        for c in self.comments:
            line, col = c.pos.line, c.pos.col
            # trails the last statement that starts on its line before it
            same = [a for a in anchors if a[0] == line and a[1] < col]
            if same and same[-1] not in self.trailer:
                self.trailer[same[-1]] = c.text
                continue
            nxt = next((a for a in anchors if a[0] > line), None)
            if nxt is None:
                self.rest_.append(c.text)
            else:
                self.leading.setdefault(nxt, []).append(c.text)

    def before(self, pos: tuple[int, int], indent: str) -> list[str]:
        if self.leading is None:
            self.anchors.add(pos)
            return []
        line = pos[0]
        keys = sorted(k for k in self.leading if k[0] == line)
        return [indent + text for k in keys for text in self.leading.pop(k)]

    def trailing(self, text: str, pos: tuple[int, int]) -> str:
        if self.leading is None:
            self.anchors.add(pos)
            return text
        note = self.trailer.pop(pos, None)
        return f"{text}  {note}" if note else text

    def end_of(self, path: tuple) -> tuple[int, int]:
        return self.ends.get(path, (0, 0))

    def rest(self) -> list[str]:
        out = [t for line in sorted(self.leading or {}) for t in self.leading[line]]
        out += [self.trailer[line] for line in sorted(self.trailer)] + self.rest_
        self.leading, self.trailer, self.rest_ = {}, {}, []
        return out


def format_documents(docs: Sequence[Document], comments: Sequence[Comment] = (),
                     ends: dict | None = None) -> str:
    """DSL text for ``docs`` in canonical layout; positioned errors for what it cannot say.

    ``comments`` (from ``dsl.parse_text``) are placed by source line; ``ends`` maps
    ``(doc index, path)`` to the line of the closing brace of a policy (``()``) or a rule
    block (``("specs", i)``) so comments before a brace stay inside it.
    """
    state = _Comments(comments)
    if comments:
        _print_all(docs, state, ends or {})  # dry run: find the statements' lines
        state.assign()
    else:
        state.leading = {}
    blocks, errors = _print_all(docs, state, ends or {})
    raise_all(errors)
    tail = state.rest()
    text = "\n\n".join(blocks)
    if tail:
        text = (text + "\n\n" if text else "") + "\n".join(tail)
    return text + "\n" if text else ""


def _print_all(docs: Sequence[Document], state: _Comments, ends: dict) -> tuple[list[str], list[PolcError]]:
    blocks: list[str] = []
    errors: list[PolcError] = []
    for index, doc in enumerate(docs):
        printer = _Printer(doc)
        state.ends = {p: line for (i, p), line in ends.items() if i == index}
        state.policy_end = state.ends.get((), (0, 0))
        lines = printer.policy(state)
        errors += printer.errors
        blocks.append("\n".join(lines))
    return blocks, errors


def format_text(text: str, file: str = "<string>") -> str:
    """``polc fmt``: parse DSL ``text`` and print it in canonical layout, keeping comments."""
    from . import dsl

    ast = dsl.parse_text(text, file)
    docs = dsl.to_documents(ast, file, text.splitlines())
    ends: dict = {}
    for index, policy in enumerate(ast.policies):
        ends[(index, ())] = (policy.end.line, policy.end.col)
        blocks = [i for i in policy.items if isinstance(i, dsl.RuleBlock)]
        for j, block in enumerate(blocks):
            ends[(index, ("specs", j))] = (block.end.line, block.end.col)
    return format_documents(docs, ast.comments, ends)
