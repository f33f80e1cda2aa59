"""DSL commands: ``polc fmt`` (canonical layout) and ``polc convert`` (YAML <-> DSL)."""

from __future__ import annotations

import os
import sys

import yaml

EXIT_OK, EXIT_CHANGED = 0, 1


def register(sub) -> None:
    """Add the DSL subcommands to the ``polc`` argument parser."""
    f = sub.add_parser("fmt", help="rewrite .pol files in the canonical layout")
    f.add_argument("files", nargs="+", metavar="FILE", help=".pol files")
    f.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 and name the files that are not formatted")
    f.add_argument("--stdout", action="store_true", help="print the formatted text instead of rewriting")
    f.set_defaults(func=cmd_fmt)

    c = sub.add_parser("convert", help="convert policies between YAML and the DSL")
    c.add_argument("files", nargs="+", metavar="FILE", help="policy files (.pol or YAML/JSON)")
    c.add_argument("--to", required=True, choices=["yaml", "dsl"], help="output language")
    c.add_argument("-o", "--output", metavar="OUT", help="write here instead of standard output")
    c.set_defaults(func=cmd_convert)


def cmd_fmt(args) -> int:
    from polc.compiler.frontends import dsl, dsl_print

    changed = []
    for path in args.files:
        text = dsl.read(path)
        formatted = dsl_print.format_text(text, path)
        if args.stdout:
            sys.stdout.write(formatted)
            continue
        if formatted == text:
            continue
        changed.append(path)
        if args.check:
            print(f"polc fmt: {path} is not formatted", file=sys.stderr)
        else:
            _write(path, formatted)
    if args.check and changed:
        print(f"polc fmt: {len(changed)} of {len(args.files)} files would be reformatted", file=sys.stderr)
        return EXIT_CHANGED
    return EXIT_OK


def cmd_convert(args) -> int:
    text = "".join(to_dsl(args.files) if args.to == "dsl" else to_yaml(args.files))
    if args.output:
        _write(args.output, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def load_documents(paths: list[str]):
    """Policy documents of ``paths``, validated as the compiler would.

    Features polc cannot compile yet (``UnsupportedError``) do not stop a conversion: the
    DSL can still say them, and the output will be rejected with the same error on compile.
    """
    from polc.compiler.errors import ErrorList, PolcError, UnsupportedError, raise_all
    from polc.compiler.frontends import dsl
    from polc.compiler.lower import parse_policy
    from polc.compiler.source import expand_paths, load_file

    docs, errors = [], []
    for path in expand_paths(paths):
        try:
            docs.extend(dsl.load_file(path) if dsl.is_dsl(path) else load_file(path))
        except PolcError as exc:
            errors.append(exc)
    raise_all(errors)
    for doc in docs:
        try:
            parse_policy(doc)
        except PolcError as exc:
            found = exc.errors if isinstance(exc, ErrorList) else (exc,)
            errors += [e for e in found if not isinstance(e, UnsupportedError)]
    raise_all(errors)
    return docs


def to_dsl(paths: list[str]) -> str:
    """DSL text of the policies in ``paths``."""
    from polc.compiler.frontends import dsl_print

    header = "# Converted by polc convert --to dsl from " + ", ".join(os.path.basename(p) for p in paths) + "\n"
    return header + dsl_print.format_documents(load_documents(paths))


def to_yaml(paths: list[str]) -> str:
    """Multi-document YAML of the policies in ``paths``."""
    docs = load_documents(paths)
    parts = [yaml.safe_dump(doc.data, sort_keys=False, default_flow_style=False, allow_unicode=True)
             for doc in docs]
    return "---\n".join(parts)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
