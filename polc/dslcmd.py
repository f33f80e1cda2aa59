"""DSL commands (fmt, convert): see the DSL issue."""

from __future__ import annotations


def register(sub) -> None:
    """Add the DSL subcommands to the ``polc`` argument parser."""
