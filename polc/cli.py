"""The ``polc`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import polc

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polc", description="Compile Kubernetes and Cilium network policy to "
                                "verified eBPF, test it in the kernel, and enforce it on nodes.")
    p.add_argument("--version", action="version", version=f"polc {polc.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("compile", help="compile policies to a BPF object")
    c.add_argument("policies", nargs="+", metavar="POLICY", help="policy files or directories (YAML, JSON)")
    c.add_argument("-o", "--output", required=True, metavar="OUT.o", help="object file to write")
    c.add_argument("--cluster", action="append", default=[], metavar="FILE",
                   help="cluster inventory (kubectl get ns,pods,nodes -A -o yaml); repeatable")
    c.add_argument("--emit-c", metavar="DIR", help="also write the equivalent eBPF C to DIR")
    c.set_defaults(func=cmd_compile)

    t = sub.add_parser("test", help="judge flows with the compiled program in the kernel")
    t.add_argument("object", metavar="OUT.o")
    t.add_argument("flows", metavar="FLOWS", help="YAML list of flows (see README)")
    t.add_argument("--cluster", action="append", default=[], metavar="FILE", help="cluster inventory; repeatable")
    t.add_argument("--json", action="store_true", help="print a JSON array, one object per flow")
    t.add_argument("--engine", choices=["kernel", "reference"], default="kernel",
                   help="who judges: the kernel (BPF_PROG_TEST_RUN), or the reference evaluator (no root needed)")
    t.set_defaults(func=cmd_test)

    i = sub.add_parser("inspect", help="show what a compiled object contains")
    i.add_argument("object", metavar="OUT.o")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    from polc import benchcmd, dslcmd, nodecmd  # bench; fmt, convert; load ... status

    benchcmd.register(sub)
    dslcmd.register(sub)
    nodecmd.register(sub)
    return p


def cmd_compile(args) -> int:
    from polc.compiler.backend import emit_c, emit_object
    from polc.compiler.pipeline import compile_paths

    compiled = compile_paths(args.policies, args.cluster)
    data = emit_object(compiled.spec)
    _write(args.output, data)
    if args.emit_c:
        os.makedirs(args.emit_c, exist_ok=True)
        for name, text in emit_c(compiled.spec, ", ".join(args.policies)).items():
            _write(os.path.join(args.emit_c, name), text.encode())
    t = compiled.tables
    print(f"polc: wrote {args.output} ({len(data)} bytes): {len(compiled.policy.rules)} rules, "
          f"{sum(1 for e in t.entries if e.pod)} endpoint addresses, {t.subject_classes[0]}/{t.subject_classes[1]} "
          f"subject classes (in/eg), {t.peer_class_count} peer classes, {t.profile_count} profiles, "
          f"{len(t.pairs)} pair, {len(t.verdicts)} verdict and {len(t.ranges)} port interval entries", file=sys.stderr)
    return EXIT_OK


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cmd_inspect(args) -> int:
    from polc.inspect import describe, render

    info = describe(args.object)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else render(info))
    return EXIT_OK


def cmd_test(args) -> int:
    from polc.testcmd import run_test

    return run_test(args)


def _known_errors() -> tuple[type, ...]:
    from polc.compiler.errors import PolcError

    errors: list[type] = [PolcError]
    try:
        from polc.runtime.errors import PolcRuntimeError
        errors.append(PolcRuntimeError)
    except ImportError:
        pass
    return tuple(errors)


def _render(exc: BaseException) -> str:
    render = getattr(exc, "render", None)
    return render() if callable(render) else f"polc: error: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    known = _known_errors()
    try:
        return args.func(args)
    except known as exc:
        print(_render(exc), file=sys.stderr)
        return EXIT_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"polc: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug in polc, not in the input: say so, keep the details on request
        if os.environ.get("POLC_DEBUG"):
            traceback.print_exc()
        else:
            print("polc: internal error (a bug in polc; rerun with POLC_DEBUG=1 for details): "
                  f"{traceback.format_exc().strip().splitlines()[-1]}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
