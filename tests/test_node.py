"""The node runtime's contract, error by error: load, attach, update, detach, unload, status.

Kernel tests use a throwaway network namespace with one veth pair and unique policy names;
whatever they load is unloaded in teardown.  End-to-end traffic lives in test_node_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from netns import bad_objects
from polc import abi
from polc.runtime.elfobj import ObjectFile
from polc.runtime import bpf, node
from polc.runtime.errors import ObjectError, VerifierError

REPO = Path(__file__).resolve().parent.parent
STARWARS = REPO / "examples" / "starwars"


def _root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root: bpf(2), bpffs pins and network namespaces")


def polc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polc.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def objs(tmp_path_factory):
    """The star wars policy (A) and a variant allowing port 81 instead of 80 (B)."""
    _root_only()
    out = tmp_path_factory.mktemp("node_objs")
    policy_b = out / "policy-b.yaml"
    policy_b.write_text((STARWARS / "policy.yaml").read_text().replace('port: "80"', 'port: "81"'))
    paths = {}
    for key, policy in (("a", STARWARS / "policy.yaml"), ("b", policy_b)):
        paths[key] = str(out / f"{key}.o")
        proc = polc("compile", str(policy), "--cluster", str(STARWARS / "cluster.yaml"), "-o", paths[key])
        assert proc.returncode == 0, proc.stderr
    paths.update(bad_objects(paths["a"], str(out)))
    return paths


@pytest.fixture(scope="module")
def ns():
    """A network namespace holding veth pair v0/v1, both up."""
    _root_only()
    name = f"polc-unit-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"], ["link", "set", "v0", "up"],
                    ["link", "set", "v1", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name])


@pytest.fixture
def name():
    _root_only()
    n = f"unit-{uuid.uuid4().hex[:8]}"
    yield n
    try:
        node.unload(n)
    except node.NotLoaded:
        pass


def _pinned_prog_ids(n: str) -> dict[str, int]:
    out = {}
    for prog in abi.PROGRAMS:
        fd = bpf.obj_get(f"{node.PIN_ROOT}/{n}/{prog}")
        try:
            out[prog] = bpf.prog_info(fd).id
        finally:
            os.close(fd)
    return out


def _hook_prog_ids(st: dict) -> set[int]:
    return {h["prog_id"] for a in st["attachments"] for h in a["hooks"].values()}


def _live_ids() -> dict[str, set[int]]:
    out = {}
    for kind, nxt in (("prog", bpf.prog_get_next_id), ("map", bpf.map_get_next_id), ("link", bpf.link_get_next_id)):
        ids, cur = set(), 0
        while (cur := nxt(cur)) is not None:
            ids.add(cur)
        out[kind] = ids
    return out


# --- without the kernel -----------------------------------------------------------------------


def test_not_root_is_refused_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(node.NotPrivileged) as exc:
        node.load(str(tmp_path / "x.o"), "some-name")
    assert "needs root" in str(exc.value) and "hint:" in str(exc.value)
    for call in (lambda: node.attach("n", ["eth0"]), lambda: node.update("n", "x.o"),
                 lambda: node.detach("n"), lambda: node.unload("n"), lambda: node.status()):
        with pytest.raises(node.NotPrivileged):
            call()


@pytest.mark.parametrize("bad", ["", "a.b", "../x", "-x", "a/b", "x" * 65])
def test_invalid_names(bad):
    with pytest.raises(node.NodeError, match="invalid name"):
        node.check_name(bad)


# --- load -------------------------------------------------------------------------------------


def test_load_pins_everything_and_again_is_a_noop(objs, name):
    res = node.load(objs["a"], name, "kind-worker")
    assert res["action"] == "loaded"
    pins = set(os.listdir(f"{node.PIN_ROOT}/{name}"))
    assert set(abi.PROGRAMS) | {abi.MAP_IPCACHE, abi.MAP_CT, abi.MAP_CTRL, "links"} <= pins
    assert node.load(objs["a"], name, "kind-worker")["action"] == "unchanged"
    with pytest.raises(node.NameInUse, match="another object") as exc:
        node.load(objs["b"], name, "kind-worker")
    assert f"polc update {name}" in exc.value.hint


def test_load_writes_host_records_of_the_node(objs, name):
    node.load(objs["a"], name, "kind-worker")
    from polc.runtime.elfobj import ObjectFile

    records = ObjectFile.from_path(objs["a"]).meta["nodes"]["kind-worker"]["host"]
    assert records
    for key, value in records:
        map_name, map_key = abi.address_record(bytes.fromhex(key))
        fd = bpf.obj_get(f"{node.PIN_ROOT}/{name}/{map_name}")
        try:
            assert bpf.map_lookup(fd, map_key, len(bytes.fromhex(value))) == bytes.fromhex(value)
        finally:
            os.close(fd)
    assert node.status(name)[0]["node"] == "kind-worker"


def test_load_unknown_node_lists_the_known_ones(objs, name):
    with pytest.raises(node.NodeError, match="no node 'nope'") as exc:
        node.load(objs["a"], name, "nope")
    assert "kind-worker" in exc.value.hint
    assert not os.path.exists(f"{node.PIN_ROOT}/{name}")


def test_load_corrupt_object_leaves_nothing(objs, name):
    with pytest.raises(ObjectError):
        node.load(objs["truncated"], name)
    assert not os.path.exists(f"{node.PIN_ROOT}/{name}") and not os.path.exists(f"{node.STATE_ROOT}/{name}")


# --- attach / detach ----------------------------------------------------------------------------


def test_attach_missing_interface_and_netns(objs, name, ns):
    node.load(objs["a"], name)
    with pytest.raises(node.InterfaceMissing, match="no interface 'nosuch0' in network namespace"):
        node.attach(name, ["nosuch0"], netns=ns)
    with pytest.raises(node.InterfaceMissing, match="no interface 'v0'") as exc:
        node.attach(name, ["v0"])  # it exists, but in the namespace
    assert "--netns" in exc.value.hint
    with pytest.raises(node.NetnsMissing, match="does not exist"):
        node.attach(name, ["v0"], netns="polc-no-such-netns")
    with pytest.raises(node.NotLoaded):
        node.attach(name + "x", ["v0"], netns=ns)
    assert node.status(name)[0]["attachments"] == []


def test_attach_twice_is_refused(objs, name, ns):
    node.load(objs["a"], name)
    node.attach(name, ["v0"], netns=ns)
    with pytest.raises(node.AlreadyAttached, match=f"'{name}' is already attached to 'v0'") as exc:
        node.attach(name, ["v1", "v0"], netns=ns)
    assert "polc detach" in exc.value.hint
    st = node.status(name)[0]
    assert [a["iface"] for a in st["attachments"]] == ["v0"]  # v1 was not attached half-way
    other = name + "-2"
    try:
        node.load(objs["b"], other)
        with pytest.raises(node.AlreadyAttached, match=f"'{name}' is already attached"):
            node.attach(other, ["v0"], netns=ns)
    finally:
        node.unload(other)


def test_attach_tcx_pins_links_and_detach_removes_them(objs, name, ns):
    node.load(objs["a"], name)
    made = node.attach(name, ["v0", "v1"], netns=ns)
    assert [m["mode"] for m in made] == ["tcx", "tcx"]
    st = node.status(name)[0]
    assert st["ok"], st["problems"]
    assert _hook_prog_ids(st) == set(_pinned_prog_ids(name).values())
    links = os.listdir(f"{node.PIN_ROOT}/{name}/links")
    assert len(links) == 4
    with pytest.raises(node.NotAttached, match="not attached to 'v9'"):
        node.detach(name, ["v9"], netns=ns)
    node.detach(name, ["v1"], netns=ns)
    assert [a["iface"] for a in node.status(name)[0]["attachments"]] == ["v0"]
    node.detach(name)
    assert os.listdir(f"{node.PIN_ROOT}/{name}/links") == []


def _tc_filter(ns: str, direction: str) -> str:
    return subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "v0", direction], capture_output=True,
                          text=True).stdout


def test_tc_fallback_attach_update_detach(objs, name, ns):
    node.load(objs["a"], name)
    node.attach(name, ["v0"], netns=ns, mode="tc")
    old = _pinned_prog_ids(name)
    assert f"id {old[abi.PROG_FROM_EP]} " in _tc_filter(ns, "ingress")
    assert f"id {old[abi.PROG_TO_EP]} " in _tc_filter(ns, "egress")
    assert node.update(name, objs["b"])["hooks"] == 2
    new = _pinned_prog_ids(name)
    assert f"id {new[abi.PROG_FROM_EP]} " in _tc_filter(ns, "ingress")
    assert f"id {new[abi.PROG_TO_EP]} " in _tc_filter(ns, "egress")
    node.detach(name)
    assert "polc_" not in _tc_filter(ns, "ingress") + _tc_filter(ns, "egress")


# --- update -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,cause", [("truncated", ObjectError), ("not-elf", ObjectError),
                                        ("verifier", VerifierError)])
def test_failed_update_keeps_the_old_policy(objs, name, ns, kind, cause):
    node.load(objs["a"], name)
    node.attach(name, ["v0"], netns=ns)
    before = node.status(name)[0]
    with pytest.raises(node.UpdateFailed, match="still enforcing") as exc:
        node.update(name, objs[kind])
    assert isinstance(exc.value.cause, cause)
    if cause is VerifierError:
        assert "R9 !read_ok" in str(exc.value)
    after = node.status(name)[0]
    assert after["object"] == before["object"]
    assert _hook_prog_ids(after) == _hook_prog_ids(before) == set(_pinned_prog_ids(name).values())
    assert after["ok"], after["problems"]


def test_update_swaps_hooks_and_keeps_connection_table(objs, name, ns):
    node.load(objs["a"], name)
    node.attach(name, ["v0"], netns=ns)
    ct_path = f"{node.PIN_ROOT}/{name}/{abi.MAP_CT}"
    key, value = bytes(range(abi.CT_KEY.size)), abi.CT_VALUE.pack(1, 2, 0, 0, 0)
    fd = bpf.obj_get(ct_path)
    try:
        bpf.map_update(fd, key, value)
        ct_id = bpf.map_info(fd).id
    finally:
        os.close(fd)
    old = set(_pinned_prog_ids(name).values())
    res = node.update(name, objs["b"])
    assert res["action"] == "updated" and res["hooks"] == 2
    st = node.status(name)[0]
    new = set(_pinned_prog_ids(name).values())
    assert new.isdisjoint(old) and _hook_prog_ids(st) == new
    assert st["object"]["path"] == objs["b"] and st["maps"][abi.MAP_CT]["id"] == ct_id
    fd = bpf.obj_get(ct_path)
    try:
        assert bpf.map_lookup(fd, key, len(value)) == value, "the connection table lost an entry"
    finally:
        os.close(fd)
    assert node.update(name, objs["b"])["action"] == "unchanged"
    deadline = time.monotonic() + 3
    while old & _live_ids()["prog"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not old & _live_ids()["prog"], "the old programs are still loaded"


def test_update_not_loaded(objs):
    _root_only()
    with pytest.raises(node.NotLoaded, match="no policy is loaded as 'unit-none'"):
        node.update("unit-none", objs["b"])


# --- unload / status ----------------------------------------------------------------------------


def test_unload_leaves_nothing_in_the_kernel(objs, name, ns):
    node.load(objs["a"], name)
    node.attach(name, ["v0", "v1"], netns=ns)
    st = node.status(name)[0]
    ids = {"prog": {p["id"] for p in st["programs"].values()}, "map": {m["id"] for m in st["maps"].values()},
           "link": {h["link_id"] for a in st["attachments"] for h in a["hooks"].values()}}
    assert len(ids["link"]) == 4 and len(ids["map"]) == len(ObjectFile.from_path(objs["a"]).maps)
    res = node.unload(name)
    assert res["detached"] == 2
    assert not os.path.exists(f"{node.PIN_ROOT}/{name}") and not os.path.exists(f"{node.STATE_ROOT}/{name}")
    deadline = time.monotonic() + 3
    while True:
        live = _live_ids()
        left = {k: ids[k] & live[k] for k in ids}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not any(left.values()), f"still in the kernel: {left}"
    with pytest.raises(node.NotLoaded):
        node.unload(name)


def test_status_of_unknown_name(objs):
    _root_only()
    with pytest.raises(node.NotLoaded):
        node.status("unit-none")


def test_status_reports_a_vanished_interface(objs, name):
    _root_only()
    tmp = f"polc-unit-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", tmp], check=True)
    try:
        subprocess.run(["ip", "-n", tmp, "link", "add", "w0", "type", "veth", "peer", "name", "w1"], check=True)
        node.load(objs["a"], name)
        node.attach(name, ["w0"], netns=tmp)
    finally:
        subprocess.run(["ip", "netns", "del", tmp])
    deadline = time.monotonic() + 3
    while (st := node.status(name)[0])["ok"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not st["ok"] and "not attached any more" in " ".join(st["problems"])
    node.detach(name)  # a defunct link detaches cleanly
    assert node.status(name)[0]["ok"]


# --- the command line ---------------------------------------------------------------------------


def test_cli_errors_exit_2_with_hint(objs, name, ns):
    assert polc("load", objs["a"], "--name", name).returncode == 0
    proc = polc("attach", name, "nosuch0", "--netns", ns)
    assert proc.returncode == 2 and "no interface 'nosuch0'" in proc.stderr and "hint:" in proc.stderr
    proc = polc("load", objs["b"], "--name", name)
    assert proc.returncode == 2 and f"polc update {name}" in proc.stderr
    proc = polc("update", name, objs["verifier"])
    assert proc.returncode == 2 and "still enforcing" in proc.stderr and "verifier log" in proc.stderr
    proc = polc("status", name)
    assert proc.returncode == 0 and objs["a"] in proc.stdout and "polc_ct" in proc.stdout
    assert polc("unload", name).returncode == 0


def test_ip_netns_exec_is_refused_not_pinned_privately(objs, name, ns):
    """`ip netns exec` remounts /sys: polc must not pin into a private bpffs that dies with it."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "polc.cli", "load", objs["a"],
                           "--name", name], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--netns" in proc.stderr
    assert not os.path.exists(f"{node.PIN_ROOT}/{name}")
