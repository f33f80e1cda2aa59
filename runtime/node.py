"""The polc runtime on a node: load, attach, update, detach, unload and status.

Everything of a loaded policy ``NAME`` lives in two places:

``/sys/fs/bpf/polc/NAME/`` (bpffs: it holds only pins, no regular files)
    one pin per map (``polc_ipcache`` ... ``polc_ct``, ``rodata``) and per program
    (``polc_from_ep``, ``polc_to_ep``), and ``links/<iface>.<direction>`` per tcx link.
``/run/polc/NAME/`` (tmpfs, so it goes away on reboot together with the pins)
    ``state.json`` (object path, sha256, digest, sources, node, attachments) and
    ``object.o``, a copy of the loaded object, so that ``status`` can describe it even
    when the original file is gone.

An update follows the ABI's rule that a packet is never judged by a mix of tables: the new
collection is loaded completely (maps, images, host records, programs, generation) next to
the old one, reusing the pinned ``polc_ct``; only then does each link swap to the new
program (BPF_LINK_UPDATE is atomic per hook), and only then are the pins replaced and the
old objects dropped.  Any failure before the swap leaves the old policy untouched; a
failure during the swap rolls back the hooks already swapped.

Every command takes one lock (``flock`` on ``/run/polc``), so concurrent polc processes
serialise.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from polc import abi

from . import attach as hook
from . import bpf
from .attach import (AlreadyAttached, BpffsMissing, InterfaceMissing, NameInUse, NetnsMissing, NodeError,
                     NotAttached, NotLoaded, NotPrivileged, UpdateFailed)
from .elfobj import ObjectFile
from .errors import BPFError, KernelTooOld, ObjectError, PolcRuntimeError
from .loader import Collection

__all__ = [
    "AlreadyAttached", "BpffsMissing", "InterfaceMissing", "NameInUse", "NetnsMissing", "NodeError",
    "NotAttached", "NotLoaded", "NotPrivileged", "UpdateFailed", "Layout", "attach", "detach", "load",
    "loaded_names", "status", "unload", "update",
]

BPFFS = "/sys/fs/bpf"
PIN_ROOT = os.path.join(BPFFS, "polc")
STATE_ROOT = "/run/polc"
STATE_FORMAT = "polc-node/1"
# bpffs refuses names with a dot ("reserved for future extensions", EPERM), so neither a
# policy name nor a pin name may hold one; interface names that do are escaped.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


# --- layout and state ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the pins and the state of one loaded policy live."""

    name: str
    pin_root: str = PIN_ROOT
    state_root: str = STATE_ROOT

    @property
    def pin_dir(self) -> str:
        return os.path.join(self.pin_root, self.name)

    @property
    def links_dir(self) -> str:
        return os.path.join(self.pin_dir, "links")

    @property
    def staging_dir(self) -> str:
        return os.path.join(self.pin_dir, "_staging")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.state_root, self.name)

    @property
    def state_path(self) -> str:
        return os.path.join(self.state_dir, "state.json")

    @property
    def object_copy(self) -> str:
        return os.path.join(self.state_dir, "object.o")

    def pin(self, obj_name: str) -> str:
        """Pin path of a map or program (``.rodata`` is pinned as ``rodata``)."""
        return os.path.join(self.pin_dir, obj_name.lstrip("."))

    def link_pin(self, key: str, direction: str) -> str:
        return os.path.join(self.links_dir, f"{key.replace('%', '%25').replace('.', '%2E')}@{direction}")


def check_name(name: str) -> str:
    """Validate a policy name (it becomes a directory name)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise NodeError(f"invalid name {name!r}",
                        "use 1-64 letters, digits, '_' or '-', starting with a letter or digit (bpffs forbids dots)")
    return name


def iface_key(iface: str, netns: str | None) -> str:
    """The name of an attachment: ``IFACE`` or ``NETNS:IFACE`` (also its link pin prefix)."""
    return f"{os.path.basename(netns)}:{iface}" if netns else iface


def _read_state(lay: Layout) -> dict | None:
    try:
        with open(lay.state_path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NodeError(f"'{lay.name}': cannot read {lay.state_path}: {e}",
                        f"`polc unload {lay.name}` removes the damaged state and its pins") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise NodeError(f"'{lay.name}': {lay.state_path} is not a {STATE_FORMAT} state file",
                        f"`polc unload {lay.name}` removes it")
    return state


def _write_state(lay: Layout, state: dict) -> None:
    os.makedirs(lay.state_dir, mode=0o700, exist_ok=True)
    tmp = f"{lay.state_path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, lay.state_path)


def _copy_object(lay: Layout, data: bytes) -> None:
    os.makedirs(lay.state_dir, mode=0o700, exist_ok=True)
    tmp = f"{lay.object_copy}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, lay.object_copy)


@contextmanager
def _locked(state_root: str = STATE_ROOT) -> Iterator[None]:
    """Hold the lock on ``state_root``; unload removes the directory when it empties, so a
    waiter checks that it locked the directory that is still there, and retries if not."""
    for _ in range(100):
        os.makedirs(state_root, mode=0o700, exist_ok=True)
        try:
            fd = os.open(state_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(state_root))
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)
    raise NodeError(f"cannot lock {state_root}: it keeps disappearing")


def loaded_names(pin_root: str = PIN_ROOT, state_root: str = STATE_ROOT) -> list[str]:
    """Names with pins or state, sorted."""
    names = set()
    for root in (pin_root, state_root):
        try:
            names.update(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
        except FileNotFoundError:
            pass
    return sorted(names)


# --- preconditions -------------------------------------------------------------------------


def require_root(command: str) -> None:
    """Refuse early and clearly instead of failing at the first bpf(2) call."""
    if os.geteuid() != 0:
        raise NotPrivileged(f"polc {command}: needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
                            f"run it as root, e.g. `sudo polc {command} ...`")


def _mount_fstype(path: str) -> str | None:
    """The file system type mounted exactly at ``path`` (the last mount wins), or None."""
    fstype = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == path:
                fstype = right.split()[0]
    return fstype


def ensure_bpffs(path: str = BPFFS) -> None:
    """Make sure a bpffs is mounted at ``path``; mount one if this is the host's mount namespace."""
    fstype = _mount_fstype(path)
    if fstype == "bpf":
        return
    if fstype is not None:
        raise BpffsMissing(f"{path} is a {fstype} mount, not a BPF file system",
                           f"unmount it or mount bpffs there: mount -t bpf bpf {path}")
    netns = _ip_netns_exec_name()
    if netns is not None:
        raise BpffsMissing(f"no BPF file system at {path}: this looks like `ip netns exec {netns}`, which "
                           "remounts /sys in a private mount namespace",
                           f"run polc outside it and pass --netns {netns} to attach to its interfaces; a bpffs "
                           "mounted here would be private and its pins would vanish with this process")
    os.makedirs(path, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise BpffsMissing(f"no BPF file system at {path}, and mounting one failed: {os.strerror(err)}",
                           f"mount it yourself: mount -t bpf bpf {path}")


def _ip_netns_exec_name() -> str | None:
    """The ``ip netns`` name of our network namespace when /sys was remounted for it, else None.

    ``ip netns exec NAME`` enters a new mount namespace and mounts a sysfs whose source is
    NAME at /sys, hiding the host's /sys/fs/bpf.
    """
    try:
        own = os.stat("/proc/thread-self/ns/net")
        names = os.listdir("/run/netns")
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join("/run/netns", name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return name
    return None


def _prepare(command: str) -> None:
    require_root(command)
    ensure_bpffs()


# --- objects -------------------------------------------------------------------------------


@dataclass
class _Object:
    path: str
    data: bytes
    obj: ObjectFile

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict:
        meta = self.obj.meta or {}
        return {"path": self.path, "sha256": self.sha256, "digest": meta.get("digest"),
                "generation": self.obj.generation, "sources": meta.get("sources", []),
                "polc_version": meta.get("polc_version")}


def _read_object(path: str) -> _Object:
    """Read and check a polc object: metadata, both programs, every ABI map."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ObjectError(path, f"cannot read: {e.strerror}") from e
    obj = ObjectFile.from_bytes(data, name=os.path.splitext(os.path.basename(path))[0] or "obj", path=path)
    if obj.meta is None:
        raise ObjectError(path, f"not a polc object (no {abi.META_SECTION} section)",
                          "build it with `polc compile`")
    missing = [p for p in abi.PROGRAMS if p not in obj.programs]
    missing += [m for m in (abi.MAP_IPCACHE, abi.MAP_HOSTS, abi.MAP_PAIRS, abi.MAP_VERDICTS, abi.MAP_RANGES, abi.MAP_CTRL,
                            abi.MAP_CT) if m not in obj.maps]
    if missing:
        raise ObjectError(path, f"not a polc datapath object: missing {', '.join(missing)}",
                          "build it with `polc compile`")
    return _Object(path, data, obj)


def _host_records(obj: _Object, node: str | None) -> list[tuple[bytes, bytes]]:
    """The address records (``polc_lpm_key``, ``polc_ep_info``) that make ``node``'s addresses the host."""
    if node is None:
        return []
    nodes = obj.obj.meta.get("nodes") or {}
    if node not in nodes:
        raise NodeError(f"{obj.path}: the inventory has no node {node!r}",
                        f"known nodes: {', '.join(sorted(nodes)) or 'none'}; --node names the inventory "
                        "Node that is this host")
    return [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in nodes[node].get("host", [])]


def _load_collection(obj: _Object, node: str | None, reuse: dict[str, int] | None = None) -> Collection:
    """Load fully, host records included, and open the datapath (generation) last."""
    records = _host_records(obj, node)
    coll = Collection.load(obj.obj, reuse_maps=reuse, generation=False)
    try:
        for name, by_map in abi.address_records_by_map(records).items():
            for key, value in by_map:
                coll.map(name).update(key, value)
        coll.write_generation()
    except BaseException:
        coll.close()
        raise
    return coll


def _pin_collection(coll: Collection, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    coll.pin(directory)


def _remove_tree(path: str) -> None:
    """Remove a pin directory (bpffs supports unlink and rmdir, so shutil works)."""
    shutil.rmtree(path, ignore_errors=True)


# --- load ----------------------------------------------------------------------------------


def load(path: str, name: str, node: str | None = None, *, layout: Layout | None = None) -> dict:
    """Load the object at ``path`` as ``name`` and pin it; a no-op when the same object is loaded.

    Returns ``{"name", "action": "loaded"|"unchanged", "object": {...}, "pin_dir"}``.
    """
    check_name(name)
    lay = layout or Layout(name)
    _prepare("load")
    with _locked(lay.state_root):
        obj = _read_object(path)
        state = _read_state(lay)
        if state is not None:
            return _load_again(lay, state, obj, node)
        if os.path.exists(lay.pin_dir):
            raise NameInUse(f"'{name}': {lay.pin_dir} exists but has no state (an interrupted load or unload?)",
                            f"`polc unload {name}` cleans it up")
        coll = _load_collection(obj, node)
        try:
            os.makedirs(lay.links_dir, exist_ok=True)
            coll.pin(lay.pin_dir)
            _copy_object(lay, obj.data)
            now = time.time()
            _write_state(lay, {"format": STATE_FORMAT, "name": name, "object": obj.describe(), "node": node,
                               "loaded_at": now, "updated_at": now, "attachments": []})
        except BaseException:
            _remove_tree(lay.pin_dir)
            shutil.rmtree(lay.state_dir, ignore_errors=True)
            raise
        finally:
            coll.close()  # the pins hold the maps and programs now
    return {"name": name, "action": "loaded", "object": obj.describe(), "pin_dir": lay.pin_dir, "node": node}


def _load_again(lay: Layout, state: dict, obj: _Object, node: str | None) -> dict:
    old = state["object"]
    if old["sha256"] == obj.sha256 and state.get("node") == node:
        return {"name": lay.name, "action": "unchanged", "object": old, "pin_dir": lay.pin_dir, "node": node}
    what = "another object" if old["sha256"] != obj.sha256 else f"node {state.get('node')!r}"
    raise NameInUse(f"'{lay.name}' is already loaded with {what} ({old['path']}, digest {str(old['digest'])[:12]})",
                    f"replace it atomically with `polc update {lay.name} {obj.path}`"
                    + (f" --node {node}" if node else "") + ", or pick another --name")


# --- attach / detach -----------------------------------------------------------------------


def attach(name: str, ifaces: list[str], netns: str | None = None, mode: str = "auto", *,
           layout: Layout | None = None) -> list[dict]:
    """Attach ``name`` to each interface (from_ep on ingress, to_ep on egress).

    ``mode`` is ``auto`` (tcx where the kernel has it, else tc), ``tcx`` or ``tc``.  All
    interfaces are checked before anything is attached; a failure undoes this call's work.
    """
    check_name(name)
    if mode not in hook.MODES:
        raise NodeError(f"invalid attach mode {mode!r}", f"use one of {', '.join(hook.MODES)}")
    if not ifaces:
        raise NodeError("attach: no interface given", f"polc attach {name} IFACE...")
    lay = layout or Layout(name)
    _prepare("attach")
    with _locked(lay.state_root):
        state = _require_state(lay)
        targets = _attach_targets(lay, state, ifaces, netns)
        made: list[dict] = []
        try:
            for iface, index in targets:
                made.append(_attach_one(lay, iface, index, netns, mode))
        except BaseException:
            for att in made:
                _detach_one(lay, att)
            raise
        state["attachments"].extend(made)
        _write_state(lay, state)
    return made


def _require_state(lay: Layout) -> dict:
    state = _read_state(lay)
    if state is None:
        hint = (f"`polc unload {lay.name}` cleans up its leftover pins" if os.path.exists(lay.pin_dir)
                else f"load it first: polc load OUT.o --name {lay.name}")
        loaded = [n for n in loaded_names(lay.pin_root, lay.state_root) if n != lay.name]
        if loaded:
            hint += f" (loaded: {', '.join(loaded)})"
        raise NotLoaded(f"no policy is loaded as '{lay.name}'", hint)
    return state


def _attach_targets(lay: Layout, state: dict, ifaces: list[str], netns: str | None) -> list[tuple[str, int]]:
    """Resolve and vet every interface before attaching anything."""
    if len(set(ifaces)) != len(ifaces):
        dup = sorted({i for i in ifaces if ifaces.count(i) > 1})
        raise AlreadyAttached(f"interface {', '.join(dup)} named twice")
    taken = _attachments_by_key(lay)
    targets = []
    for iface in ifaces:
        index = hook.ifindex(iface, netns)
        key = iface_key(iface, netns)
        if key in taken:
            owner = taken[key]
            raise AlreadyAttached(f"'{owner}' is already attached to {_where(iface, netns)}",
                                  f"`polc detach {owner} {iface}" + (f" --netns {netns}" if netns else "")
                                  + "` first; to change the policy use `polc update`")
        targets.append((iface, index))
    return targets


def _attachments_by_key(lay: Layout) -> dict[str, str]:
    """Attachment key -> name of the policy attached there, over every loaded policy."""
    taken = {}
    for other in loaded_names(lay.pin_root, lay.state_root):
        try:
            st = _read_state(Layout(other, lay.pin_root, lay.state_root))
        except NodeError:
            continue
        for att in (st or {}).get("attachments", []):
            taken[iface_key(att["iface"], att.get("netns"))] = other
    return taken


def _where(iface: str, netns: str | None) -> str:
    return f"{iface!r}" + (f" in network namespace {netns!r}" if netns else "")


def _attach_one(lay: Layout, iface: str, index: int, netns: str | None, mode: str) -> dict:
    att = {"iface": iface, "netns": netns, "ifindex": index, "mode": None, "hooks": {}}
    try:
        if mode in ("auto", hook.MODE_TCX):
            try:
                _attach_tcx(lay, att)
                return att
            except KernelTooOld:
                if mode == hook.MODE_TCX:
                    raise
                _detach_one(lay, att)
                att["hooks"] = {}
        _attach_tc(lay, att)
        return att
    except BaseException:
        _detach_one(lay, att)
        raise


def _attach_tcx(lay: Layout, att: dict) -> None:
    att["mode"] = hook.MODE_TCX
    os.makedirs(lay.links_dir, exist_ok=True)
    key = iface_key(att["iface"], att["netns"])
    for direction, prog in hook.HOOKS:
        pin = lay.link_pin(key, direction)
        prog_fd = bpf.obj_get(lay.pin(prog))
        try:
            link_fd = hook.tcx_attach(prog_fd, att["ifindex"], direction, att["netns"], prog)
        finally:
            os.close(prog_fd)
        try:
            bpf.obj_pin(link_fd, pin, what=f"tcx link of {att['iface']} ({direction})")
        finally:
            os.close(link_fd)  # unpinned, this detaches the link again
        att["hooks"][direction] = {"program": prog, "pin": os.path.relpath(pin, lay.pin_dir)}


def _attach_tc(lay: Layout, att: dict) -> None:
    att["mode"] = hook.MODE_TC
    for direction, prog in hook.HOOKS:
        prog_fd = bpf.obj_get(lay.pin(prog))
        try:
            where = hook.tc_attach(prog_fd, att["ifindex"], direction, att["netns"], prog)
        finally:
            os.close(prog_fd)
        att["hooks"][direction] = {"program": prog, **where}


def _detach_one(lay: Layout, att: dict) -> None:
    """Remove both hooks of an attachment; hooks already gone are fine."""
    for direction, h in list(att["hooks"].items()):
        if att["mode"] == hook.MODE_TCX:
            path = os.path.join(lay.pin_dir, h["pin"])
            try:
                fd = bpf.obj_get(path)
            except BPFError as e:
                if e.errno != errno.ENOENT:
                    raise
                continue
            try:
                hook.tcx_detach(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        else:
            hook.tc_detach(att["ifindex"], direction, att["netns"])


def detach(name: str, ifaces: list[str] | None = None, netns: str | None = None, *,
           layout: Layout | None = None) -> list[dict]:
    """Detach ``name`` from the interfaces (all of them when ``ifaces`` is empty)."""
    check_name(name)
    lay = layout or Layout(name)
    _prepare("detach")
    with _locked(lay.state_root):
        state = _require_state(lay)
        atts = state["attachments"]
        if ifaces:
            keys = {iface_key(a["iface"], a.get("netns")): a for a in atts}
            missing = [i for i in ifaces if iface_key(i, netns) not in keys]
            if missing:
                have = ", ".join(sorted(keys)) or "nothing"
                raise NotAttached(f"'{name}' is not attached to {', '.join(_where(i, netns) for i in missing)}",
                                  f"it is attached to: {have}")
            chosen = [keys[iface_key(i, netns)] for i in ifaces]
        else:
            chosen = list(atts)
        for att in chosen:
            _detach_one(lay, att)
            atts.remove(att)
            _write_state(lay, state)
    return chosen


# --- update --------------------------------------------------------------------------------


def update(name: str, path: str, node: str | None = None, *, layout: Layout | None = None) -> dict:
    """Replace the policy of ``name`` by the object at ``path`` atomically (see the module doc).

    Returns ``{"name", "action": "updated"|"unchanged", "old", "new", "hooks", "swap_seconds"}``.
    On failure raises :class:`UpdateFailed`; the old policy is then still enforcing.
    """
    check_name(name)
    lay = layout or Layout(name)
    _prepare("update")
    with _locked(lay.state_root):
        state = _require_state(lay)
        old = state["object"]
        node = node if node is not None else state.get("node")
        coll, obj = _prepare_update(lay, state, path, node)
        if coll is None:
            return {"name": name, "action": "unchanged", "old": old, "new": old, "hooks": 0, "swap_seconds": 0.0}
        try:
            t0 = time.monotonic()
            swapped = _swap_hooks(lay, state, coll)
            swap = time.monotonic() - t0
            _repin(lay, coll)
        finally:
            coll.close()
        _copy_object(lay, obj.data)
        state.update(object=obj.describe(), node=node, updated_at=time.time())
        _write_state(lay, state)
    return {"name": name, "action": "updated", "old": old, "new": state["object"], "hooks": swapped,
            "swap_seconds": swap}


def _prepare_update(lay: Layout, state: dict, path: str, node: str | None):
    """Load the new collection next to the old one; ``(None, obj)`` when nothing changes."""
    old = state["object"]
    keep = f"the old policy ({old['path']}, digest {str(old['digest'])[:12]}) is still enforcing"
    try:
        obj = _read_object(path)
        if obj.sha256 == old["sha256"] and node == state.get("node"):
            return None, obj
        ct_fd = bpf.obj_get(lay.pin(abi.MAP_CT))
        try:
            return _load_collection(obj, node, reuse={abi.MAP_CT: ct_fd}), obj
        finally:
            os.close(ct_fd)
    except (PolcRuntimeError, ValueError) as e:
        if isinstance(e, NotPrivileged):
            raise
        raise UpdateFailed(f"update of '{lay.name}' to {os.path.abspath(path)} failed; {keep}:\n{e}",
                           _update_hint(e), cause=e) from e


def _update_hint(e: BaseException) -> str:
    from .errors import MapIncompatible, VerifierError

    if isinstance(e, VerifierError):
        return "the kernel's verifier rejected the new programs (log above); was it built by this polc?"
    if isinstance(e, MapIncompatible):
        return ("the new object's connection table does not match the pinned one; "
                "`polc unload` and `polc load` instead (established connections are then lost)")
    if isinstance(e, ObjectError):
        return "rebuild the object with `polc compile`"
    return "fix the cause and run `polc update` again"


def _swap_hooks(lay: Layout, state: dict, coll: Collection) -> int:
    """Point every hook at the new programs; on failure put the swapped ones back."""
    done: list[tuple[dict, str, dict]] = []
    try:
        for att in state["attachments"]:
            for direction, h in att["hooks"].items():
                _swap_one(lay, att, direction, h, coll.program(h["program"]).fd)
                done.append((att, direction, h))
    except BaseException as e:
        for att, direction, h in reversed(done):
            old_fd = bpf.obj_get(lay.pin(h["program"]))
            try:
                _swap_one(lay, att, direction, h, old_fd)
            finally:
                os.close(old_fd)
        raise UpdateFailed(f"update of '{lay.name}': swapping the program on {att['iface']} ({direction}) "
                           f"failed; {len(done)} hook(s) put back, the old policy is still enforcing:\n{e}",
                           "is the interface still there? `polc status` shows the hooks", cause=e) from e
    return len(done)


def _swap_one(lay: Layout, att: dict, direction: str, h: dict, prog_fd: int) -> None:
    if att["mode"] == hook.MODE_TCX:
        link_fd = bpf.obj_get(os.path.join(lay.pin_dir, h["pin"]))
        try:
            hook.tcx_update(link_fd, prog_fd)
        finally:
            os.close(link_fd)
    else:
        hook.tc_attach(prog_fd, att["ifindex"], direction, att.get("netns"), h["program"], replace=True)


def _repin(lay: Layout, coll: Collection) -> None:
    """Pin the new maps and programs in a staging directory, then rename them over the old pins."""
    _remove_tree(lay.staging_dir)
    _pin_collection(coll, lay.staging_dir)
    try:
        for entry in os.listdir(lay.staging_dir):
            os.rename(os.path.join(lay.staging_dir, entry), os.path.join(lay.pin_dir, entry))
    finally:
        _remove_tree(lay.staging_dir)
    wanted = {n.lstrip(".") for n in list(coll.maps) + list(coll.programs)} | {"links"}
    for entry in os.listdir(lay.pin_dir):
        if entry not in wanted and entry != os.path.basename(lay.staging_dir):
            os.unlink(os.path.join(lay.pin_dir, entry))  # a map the new object no longer has


# --- unload --------------------------------------------------------------------------------


def unload(name: str, *, layout: Layout | None = None) -> dict:
    """Detach everywhere and remove every pin and the state of ``name``."""
    check_name(name)
    lay = layout or Layout(name)
    _prepare("unload")
    try:
        return _unload(lay)
    finally:
        try:
            os.rmdir(lay.state_root)  # only when no other policy is loaded
        except OSError:
            pass


def _unload(lay: Layout) -> dict:
    name = lay.name
    with _locked(lay.state_root):
        state = _read_state_lenient(lay)
        if state is None and not os.path.exists(lay.pin_dir):
            raise NotLoaded(f"no policy is loaded as '{name}'",
                            f"loaded: {', '.join(loaded_names(lay.pin_root, lay.state_root)) or 'none'}")
        detached = 0
        for att in (state or {}).get("attachments", []):
            _detach_one(lay, att)
            detached += 1
        detached += _detach_stray_links(lay)
        _remove_tree(lay.pin_dir)
        shutil.rmtree(lay.state_dir, ignore_errors=True)
        try:
            os.rmdir(lay.pin_root)  # only when no other policy is loaded
        except OSError:
            pass
        if os.path.exists(lay.pin_dir):
            raise NodeError(f"'{name}': could not remove {lay.pin_dir}", "remove it by hand (rm -r)")
    return {"name": name, "action": "unloaded", "detached": detached,
            "object": (state or {}).get("object")}


def _read_state_lenient(lay: Layout) -> dict | None:
    try:
        return _read_state(lay)
    except NodeError:
        return None


def _detach_stray_links(lay: Layout) -> int:
    """Detach pinned links the state does not know (an interrupted attach)."""
    count = 0
    try:
        entries = os.listdir(lay.links_dir)
    except FileNotFoundError:
        return 0
    for entry in entries:
        path = os.path.join(lay.links_dir, entry)
        try:
            fd = bpf.obj_get(path)
        except BPFError:
            continue
        try:
            hook.tcx_detach(fd)
            count += 1
        finally:
            os.close(fd)
    return count


# --- status --------------------------------------------------------------------------------


def status(name: str | None = None, *, layout: Layout | None = None) -> list[dict]:
    """What is loaded: object, programs, hooks with their live state, map fill levels."""
    require_root("status")
    if _mount_fstype(BPFFS) != "bpf" and layout is None:
        raise BpffsMissing(f"no BPF file system at {BPFFS}",
                           "nothing can be loaded; if this is `ip netns exec`, run polc outside it")
    base = layout or Layout(name or "_")
    if name is not None:
        check_name(name)
        if _read_state_lenient(Layout(name, base.pin_root, base.state_root)) is None and \
                not os.path.exists(Layout(name, base.pin_root, base.state_root).pin_dir):
            _require_state(Layout(name, base.pin_root, base.state_root))
        names = [name]
    else:
        names = loaded_names(base.pin_root, base.state_root)
    return [_status_one(Layout(n, base.pin_root, base.state_root)) for n in names]


def _status_one(lay: Layout) -> dict:
    state = _read_state_lenient(lay)
    out = {"name": lay.name, "pin_dir": lay.pin_dir, "ok": state is not None, "problems": [],
           "object": (state or {}).get("object"), "node": (state or {}).get("node"),
           "loaded_at": (state or {}).get("loaded_at"), "updated_at": (state or {}).get("updated_at"),
           "programs": {}, "maps": {}, "attachments": []}
    if state is None:
        out["problems"].append(f"no state in {lay.state_dir}: `polc unload {lay.name}` cleans up")
    for prog in abi.PROGRAMS:
        out["programs"][prog] = _prog_status(lay.pin(prog), out["problems"])
    try:
        entries = sorted(os.listdir(lay.pin_dir))
    except FileNotFoundError:
        entries = []
        out["problems"].append(f"no pins in {lay.pin_dir}")
    for entry in entries:
        if entry in abi.PROGRAMS or entry in ("links", os.path.basename(lay.staging_dir)):
            continue
        out["maps"][entry] = _map_status(os.path.join(lay.pin_dir, entry), out["problems"])
    for att in (state or {}).get("attachments", []):
        out["attachments"].append(_attachment_status(lay, att, out))
    out["ok"] = not out["problems"]
    return out


def _prog_status(path: str, problems: list[str]) -> dict | None:
    try:
        fd = bpf.obj_get(path)
    except BPFError as e:
        problems.append(f"program pin {path}: {e.message}")
        return None
    try:
        info = bpf.prog_info(fd)
        return {"id": info.id, "tag": info.tag.hex(), "xlated_bytes": info.xlated_prog_len,
                "verified_insns": info.verified_insns, "pin": path}
    finally:
        os.close(fd)


def _map_status(path: str, problems: list[str]) -> dict | None:
    try:
        fd = bpf.obj_get(path)
    except BPFError as e:
        problems.append(f"map pin {path}: {e.message}")
        return None
    try:
        info = bpf.map_info(fd)
        if info.type in bpf.ARRAY_MAP_TYPES:
            entries = info.max_entries  # arrays are always full
        else:
            entries, key = 0, None
            while (key := bpf.map_get_next_key(fd, key, info.key_size, name=info.name)) is not None:
                entries += 1
        return {"id": info.id, "type": bpf.MAP_TYPE_NAMES.get(info.type, str(info.type)), "entries": entries,
                "max_entries": info.max_entries}
    finally:
        os.close(fd)


def _attachment_status(lay: Layout, att: dict, out: dict) -> dict:
    res = {"iface": att["iface"], "netns": att.get("netns"), "ifindex": att["ifindex"], "mode": att["mode"],
           "hooks": {}}
    for direction, h in att["hooks"].items():
        want = (out["programs"].get(h["program"]) or {}).get("id")
        if att["mode"] == hook.MODE_TCX:
            path = os.path.join(lay.pin_dir, h["pin"])
            try:
                fd = bpf.obj_get(path)
            except BPFError as e:
                live = {"attached": False, "error": e.message}
            else:
                try:
                    live = hook.link_state(fd)
                finally:
                    os.close(fd)
        else:
            live = hook.tc_state(att["ifindex"], direction, att.get("netns"))
        res["hooks"][direction] = {"program": h["program"], **live}
        if not live.get("attached"):
            out["problems"].append(f"{_where(att['iface'], att.get('netns'))} {direction}: not attached any more "
                                   "(interface gone?); `polc detach` it")
        elif live.get("prog_id") not in (None, want):
            out["problems"].append(f"{_where(att['iface'], att.get('netns'))} {direction}: runs program id "
                                   f"{live.get('prog_id')}, not the pinned {h['program']} ({want})")
    return res
