"""``polc inspect``: what a compiled object holds, read from the file alone (no kernel)."""

from __future__ import annotations

from polc import abi
from polc.runtime.elfobj import ObjectFile
from polc.runtime.errors import ObjectError


def describe(path: str) -> dict:
    """A JSON-ready description of the object at ``path``."""
    obj = ObjectFile.from_path(path)
    if obj.meta is None:
        raise ObjectError(path, f"not a polc object (no {abi.META_SECTION} section)")
    meta = obj.meta
    maps = []
    for name, spec in obj.maps.items():
        image = obj.images.get(name)
        entries = len(image.records) if image else 0
        maps.append({
            "name": name, "type": spec.type_name, "key_size": spec.key_size, "value_size": spec.value_size,
            "max_entries": spec.max_entries, "image_entries": entries,
            "image_bytes": entries * (spec.key_size + spec.value_size),
            "shared": name in abi.SHARED_MAPS,
        })
    programs = [{"name": p.name, "section": p.section, "instructions": p.insn_count}
                for p in obj.programs.values()]
    return {
        "object": path,
        "generation": meta["generation"],
        "digest": meta["digest"],
        "polc_version": meta["polc_version"],
        "sources": meta["sources"],
        "programs": programs,
        "maps": maps,
        "classes": meta["classes"],
        "identities": meta["identities"],
        "endpoints": meta["endpoints"],
        "rules": meta["rules"],
        "l7": meta.get("l7", {"limits": {}, "profiles": []}),
    }


def _table(rows: list[list], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


def render(info: dict) -> str:
    """Human-readable form of :func:`describe`."""
    out = [f"object      {info['object']}", f"polc        {info['polc_version']}",
           f"generation  {info['generation']:#018x}", f"digest      {info['digest']}"]
    out += [f"source      {s['role']}: {s['file']} (sha256 {s['sha256'][:12]})" for s in info["sources"]]
    out += ["", "programs"] + _table([[p["name"], p["section"], p["instructions"]] for p in info["programs"]],
                                     ["name", "section", "insns"])
    out += ["", "maps"] + _table(
        [[m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["image_entries"],
          m["image_bytes"]] for m in info["maps"]],
        ["name", "type", "key", "value", "max", "entries", "bytes"])
    c = info["classes"]
    out += ["", f"classes     subject ingress {c['subject']['ingress']}, egress {c['subject']['egress']}; "
                f"peer {c['peer']} in {c['peer_groups']} broad groups; profiles {c['profiles']}; "
                f"port intervals {c['port_intervals']}"]
    l7 = info["l7"]
    if l7["limits"]:
        lim = l7["limits"]
        out += ["", f"L7          limits: request head {lim['request_head_bytes']} bytes, DNS name "
                    f"{lim['dns_name_bytes']} bytes, {lim['dfa_classes']} byte classes per DFA, "
                    f"{lim['dfa_states_total']} DFA states in all"]
        out += [f"            profile {p['id']}: {p['kind']}, rules {', '.join(map(str, p['rules']))}, "
                f"{p['states']} states, {p['classes']} byte classes" for p in l7["profiles"]]
    out += ["", "identities"] + _table([[i["id"], ", ".join(i["labels"])] for i in info["identities"]],
                                       ["id", "labels"])
    out += ["", "endpoints"] + _table(
        [[e.get("pod") or f"node {e['node']}", e["ip"], e["identity"], e.get("subject_class", "-"), e["peer_class"]]
         for e in info["endpoints"]], ["endpoint", "address", "identity", "subject (in/eg)", "peer"])
    out += ["", "rules"] + _table(
        [[r["id"], r["action"], r["direction"], f"{r['file']}:{r['line']}:{r['col']}", r["policy"], r["where"]]
         for r in info["rules"]], ["id", "action", "dir", "at", "policy", "where"])
    return "\n".join(out)
