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
``file:<absolute path>`` (each further image of a multi-image OME-TIFF an arrival of its
own, ``file:<absolute path>#series=N``: :mod:`acqflow.daemon.folders.image_inputs`); its
fingerprint ``[size, mtime_ns]`` tells a rewritten file (new generation) from events
repeating for the same one (nothing happens). Zero-byte,
non-TIFF and truncated files are rejected here: a rejected arrival with the error in the
journal, a copy in quarantine, ``acqflow_input_errors_total`` counted. A file failing the
header check is *held* first, because its writer may only have paused: it is checked
again after each change and rejected only once it has not changed for
``incomplete_grace_seconds``; nothing is journalled while it is held.

Symbolic links are not followed unless ``follow_symlinks`` is set, and then only to a
file inside the folder or inside one of ``symlink_roots``. A link to anywhere else is
refused once per version of the link (a rejected arrival, reason ``symlink_outside``,
nothing copied to quarantine); a link to a file of the folder itself is skipped, the file
being an input in its own right. Links to folders are never descended. A file whose name
is not valid UTF-8 cannot be named in the journal: it is rejected once (reason
``name_not_utf8``, copied to quarantine under its own bytes) instead of failing on every
rescan.

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
from pathlib import Path
from stat import S_ISREG
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from acqflow.daemon.config import FolderMode, FolderSettings
from acqflow.daemon.fileio import quarantine
from acqflow.daemon.folders.image_inputs import image_inputs
from acqflow.daemon.folders.naming import check_naming, parse_metadata
from acqflow.daemon.folders.paths import LinkPolicy, display_path, is_utf8
from acqflow.daemon.folders.pending import PendingFiles
from acqflow.daemon.health import Heartbeat
from acqflow.daemon.imageio import ImageRejected, TiffHeader, metadata_to_json, read_tiff_header
from acqflow.daemon.journal import Arrival, Journal
from acqflow.daemon.metrics import ARRIVALS, INPUT_ERRORS, QUARANTINED, SOURCE_ERRORS

__all__ = ["SOURCE", "FolderWatcher", "is_temporary_name"]

log = logging.getLogger(__name__)

SOURCE = "folder"
_TEMP_PREFIXES = ("~$",)
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


def is_temporary_name(name: str) -> bool:
    """True for hidden files and the temporary names of editors, browsers and copiers."""
    lower = name.lower()
    return lower.startswith(".") or lower.startswith(_TEMP_PREFIXES) or lower.endswith(_TEMP_SUFFIXES)


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
        self._pending = PendingFiles(settings.stable_seconds, settings.incomplete_grace_seconds)
        self._process_lock = threading.Lock()  # one decision per file at a time
        self._decided: dict[Path, list[int]] = {}  # fingerprints already recorded/rejected
        self._links = LinkPolicy.resolved(self.root, self._quarantine_dir, settings.follow_symlinks,
                                          settings.symlink_roots)
        self._folder_links: set[Path] = set()  # symlinked folders already logged
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
        for path, is_link in self._walk():
            present.add(path)
            try:
                recorded += self._rescan_one(path, is_link)
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

    def _walk(self) -> Iterator[tuple[Path, bool]]:
        """The wanted files of the tree, each with whether it is a symbolic link."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                log.warning("cannot list %s: %s", display_path(folder), exc)
                continue
            for entry in entries:
                path = Path(entry.path)
                try:
                    if entry.is_symlink():
                        if self.wanted(path):
                            yield path, True  # where it leads is judged before anything is read
                        else:
                            self._note_folder_link(entry, path)
                    elif entry.is_dir(follow_symlinks=False):
                        hidden = entry.name.startswith(".")
                        if self.settings.recursive and not hidden and path != self._quarantine_dir:
                            stack.append(path)
                    elif entry.is_file(follow_symlinks=False) and self.wanted(path):
                        yield path, False
                except OSError as exc:
                    log.warning("cannot look at %s: %s", display_path(path), exc)

    def _note_folder_link(self, entry: os.DirEntry[str], path: Path) -> None:
        if path not in self._folder_links and entry.is_dir():
            self._folder_links.add(path)
            log.info("not descending into %s: a symbolic link to a folder (watch its target"
                     " as a folder of its own)", display_path(path))

    # --- pending table ---------------------------------------------------------------

    def note_change(self, path: Path, closed: bool) -> None:
        """An event says ``path`` changed (``closed``: its writer closed it)."""
        if not self.wanted(path):
            return
        self._pending.note(path, closed)
        if closed:
            self._wake.set()

    def forget(self, path: Path) -> None:
        """``path`` was deleted or renamed away."""
        self._pending.forget(path)

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
                complete = self._pending.due()
            except Exception:
                log.exception("stability check of %s failed", self.root)
                SOURCE_ERRORS.labels(source=SOURCE, stage="stability").inc()
                continue
            for path, quiet_for in complete:
                self.heartbeat.beat()  # a long batch is progress too
                try:
                    self._take(path, quiet_for)
                except Exception:
                    log.exception("taking %s failed; the next rescan retries it", display_path(path))
                    SOURCE_ERRORS.labels(source=SOURCE, stage="process").inc()

    # --- deciding about one file -----------------------------------------------------

    def _rescan_one(self, path: Path, is_link: bool) -> int:
        if is_link:
            target = self._links.target(path)
            if target is not None and not self._links.may_follow(target):
                with self._process_lock:
                    self._refuse_link(path, target)
                return 0
        try:
            stat = path.stat()
        except FileNotFoundError:
            return 0
        if path in self._pending:
            return 0  # the timer decides
        if self._decided.get(path) == [stat.st_size, stat.st_mtime_ns]:
            return 0
        quiet_for = time.time() - stat.st_mtime
        if quiet_for < self.settings.stable_seconds:
            self.note_change(path, closed=False)
            return 0
        return len(self._take(path, quiet_for))

    def _take(self, path: Path, quiet_for: float) -> list[Arrival]:
        """Record ``path`` (complete) as arrivals, one per image of a multi-image OME-TIFF,
        or reject it; returns the new arrivals.

        ``quiet_for``: seconds since it last changed. A file that fails the header check
        is held, not rejected, until it has been quiet for the grace period: a writer
        that pauses or closes between partial writes gets the time to finish.
        """
        with self._process_lock:
            arrivals = self._decide(path, quiet_for)
        for arrival in arrivals:
            ARRIVALS.labels(source=SOURCE, kind="image").inc()
            log.info("arrival %d: %s (generation %d)", arrival.id, arrival.key.removeprefix("file:"),
                     arrival.generation, extra={"arrival_id": arrival.id, "outcome": "recorded"})
        if arrivals:
            self._on_ready()
        return arrivals

    def _decide(self, path: Path, quiet_for: float) -> list[Arrival]:
        target = self._links.target(path)
        if target is not None and not self._links.may_follow(target):
            self._refuse_link(path, target)
            return []
        try:
            stat = path.stat()
        except OSError:
            return []  # vanished or unreachable: a later rescan retries
        if not S_ISREG(stat.st_mode):
            return []  # a link followed to a folder, a device or a pipe: no input
        fingerprint = [stat.st_size, stat.st_mtime_ns]
        if self._decided.get(path) == fingerprint:
            return []
        key = self._key(path)
        known = self._journal.arrival_by_key(key)
        if known is not None and known.attrs.get("fingerprint") == fingerprint:
            self._decided[path] = fingerprint
            return []
        attrs: dict[str, Any] = {
            "fingerprint": fingerprint,
            "relative_path": display_path(path.relative_to(self.root)),
            "folder": str(self.root),
        }
        if not is_utf8(path):
            attrs["name_not_utf8"] = True
        header = self._checked_header(path, key, attrs, quiet_for)
        if header is None:
            return []
        after = self._stat_or_none(path)
        if after is None or [after.st_size, after.st_mtime_ns] != fingerprint or (
            self._links.target(path) != target
        ):
            self.note_change(path, closed=False)  # written to while we looked: wait again
            return []
        if "name_not_utf8" in attrs:
            error = (f"{display_path(Path(path.name))}: the file name is not valid UTF-8; rename"
                     " the file (or mount the share with its character set) to have it processed")
            self._reject(path, key, attrs, "name_not_utf8", error)
            self._decided[path] = fingerprint
            return []
        recorded = [self._journal.record_file_arrival(SOURCE, one.key, path, one.attrs)
                    for one in image_inputs(key, path, self.settings, header, attrs)]
        self._decided[path] = fingerprint
        return [arrival for arrival in recorded if arrival is not None]

    def _checked_header(
        self, path: Path, key: str, attrs: dict[str, Any], quiet_for: float
    ) -> TiffHeader | None:
        """The header of ``path``, or None when it is held (maybe incomplete), rejected or unreadable."""
        fingerprint: list[int] = attrs["fingerprint"]
        try:
            return read_tiff_header(path)
        except ImageRejected as exc:
            if quiet_for < self._pending.grace_seconds:  # its writer may only have paused
                log.debug("holding %s (%s) until it changes or stays unchanged for %.0f s",
                          display_path(path), exc.reason, self._pending.grace_seconds)
                self._pending.hold(path, fingerprint, quiet_for)
                return None
            if "name_not_utf8" not in attrs:
                attrs["metadata"] = metadata_to_json(parse_metadata(path, self.settings))
            error = f"{exc} (unchanged for {quiet_for:.0f} s)"
            self._reject(path, key, attrs, exc.reason, error)
            self._decided[path] = fingerprint
            return None
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read %s (a later rescan retries): %s", display_path(path), exc)
            return None

    @staticmethod
    def _stat_or_none(path: Path) -> os.stat_result | None:
        try:
            return path.stat()
        except OSError:
            return None

    def _key(self, path: Path) -> str:
        """The journal key of ``path``: ``file:<absolute path>``, non-UTF-8 bytes escaped."""
        key = f"file:{display_path(path)}"
        if not is_utf8(path):
            known = self._journal.arrival_by_key(key)
            if known is not None and not known.attrs.get("name_not_utf8"):
                key += "#name-not-utf8"  # a file really is named like the escaped form
        return key

    # --- symbolic links --------------------------------------------------------------

    def _refuse_link(self, path: Path, target: Path) -> None:
        """Skip (its target is watched itself) or refuse a link, once per version of it."""
        try:
            link = path.lstat()
        except OSError:
            return
        fingerprint = [link.st_size, link.st_mtime_ns]
        if self._decided.get(path) == fingerprint:
            return
        self._decided[path] = fingerprint
        if not self.settings.follow_symlinks and self._links.inside(target):
            log.info("skipping %s: a symbolic link to %s, which is taken as a file of its own",
                     display_path(path), display_path(target))
            return
        key = self._key(path)
        known = self._journal.arrival_by_key(key)
        if known is not None and known.attrs.get("fingerprint") == fingerprint:
            return
        error = (f"{display_path(Path(path.name))}: a symbolic link to {display_path(target)},"
                 " outside the watched folder: not followed (folders.follow_symlinks,"
                 " folders.symlink_roots)")
        attrs = {"fingerprint": fingerprint, "relative_path": display_path(path.relative_to(self.root)),
                 "folder": str(self.root), "reason": "symlink_outside"}
        self._journal.record_rejected_file(SOURCE, key, Path(display_path(path)), error, attrs)
        INPUT_ERRORS.labels(source=SOURCE, reason="symlink_outside").inc()
        log.warning("refused %s: %s", display_path(path), error)

    def _reject(self, path: Path, key: str, attrs: dict[str, Any], reason: str, error: str) -> None:
        """Quarantine a copy first (at-least-once), then record the rejection and count it.

        Never a copy through a symbolic link: what it points to is not an input to copy.
        """
        shown = display_path(path)
        if self._links.target(path) is not None:
            log.info("not copying %s to quarantine: reached through a symbolic link", shown)
        else:
            try:
                entry = quarantine(path, self._quarantine_dir, error, keep_source=True)
                QUARANTINED.labels(source=SOURCE).inc()
                attrs = {**attrs, "quarantine": display_path(entry)}
            except OSError as exc:
                log.error("cannot quarantine %s: %s", shown, exc)
                SOURCE_ERRORS.labels(source=SOURCE, stage="quarantine").inc()
        self._journal.record_rejected_file(SOURCE, key, Path(shown), error, {**attrs, "reason": reason})
        INPUT_ERRORS.labels(source=SOURCE, reason=reason).inc()
        log.warning("rejected %s: %s", shown, error, extra={"outcome": "rejected"})


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
