"""DSL errors: every mistake has a place (file:line:col, source line, caret) and common ones a
friendly message.  Golden files: tests/data/dsl/errors/NAME.pol -> NAME.err (the rendered error);
regenerate with ``POLC_REGEN=1 pytest tests/test_dsl_errors.py``.
"""

from __future__ import annotations

import os
import re

import pytest

from polc.compiler.errors import PolcError
from polc.compiler.frontends import dsl
from polc.compiler.lower import load_policies, lower

ERRORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dsl", "errors")
CASES = sorted(f[:-4] for f in os.listdir(ERRORS) if f.endswith(".pol"))
POSITIONED = re.compile(r"^[^\n:]+\.pol:\d+:\d+: error: .+\n.*\n *\^", re.M)


@pytest.mark.parametrize("name", CASES)
def test_error_golden(name, monkeypatch):
    monkeypatch.chdir(ERRORS)
    with pytest.raises(PolcError) as info:
        lower(load_policies([name + ".pol"]))
    text = info.value.render() + "\n"
    assert POSITIONED.match(text), text
    golden = os.path.join(ERRORS, name + ".err")
    if os.environ.get("POLC_REGEN"):
        with open(golden, "w") as f:
            f.write(text)
    with open(golden) as f:
        assert text == f.read()


def test_examples_are_errors():
    """Every friendly-message example is a syntax error (else it could never match)."""
    for message, examples in dsl._EXAMPLES.items():
        for example in examples:
            with pytest.raises(PolcError):
                dsl.parse_text(example)


@pytest.mark.parametrize("text,message", [
    ("k8s policy x { ingress from {} }", "'ingress allow ...' or 'ingress deny ...'"),
    ("k8s policy x in y { egress to {a=b} }", "'ingress allow ...' or 'ingress deny ...'"),
    ("cilium policy x in y { rule { select {a=b} ingress allow to {} } }", "with 'from'"),
    ("k8s policy x { select {a=b}", "missing '}' to close the policy"),
    ("k8s policy x { select {a=b, c in d} }", "key in (a, b)"),
    ("k8s policy x { select {a=} }", "key=\"\""),
    ("k8s policy { }", "needs a name"),
    ("cnp x {}", "a policy starts with"),
    ("cilium policy x { ingress deny ports TCP/80 }", "a port is a number"),
])
def test_friendly_messages(text, message):
    with pytest.raises(PolcError) as info:
        dsl.parse_text(text, "t.pol")
    assert message in info.value.message
    assert info.value.location.line is not None and info.value.location.col is not None


def test_model_errors_point_into_the_pol_file():
    text = "cilium policy x {\n  select {}\n  egress allow to cidr 10.0.0.0/8 except 11.0.0.0/16\n}\n"
    docs = dsl.load_text(text, "p.pol")
    from polc.compiler.lower import parse_policies
    with pytest.raises(PolcError) as info:
        parse_policies(docs)
    loc = info.value.location
    assert (loc.file, loc.line, loc.col) == ("p.pol", 3, 42)
    assert "must be inside cidr" in info.value.message
