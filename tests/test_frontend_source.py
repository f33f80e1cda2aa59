"""The positioned YAML/JSON loader and error rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from polc.compiler.errors import CompileError, ErrorList, Location, PolcError
from polc.compiler.lower import load_policies
from polc.compiler.source import load_paths, load_text, path_str

DATA = Path(__file__).parent / "data" / "frontend"


def test_multi_document_positions():
    docs = load_text("a: 1\nb:\n  - x: 2\n    y: [1, 2]\n---\n---\nc: true\n", "f.yaml")
    assert [(d.index, d.data) for d in docs] == [(0, {"a": 1, "b": [{"x": 2, "y": [1, 2]}]}), (2, {"c": True})]
    first = docs[0]
    assert first.position(("b", 0, "y", 1)) == (4, 12)
    assert first.position(("b", 0, "x"), key=True) == (3, 5)
    assert first.position(("b", 0, "missing", 3)) == (3, 5)  # nearest enclosing path


def test_list_items_become_documents():
    docs = load_text("kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n- kind: Node\n", "l.yaml")
    assert [(d.item, d.data["kind"]) for d in docs] == [(0, "Pod"), (1, "Node")]
    assert docs[1].position(()) == (5, 3)
    assert docs[0].position(("metadata", "name")) == (4, 20)


def test_json_keeps_positions():
    (policy,) = load_policies([DATA / "policy.json"])
    assert policy.ref == "NetworkPolicy prod/from-json"
    assert policy.doc.position(("spec", "ingress", 0, "ports", 0, "port")) == (7, 37)


def test_directories_are_searched_recursively_in_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.yml").write_text("n: 2\n")
    (tmp_path / "a.yaml").write_text("n: 1\n")
    (tmp_path / "c.json").write_text('{"n": 3}')
    (tmp_path / "notes.txt").write_text("n: 4\n")
    assert [d.data["n"] for d in load_paths([tmp_path])] == [1, 2, 3]


def test_missing_file():
    with pytest.raises(CompileError, match="no such file"):
        load_paths(["/nonexistent/policy.yaml"])


def test_yaml_errors_of_several_files_are_collected(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("a: [1,\n")
    (tmp_path / "b.yaml").write_text("k: 1\nk: 2\n")
    with pytest.raises(ErrorList) as info:
        load_paths([tmp_path])
    assert [e.location.file for e in info.value.errors] == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert "duplicate key 'k' (first given at line 1)" in info.value.errors[1].message


def test_render_with_and_without_position():
    err = CompileError("bad port", Location("p.yaml", 3, 11, "    port: abc"))
    assert err.render() == "p.yaml:3:11: error: bad port\n    port: abc\n          ^"
    assert PolcError("no rules", obj="NetworkPolicy x/deny-all").render() == \
        "NetworkPolicy x/deny-all: error: no rules"
    assert CompileError("cannot read", Location("p.yaml")).render() == "p.yaml: error: cannot read"


def test_path_str():
    assert path_str(("spec", "ingress", 0, "toPorts", 1)) == "spec.ingress[0].toPorts[1]"
    assert path_str(("specs", 2)) == "specs[2]"
