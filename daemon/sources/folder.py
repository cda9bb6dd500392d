"""The folder source: microscope images written into watched folders become arrivals.

A file is taken once it is complete:

* **events** mode (local disks, inotify & co): on close-after-write (watchdog's
  ``FileClosedEvent``), on being renamed into place, or when its size and mtime have
  not changed for ``stable_seconds``;
* **polling** mode (network shares, where events are unreliable): watchdog's
  ``PollingObserver`` plus the same stability rule only.

Files that changed are kept in a pending table that a small timer thread checks; the
periodic :meth:`FolderWatcher.rescan` catches what events missed, including files that
arrived while the daemon was down. Hidden and temporary files (dot-files, files in
hidden folders, ``~$*``, ``*.tmp``, ``*.part``, ``*.crdownload``, ``*.filepart``,
``*~``) and names matching none of the ``include`` globs (case-insensitive) are ignored.

Inputs are never modified, moved or deleted. A complete file gets the key
``file:<absolute path>``; its fingerprint ``[size, mtime_ns]`` tells a rewritten file
(new generation) from events repeating for the same one (nothing happens). Zero-byte,
non-TIFF and truncated files are rejected here: a rejected arrival with the error in the
journal, a copy in quarantine, ``acqflow_input_errors_total`` counted.

Every watchdog callback and timer round catches, logs and counts its errors
(``acqflow_source_errors_total``): an exception escaping a handler would silently stop
watchdog's dispatcher thread.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.config import FolderMode, FolderSettings
from daemon.fileio import quarantine
from daemon.health import Heartbeat
from daemon.imageio import ImageRejected, metadata_to_json, read_tiff_header
from daemon.journal import Arrival, Journal
from daemon.metrics import ARRIVALS, INPUT_ERRORS, QUARANTINED, SOURCE_ERRORS
from daemon.sources.naming import check_naming, parse_metadata

__all__ = ["SOURCE", "FolderWatcher", "is_temporary_name"]

log = logging.getLogger(__name__)

SOURCE = "folder"
_TEMP_PREFIXES = ("~$",)
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


def is_temporary_name(name: str) -> bool:
    """True for hidden files and the temporary names of editors, browsers and copiers."""
    lower = name.lower()
    return lower.startswith(".") or lower.startswith(_TEMP_PREFIXES) or lower.endswith(_TEMP_SUFFIXES)


@dataclass
class _Pending:
    """A file seen changing; complete when closed after writing or quiet long enough."""

    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0  # monotonic time of the last observed change
    closed: bool = False


class FolderWatcher:
    """Watches one configured folder and records complete image files in the journal.

    ``on_ready`` is called (from a watcher thread) after each newly recorded arrival.
    Raises ConfigError at construction for an unknown ``naming`` or pattern group.
    """

    def __init__(
        self,
        settings: FolderSettings,
        journal: Journal,
        quarantine_dir: Path,
        on_ready: Callable[[], None],
    ) -> None:
        check_naming(settings)
        self.settings = settings
        # Resolved like the CLI's reprocess does, so both name a file by the same key.
        self.root = settings.path.expanduser().resolve()
        self._journal = journal
        self._quarantine_dir = quarantine_dir.expanduser().resolve()
        self._on_ready = on_ready
        self._pending: dict[Path, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._process_lock = threading.Lock()  # one decision per file at a time
        self._decided: dict[Path, list[int]] = {}  # fingerprints already recorded/rejected
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._timer: threading.Thread | None = None
        self._tick = max(0.05, min(0.5, settings.stable_seconds / 4))
        self.heartbeat = Heartbeat(f"folder-stability:{self.root.name}")  # for the watchdog

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (returns at once); creates the folder when missing.

        Raises OSError when the folder cannot be created or watched (e.g. the inotify
        watch limit is reached: use polling mode or raise ``fs.inotify.max_user_watches``).
        """
        if self._observer is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._observer = self._new_observer()
        self._timer = threading.Thread(
            target=self._stability_loop, name=f"folder-stability:{self.root.name}", daemon=True
        )
        self._timer.start()
        log.info("watching %s (%s mode, recursive=%s)", self.root, self.settings.mode.value,
                 self.settings.recursive)

    def _new_observer(self) -> BaseObserver:
        observer: BaseObserver
        if self.settings.mode is FolderMode.POLLING:
            observer = PollingObserver(timeout=self.settings.poll_seconds)
        else:
            observer = Observer()
        observer.schedule(_FolderEvents(self), str(self.root), recursive=self.settings.recursive)
        observer.start()
        return observer

    def _revive_observer(self) -> None:
        """Watch again after the folder vanished and came back (a share remounted).

        watchdog's emitter ends when its folder is deleted; without this only rescans
        would see new files. The folder is not created here: an unmounted share must not
        be replaced by a local folder.
        """
        observer = self._observer
        if observer is None or self._stopping.is_set():
            return
        if observer.is_alive() and all(e.is_alive() for e in observer.emitters):
            return
        if not self.root.is_dir():
            log.warning("watched folder %s is missing; waiting for it to come back", self.root)
            return
        log.warning("watcher of %s had stopped; starting it again", self.root)
        observer.stop()
        observer.join(timeout=5)
        self._observer = self._new_observer()

    def stop(self) -> None:
        """Stop the observer and the timer thread and wait for them (a few seconds at most)."""
        self._stopping.set()
        self._wake.set()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.join(timeout=10)

    def rescan(self) -> int:
        """Walk the folder and take every complete file not recorded yet.

        A file whose mtime is at least ``stable_seconds`` old is taken now; a younger one
        goes to the pending table. Also restarts the observer when the folder had
        vanished and is back. Returns the number of new arrivals recorded.
        """
        try:
            self._revive_observer()
        except OSError as exc:
            log.error("cannot watch %s again (rescans continue): %s", self.root, exc)
            SOURCE_ERRORS.labels(source=SOURCE, stage="observer").inc()
        present: set[Path] = set()
        recorded = 0
        for path in self._walk():
            present.add(path)
            try:
                recorded += self._rescan_one(path)
            except Exception:
                log.exception("rescan of %s failed", path)
                SOURCE_ERRORS.labels(source=SOURCE, stage="rescan").inc()
        with self._process_lock:
            for gone in set(self._decided) - present:
                del self._decided[gone]
        return recorded

    @property
    def watching(self) -> bool:
        """True while the observer and the stability thread run."""
        observer, timer = self._observer, self._timer
        return observer is not None and observer.is_alive() and timer is not None and timer.is_alive()

    @property
    def pending_count(self) -> int:
        """Files seen changing that are not complete yet."""
        with self._pending_lock:
            return len(self._pending)

    # --- what to watch ---------------------------------------------------------------

    def wanted(self, path: Path) -> bool:
        """Whether ``path`` is an input of this folder (not hidden, temporary or excluded)."""
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return False
        parts = relative.parts
        if not parts or (len(parts) > 1 and not self.settings.recursive):
            return False
        if any(part.startswith(".") for part in parts[:-1]) or is_temporary_name(parts[-1]):
            return False
        if path == self._quarantine_dir or self._quarantine_dir in path.parents:
            return False
        name = parts[-1].lower()
        return any(fnmatch.fnmatchcase(name, glob.lower()) for glob in self.settings.include)

    def _walk(self) -> Iterator[Path]:
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                log.warning("cannot list %s: %s", folder, exc)
                continue
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    hidden = entry.name.startswith(".")
                    if self.settings.recursive and not hidden and path != self._quarantine_dir:
                        stack.append(path)
                elif entry.is_file() and self.wanted(path):
                    yield path

    # --- pending table ---------------------------------------------------------------

    def note_change(self, path: Path, closed: bool) -> None:
        """An event says ``path`` changed (``closed``: its writer closed it)."""
        if not self.wanted(path):
            return
        with self._pending_lock:
            entry = self._pending.setdefault(path, _Pending(changed_at=time.monotonic()))
            if not closed:
                entry.changed_at = time.monotonic()
            entry.closed = closed
        if closed:
            self._wake.set()

    def forget(self, path: Path) -> None:
        """``path`` was deleted or renamed away."""
        with self._pending_lock:
            self._pending.pop(path, None)

    def note_tree(self, folder: Path) -> None:
        """A folder appeared (created or moved in): its files are pending."""
        if not self.settings.recursive or folder.name.startswith("."):
            return
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                self.note_change(Path(dirpath) / name, closed=False)

    def _stability_loop(self) -> None:
        while not self._stopping.is_set():
            self.heartbeat.beat()
            self._wake.wait(self._tick)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                complete = self._complete_files()
            except Exception:
                log.exception("stability check of %s failed", self.root)
                SOURCE_ERRORS.labels(source=SOURCE, stage="stability").inc()
                continue
            for path, quiet in complete:
                self.heartbeat.beat()  # a long batch is progress too
                try:
                    self._take(path, quiet)
                except Exception:
                    log.exception("taking %s failed; the next rescan retries it", path)
                    SOURCE_ERRORS.labels(source=SOURCE, stage="process").inc()

    def _complete_files(self) -> list[tuple[Path, bool]]:
        """Update the pending table from stat(); pop and return the complete files.

        Each comes with whether it has been quiet for ``stable_seconds`` (else it was
        closed after writing).
        """
        now = time.monotonic()
        complete: list[tuple[Path, bool]] = []
        with self._pending_lock:
            for path, entry in list(self._pending.items()):
                try:
                    stat = path.stat()
                except OSError:
                    del self._pending[path]  # vanished (or unreachable: rescan retries)
                    continue
                if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns, entry.changed_at = stat.st_size, stat.st_mtime_ns, now
                quiet = now - entry.changed_at >= self.settings.stable_seconds
                if quiet or (entry.closed and entry.size > 0):
                    del self._pending[path]
                    complete.append((path, quiet))
        return complete

    # --- deciding about one file -----------------------------------------------------

    def _rescan_one(self, path: Path) -> int:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return 0
        with self._pending_lock:
            if path in self._pending:
                return 0  # the timer decides
        if self._decided.get(path) == [stat.st_size, stat.st_mtime_ns]:
            return 0
        if time.time() - stat.st_mtime < self.settings.stable_seconds:
            self.note_change(path, closed=False)
            return 0
        return 1 if self._take(path, quiet=True) is not None else 0

    def _take(self, path: Path, quiet: bool) -> Arrival | None:
        """Record ``path`` (complete) as an arrival or reject it; returns a new arrival.

        A file that fails the header check is rejected only once it has been ``quiet``
        for ``stable_seconds``: a writer that closes between partial writes gets the
        time to finish.
        """
        with self._process_lock:
            arrival = self._decide(path, quiet)
        if arrival is not None:
            ARRIVALS.labels(source=SOURCE, kind="image").inc()
            log.info("arrival %d: %s (generation %d)", arrival.id, path, arrival.generation,
                     extra={"arrival_id": arrival.id, "outcome": "recorded"})
            self._on_ready()
        return arrival

    def _decide(self, path: Path, quiet: bool) -> Arrival | None:
        try:
            stat = path.stat()
        except OSError:
            return None  # vanished or unreachable: a later rescan retries
        fingerprint = [stat.st_size, stat.st_mtime_ns]
        if self._decided.get(path) == fingerprint:
            return None
        key = f"file:{path}"
        known = self._journal.arrival_by_key(key)
        if known is not None and known.attrs.get("fingerprint") == fingerprint:
            self._decided[path] = fingerprint
            return None
        attrs: dict[str, Any] = {
            "fingerprint": fingerprint,
            "relative_path": path.relative_to(self.root).as_posix(),
            "folder": str(self.root),
        }
        try:
            header = read_tiff_header(path)
            after = path.stat()
        except ImageRejected as exc:
            if not quiet:
                self.note_change(path, closed=False)
                return None
            attrs["metadata"] = metadata_to_json(parse_metadata(path, self.settings))
            self._reject(path, key, attrs, exc.reason, str(exc))
            self._decided[path] = fingerprint
            return None
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read %s (a later rescan retries): %s", path, exc)
            return None
        if [after.st_size, after.st_mtime_ns] != fingerprint:
            self.note_change(path, closed=False)  # written to while we looked: wait again
            return None
        attrs["metadata"] = metadata_to_json(parse_metadata(path, self.settings, header))
        arrival = self._journal.record_file_arrival(SOURCE, key, path, attrs)
        self._decided[path] = fingerprint
        return arrival

    def _reject(self, path: Path, key: str, attrs: dict[str, Any], reason: str, error: str) -> None:
        """Quarantine a copy first (at-least-once), then record the rejection and count it."""
        try:
            entry = quarantine(path, self._quarantine_dir, error, keep_source=True)
            QUARANTINED.labels(source=SOURCE).inc()
            attrs = {**attrs, "quarantine": str(entry)}
        except OSError as exc:
            log.error("cannot quarantine %s: %s", path, exc)
            SOURCE_ERRORS.labels(source=SOURCE, stage="quarantine").inc()
        self._journal.record_rejected_file(SOURCE, key, path, error, {**attrs, "reason": reason})
        INPUT_ERRORS.labels(source=SOURCE, reason=reason).inc()
        log.warning("rejected %s: %s", path, error, extra={"outcome": "rejected"})


class _FolderEvents(FileSystemEventHandler):
    """Turns watchdog events into pending-table updates; never lets an exception escape."""

    def __init__(self, watcher: FolderWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:
            log.exception("handling %s event for %s failed", event.event_type, event.src_path)
            SOURCE_ERRORS.labels(source=SOURCE, stage="event").inc()

    def _handle(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = Path(os.fsdecode(event.src_path))
        dest = Path(os.fsdecode(event.dest_path)) if event.dest_path else None
        if event.is_directory:
            if kind in ("created", "moved"):
                self._watcher.note_tree(dest if kind == "moved" and dest else src)
            return
        if kind in ("created", "modified"):
            self._watcher.note_change(src, closed=False)
        elif kind == "closed":
            self._watcher.note_change(src, closed=True)
        elif kind == "moved":
            self._watcher.forget(src)
            if dest is not None:
                self._watcher.note_change(dest, closed=True)  # renamed into place: complete
        elif kind == "deleted":
            self._watcher.forget(src)
