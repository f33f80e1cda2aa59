"""Load YAML/JSON input files into plain data, keeping where every value came from.

Files are composed with PyYAML's ``SafeLoader`` into nodes, and the nodes are turned into
plain Python data (dicts, lists, scalars) plus a map from a *path* -- the tuple of keys and
list indices leading to a value, e.g. ``("spec", "ingress", 0, "ports", 1, "port")`` -- to
the 1-based ``(line, col)`` where that value starts.  Keys have their own map so that an
error about a field name ("unknown field") points at the name, not at its value.

JSON is read through the same YAML loader (JSON is, for our purposes, YAML), so both get
positions.  A document of ``kind: List`` is split into one ``Document`` per item.

Speed matters here: inventories of tens of thousands of pods are millions of nodes.  Hence
libyaml, a memoised tag resolver, plain strings taken from their node without the
constructor, source lines split only when an error shows one, and the cyclic garbage
collector paused while a file loads (see ``gc_paused``).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from .errors import CompileError, Location, PolcError, raise_all

PathT = tuple  # tuple[str | int, ...]
Pos = tuple[int, int]

# libyaml's loader when PyYAML has it (several times faster on large inventories); both give
# nodes with positions and the same data.
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"


class _Loader(_BASE_LOADER):
    """The safe loader with its implicit-tag resolver memoised.

    The composer asks for the tag of every node; a scalar's tag depends only on its text and
    its ``implicit`` flags (plain / quoted) as long as there are no path resolvers (SafeLoader
    has none), and inputs repeat the same few thousand texts (keys, label values) millions of
    times.  The cache lives as long as the loader: one file.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._tags: dict = {}

    def resolve(self, kind, value, implicit):
        if kind is not ScalarNode or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = super().resolve(kind, value, implicit)
        return tag


INPUT_SUFFIXES = (".yaml", ".yml", ".json", ".pol")  # .pol: the policy DSL (frontends/dsl.py)


@dataclass(frozen=True)
class Document:
    """One YAML document (or one item of a ``kind: List``) with source positions.

    ``index`` is the document's index in its file; ``item`` the index inside a ``List``
    (None otherwise).  ``positions``/``key_positions`` map paths to 1-based (line, col).
    """

    file: str
    index: int
    data: Any
    positions: dict = field(repr=False)
    text_lines: Sequence[str] = field(repr=False)
    key_positions: dict = field(default_factory=dict, repr=False)
    item: int | None = None

    def position(self, path: Sequence, key: bool = False) -> Pos:
        """Position of ``path``, or of its nearest enclosing path that has one.

        With ``key=True`` the position of the mapping key naming the value is preferred.
        """
        path = tuple(path)
        while True:
            if key and path in self.key_positions:
                return self.key_positions[path]
            if path in self.positions:
                return self.positions[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def location(self, path: Sequence = (), key: bool = False) -> Location:
        """A ``Location`` (with source line) for ``path``."""
        line, col = self.position(path, key)
        text = self.text_lines[line - 1] if 0 < line <= len(self.text_lines) else None
        return Location(self.file, line, col, text)

    def error(self, path: Sequence, message: str, key: bool = False, cls=CompileError) -> PolcError:
        """A positioned error about the value (or key) at ``path``."""
        return cls(message, self.location(path, key), self.describe())

    @property
    def kind(self) -> str | None:
        return self.data.get("kind") if isinstance(self.data, dict) else None

    def describe(self) -> str:
        """``Kind namespace/name`` (or as much of it as the document has)."""
        data = self.data if isinstance(self.data, dict) else {}
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        name = meta.get("name", "<unnamed>")
        ns = meta.get("namespace")
        ref = f"{ns}/{name}" if ns else str(name)
        return f"{data.get('kind', '<no kind>')} {ref}"


class _Lines(Sequence):
    """``text.splitlines()``, split on first use: only errors show source lines, and the list
    of a large file costs more memory than its text."""

    def __init__(self, text: str):
        self._text: str | None = text
        self._lines: list[str] = []

    def _split(self) -> list[str]:
        if self._text is not None:
            self._lines, self._text = self._text.splitlines(), None
        return self._lines

    def __getitem__(self, index):
        return self._split()[index]

    def __len__(self) -> int:
        return len(self._split())


def path_str(path: Sequence) -> str:
    """``("spec", "ingress", 0)`` -> ``"spec.ingress[0]"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    """Turns composed YAML nodes into plain data and position maps."""

    def __init__(self, loader: yaml.SafeLoader, file: str, lines: Sequence[str]):
        self.loader = loader
        self.file = file
        self.lines = lines
        self.positions: dict = {}
        self.key_positions: dict = {}
        self.errors: list[PolcError] = []

    def _error(self, node: Node, message: str) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        self.errors.append(CompileError(message, Location(self.file, line, col, text)))

    def build(self, node: Node, path: PathT = ()) -> Any:
        mark = node.start_mark
        self.positions[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag == _STR_TAG:
            return node.value  # what the constructor would return, without its bookkeeping
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self._error(node, f"invalid value: {exc.problem}")
            return node.value

    def _mapping(self, node: MappingNode, path: PathT) -> dict:
        self.loader.flatten_mapping(node)  # resolve YAML merge keys (<<)
        out: dict = {}
        key_positions = self.key_positions
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._error(key_node, "mapping keys must be plain scalars")
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                key = key_node.value  # `80: x` or `true: x`: keep the text as written
            sub = path + (key,)
            if key in out:
                first = key_positions[sub]
                self._error(key_node, f"duplicate key '{key}' (first given at line {first[0]})")
                continue
            mark = key_node.start_mark
            key_positions[sub] = (mark.line + 1, mark.column + 1)
            out[key] = self.build(value_node, sub)
        return out


def _yaml_error(file: str, lines: Sequence[str], exc: yaml.YAMLError, text: str = "") -> CompileError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):  # a character the reader refuses: its index only
        before = text[:exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        message = f"invalid YAML: character U+{ord(char):04X} is not allowed ({exc.reason})"
        src = lines[line - 1] if 0 < line <= len(lines) else None
        return CompileError(message, Location(file, line, col, src))
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    if mark is None:
        return CompileError(message, Location(file))
    line, col = mark.line + 1, mark.column + 1
    text = lines[line - 1] if 0 < line <= len(lines) else None
    return CompileError(message, Location(file, line, col, text))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (as it was before, afterwards); also a decorator.

    Loading allocates millions of nodes and marks that die young and keeps millions of dicts
    and lists; validation then adds a model object per mapping.  Every object that survives
    long enough to be promoted brings the next full collection nearer, and each one walks
    everything loaded so far: with the collector on, that was two thirds of the time of
    loading and validating a 50,000-pod inventory.  Loaded data forms no reference cycles, so
    there is nothing for the collector to find; what else becomes cyclic garbage meanwhile is
    collected once it runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_text(text: str, file: str = "<string>") -> list[Document]:
    """Parse ``text`` (YAML, possibly multi-document, or JSON) into documents."""
    with gc_paused():
        return _load_text(text, file)


def _load_text(text: str, file: str) -> list[Document]:
    lines = _Lines(text)
    try:
        loader = _Loader(text)  # the reader rejects non-printable characters already here
    except yaml.YAMLError as exc:
        raise _yaml_error(file, lines, exc, text) from None
    docs: list[Document] = []
    errors: list[PolcError] = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            docs.extend(_to_documents(loader, node, file, index, lines, errors))
            index += 1
    except yaml.YAMLError as exc:
        raise _yaml_error(file, lines, exc, text) from None
    finally:
        loader.dispose()
    raise_all(errors)
    return docs


def _to_documents(loader, node, file, index, lines, errors) -> Iterator[Document]:
    if node is None:
        return
    builder = _Builder(loader, file, lines)
    data = builder.build(node)
    loader.constructed_objects.clear()  # as construct_document does: the nodes can go now
    loader.recursive_objects.clear()
    errors.extend(builder.errors)
    if data is None:
        return  # an empty document (e.g. a trailing `---`)
    doc = Document(file, index, data, builder.positions, lines, builder.key_positions)
    if not isinstance(data, dict):
        yield doc  # e.g. a flow file (a list); object loaders check for a mapping
        return
    kind = data.get("kind")
    if isinstance(kind, str) and (kind == "List" or kind.endswith("List") and "items" in data):
        yield from _split_list(doc, errors)
        return
    yield doc


def _split_list(doc: Document, errors: list[PolcError]) -> Iterator[Document]:
    items = doc.data.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        errors.append(doc.error(("items",), "'items' of a List must be a list"))
        return
    positions = _by_item(doc.positions)
    key_positions = _by_item(doc.key_positions)
    for i, item in enumerate(items):
        prefix = ("items", i)
        if not isinstance(item, dict):
            errors.append(doc.error(prefix, "each item of a List must be an object"))
            continue
        yield Document(
            doc.file, doc.index, item, positions.get(i, {}), doc.text_lines, key_positions.get(i, {}), item=i,
        )


def _by_item(positions: dict) -> dict[int, dict]:
    """Positions under ``("items", i, ...)``, re-rooted per item, in one pass over all of them."""
    out: dict[int, dict] = {}
    for path, pos in positions.items():
        if len(path) >= 2 and path[0] == "items" and isinstance(path[1], int):
            out.setdefault(path[1], {})[path[2:]] = pos
    return out


def load_file(path: str | os.PathLike) -> list[Document]:
    """Load one file (YAML or JSON)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CompileError(f"cannot read file: {exc.strerror or exc}", Location(name)) from None
    except UnicodeDecodeError as exc:
        raise CompileError(f"file is not UTF-8 text: {exc.reason}", Location(name)) from None
    return load_text(text, name)


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files named by ``paths``: files as given, directories searched recursively (sorted)."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                str(f) for f in path.rglob("*") if f.is_file() and f.suffix in INPUT_SUFFIXES
            )
            out.extend(found)
        elif path.exists():
            out.append(str(path))
        else:
            raise CompileError("no such file or directory", Location(str(p)))
    return out


def load_paths(paths: Sequence[str | os.PathLike]) -> list[Document]:
    """Load every document of the files and directories in ``paths``.

    Errors of all files are collected and raised together.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    docs: list[Document] = []
    errors: list[PolcError] = []
    for file in expand_paths(paths):
        try:
            docs.extend(load_file(file))
        except PolcError as exc:
            errors.append(exc)
    raise_all(errors)
    return docs
