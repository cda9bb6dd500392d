"""The folder watcher's pending table: files seen changing, and which are due for a decision.

A file is due once its size and mtime have not changed for ``stable_seconds``, or at once
when its writer closed it after writing (or renamed it into place). A file that was
looked at and found incomplete as it is (a failed header check) is *held*: it is due
again only after it changes (its writer is still at it), or once it has not changed for
the grace period, when it is given up on. Thread-safe: watchdog's dispatcher adds to the
table while the watcher's timer thread takes from it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PendingFiles"]


@dataclass
class _Entry:
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0  # monotonic time of the last observed change
    closed: bool = False
    held: bool = False  # found incomplete as it is: waits for a change or the grace period


class PendingFiles:
    """Files seen changing; ``due()`` pops those complete enough to decide about."""

    def __init__(self, stable_seconds: float, grace_seconds: float) -> None:
        self.stable_seconds = stable_seconds
        self.grace_seconds = max(grace_seconds, stable_seconds)
        self._entries: dict[Path, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._entries

    def note(self, path: Path, closed: bool) -> None:
        """An event says ``path`` changed (``closed``: its writer closed it)."""
        with self._lock:
            entry = self._entries.setdefault(path, _Entry(changed_at=time.monotonic()))
            if not closed and not entry.held:  # a held file's quiet time ends on a real change
                entry.changed_at = time.monotonic()
            entry.closed = closed

    def hold(self, path: Path, fingerprint: list[int], quiet_for: float) -> None:
        """``path``, as ``fingerprint`` says it is, looks incomplete: due again on a change
        or once it has been unchanged for the grace period (``quiet_for`` of it have passed)."""
        with self._lock:
            known = self._entries.get(path)
            self._entries[path] = _Entry(
                size=fingerprint[0], mtime_ns=fingerprint[1],
                changed_at=time.monotonic() - quiet_for,
                closed=known.closed if known else False, held=True,
            )

    def forget(self, path: Path) -> None:
        """``path`` was deleted or renamed away."""
        with self._lock:
            self._entries.pop(path, None)

    def due(self) -> list[tuple[Path, float]]:
        """Update the table from stat(); pop and return the due files with their quiet seconds.

        A file that vanished (or cannot be reached) leaves the table: a rescan finds it
        again if it comes back.
        """
        now = time.monotonic()
        found: list[tuple[Path, float]] = []
        with self._lock:
            for path, entry in list(self._entries.items()):
                try:
                    stat = path.stat()
                except OSError:
                    del self._entries[path]
                    continue
                if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns, entry.changed_at = stat.st_size, stat.st_mtime_ns, now
                    entry.held = False  # written to again: its writer is still at it
                quiet_for = now - entry.changed_at
                if entry.held:
                    is_due = quiet_for >= self.grace_seconds
                else:
                    is_due = quiet_for >= self.stable_seconds or (entry.closed and entry.size > 0)
                if is_due:
                    del self._entries[path]
                    found.append((path, quiet_for))
        return found
