"""Resource conditions: a full or read-only disk and a GPU out of memory.

These are not input errors. A job that meets a full or read-only disk is *held* — not
counted as an attempt, its input not quarantined — until :class:`DiskWatch` sees the
condition clear; a GPU out of memory is retried with a smaller batch (see
``acqflow.daemon.workers``). Nothing here imports torch: an out-of-memory error is recognised by
its class name.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from acqflow.daemon import metrics

__all__ = ["DiskPath", "DiskWatch", "ResourceCondition", "is_gpu_oom", "resource_condition"]

log = logging.getLogger(__name__)

# SQLite primary result codes (the extended codes keep them in the low byte)
_SQLITE_READONLY = 8
_SQLITE_FULL = 13


class ResourceCondition(str, Enum):
    """Why work is held (the ``reason`` label of ``acqflow_jobs_held``)."""

    DISK_FULL = "disk_full"
    READ_ONLY = "read_only"


class DiskPath(str, Enum):
    """The daemon's folders whose free space is measured (``path`` label, a closed set)."""

    STATE = "state"
    SPOOL = "spool"
    OUTPUTS = "outputs"
    OUTBOX = "outbox"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def resource_condition(exc: BaseException) -> ResourceCondition | None:
    """The resource condition behind ``exc`` (or an error it was raised from), if any.

    ENOSPC and EDQUOT are a full disk, EROFS a read-only one; SQLite reports the same as
    SQLITE_FULL and SQLITE_READONLY.
    """
    for error in _chain(exc):
        if isinstance(error, OSError):
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return ResourceCondition.DISK_FULL
            if error.errno == errno.EROFS:
                return ResourceCondition.READ_ONLY
        if isinstance(error, sqlite3.Error):
            code = int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF
            if code == _SQLITE_FULL:
                return ResourceCondition.DISK_FULL
            if code == _SQLITE_READONLY:
                return ResourceCondition.READ_ONLY
    return None


def is_gpu_oom(exc: BaseException) -> bool:
    """True for a GPU out-of-memory error (``torch.cuda.OutOfMemoryError`` or a
    ``RuntimeError`` saying "CUDA out of memory"), recognised without importing torch."""
    for error in _chain(exc):
        if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
            return True
        if isinstance(error, RuntimeError) and "out of memory" in str(error) and "CUDA" in str(error):
            return True
    return False


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a folder not created yet is measured there)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


@dataclass(frozen=True)
class DiskState:
    """One measurement of a folder's file system."""

    free_bytes: int
    read_only: bool


def measure(path: Path) -> DiskState:
    """Free bytes (for unprivileged writers) and the read-only flag of ``path``'s file system."""
    stat = os.statvfs(_existing(path))
    return DiskState(stat.f_bavail * stat.f_frsize, bool(stat.f_flag & os.ST_RDONLY))


class DiskWatch:
    """Measures the daemon's folders and says whether a resource condition holds work.

    A condition holds while any folder's file system is read-only or has less than
    ``min_free_bytes`` free. A job that failed writing (:meth:`note_failure`) also keeps
    the condition until that folder has more free space than at the failure, so a job
    whose output is larger than the threshold is not retried until space returned.
    """

    def __init__(self, folders: Mapping[DiskPath, Path], min_free_bytes: int) -> None:
        self._folders = dict(folders)
        self._min_free = min_free_bytes
        self._lock = threading.Lock()
        self._free_at_failure: int | None = None
        self._failure: ResourceCondition | None = None
        self._condition: tuple[ResourceCondition, str] | None = None

    @property
    def condition(self) -> tuple[ResourceCondition, str] | None:
        """The condition of the last check and a line saying why, None when clear."""
        with self._lock:
            return self._condition

    def note_failure(self, condition: ResourceCondition) -> None:
        """A job just failed with ``condition``: hold work until the next check clears it."""
        free = min(measure(p).free_bytes for p in self._folders.values())
        with self._lock:
            self._failure = condition
            self._free_at_failure = free
            self._condition = (condition, f"a job failed writing: {condition.value}")

    def check(self) -> tuple[ResourceCondition, str] | None:
        """Measure every folder, set ``acqflow_disk_free_bytes``; returns the condition."""
        states = {name: measure(path) for name, path in self._folders.items()}
        for name, state in states.items():
            metrics.DISK_FREE.labels(name.value).set(state.free_bytes)
        found: tuple[ResourceCondition, str] | None = None
        for name, state in states.items():
            if state.read_only:
                why = f"{name.value} folder {self._folders[name]} is read-only"
                found = (ResourceCondition.READ_ONLY, why)
                break
            if state.free_bytes < self._min_free:
                found = (
                    ResourceCondition.DISK_FULL,
                    f"{name.value} folder {self._folders[name]} has {state.free_bytes} bytes free,"
                    f" under workers.min_free_bytes {self._min_free}",
                )
                break
        lowest = min((s.free_bytes for s in states.values()), default=0)
        with self._lock:
            if found is None and self._failure is not None and self._free_at_failure is not None:
                if lowest <= self._free_at_failure:
                    why = f"waiting for free space after a job failed: {self._failure.value}"
                    found = (self._failure, why)
                else:
                    self._failure = self._free_at_failure = None
            if found != self._condition:
                if found is None:
                    log.warning("resource condition cleared: held jobs resume")
                else:
                    log.warning("work held: %s", found[1])
            self._condition = found
        return found
