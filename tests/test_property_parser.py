"""Parser robustness: malformed YAML/JSON and mutated policies never crash polc.

Whatever the input, loading policies either succeeds or raises one ``PolcError`` whose
errors each name a place (file, line and column).  Policies that still validate after a
mutation must also lower and build tables without a crash.  A few cases go through the CLI:
exit code 2, a positioned message, no traceback.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as S
from polc.compiler.errors import ErrorList, PolcError
from polc.compiler.lower import lower, parse_policies
from polc.compiler.source import load_text
from polc.compiler.tables import build_tables

N = {"ci": 400, "thorough": 20000}.get(S.PROFILE, 400)
N_CLI = {"ci": 6, "thorough": 100}.get(S.PROFILE, 6)

YAML_TOKENS = ("apiVersion: cilium.io/v2\n", "kind: NetworkPolicy\n", "metadata:\n", "  name: x\n", "spec:",
               ":", "-", " ", "  ", "\n", "\t", "{", "}", "[", "]", ",", "'", '"', "&a ", "*a", "*b", "!!binary ",
               "!!python/object ", "<<: ", "? ", "#", "---\n", "...\n", "%YAML 1.2\n", "|", ">", "null", "~",
               "0x1F", "1e3", "ingress", "from", "toPorts", "port", "80", "\\x00", "\u00e9", "\ufeff")


def _errors(exc: PolcError) -> list[PolcError]:
    return list(exc.errors) if isinstance(exc, ErrorList) else [exc]


def load_or_error(text: str, file: str = "fuzz.yaml"):
    """Load ``text`` as policies; the result or the PolcError (any other exception fails)."""
    try:
        policies = parse_policies(load_text(text, file))
    except PolcError as exc:
        for err in _errors(exc):
            assert err.location is not None and err.location.line is not None, \
                f"error without a position: {err.render()}"
            assert err.location.file == file
            assert err.render().startswith(f"{file}:{err.location.line}:")
        return exc
    # What validates must also lower and build tables without crashing.
    build_tables(lower(policies), _empty_inventory())
    return policies


def _empty_inventory():
    from polc.compiler import ir

    return ir.Inventory()


@settings(max_examples=N)
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join))
def test_yaml_soup(text):
    load_or_error(text)


@settings(max_examples=N // 4)
@given(st.text(max_size=200))
def test_random_text(text):
    load_or_error(text)


# --------------------------------------------------------------------------- mutations

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
                 st.sampled_from(("", "x", "80", "http", "10.0.0.0/33", "::/129", "In", "TCP", "ANY",
                                  "world", "-1", "1.2.3.4", "kube-system")),
                 st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(("a", "port")),
                                                                          st.integers(0, 2), max_size=1))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw):
    """A valid policy document with one thing broken: a value replaced, a key dropped, renamed or added."""
    doc = draw(st.one_of(S.network_policies("m"), S.cilium_policies("m")))
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    how = draw(st.sampled_from(("replace", "drop", "rename", "add")))
    if how == "replace":
        parent[last] = draw(JUNK)
    elif how == "drop":
        del parent[last]
    elif how == "rename" and isinstance(last, str):
        parent[last + draw(st.sampled_from(("s", "_", "X")))] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(("extra", "ingres", "toport", "matchlabels")))] = draw(JUNK)
    else:
        parent.insert(0, draw(JUNK))
    return doc


@settings(max_examples=N)
@given(mutated(), st.sampled_from(("yaml", "json")))
def test_mutated_policies(doc, fmt):
    text = json.dumps(doc, indent=1) if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    load_or_error(text, f"fuzz.{fmt}")


@settings(max_examples=N // 2)
@given(S.policy_sets(), st.data())
def test_truncated_and_spliced_text(docs, data):
    """Valid text cut short or with a character inserted (an indentation slip, a stray quote)."""
    text = S.dump_yaml(docs)
    at = data.draw(st.integers(0, len(text)))
    if data.draw(st.booleans()):
        text = text[:at]
    else:
        text = text[:at] + data.draw(st.sampled_from((" ", "\t", "'", "- ", ": ", "{", "\n  "))) + text[at:]
    load_or_error(text)


@settings(max_examples=N_CLI)
@given(mutated())
def test_cli_reports_positioned_error(tmp_path_factory, doc):
    """Through ``polc compile``: exit 0 or 2, never a traceback or an internal error."""
    d = tmp_path_factory.mktemp("cli")
    path = d / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "polc.cli", "compile", str(path), "-o", str(d / "out.o")],
                          capture_output=True, text=True, cwd=d, env={**os.environ, "POLC_DEBUG": ""})
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.startswith(f"{path}:"), proc.stderr
        assert ": error: " in proc.stderr.splitlines()[0]
