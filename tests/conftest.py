"""Shared pytest fixtures and the kernel-availability check."""

from __future__ import annotations

import os
import sys

import pytest

# Run the installed polc, never the source tree's top-level folders by accident.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _root]


def kernel_skip_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for bpf(2) (CAP_BPF, CAP_NET_ADMIN)"
    return None


@pytest.fixture
def needs_kernel():
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
