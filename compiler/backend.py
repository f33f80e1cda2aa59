"""Backend: decision tables -> an ObjectSpec -> a BPF ELF object (via llvmlite), or C.

The program text is policy independent: ``bpf_runtime/datapath.ll`` (generated from
``datapath.c`` by ``bpf_runtime/regen.sh``).  A policy specialises it in three ways only:
the capacity of each table (array dimensions in the BTF map definitions), the table
generation in ``.rodata``, and the map images plus metadata that ride along in sections
of their own (see ``polc.abi``).  Same tables, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources

from polc import abi

from . import elfwrite
from .errors import CompileError
from .l7 import MAX_DFA_STATES
from .tables import Tables

# Placeholders in datapath.c / datapath.ll and the table whose size replaces each.
CAPACITY_PLACEHOLDERS = {
    abi.MAP_IPCACHE: ("POLC_CAP_IPCACHE", 8323073),
    abi.MAP_HOSTS: ("POLC_CAP_HOSTS", 8323071),
    abi.MAP_PAIRS: ("POLC_CAP_PAIRS", 8323079),
    abi.MAP_VERDICTS: ("POLC_CAP_VERDICTS", 8323081),
    abi.MAP_RANGES: ("POLC_CAP_RANGES", 8323077),
    abi.MAP_L7: ("POLC_CAP_L7", 8323087),
    abi.MAP_DFA: ("POLC_CAP_DFA", 8323093),
}
# Kernel limits we keep well inside (hash maps take u32 max_entries; classes are u16).
MAX_ENTRIES = 1 << 24


@dataclass(frozen=True)
class ObjectSpec:
    """Everything the object contains beyond the fixed datapath: pure data."""

    images: dict[str, bytes]  # map name -> packed image
    capacities: dict[str, int]
    generation: int
    meta: bytes  # JSON

    @property
    def sections(self) -> dict[str, bytes]:
        out = {abi.IMAGE_SECTION_PREFIX + name: blob for name, blob in sorted(self.images.items())}
        out[abi.META_SECTION] = self.meta
        return out


def _images(t: Tables) -> dict[str, bytes]:
    addresses = abi.address_records_by_map(
        (abi.lpm_key(e.network), abi.EP_INFO.pack(*v)) for e, v in zip(t.entries, t.entry_values))
    pairs = sorted((abi.PAIR_KEY.pack(*k), abi.PAIR_VALUE.pack(v)) for k, v in t.pairs.items())
    verdicts = sorted((abi.VERDICT_KEY.pack(*k), abi.VERDICT_VALUE.pack(*v)) for k, v in t.verdicts.items())
    ranges = [(abi.RANGE_KEY.pack(i), abi.RANGE_VALUE.pack(*v)) for i, v in enumerate(t.ranges)]
    l7 = [(abi.L7_KEY.pack(i), abi.L7_VALUE.pack(*v)) for i, v in enumerate(t.l7_profiles)]
    dfa = [(abi.DFA_KEY.pack(i), abi.DFA_VALUE.pack(*v)) for i, v in enumerate(t.dfa_states)]
    return {
        abi.MAP_L7: abi.pack_image(abi.L7_KEY.size, abi.L7_VALUE.size, l7),
        abi.MAP_DFA: abi.pack_image(abi.DFA_KEY.size, abi.DFA_VALUE.size, dfa),
        abi.MAP_IPCACHE: abi.pack_image(abi.LPM_KEY.size, abi.EP_INFO.size, sorted(addresses[abi.MAP_IPCACHE])),
        abi.MAP_HOSTS: abi.pack_image(abi.HOST_KEY.size, abi.EP_INFO.size, sorted(addresses[abi.MAP_HOSTS])),
        abi.MAP_PAIRS: abi.pack_image(abi.PAIR_KEY.size, abi.PAIR_VALUE.size, pairs),
        abi.MAP_VERDICTS: abi.pack_image(abi.VERDICT_KEY.size, abi.VERDICT_VALUE.size, verdicts),
        abi.MAP_RANGES: abi.pack_image(abi.RANGE_KEY.size, abi.RANGE_VALUE.size, ranges),
    }


def _capacities(images: dict[str, bytes]) -> dict[str, int]:
    """Each sized map holds exactly its image's records."""
    caps = {name: abi.IMAGE_HEADER.unpack_from(images[name])[4] for name in CAPACITY_PLACEHOLDERS}
    for name, n in caps.items():
        if n > MAX_ENTRIES:
            raise CompileError(f"table {name} needs {n} entries, more than polc supports ({MAX_ENTRIES})")
    return {name: max(1, n) for name, n in caps.items()}


def _node_records(t: Tables) -> dict:
    """Per node: the ipcache records that make its addresses 'host' or 'remote-node'."""
    remote = {e.network: v for e, v in zip(t.entries, t.entry_values)}
    out = {}
    for node, items in sorted(t.host_values.items()):
        out[node] = {
            "host": [[abi.lpm_key(e.network).hex(), abi.EP_INFO.pack(*v).hex()] for e, v in items],
            "remote": [[abi.lpm_key(e.network).hex(), abi.EP_INFO.pack(*remote[e.network]).hex()]
                       for e, _ in items],
        }
    return out


def _meta(t: Tables, sources: list[dict], images: dict[str, bytes], version: str) -> tuple[int, bytes]:
    endpoints = []
    identities: dict[int, list] = {}
    for e, v in zip(t.entries, t.entry_values):
        identities.setdefault(e.identity, [f"{s}:{k}={val}" if val else f"{s}:{k}" for (s, k), val in e.labels])
        if e.pod is not None:
            endpoints.append({"pod": e.pod.ref, "ip": str(e.network.network_address), "identity": e.identity,
                              "node": e.pod.node, "subject_class": [v[2], v[3]], "peer_class": v[1],
                              "isolated_by": [v[4], v[5]]})
        elif e.node is not None:
            endpoints.append({"node": e.node.name, "ip": str(e.network.network_address),
                              "identity": e.identity, "peer_class": v[1]})
    body = {
        "format": "polc-object/1",
        "polc_version": version,
        "sources": sources,
        "rules": t.rules,
        "identities": [{"id": i, "labels": labels} for i, labels in sorted(identities.items())],
        "endpoints": endpoints,
        "nodes": _node_records(t),
        "classes": {
            "subject": {"ingress": t.subject_classes[0], "egress": t.subject_classes[1]},
            "peer": t.peer_class_count,
            "peer_groups": t.peer_group_count,
            "profiles": t.profile_count,
            "port_intervals": len(t.ranges),
        },
        "l7": {
            "limits": {"request_head_bytes": abi.L7_MAX_BYTES, "dns_name_bytes": 255,
                       "dfa_classes": abi.DFA_CLASSES, "dfa_states_total": MAX_DFA_STATES},
            "profiles": t.l7_info,
        },
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    for name in sorted(images):
        digest.update(name.encode() + images[name])
    generation = int.from_bytes(digest.digest()[:8], "little") | 1  # never 0: 0 means unfilled
    body["generation"] = generation
    body["digest"] = digest.hexdigest()
    return generation, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def object_spec(t: Tables, sources: list[dict], version: str) -> ObjectSpec:
    """Turn tables into the data an object carries."""
    images = _images(t)
    generation, meta = _meta(t, sources, images, version)
    return ObjectSpec(images=images, capacities=_capacities(images), generation=generation, meta=meta)


# -- LLVM ------------------------------------------------------------------------------

def datapath_ir() -> str:
    """The datapath template (LLVM IR text) shipped with polc."""
    return resources.files("polc.bpf_runtime").joinpath("datapath.ll").read_text()


def _specialise(template: str, spec: ObjectSpec) -> str:
    text = template
    for name, (_, placeholder) in CAPACITY_PLACEHOLDERS.items():
        text, n = re.subn(rf"count: {placeholder}\)", f"count: {spec.capacities[name]})", text)
        if n != 1:
            raise CompileError(f"datapath template: capacity placeholder of {name} found {n} times; "
                               "regenerate it with bpf_runtime/regen.sh")
    text, n = re.subn(r"(@polc_generation = dso_local constant i64 )0,", rf"\g<1>{spec.generation},", text)
    if n != 1:
        raise CompileError("datapath template: polc_generation not found; regenerate it with bpf_runtime/regen.sh")
    return text


# Flags of the image and metadata sections: SHF_ALLOC, as clang gives them in the object
# built from the audit C (--emit-c) and as they had when LLVM emitted them.  libbpf skips
# unknown data sections whatever their flags.  Not SHF_GNU_RETAIN (LLVM added it for
# `llvm.used`): it only matters to a linker's --gc-sections, and it is a GNU OS/ABI
# extension, which made LLVM mark the whole object ELFOSABI_GNU.
POLC_SECTION_FLAGS = elfwrite.SHF_ALLOC


def datapath_object(spec: ObjectSpec) -> bytes:
    """The specialised datapath compiled by LLVM: an object without the table sections."""
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    try:
        module = llvm.parse_assembly(_specialise(datapath_ir(), spec))
        module.verify()
    except RuntimeError as e:
        raise CompileError(f"LLVM rejected the generated module: {e}") from None
    target = llvm.Target.from_triple("bpfel")
    machine = target.create_target_machine(opt=2, reloc="static", codemodel="small")
    return bytes(machine.emit_object(module))


def emit_object(spec: ObjectSpec) -> bytes:
    """Compile the specialised datapath to a BPF ELF object and add the table sections.

    LLVM sees only the datapath; the images and metadata, which can run to hundreds of
    MB, are appended as raw bytes by :mod:`polc.compiler.elfwrite`.
    """
    sections = [elfwrite.Section(name, blob, flags=POLC_SECTION_FLAGS, align=8)
                for name, blob in spec.sections.items()]
    return elfwrite.append_sections(datapath_object(spec), sections)


# -- C for audit -----------------------------------------------------------------------

def _c_bytes(blob: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in blob[i:i + 16]) for i in range(0, len(blob), 16)]
    return "{\n\t" + ",\n\t".join(rows) + "\n}" if rows else "{ 0 }"


def emit_c(spec: ObjectSpec, source_note: str) -> dict[str, str]:
    """The eBPF C the object corresponds to: file name -> text (build: see policy.c)."""
    pkg = resources.files("polc.bpf_runtime")
    lines = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* Generated by polc compile --emit-c from {source_note}. DO NOT EDIT.",
        " * The same datapath and tables as the object polc writes; build with",
        " *   clang -target bpf -O2 -g -I/usr/include/$(gcc -dumpmachine) -c policy.c -o policy.o",
        " * and load it with polc (the tables ride in the .polc.img.* sections). */",
    ]
    for name, (macro, _) in CAPACITY_PLACEHOLDERS.items():
        lines.append(f"#define {macro} {spec.capacities[name]}")
    lines.append(f"#define POLC_GENERATION {spec.generation}ULL")
    lines.append('#include "datapath.c"')
    for i, (section, blob) in enumerate(spec.sections.items()):
        lines.append(f'__attribute__((section("{section}"), used, aligned(8)))')
        lines.append(f"static const unsigned char polc_section_{i}[{max(1, len(blob))}] = {_c_bytes(blob)};")
    return {
        "policy.c": "\n".join(lines) + "\n",
        "datapath.c": pkg.joinpath("datapath.c").read_text(),
        "polc_abi.h": pkg.joinpath("polc_abi.h").read_text(),
        "l7.h": pkg.joinpath("l7.h").read_text(),
    }
