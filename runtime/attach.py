"""Attach polc programs to network interfaces: tcx links, or tc clsact filters on old kernels.

An endpoint-facing interface is the host side of a pod's veth.  Packets that arrive there
(tc ingress) leave the pod and are judged by ``polc_from_ep``; packets sent there (tc
egress) enter the pod and are judged by ``polc_to_ep``.

Two mechanisms, chosen per interface:

* **tcx** (Linux 6.6+): a BPF link per direction (BPF_LINK_CREATE with BPF_TCX_INGRESS /
  BPF_TCX_EGRESS).  The caller pins the link so that enforcement outlives the process;
  BPF_LINK_UPDATE swaps the program atomically; unpinning and closing detaches.
* **tc** (older kernels): a ``bpf`` filter in direct-action mode on a clsact qdisc, added
  over netlink (pyroute2).  The filter holds its own reference to the program, so it also
  outlives the process; ``replace`` on the same priority and handle swaps it atomically.

Interfaces may live in another network namespace: :func:`in_netns` switches the calling
thread into it for the few calls that resolve names (ifindex lookup, BPF_LINK_CREATE,
netlink), and back.  The process stays in its own mount namespace, which is what keeps
bpffs pins visible (``ip netns exec`` remounts /sys and hides /sys/fs/bpf).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from polc import abi

from . import bpf
from .errors import BPFError, KernelTooOld, PolcRuntimeError

MODE_TCX, MODE_TC = "tcx", "tc"
MODES = ("auto", MODE_TCX, MODE_TC)

# direction of the tc hook -> program judging the packets seen there
HOOKS = (("ingress", abi.PROG_FROM_EP), ("egress", abi.PROG_TO_EP))
_TCX_TYPES = {"ingress": bpf.BPF_TCX_INGRESS, "egress": bpf.BPF_TCX_EGRESS}
_TCX_DIRECTIONS = {v: k for k, v in _TCX_TYPES.items()}

# tc fallback: clsact parents and the one filter slot polc uses on each
_TC_PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
TC_PRIO = 0xC0DE & 0x7FFF
TC_HANDLE = 1
_ETH_P_ALL = 0x0003

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# --- errors --------------------------------------------------------------------------------


class NodeError(PolcRuntimeError):
    """A node command cannot do what was asked; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


class NotPrivileged(NodeError):
    """The command needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for bpffs)."""


class BpffsMissing(NodeError):
    """No BPF filesystem to pin on, and none could be mounted."""


class NetnsMissing(NodeError):
    """The network namespace named with ``--netns`` does not exist."""


class InterfaceMissing(NodeError):
    """The interface to attach to does not exist (in the given namespace)."""


class AlreadyAttached(NodeError):
    """polc is already attached to the interface."""


class NotAttached(NodeError):
    """Detach named an interface polc is not attached to."""


class NameInUse(NodeError):
    """``polc load`` with a name that holds another object."""


class NotLoaded(NodeError):
    """No policy is loaded under the name."""


class UpdateFailed(NodeError):
    """``polc update`` failed; the old policy still enforces.  ``cause`` is the error."""

    def __init__(self, message: str, hint: str | None = None, cause: BaseException | None = None):
        self.cause = cause
        super().__init__(message, hint)


# --- network namespaces --------------------------------------------------------------------


def netns_path(netns: str) -> str:
    """The file of a network namespace: a name under /run/netns (``ip netns``) or a path."""
    return netns if "/" in netns else os.path.join("/run/netns", netns)


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``netns`` (``None``: stay)."""
    if not netns:
        yield
        return
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsMissing(f"network namespace {netns!r} does not exist ({path})",
                           "list them with `ip netns list`; give a name from there or a /proc/PID/ns/net path") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"enter network namespace {netns!r}")
            try:
                yield
            finally:
                _setns(home, "return to the original network namespace")
        finally:
            os.close(home)
    finally:
        os.close(target)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NodeError(f"{what}: {os.strerror(err)}", "entering a namespace needs CAP_SYS_ADMIN (are you root?)")


def ifindex(iface: str, netns: str | None = None) -> int:
    """The index of ``iface`` in ``netns``; :class:`InterfaceMissing` if there is none."""
    where = f" in network namespace {netns!r}" if netns else ""
    if not iface or len(iface) >= 16 or "/" in iface or iface != iface.strip():
        raise InterfaceMissing(f"{iface!r} is not a valid interface name")
    with in_netns(netns):
        try:
            return socket.if_nametoindex(iface)
        except OSError:
            hint = "list interfaces with `ip link`" + (f" (`ip -n {netns} link`)" if netns else "")
            if not netns and os.path.isdir("/run/netns") and os.listdir("/run/netns"):
                hint += "; if it is in a network namespace, add --netns NAME"
            raise InterfaceMissing(f"no interface {iface!r}{where}", hint) from None


# --- tcx links -----------------------------------------------------------------------------


def tcx_attach(prog_fd: int, index: int, direction: str, netns: str | None, prog_name: str) -> int:
    """Attach with a tcx link; returns the link fd (the caller pins and closes it).

    Raises :class:`KernelTooOld` on kernels without tcx.
    """
    with in_netns(netns):  # the kernel resolves target_ifindex in the caller's namespace
        return bpf.link_create(prog_fd, index, _TCX_TYPES[direction], name=prog_name)


def tcx_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a tcx link atomically (BPF_LINK_UPDATE)."""
    bpf.link_update(link_fd, prog_fd)


def tcx_detach(link_fd: int) -> None:
    """Detach a tcx link now; a link whose interface is gone is already detached."""
    try:
        bpf.link_detach(link_fd)
    except BPFError as e:
        if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENODEV):
            raise


def link_state(link_fd: int) -> dict:
    """What a tcx link is attached to: ids, ifindex (0 once its interface is gone), direction."""
    info = bpf.link_info(link_fd)
    return {"link_id": info.id, "prog_id": info.prog_id, "ifindex": info.ifindex,
            "direction": _TCX_DIRECTIONS.get(info.attach_type), "attached": info.ifindex != 0}


# --- tc clsact filters (fallback) ----------------------------------------------------------


@contextmanager
def _ipr(netns: str | None):
    from pyroute2 import IPRoute

    with in_netns(netns):
        ipr = IPRoute()  # the netlink socket belongs to the namespace it was created in
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink_error(e: Exception) -> int | None:
    return getattr(e, "code", None)


def tc_attach(prog_fd: int, index: int, direction: str, netns: str | None, prog_name: str,
              replace: bool = False) -> dict:
    """Add (or with ``replace`` swap) polc's bpf filter on the clsact qdisc of ``index``.

    Returns the filter's coordinates for the state file.
    """
    with _ipr(netns) as ipr:
        try:
            ipr.tc("add", "clsact", index)
        except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError
            if _netlink_error(e) != errno.EEXIST:
                raise NodeError(f"ifindex {index}: add clsact qdisc: {e}",
                                "is CONFIG_NET_CLS_ACT enabled? are you root?") from e
        cmd = "replace-filter" if replace else "add-filter"
        try:
            ipr.tc(cmd, "bpf", index, TC_HANDLE, fd=prog_fd, name=prog_name, parent=_TC_PARENTS[direction],
                   classid=1, direct_action=True, prio=TC_PRIO, protocol=_ETH_P_ALL)
        except Exception as e:  # noqa: BLE001
            if _netlink_error(e) == errno.EEXIST:
                raise AlreadyAttached(f"ifindex {index}: a tc filter with polc's priority {TC_PRIO} exists",
                                      "polc detach it first") from e
            raise NodeError(f"ifindex {index}: {cmd} bpf {direction}: {e}", "are you root?") from e
    return {"prio": TC_PRIO, "handle": TC_HANDLE}


def tc_detach(index: int, direction: str, netns: str | None) -> None:
    """Remove polc's filter; an interface or filter that is gone already counts as detached."""
    try:
        with _ipr(netns) as ipr:
            ipr.tc("del-filter", "bpf", index, TC_HANDLE, parent=_TC_PARENTS[direction], prio=TC_PRIO,
                   protocol=_ETH_P_ALL)
    except NetnsMissing:
        return
    except Exception as e:  # noqa: BLE001
        if _netlink_error(e) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise NodeError(f"ifindex {index}: delete tc filter ({direction}): {e}") from e


def tc_state(index: int, direction: str, netns: str | None) -> dict:
    """Whether polc's filter is still there and which program id it runs (if netlink says)."""
    try:
        with _ipr(netns) as ipr:
            for f in ipr.get_filters(index=index, parent=_TC_PARENTS[direction]):
                if (f["info"] >> 16) != TC_PRIO or f.get_attr("TCA_KIND") != "bpf":
                    continue
                opts = f.get_attr("TCA_OPTIONS")
                prog_id = opts.get_attr("TCA_BPF_ID") if opts is not None else None
                return {"attached": True, "prog_id": prog_id, "ifindex": index}
    except Exception:  # noqa: BLE001 - gone interface or namespace: not attached
        pass
    return {"attached": False, "prog_id": None, "ifindex": index}


__all__ = [
    "HOOKS", "MODES", "MODE_TC", "MODE_TCX", "AlreadyAttached", "BpffsMissing", "InterfaceMissing",
    "KernelTooOld", "NameInUse", "NetnsMissing", "NodeError", "NotAttached", "NotLoaded", "NotPrivileged",
    "UpdateFailed", "ifindex", "in_netns", "link_state", "netns_path", "tc_attach", "tc_detach", "tc_state",
    "tcx_attach", "tcx_detach", "tcx_update",
]
