"""User-facing errors of the compiler.

Every error a user can cause names its place: ``file:line:col: error: message``, then the
source line and a caret under the spot.  When no position is known (an object built in
code, a file that cannot be read) the error names the object instead, e.g.
``NetworkPolicy x/deny-all: error: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Location:
    """A 1-based position in a source file, with the text of that line when known."""

    file: str
    line: int | None = None
    col: int | None = None
    source_line: str | None = None

    def prefix(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.col or 1}"


class PolcError(Exception):
    """Base of every error polc reports to a user.

    ``location`` points at the offending input; ``obj`` names the object the error is about
    (``"NetworkPolicy x/deny-all"``) and is used when no position is known.
    """

    def __init__(self, message: str, location: Location | None = None, obj: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.obj = obj

    def render(self) -> str:
        """The error as shown to users: place, message, source line and caret."""
        if self.location is None:
            where = self.obj or "polc"
            return f"{where}: error: {self.message}"
        head = f"{self.location.prefix()}: error: {self.message}"
        text = self.location.source_line
        if text is None or self.location.line is None:
            return head
        col = max(1, self.location.col or 1)
        # Tabs keep their width under the caret so it lines up in a terminal.
        pad = "".join("\t" if ch == "\t" else " " for ch in text[: col - 1])
        return f"{head}\n{text.rstrip()}\n{pad}^"

    def __str__(self) -> str:
        return self.render()


class CompileError(PolcError):
    """An input (policy, inventory, source file) that polc cannot compile."""


class UnsupportedError(CompileError):
    """An input that is valid for Kubernetes/Cilium but uses a feature polc does not support yet."""


class ErrorList(CompileError):
    """Several independent errors reported together (each one problem, one place)."""

    def __init__(self, errors: Sequence[PolcError]):
        if not errors:
            raise ValueError("ErrorList needs at least one error")
        self.errors: tuple[PolcError, ...] = tuple(_flatten(errors))
        first = self.errors[0]
        super().__init__(first.message, first.location, first.obj)

    def render(self) -> str:
        body = "\n".join(e.render() for e in self.errors)
        if len(self.errors) == 1:
            return body
        return f"{body}\n{len(self.errors)} errors"


def _flatten(errors: Iterable[PolcError]) -> Iterable[PolcError]:
    for err in errors:
        if isinstance(err, ErrorList):
            yield from err.errors
        else:
            yield err


def raise_all(errors: Sequence[PolcError]) -> None:
    """Raise nothing, the single error, or an ``ErrorList`` of several."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    raise ErrorList(errors)
