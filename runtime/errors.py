"""Errors raised by the polc runtime.

Every error names the object it concerns (a map, a program, a file) and, where a common
cause is known, carries a hint.  ``KernelTooOld`` is its own type so that tests can skip
on it rather than fail.
"""

from __future__ import annotations

import errno as _errno
import os

# The kernel's internal ENOTSUPP (524) leaks out of bpf(2) for unsupported batch ops and
# test runs; Python's errno module does not know it.
ENOTSUPP = 524

_ERRNO_HINTS = {
    _errno.EPERM: "are you root? is CAP_BPF (and CAP_NET_ADMIN) available?",
    _errno.EACCES: "are you root? is CAP_BPF available?",
    _errno.E2BIG: "too large for this kernel (instructions, entries or value size)",
    _errno.ENOMEM: "out of memory; is RLIMIT_MEMLOCK large enough on kernels before 5.11?",
    _errno.EBADF: "the file descriptor was closed or is not a BPF object",
}

VERIFIER_TAIL_LINES = 20


def strerror(err: int) -> str:
    """``os.strerror`` that also names the kernel-internal ENOTSUPP."""
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    return os.strerror(err)


class PolcRuntimeError(RuntimeError):
    """Base class of every error raised by ``polc.runtime``."""


class BPFError(PolcRuntimeError):
    """A bpf(2) command failed.

    ``op`` says what was attempted (``"map 'polc_ct': create"``), ``errno`` is the
    kernel's error number, ``message`` its text and ``hint`` a likely cause or ``None``.
    """

    def __init__(self, op: str, errno: int, message: str | None = None, hint: str | None = None):
        self.op = op
        self.errno = errno
        self.message = message if message is not None else strerror(errno)
        self.hint = hint if hint is not None else _ERRNO_HINTS.get(errno)
        text = f"{op}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        super().__init__(text)


class VerifierError(BPFError):
    """The kernel rejected a program or a BTF blob; ``log`` holds the whole verifier log."""

    def __init__(self, op: str, errno: int, log: str, hint: str | None = None, truncated: bool = False):
        self.log = log
        self.truncated = truncated
        super().__init__(op, errno, hint=hint)

    def __str__(self) -> str:
        head = super().__str__()
        lines = [line for line in self.log.splitlines() if line.strip()]
        if not lines:
            return head + "\n(the verifier log is empty)"
        tail = lines[-VERIFIER_TAIL_LINES:]
        skipped = len(lines) - len(tail)
        out = [head, "verifier log" + (f" (last {len(tail)} of {len(lines)} lines)" if skipped else "") + ":"]
        out.extend("  " + line for line in tail)
        if self.truncated:
            out.append("  (log truncated by the kernel)")
        return "\n".join(out)


class KernelTooOld(PolcRuntimeError):
    """The running kernel lacks ``feature``; tests skip on this instead of failing."""

    def __init__(self, feature: str, errno: int | None = None):
        self.feature = feature
        self.errno = errno
        detail = f" ({strerror(errno)})" if errno is not None else ""
        super().__init__(f"kernel too old or built without support for {feature}{detail}")


class ObjectError(PolcRuntimeError):
    """An ELF object is corrupt, foreign or uses something the loader does not support."""

    def __init__(self, path: str, message: str, hint: str | None = None):
        self.path = path
        self.message = message
        self.hint = hint
        text = f"{path}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class MapIncompatible(PolcRuntimeError):
    """A map handed in for reuse does not match the object's map spec."""


class TestRunError(PolcRuntimeError):
    """A kernel test run gave a result the datapath contract does not allow."""

    __test__ = False  # not a pytest test class
