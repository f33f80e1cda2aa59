"""``polc bench``: the kernel's cost per packet for a flow file (see the benchmarks issue)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the bench subcommand to the ``polc`` argument parser."""
