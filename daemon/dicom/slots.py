"""Spool slots: pre-written files that make an instance durable with one data flush.

A new file needs two device flushes before it survives a power cut: one for its bytes,
one for its name (``acqflow.daemon.dicom.spool``). A *slot* is a file of a fixed size
(``dicom.spool_slot_bytes``) whose blocks were written and synced ahead of time, so an
instance written into it changes no file-system metadata and one ``fdatasync`` makes it
durable:

1. the Part-10 bytes are written from offset 0, a CRC-32C kept as they arrive;
2. a *seal* goes into the slot's last 4 KiB: length, CRC-32C of the bytes, the
   instance's place in the spool (``<series>/<sop uid>.dcm``) and a CRC-32C of the seal;
3. ``fdatasync`` — from here the instance is durable and may be acknowledged;
4. the slot is renamed to its place, and a background thread cuts it to its length
   (:meth:`SlotPool.settle` waits for that before a series is handed on).
   Neither step is flushed: after a crash, a slot still sealed or already cut but not
   yet in place, or a placed file still sealed, is finished by :meth:`SlotPool.recover`
   and ``truncate_sealed`` at the next start.

A slot whose seal is complete but whose bytes do not match the CRC was torn by a crash
during step 3 — never acknowledged — and is reused. Slot names carry their size
(``slot-<bytes>-<id>``), so a cut slot is told apart from a full one after the size
setting changed. A used slot leaves the pool; new ones are written by a background
thread once the SCP has been idle for :data:`IDLE_SECONDS` (a burst is taken at the
one-flush rate while the pool lasts, then at the two-flush rate of new files).
An instance larger than a slot moves to a new file on the way
(``IncomingInstance``, which writes, seals and places slots).

Free slots hold disk space that incoming instances written as new files may need, so the
pool is sized to the free space of its file system: free slots never hold more than
:data:`SPACE_SHARE` of the space that is free or held by them. The pool is sized so at
start (a warning says when it cannot have its configured size), is not refilled beyond
it, and gives free slots back to the file system as soon as it fills (checked by the
filling thread every quarter second). A slot in use costs nothing: the instance is
written into its blocks, and the rest is freed by the cut.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import crc32c
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from acqflow.daemon import metrics
from acqflow.daemon.fileio import fsync_dir, fsync_file

__all__ = [
    "IDLE_SECONDS",
    "SEAL_BYTES",
    "SLOTS",
    "SPACE_SHARE",
    "SlotPool",
    "SlotRecovery",
    "free_bytes",
    "make_seal",
    "read_seal",
    "truncate_sealed",
]

LOG = logging.getLogger(__name__)

SLOTS = ".slots"
SEAL_BYTES = 4096
IDLE_SECONDS = 1.0  # no slot taken for this long: the pool is refilled
FILL_BATCH = 16  # new slots per folder fsync
SPACE_SHARE = 0.25  # of the space free or held by free slots, the most free slots may hold
_MAGIC = b"ACQFSEAL"
_VERSION = 1
_HEADER = struct.Struct("<8sHHQI")  # magic, version, place length, data length, data CRC-32C
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Seal:
    length: int
    crc: int
    place: str  # relative to the spool root


def make_seal(length: int, crc: int, place: str) -> bytes:
    """The seal bytes for an instance of ``length`` bytes placed at ``place``."""
    encoded = place.encode()
    body = _HEADER.pack(_MAGIC, _VERSION, len(encoded), length, crc) + encoded
    if len(body) + _CRC.size > SEAL_BYTES:
        raise ValueError(f"spool place too long for a seal: {place!r}")
    return body + _CRC.pack(crc32c.crc32c(body))


def read_seal(block: bytes) -> Seal | None:
    """The seal in ``block`` (a slot's last 4 KiB), None where there is no whole seal."""
    if len(block) < _HEADER.size + _CRC.size:
        return None
    magic, version, place_len, length, crc = _HEADER.unpack_from(block)
    end = _HEADER.size + place_len
    if magic != _MAGIC or version != _VERSION or end + _CRC.size > len(block):
        return None
    if _CRC.unpack_from(block, end)[0] != crc32c.crc32c(block[:end]):
        return None
    try:
        place = block[_HEADER.size : end].decode()
    except UnicodeDecodeError:
        return None
    return Seal(length, crc, place)


@dataclass(frozen=True)
class SlotRecovery:
    """What :meth:`SlotPool.recover` found."""

    placed: int  # sealed or cut slots moved to their place (may have been acknowledged)
    torn: int  # sealed slots whose bytes did not match (never acknowledged), unsealed
    free: int  # slots ready for use
    removed: int  # unfinished new slots and slots of another size, deleted


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the file system of ``path``; raises
    OSError."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class SlotPool:
    """The slots of one spool (``<spool>/.slots``); thread-safe.

    ``count`` is the configured size; ``target`` what the free space allows of it now.
    ``free_space(path)`` measures the file system (:func:`free_bytes`; tests pass others).
    """

    def __init__(
        self,
        spool_root: Path,
        count: int,
        slot_bytes: int,
        free_space: Callable[[Path], int] = free_bytes,
    ) -> None:
        if slot_bytes % SEAL_BYTES or slot_bytes < 2 * SEAL_BYTES:
            raise ValueError(f"slot size must be a multiple of {SEAL_BYTES} bytes and at least two of them")
        self.root = spool_root
        self.folder = spool_root / SLOTS
        self.configured = count
        self.target = count
        self._free_space = free_space
        self._short = False  # the last sizing could not have the configured size
        self.slot_bytes = slot_bytes
        self.capacity = slot_bytes - SEAL_BYTES  # room for the Part-10 bytes
        self._free: list[Path] = []
        self._lock = threading.Lock()
        self._last_take = 0.0
        self._stop = threading.Event()
        self._cut_queue: queue.SimpleQueue[tuple[int, int, Path] | None] = queue.SimpleQueue()
        self._cut_done = threading.Condition()
        self._cut_pending = 0
        self._cutter: threading.Thread | None = None
        self._filler: threading.Thread | None = None
        self._zeros = bytes(min(slot_bytes, 1 << 20))

    # --- start and stop ---------------------------------------------------------

    def recover(self, place_of: Callable[[str, str], Path]) -> SlotRecovery:
        """Sort out the slot folder before serving; raises OSError when it cannot be made.

        ``place_of(series_uid, sop_uid)`` is where a cut slot (its seal already cut off)
        belongs. A cut slot that cannot be read is logged, counted and left in place.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        placed = torn = removed = 0
        free: list[Path] = []
        for path in sorted(self.folder.iterdir()):
            size_in_name = _size_in_name(path.name)
            if size_in_name is None:  # fill-*: a new slot that was never finished
                path.unlink(missing_ok=True)
                removed += 1
                continue
            size = path.stat().st_size
            if size == size_in_name:
                outcome = self._recover_full(path, size)
                torn += outcome == "torn"
                if outcome == "placed":
                    placed += 1
                elif size == self.slot_bytes and len(free) < self.configured:
                    free.append(path)
                else:  # a slot of a former size or count setting
                    path.unlink()
                    removed += 1
            elif _place_cut(path, place_of):
                placed += 1
        with self._lock:
            self._free = free
        removed += self._fit_to_space()
        fsync_dir(self.folder)
        fsync_dir(self.root)
        left = self.free
        metrics.SPOOL_SLOTS_FREE.set(left)
        return SlotRecovery(placed, torn, left, removed)

    def _recover_full(self, path: Path, size: int) -> str:
        """"placed", "torn" or "free" for a slot of its full size."""
        with path.open("rb") as handle:
            seal = _seal_at_end(handle, size)
            if seal is None:
                return "free"
            handle.seek(0)
            torn = seal.length > size - SEAL_BYTES or _crc_of(handle, seal.length) != seal.crc
        if torn:
            LOG.info("spool slot %s: seal without its bytes (never acknowledged), reused", path.name)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:  # the seal goes, so that no later partial write can ever match it
                os.pwrite(fd, bytes(SEAL_BYTES), size - SEAL_BYTES)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return "torn"
        final = self.root / seal.place
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        _cut(final, seal.length)
        fsync_dir(final.parent)
        LOG.info("spool slot %s: sealed instance put in place as %s", path.name, seal.place)
        return "placed"

    def start(self) -> None:
        """Start the background threads: one keeps the pool at its size, one cuts."""
        if self.configured <= 0 or self._filler is not None:
            return
        self._stop.clear()
        self._cutter = threading.Thread(target=self._cut_loop, name="acqflow-spool-cuts", daemon=True)
        self._cutter.start()
        self._filler = threading.Thread(target=self._fill_loop, name="acqflow-spool-slots", daemon=True)
        self._filler.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background threads (a slot being written and the cuts queued are
        finished first)."""
        filler, self._filler = self._filler, None
        if filler is None:
            return
        self._stop.set()
        deadline = time.monotonic() + timeout
        filler.join(timeout)
        cutter, self._cutter = self._cutter, None
        if cutter is not None:
            self._cut_queue.put(None)  # after every cut already queued
            cutter.join(max(0.0, deadline - time.monotonic()))

    # --- use --------------------------------------------------------------------

    @property
    def free(self) -> int:
        with self._lock:
            return len(self._free)

    def take(self) -> Path | None:
        """A free slot for one instance (``IncomingInstance``), None when the pool is empty."""
        with self._lock:
            self._last_take = time.monotonic()
            if not self._free:
                return None
            path = self._free.pop()
            left = len(self._free)
        metrics.SPOOL_SLOTS_FREE.set(left)
        return path

    def give_back(self, path: Path) -> None:
        """Return an unsealed slot to the pool (its old bytes are harmless without a seal)."""
        with self._lock:
            self._free.append(path)
            left = len(self._free)
        metrics.SPOOL_SLOTS_FREE.set(left)

    def defer_cut(self, fd: int, size: int, path: Path) -> None:
        """Have the sealed slot open as ``fd`` (now at ``path``) cut to ``size`` bytes by
        the background thread; the pool owns ``fd`` from here. Cutting frees blocks,
        which can take longer than the rest of a commit (online discard)."""
        with self._cut_done:
            self._cut_pending += 1
        self._cut_queue.put((fd, size, path))

    def settle(self, timeout: float = 10.0) -> bool:
        """Block until every deferred cut is done; False on timeout. Call before reading
        an instance file that was just received."""
        with self._cut_done:
            return self._cut_done.wait_for(lambda: self._cut_pending == 0, timeout)

    def _cut_loop(self) -> None:
        while True:
            item = self._cut_queue.get()
            if item is None:
                return
            fd, size, path = item
            try:
                os.ftruncate(fd, size)
            except OSError as exc:  # the seal stays on: the file is cut at the next start
                LOG.error("spool file %s: cannot cut its slot to the instance: %s", path.name, exc)
                metrics.SPOOL_SLOT_ERRORS.inc()
            finally:
                os.close(fd)
                with self._cut_done:
                    self._cut_pending -= 1
                    self._cut_done.notify_all()

    def wait_filled(self, timeout: float) -> bool:
        """Block until the pool holds its target number of slots; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.free < self.target:
            if time.monotonic() >= deadline or self._filler is None:
                return False
            time.sleep(0.05)
        return True

    # --- sizing to the free space -----------------------------------------------

    def _fit_to_space(self) -> int:
        """Set :attr:`target` from the free space and delete free slots beyond it (not
        flushed: a slot deleted again by a crash costs nothing). Returns how many went."""
        with self._lock:
            held = len(self._free)
        try:
            room = self._free_space(self.root) + held * self.slot_bytes
        except OSError as exc:  # cannot tell: no new slots, the ones there stay
            LOG.warning("spool slots: cannot measure free space: %s", exc)
            self.target = min(self.target, held)
            return 0
        self.target = min(self.configured, int(room * SPACE_SHARE) // self.slot_bytes)
        self._report_size(room)
        with self._lock:
            excess = self._free[self.target :]
            del self._free[self.target :]
        for path in excess:
            path.unlink(missing_ok=True)
        if excess:
            metrics.SPOOL_SLOTS_FREE.set(self.free)
        return len(excess)

    def _report_size(self, room: int) -> None:
        """Log when the pool cannot have its configured size, and when it can again."""
        short = self.target < self.configured
        if short and not self._short:
            LOG.warning(
                "spool slots: room for %d of the %d configured (%d MB free or in free slots; "
                "slots take at most %d%% of it, the rest is left to incoming instances)",
                self.target,
                self.configured,
                room >> 20,
                round(SPACE_SHARE * 100),
            )
        elif self._short and not short:
            LOG.info("spool slots: room for all %d configured again", self.configured)
        self._short = short

    # --- filling ----------------------------------------------------------------

    def _fill_loop(self) -> None:
        retry_at = 0.0  # after a failed fill (disk full): serve with new files until then
        while not self._stop.is_set():
            try:
                if self._fit_to_space():
                    fsync_dir(self.folder)
            except OSError as exc:
                LOG.warning("spool slots: cannot give free slots back: %s", exc)
                metrics.SPOOL_SLOT_ERRORS.inc()
            with self._lock:
                missing = self.target - len(self._free)
                idle = time.monotonic() - self._last_take >= IDLE_SECONDS
            if missing <= 0 or not idle or time.monotonic() < retry_at:
                self._stop.wait(IDLE_SECONDS / 4)
                continue
            try:
                made = self._fill(min(missing, FILL_BATCH))
            except OSError as exc:
                LOG.warning("spool slots: cannot write new slots: %s", exc)
                metrics.SPOOL_SLOT_ERRORS.inc()
                retry_at = time.monotonic() + 30.0
                continue
            with self._lock:
                self._free.extend(made)
                left = len(self._free)
            metrics.SPOOL_SLOTS_FREE.set(left)

    def _fill(self, count: int) -> list[Path]:
        """Write ``count`` new slots and make their names durable; raises OSError."""
        made: list[Path] = []
        for _ in range(count):
            if self._stop.is_set():
                break
            token = uuid.uuid4().hex[:16]
            unfinished = self.folder / f"fill-{token}"
            fd = os.open(unfinished, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                left = self.slot_bytes
                while left:
                    left -= os.write(fd, memoryview(self._zeros)[: min(left, len(self._zeros))])
                os.fdatasync(fd)
            except OSError:
                os.close(fd)
                unfinished.unlink(missing_ok=True)
                raise
            os.close(fd)
            slot = self.folder / f"slot-{self.slot_bytes}-{token}"
            os.replace(unfinished, slot)
            made.append(slot)
        if made:
            fsync_dir(self.folder)  # only now may a slot carry an instance
        return made


def _size_in_name(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "slot" and parts[1].isdigit():
        return int(parts[1])
    return None


def _place_cut(path: Path, place_of: Callable[[str, str], Path]) -> bool:
    """Put a slot that was cut to its instance (seal gone) in place; False if unreadable."""
    try:
        dataset = dcmread(path, stop_before_pixels=True)
        final = place_of(str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        fsync_dir(final.parent)
    except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, KeyError, OSError) as exc:
        LOG.error("spool slot %s cut to an instance cannot be read: %s", path.name, exc)
        metrics.INPUT_ERRORS.labels("dicom", "spool-recovery").inc()
        return False
    LOG.info("spool slot %s: instance put in place as %s", path.name, final.name)
    return True


def truncate_sealed(path: Path) -> bool:
    """Cut a placed slot whose seal is still on (the cut was not durable); True if cut."""
    size = path.stat().st_size
    if size % SEAL_BYTES or size < 2 * SEAL_BYTES:
        return False
    with path.open("rb") as handle:
        seal = _seal_at_end(handle, size)
    if seal is None or seal.length > size - SEAL_BYTES:
        return False
    _cut(path, seal.length)
    return True


def _seal_at_end(handle: BinaryIO, size: int) -> Seal | None:
    """The seal in the last 4 KiB of a file of ``size`` bytes, None where there is none."""
    handle.seek(size - SEAL_BYTES)
    return read_seal(handle.read(SEAL_BYTES))


def _cut(path: Path, length: int) -> None:
    """Cut a placed slot to its instance, durably (recovery only: no flush is spared here)."""
    os.truncate(path, length)
    fsync_file(path)


def _crc_of(handle: BinaryIO, length: int) -> int:
    crc = 0
    left = length
    while left:
        chunk = handle.read(min(left, 1 << 20))
        if not chunk:
            return -1
        crc = crc32c.crc32c(chunk, crc)
        left -= len(chunk)
    return crc
