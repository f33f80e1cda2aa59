"""The positioned YAML/JSON loader and error rendering."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
import yaml
from polc.compiler import source
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


# Scalars whose tag depends on the text and on quoting: the memoised resolver and the
# plain-string shortcut must give what PyYAML's own safe loader gives.
TRICKY_SCALARS = ["yes", "'yes'", '"yes"', "no", "on", "off", "true", "True", "0x10", "0o17", "017",
                  "1e3", "1.5e3", ".inf", "-.inf", ".nan", "~", "null", "''", "2001-01-01",
                  "2001-12-14t21:59:43.10-05:00", '"80"', "80", "'80'", "+12", "1_000", "-0",
                  "a b", "!!str 80", "!!int '7'"]


def test_loader_agrees_with_pyyaml_on_tricky_scalars():
    text = "".join(f"k{i}: {s}\n" for i, s in enumerate(TRICKY_SCALARS))
    text += "list: [" + ", ".join(TRICKY_SCALARS[:-2]) + "]\n"
    text += "tagged: !!str [a, 1]\n"  # a tagged sequence stays a sequence (as before)
    (doc,) = load_text(text)
    expected = yaml.load(text.replace("tagged: !!str [a, 1]\n", "tagged: [a, 1]\n"), Loader=yaml.SafeLoader)

    def typed(value):
        return "nan" if isinstance(value, float) and math.isnan(value) else (type(value), value)
    assert {k: typed(v) if not isinstance(v, list) else [typed(x) for x in v] for k, v in doc.data.items()} \
        == {k: typed(v) if not isinstance(v, list) else [typed(x) for x in v] for k, v in expected.items()}
    for text in ("a: <<\n", "a: =\n"):  # tags without a safe constructor stay positioned errors
        with pytest.raises(CompileError, match="1:4: error: invalid value: could not determine a constructor"):
            load_text(text)


def test_memoised_resolver_gives_pyyaml_tags():
    plain = yaml.resolver.Resolver()
    loader = source._Loader("")
    try:
        for text in TRICKY_SCALARS + ["<<", "=", "", "80", "yes"]:  # repeats come from the cache
            for implicit in ((True, False), (False, True), (False, False)):
                want = plain.resolve(yaml.ScalarNode, text, implicit)
                assert loader.resolve(yaml.ScalarNode, text, implicit) == want, (text, implicit)
        assert loader.resolve(yaml.MappingNode, None, (True, False)) == plain.resolve(yaml.MappingNode, None, (True, False))
    finally:
        loader.dispose()


def test_merge_keys_aliases_and_duplicates_still_work():
    text = "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  z: 3\nd: 1\nd: 2\n"
    with pytest.raises(CompileError) as info:
        load_text(text, "m.yaml")
    assert "m.yaml:6:1" in str(info.value) and "duplicate key 'd'" in str(info.value)
    (doc,) = load_text(text.replace("d: 2\n", ""))
    assert doc.data["m"] == {"x": 1, "y": 2, "z": 3}
    assert doc.position(("m", "y")) == (1, 20) and doc.position(("m", "z"), key=True) == (4, 3)


def test_loading_leaves_the_garbage_collector_as_it_was():
    assert gc.isenabled()
    load_text("a: 1\n")
    assert gc.isenabled()
    gc.disable()
    try:
        load_text("a: 1\n")
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(CompileError):
        load_text("a: [\n")
    assert gc.isenabled()


def test_source_lines_are_split_on_demand():
    lines = source._Lines("a\r\nb\n\nc")
    assert len(lines) == 4 and lines[1] == "b" and list(lines) == "a\r\nb\n\nc".splitlines()
