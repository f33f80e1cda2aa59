"""Node commands (load, attach, update, detach, unload, status): see the runtime issue."""

from __future__ import annotations


def register(sub) -> None:
    """Add the node subcommands to the ``polc`` argument parser."""
