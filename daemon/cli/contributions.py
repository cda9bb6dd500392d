"""What plugins contribute to the command line, found through entry points.

The CLI names no plugin module: ``acqflow demo``, ``acqflow train`` and ``acqflow
evaluate`` load their commands from the entry-point groups of :mod:`acqflow.plugins.api`.
A contribution that fails to load disables itself, not the CLI: it is kept as one line
(its name, where it points, why) and its name becomes a command that says so and exits 2.
Beside :mod:`acqflow.daemon.cli.base` at the bottom of the CLI package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from acqflow.daemon.cli.base import fail

__all__ = ["Contributions", "Unavailable", "load_contributions", "unavailable_command"]

T = TypeVar("T")

# An unavailable command takes whatever it is given, so that its one-line error is
# what the user sees, not "no such option".
PERMISSIVE = {"ignore_unknown_options": True, "allow_extra_args": True}


@dataclass(frozen=True)
class Unavailable:
    """A contribution that could not be loaded."""

    name: str
    origin: str  # the entry point's value, "package.module:attribute"
    reason: str  # one line

    def line(self, what: str) -> str:
        """``<what> '<name>' (<origin>) is unavailable: <reason>``."""
        return f"{what} {self.name!r} ({self.origin}) is unavailable: {self.reason}"


@dataclass(frozen=True)
class Contributions(Generic[T]):
    """The contributions of one group that loaded, by name, and those that did not."""

    loaded: dict[str, T]
    unavailable: tuple[Unavailable, ...] = ()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_contributions(group: str, accept: Callable[[str, object], T]) -> Contributions[T]:
    """Load every entry point of ``group`` in name order.

    ``accept(name, obj)`` returns what the CLI keeps of a loaded object, or raises
    TypeError or ValueError saying why it is not a contribution of this group. A second
    entry point of a name already loaded is unavailable (the first one wins).
    """
    loaded: dict[str, T] = {}
    unavailable: list[Unavailable] = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.name in loaded:
            unavailable.append(Unavailable(ep.name, ep.value, "another plugin contributes this name"))
            continue
        try:
            loaded[ep.name] = accept(ep.name, ep.load())
        except Exception as exc:  # noqa: BLE001  # a plugin's import may raise anything; it disables itself
            unavailable.append(Unavailable(ep.name, ep.value, _one_line(exc)))
    return Contributions(loaded, tuple(unavailable))


def unavailable_command(item: Unavailable, what: str) -> Callable[..., Any]:
    """A command that prints why ``item`` is unavailable on one line and exits 2."""

    def command() -> None:
        raise fail(item.line(what))

    command.__doc__ = f"Unavailable: {item.reason}"
    return command
