"""polc/abi.py and bpf_runtime/polc_abi.h describe the same layouts and constants.

The sizes come from the BTF that LLVM wrote for the datapath polc ships, so a field added
on one side only fails here rather than as a silently misread map.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from polc import abi

HEADER = resources.files("polc.bpf_runtime").joinpath("polc_abi.h").read_text()
DEFINES = {k: int(v, 0) for k, v in re.findall(r"^#define (POLC_\w+) (0x[0-9a-f]+|\d+)", HEADER, re.M)}


@pytest.fixture(scope="module")
def btf():
    from polc.compiler import ir
    from polc.compiler.backend import emit_object, object_spec
    from polc.compiler.tables import build_tables
    from polc.runtime.elfobj import ObjectFile

    spec = object_spec(build_tables(ir.PolicySet(), ir.Inventory()), [], "test")
    return ObjectFile.from_bytes(emit_object(spec), name="abi", path="abi.o").btf


@pytest.mark.parametrize("struct_name,packer", [
    ("polc_lpm_key", abi.LPM_KEY), ("polc_ep_info", abi.EP_INFO), ("polc_pair_key", abi.PAIR_KEY),
    ("polc_host_key", abi.HOST_KEY), ("polc_verdict_key", abi.VERDICT_KEY), ("polc_range_list", abi.VERDICT_VALUE),
    ("polc_range", abi.RANGE_VALUE), ("polc_ct_key", abi.CT_KEY),
    ("polc_ct_entry", abi.CT_VALUE), ("polc_l7_profile", abi.L7_VALUE), ("polc_dfa_state", abi.DFA_VALUE),
])
def test_struct_sizes_agree(btf, struct_name, packer):
    from polc.runtime.btf import KIND_STRUCT

    t = btf.find(struct_name, KIND_STRUCT)
    assert t is not None, f"struct {struct_name} not in the datapath's BTF"
    assert t.ref == packer.size


@pytest.mark.parametrize("name,value", [
    ("POLC_DIR_INGRESS", abi.DIR_INGRESS), ("POLC_DIR_EGRESS", abi.DIR_EGRESS), ("POLC_NPROTO", abi.NPROTO),
    ("POLC_ACTION_ALLOW", abi.ACTION_ALLOW), ("POLC_ACTION_DENY", abi.ACTION_DENY),
    ("POLC_ACTION_L7", abi.ACTION_L7), ("POLC_L7_HTTP", abi.L7_HTTP), ("POLC_L7_DNS", abi.L7_DNS),
    ("POLC_L7_MAX_BYTES", abi.L7_MAX_BYTES), ("POLC_DFA_CLASSES", abi.DFA_CLASSES),
    ("POLC_PEER_CLASS_ANY", abi.PEER_CLASS_ANY), ("POLC_PEER_GROUP", abi.PEER_GROUP),
    ("POLC_RANGE_SEARCH_STEPS", abi.RANGE_SEARCH_STEPS),
    ("POLC_DFA_REJECT", abi.DFA_REJECT), ("POLC_DFA_ACCEPT", abi.DFA_ACCEPT), ("POLC_DFA_DEAD", abi.DFA_DEAD),
])
def test_constants_agree(name, value):
    assert int(DEFINES[name]) == value


def test_stage_names_cover_every_stage():
    stages = {int(v) for k, v in DEFINES.items() if k.startswith("POLC_STAGE_")}
    assert stages == set(abi.STAGES)
