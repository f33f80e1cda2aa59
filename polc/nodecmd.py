"""Node commands: load, attach, update, detach, unload, status (``polc.runtime.node`` does the work).

Each command returns an exit code; errors are :class:`polc.runtime.errors.PolcRuntimeError`
subclasses that ``polc.cli`` prints (with their hint) before exiting with 2.
"""

from __future__ import annotations

import json
import sys
import time

EXIT_OK, EXIT_PROBLEMS = 0, 1


def register(sub) -> None:
    """Add the node subcommands to the ``polc`` argument parser."""
    p = sub.add_parser("load", help="load a compiled object into the kernel and pin it under /sys/fs/bpf/polc/NAME")
    p.add_argument("object", metavar="OUT.o")
    p.add_argument("--name", required=True, help="name of the loaded policy (pin directory)")
    p.add_argument("--node", metavar="NODE",
                   help="the inventory Node that is this host: its addresses get the host identity")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("attach", help="enforce a loaded policy on endpoint-facing interfaces (host side of pod veths)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("ifaces", nargs="+", metavar="IFACE")
    p.add_argument("--netns", metavar="NS", help="the interfaces are in this network namespace (`ip netns` name or path)")
    p.add_argument("--mode", choices=["auto", "tcx", "tc"], default="auto",
                   help="tcx links (Linux 6.6+), tc clsact filters, or auto: tcx where available (default)")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("update", help="atomically replace a loaded policy by another object")
    p.add_argument("name", metavar="NAME")
    p.add_argument("object", metavar="NEW.o")
    p.add_argument("--node", metavar="NODE", help="inventory Node of this host (default: the one given at load)")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("detach", help="stop enforcing on interfaces (all of them when none is named)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("ifaces", nargs="*", metavar="IFACE")
    p.add_argument("--netns", metavar="NS", help="the interfaces are in this network namespace")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("unload", help="detach everywhere and remove the programs, maps and pins of NAME")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_unload)

    p = sub.add_parser("status", help="what is loaded, attached where, map fill levels, object digest and sources")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)


def _say(text: str) -> None:
    print(f"polc: {text}", file=sys.stderr)


def _short(obj: dict | None) -> str:
    if not obj:
        return "?"
    return f"{obj['path']} (digest {str(obj.get('digest'))[:12]})"


def cmd_load(args) -> int:
    from polc.runtime import node

    res = node.load(args.object, args.name, args.node)
    if res["action"] == "unchanged":
        _say(f"'{args.name}' already has {_short(res['object'])} loaded; nothing to do")
    else:
        _say(f"loaded {_short(res['object'])} as '{args.name}', pinned in {res['pin_dir']}"
             + (f", host is node {args.node}" if args.node else ""))
    return EXIT_OK


def cmd_attach(args) -> int:
    from polc.runtime import node

    for att in node.attach(args.name, args.ifaces, netns=args.netns, mode=args.mode):
        where = att["iface"] + (f" (netns {att['netns']})" if att["netns"] else "")
        _say(f"'{args.name}' attached to {where} with {att['mode']}: ingress polc_from_ep, egress polc_to_ep")
    return EXIT_OK


def cmd_update(args) -> int:
    from polc.runtime import node

    res = node.update(args.name, args.object, args.node)
    if res["action"] == "unchanged":
        _say(f"'{args.name}' already runs {_short(res['new'])}; nothing to do")
    else:
        _say(f"updated '{args.name}': {_short(res['old'])} -> {_short(res['new'])}, {res['hooks']} hook(s) "
             f"swapped in {res['swap_seconds'] * 1e6:.0f} us")
    return EXIT_OK


def cmd_detach(args) -> int:
    from polc.runtime import node

    done = node.detach(args.name, args.ifaces, netns=args.netns)
    names = ", ".join(a["iface"] for a in done) or "nothing (it was not attached)"
    _say(f"'{args.name}' detached from {names}")
    return EXIT_OK


def cmd_unload(args) -> int:
    from polc.runtime import node

    res = node.unload(args.name)
    _say(f"unloaded '{args.name}' ({res['detached']} attachment(s) removed)")
    return EXIT_OK


def cmd_status(args) -> int:
    from polc.runtime import node

    items = node.status(args.name)
    if args.json:
        print(json.dumps(items, indent=2, sort_keys=True))
    elif not items:
        print("polc: nothing loaded")
    else:
        print("\n".join(render_status(i) for i in items))
    return EXIT_OK if all(i["ok"] for i in items) else EXIT_PROBLEMS


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def render_status(item: dict) -> str:
    """Human-readable status of one loaded policy."""
    obj = item["object"] or {}
    lines = [f"{item['name']}: {obj.get('path', '?')}"]
    lines.append(f"  digest      {obj.get('digest')}  generation {obj.get('generation')}")
    lines.append(f"  loaded      {_when(item['loaded_at'])}, updated {_when(item['updated_at'])}"
                 + (f", host node {item['node']}" if item.get("node") else ""))
    for src in obj.get("sources", []):
        lines.append(f"  source      {src.get('role', '?'):8} {src.get('file')} (sha256 {str(src.get('sha256'))[:12]})")
    progs = ", ".join(f"{n} id {p['id']}" if p else f"{n} MISSING" for n, p in item["programs"].items())
    lines.append(f"  programs    {progs}")
    if not item["attachments"]:
        lines.append("  attached    nowhere (polc attach NAME IFACE...)")
    for att in item["attachments"]:
        hooks = ", ".join(
            f"{d} {h['program']}" + (f" link {h['link_id']}" if h.get("link_id") else "")
            + ("" if h.get("attached") else " DETACHED") for d, h in att["hooks"].items())
        where = att["iface"] + (f" (netns {att['netns']})" if att["netns"] else "")
        lines.append(f"  attached    {where} ifindex {att['ifindex']} via {att['mode']}: {hooks}")
    for name, m in item["maps"].items():
        if m is None:
            lines.append(f"  map         {name} MISSING")
            continue
        pct = 100.0 * m["entries"] / m["max_entries"] if m["max_entries"] else 0.0
        lines.append(f"  map         {name:14} {m['type']:9} {m['entries']:>7}/{m['max_entries']:<7} ({pct:.0f}%)")
    for problem in item["problems"]:
        lines.append(f"  PROBLEM     {problem}")
    return "\n".join(lines)
