"""Each malformed policy fixture gives exactly one clear error at the right place.

Every file in ``tests/data/frontend/errors`` starts with ``# expect: LINE:COL: text``; the
error must be the only one, at that line and column, and contain the text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polc.compiler.errors import CompileError, ErrorList, PolcError, UnsupportedError
from polc.compiler.lower import load_policies

ERRORS = Path(__file__).parent / "data" / "frontend" / "errors"
FIXTURES = sorted(ERRORS.glob("*.yaml"))
UNSUPPORTED = {"l7_kafka", "l7_regex_unsupported", "to_fqdns", "node_selector", "cidr_group_ref"}


def _expectation(path: Path) -> tuple[int, int, str]:
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"# expect: (\d+):(\d+): (.*)", first)
    assert m, f"{path.name}: first line must be '# expect: LINE:COL: text'"
    return int(m.group(1)), int(m.group(2)), m.group(3)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_one_positioned_error(path: Path):
    line, col, text = _expectation(path)
    with pytest.raises(PolcError) as info:
        load_policies([path])
    err = info.value
    assert not isinstance(err, ErrorList), err.render()
    assert isinstance(err, CompileError)
    assert (err.location.line, err.location.col) == (line, col), err.render()
    assert text in err.message, err.render()
    rendered = err.render().splitlines()
    assert rendered[0].startswith(f"{path}:{line}:{col}: error: ")
    assert rendered[1] == path.read_text().splitlines()[line - 1].rstrip()
    assert rendered[2] == " " * (col - 1) + "^"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_features_have_their_own_type(name: str):
    with pytest.raises(UnsupportedError):
        load_policies([ERRORS / f"{name}.yaml"])


def test_errors_of_several_documents_are_collected(tmp_path: Path):
    (tmp_path / "a.yaml").write_text((ERRORS / "bad_cidr.yaml").read_text())
    (tmp_path / "b.yaml").write_text((ERRORS / "mixed_peers.yaml").read_text())
    with pytest.raises(ErrorList) as info:
        load_policies([tmp_path])
    errs = info.value.errors
    assert [Path(e.location.file).name for e in errs] == ["a.yaml", "b.yaml"]
    assert info.value.render().endswith("2 errors")


def test_duplicate_policy_is_an_error(tmp_path: Path):
    doc = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n"
    (tmp_path / "p.yaml").write_text(doc + "---\n" + doc)
    with pytest.raises(CompileError, match="duplicate NetworkPolicy default/x"):
        load_policies([tmp_path / "p.yaml"])
