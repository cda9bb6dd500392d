"""The SCP's instance spool: streamed writes, one durable commit, recovery after a crash.

A C-STORE dataset is appended fragment by fragment to ``<spool>/.incoming/<n>.part``
behind its File Meta header, so nothing is reassembled in memory. Committing an
instance makes it durable in one step, *before* the peer is told Success:

1. ``fdatasync`` the file (its bytes and size are on the device; write-back of each
   fragment was started as it arrived, so little is left to write),
2. rename it to ``<spool>/<series>/<sop uid>.dcm`` (a series folder created here is
   itself made durable with an fsync of the spool folder),
3. ``fsync`` the series folder (the new name is on the device).

Only complete, synced files ever carry a final name, so after a power cut every
``*.dcm`` file in a series folder is an instance that may have been acknowledged (see
``acqflow.daemon.dicom.recovery``). ``.incoming`` only ever holds instances that were never
acknowledged; it is emptied at start.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import crc32c

from acqflow.daemon import metrics
from acqflow.daemon.dicom.part10 import is_valid_uid
from acqflow.daemon.dicom.slots import SLOTS, SlotPool, SlotRecovery, make_seal, truncate_sealed
from acqflow.daemon.fileio import fsync_dir, write_atomic

__all__ = ["INCOMING", "SERVED_MARKER", "IncomingInstance", "InstanceSpool", "current_boot_id"]

LOG = logging.getLogger(__name__)

INCOMING = ".incoming"
SERVED_MARKER = ".served-by"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class IncomingInstance:
    """One instance being received: its File Meta header, then dataset fragments.

    Taken by ``InstanceSpool.reserve`` ahead of time, while the association waits for
    its next request: a free slot when the spool has one (``acqflow.daemon.dicom.slots``),
    else a new empty file ``path``. ``start`` writes the header. An instance that
    outgrows its slot moves to ``path`` on the way.
    """

    def __init__(self, path: Path, pool: SlotPool | None = None, slot: Path | None = None) -> None:
        self.path = path
        self._pool = pool if slot is not None else None
        if slot is not None:
            self._fd: int | None = os.open(slot, os.O_RDWR | os.O_CLOEXEC)
            self._spill_to, self.path = path, slot
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.meta_size = 0
        self.size = 0
        self._crc = 0  # CRC-32C of the bytes so far (slots only)
        self._written_back = 0  # write-back started up to here

    @property
    def in_slot(self) -> bool:
        return self._pool is not None

    def start(self, meta: bytes) -> None:
        """Write the File Meta header; raises OSError."""
        if self.size:
            raise OSError("incoming spool file already started")
        self._write(memoryview(meta))
        self.meta_size = len(meta)

    def append(self, data: memoryview) -> None:
        """Write ``data`` at the end of the file; raises OSError (disk full, I/O error).

        Write-back is started every :data:`WRITE_BACK_BYTES`, so that the fdatasync of
        :meth:`commit` finds little left to write. Each start is a request to the
        device, which costs a VM exit on a virtual disk: starting one per 128 kB PDU
        measured slower than one per 256 kB. (Handing the request to another thread
        measured slower still: the wake-ups cost more than the request.)
        """
        fd = self._write(data)
        if _SYNC_FILE_RANGE is not None and self.size - self._written_back >= WRITE_BACK_BYTES:
            _SYNC_FILE_RANGE(fd, self._written_back, 0, _SYNC_FILE_RANGE_WRITE)
            self._written_back = self.size

    def _write(self, data: memoryview) -> int:
        pool = self._pool
        if pool is not None:
            if self.size + len(data) > pool.capacity:
                self._spill(pool)
            else:
                self._crc = crc32c.crc32c(data, self._crc)
        fd = self._require_open()
        while data:
            written = os.pwrite(fd, data, self.size)
            data = data[written:]
            self.size += written
        return fd

    def _spill(self, pool: SlotPool) -> None:
        """Move the bytes so far from the slot to a new file and give the slot back."""
        slot = self._require_open()
        fd = os.open(self._spill_to, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            copied = 0
            while copied < self.size:
                step = os.copy_file_range(slot, fd, self.size - copied, copied, copied)
                if step <= 0:
                    raise OSError(f"copying a spool slot stopped after {copied} bytes")
                copied += step
        except OSError:
            os.close(fd)
            self._spill_to.unlink(missing_ok=True)
            raise
        os.close(slot)
        pool.give_back(self.path)
        self._pool = None
        self._fd, self.path = fd, self._spill_to
        self._written_back = 0

    @contextmanager
    def dataset(self) -> Iterator[memoryview]:
        """The dataset bytes written so far (a read-only map of the file, no copy)."""
        fd = self._require_open()
        if self.size == self.meta_size:
            yield memoryview(b"")
            return
        with (
            mmap.mmap(fd, self.size, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as view,
            view[self.meta_size :] as dataset,
        ):
            yield dataset

    def commit(self, final: Path) -> None:
        """Make the instance durable under ``final``; raises OSError.

        A slot is sealed (``acqflow.daemon.dicom.slots``: one flush), a new file synced and
        renamed (the module docstring: two). The fdatasync runs on the calling thread:
        handing it to another one measured slower, because that thread first waits for
        the interpreter lock that the caller holds while it parses the header.
        """
        if self._pool is not None:
            self._seal(self._pool, final)
            return
        os.fdatasync(self._require_open())
        self._close()
        folder = final.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(folder.parent)
        os.replace(self.path, final)
        fsync_dir(folder)

    def _seal(self, pool: SlotPool, final: Path) -> None:
        fd = self._require_open()
        os.pwrite(fd, make_seal(self.size, self._crc, final.relative_to(pool.root).as_posix()), pool.capacity)
        os.fdatasync(fd)
        # Durable from here; the rest needs no flush (SlotPool.recover finishes it after a
        # crash). Should it fail, the instance is refused: the slot stays sealed, out of
        # the pool, and is put in place at the next start.
        self._pool = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, final)
        except OSError as exc:
            LOG.error("spool slot %s sealed but not put in place: %s", self.path.name, exc)
            metrics.SPOOL_SLOT_ERRORS.inc()
            self._close()
            raise
        # Cutting the slot to its instance frees blocks, which can be slow (online
        # discard): the pool's background thread does it.
        pool.defer_cut(fd, self.size, final)
        self._fd = None

    def discard(self) -> None:
        """Forget an instance that will not be acknowledged (never raises)."""
        pool, self._pool = self._pool, None
        self._close()
        if pool is not None:
            pool.give_back(self.path)
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            LOG.warning("cannot remove incoming spool file %s: %s", self.path.name, exc)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _require_open(self) -> int:
        if self._fd is None:
            raise OSError("incoming spool file already closed")
        return self._fd


class InstanceSpool:
    """The spool folder: where received instances are written and committed."""

    def __init__(self, root: Path, slots: int = 0, slot_bytes: int = 1 << 20) -> None:
        self.root = root
        self.incoming = root / INCOMING
        self._names = itertools.count()
        self.slots = SlotPool(root, slots, slot_bytes) if slots > 0 else None

    def prepare(self) -> int:
        """Create the folders and remove leftovers of unacknowledged instances.

        Returns how many leftovers were removed; raises OSError when the spool cannot
        be created.
        """
        self.incoming.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        fsync_dir(self.root)
        return removed

    def recover_slots(self) -> SlotRecovery | None:
        """Put sealed slots in place and cut placed ones still sealed; raises OSError.

        None when the spool has no slots (those left by an earlier setting are still
        put in place). Run after :meth:`prepare`, before serving.
        """
        pool = self.slots
        if pool is None and (self.root / SLOTS).is_dir():
            pool = SlotPool(self.root, 0, 1 << 20)
        if pool is None:
            return None
        found = pool.recover(self.path_for)
        for path in self.committed_files():
            if truncate_sealed(path):
                LOG.info("spool: %s/%s was still sealed, cut to its instance", path.parent.name, path.name)
        return found

    def reserve(self) -> IncomingInstance:
        """A free slot, else a new empty incoming file; raises OSError."""
        name = self.incoming / f"{os.getpid()}-{next(self._names)}.part"
        pool = self.slots
        slot = pool.take() if pool is not None else None
        if pool is None or slot is None:
            return IncomingInstance(name)
        try:
            return IncomingInstance(name, pool, slot)
        except OSError:
            pool.give_back(slot)
            raise

    def path_for(self, series_uid: str, sop_uid: str) -> Path:
        """Where an instance of ``series_uid`` lives once committed: the UIDs themselves,
        so two instances can never share a file. Raises ValueError for anything but a
        valid UID (digits and dots: never a separator, never ``.`` or ``..``, never one
        of the spool's own dot-folders)."""
        for uid in (series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise ValueError("not a valid UID: no spool name for it")
        return self.root / series_uid / f"{sop_uid}.dcm"

    def committed_files(self) -> Iterator[Path]:
        """Every committed instance file (``<series>/<sop uid>.dcm``)."""
        for folder in self.root.iterdir():
            if folder.name not in (INCOMING, SLOTS) and folder.is_dir():
                yield from folder.glob("*.dcm")

    def last_served(self) -> tuple[str | None, str | None]:
        """(boot id, journal token) recorded by the last :meth:`mark_served`, or Nones."""
        try:
            marker = json.loads((self.root / SERVED_MARKER).read_text())
            return str(marker["boot_id"]), str(marker["journal_token"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def mark_served(self, journal_token: str) -> None:
        """Record (durably) this boot and the journal now serving the spool; raises OSError."""
        marker = {"boot_id": current_boot_id(), "journal_token": journal_token}
        write_atomic(self.root / SERVED_MARKER, json.dumps(marker).encode())


def current_boot_id() -> str | None:
    """The kernel's id of this boot (Linux), None where there is none."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux; the os module has no binding), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start write-out of dirty pages, do not wait
WRITE_BACK_BYTES = 256 * 1024
