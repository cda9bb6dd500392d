"""``acqflow import``: an unorganised tree of DICOM files in, series arrivals out.

The walk goes depth-first through every root (folders in name order, symbolic links
followed, a folder reached twice — a link loop — reported once and not entered again)
and reads only the header of each file (never the pixel data). Instances are grouped
into series by Series Instance UID, wherever in the tree they lie, so one folder may hold
several series and one series may span folders. Each series is registered as one arrival
of source ``import`` that references the original files (or, with ``copy``, copies in the
daemon's state folder); the daemon routes it like a series received over DICOM, and its
results are the same, byte for byte, because the series key is the same.

Memory stays bounded whatever the size of the tree: the walk holds one folder's listing
and the set of folders seen; headers go to the journal (``import_files``) in batches, and
registration reads them back one series at a time. A second run reads only files that are
new or changed since the last, and registers only instances the journal does not hold.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from acqflow.daemon.dicom.import_index import (
    IMPORT_AE,
    FileState,
    ImportIndex,
    SeriesRegistration,
    StagedFile,
)
from acqflow.daemon.dicom.part10 import InstanceHeader, invalid_uid_attribute
from acqflow.daemon.fileio import fsync_dir, fsync_file
from acqflow.daemon.journal import Journal

__all__ = ["DicomImport", "ImportProgress", "ImportSummary", "SkipReason"]

LOG = logging.getLogger(__name__)

MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
_HEADER_TAGS = [Tag(k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                 "SeriesInstanceUID", "Modality", "InstanceNumber")]
_BATCH = 500  # header rows per journal commit
EXAMPLES = 3  # paths kept per reason for the summary (the journal keeps every one)


class SkipReason(str, Enum):
    """Why a file or folder the walk found is not an instance to register."""

    NOT_DICOM = "not DICOM"
    UNREADABLE = "unreadable"
    NO_UID = "no usable UIDs (a corrupt or truncated header)"
    DICOMDIR = "DICOMDIR (a media index; its instances are read from their own files)"
    DUPLICATE = "duplicate instance"
    LINK_LOOP = "symbolic link loop (folder already walked)"
    NOT_A_FILE = "not a regular file"


@dataclass
class ImportSummary:
    """What one import found and did; ``skipped`` counts files (and folders) per reason,
    ``examples`` keeps the first few of each with their detail."""

    roots: tuple[str, ...]
    files: int = 0  # regular files the walk found
    read: int = 0  # headers read this run (new or changed files)
    unchanged: int = 0  # seen by an earlier import, not read again
    series_new: int = 0
    series_updated: int = 0  # series the journal held, with new instances
    instances: int = 0  # instances registered this run
    mixed_folders: int = 0  # folders holding more than one series
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    series_failed: list[str] = field(default_factory=list)  # could not be registered (disk, journal)
    seconds: float = 0.0

    def skip(self, reason: SkipReason, detail: str) -> None:
        self.skipped[reason.value] += 1
        kept = self.examples.setdefault(reason.value, [])
        if len(kept) < EXAMPLES:
            kept.append(detail)

    def as_dict(self) -> dict[str, object]:
        return {
            "roots": list(self.roots), "files": self.files, "read": self.read, "unchanged": self.unchanged,
            "series_new": self.series_new, "series_updated": self.series_updated,
            "instances": self.instances, "mixed_folders": self.mixed_folders,
            "skipped": dict(self.skipped), "examples": self.examples,
            "series_failed": self.series_failed, "seconds": round(self.seconds, 3),
        }


class ImportProgress:
    """Callbacks an import reports through (the CLI's progress bar or log lines)."""

    def walking(self, files: int, read: int) -> None:
        """Called every few hundred files during the walk."""

    def registering(self, done: int, total: int) -> None:
        """Called after each series registered."""


# What pydicom raises on a header it cannot parse.
_CORRUPT = (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            NotImplementedError, struct.error)

# Told about what the walk cannot enter or read: (reason, path, detail).
SkipCallback = Callable[[SkipReason, str, str], None]


@dataclass(frozen=True)
class _Found:
    path: str
    size: int
    mtime_ns: int


class DicomImport:
    """Imports trees into the daemon's journal; ``copy_root`` set: copies files there."""

    def __init__(self, journal: Journal, copy_root: Path | None = None) -> None:
        self.index = ImportIndex(journal)
        self.journal = journal
        self.copy_root = copy_root

    def run(self, roots: Sequence[Path], progress: ImportProgress | None = None) -> ImportSummary:
        """Walk ``roots``, register every new instance; never raises for a bad file.

        Raises FileNotFoundError when a root does not exist and sqlite3.Error when the
        journal cannot be written at all.
        """
        for root in roots:
            if not root.exists():
                raise FileNotFoundError(f"no such file or folder: {root}")
        progress = progress or ImportProgress()
        started = time.monotonic()
        summary = ImportSummary(roots=tuple(str(r) for r in roots))
        self._read_headers(roots, summary, progress)
        self._register_all(summary, progress)
        summary.seconds = time.monotonic() - started
        return summary

    # --- the walk ---------------------------------------------------------------

    def _read_headers(self, roots: Sequence[Path], summary: ImportSummary, progress: ImportProgress) -> None:
        batch: list[StagedFile] = []

        def not_walked(reason: SkipReason, path: str, detail: str) -> None:
            summary.skip(reason, f"{path}: {detail}" if detail else path)
            text = reason.value + (f": {detail}" if detail else "")
            batch.append(StagedFile(path, 0, 0, FileState.SKIPPED, text))  # listed by --skipped

        for folder, found in walk(roots, not_walked):
            series: set[str] = set()
            for item in found:
                summary.files += 1
                if self.index.unchanged(item.path, item.size, item.mtime_ns):
                    summary.unchanged += 1
                    continue
                staged, reason = read_header(item)
                summary.read += 1
                if reason is not None:
                    detail = (staged.reason or "").removeprefix(reason.value).removeprefix(": ")
                    summary.skip(reason, f"{item.path}: {detail}" if detail else item.path)
                elif staged.series_uid is not None:
                    series.add(staged.series_uid)
                batch.append(staged)
                if len(batch) >= _BATCH:
                    self.index.stage(batch)
                    batch.clear()
                    progress.walking(summary.files, summary.read)
            if len(series) > 1:
                summary.mixed_folders += 1
                LOG.info("%s holds %d series: grouped by Series Instance UID", folder, len(series))
        self.index.stage(batch)
        progress.walking(summary.files, summary.read)

    # --- registration -----------------------------------------------------------

    def _register_all(self, summary: ImportSummary, progress: ImportProgress) -> None:
        total = self.index.pending_series_count()
        association = f"import-{uuid.uuid4().hex}"
        self.journal.open_association(association, IMPORT_AE)
        done = 0
        try:
            for series_uid in self.index.pending_series():
                try:
                    outcome = self.index.register(series_uid, association, self._placement,
                                                  {"imported_by": association})
                except OSError as exc:  # a copy that cannot be written: the next run retries
                    LOG.error("series %s not registered: %s", series_uid, exc)
                    summary.series_failed.append(f"{series_uid}: {exc}")
                    continue
                done += 1
                if outcome is not None:
                    self._count(outcome, summary)
                progress.registering(done, total)
        finally:
            self.journal.close_association(association, "released")

    @staticmethod
    def _count(outcome: SeriesRegistration, summary: ImportSummary) -> None:
        summary.instances += outcome.registered
        if outcome.new_arrival:
            summary.series_new += 1
        elif outcome.registered:
            summary.series_updated += 1
        for path, why in outcome.duplicates:
            summary.skip(SkipReason.DUPLICATE, f"{path}: {why}")

    def _placement(self, series_uid: str, sop_uid: str, original: Path) -> Path:
        """The original (by reference), or a durable copy under ``copy_root``."""
        if self.copy_root is None:
            return original
        target = self.copy_root / series_uid / f"{sop_uid}.dcm"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(original, temporary)
            fsync_file(temporary)
            os.replace(temporary, target)
            fsync_dir(target.parent)
        return target


def walk(roots: Sequence[Path], skip: SkipCallback) -> Iterator[tuple[str, list[_Found]]]:
    """(folder, its regular files) for every folder under ``roots``, depth first, names
    in order; what cannot be walked goes to ``skip`` and the walk goes on."""
    seen: set[tuple[int, int]] = set()
    stack: list[str] = []
    loose: list[_Found] = []
    for root in roots:
        path = os.path.abspath(root)
        if os.path.isdir(path):
            stack.append(path)
        else:
            found = _regular_file(path, skip)
            if found is not None:
                loose.append(found)
    if loose:
        yield "", loose
    stack.reverse()
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError as exc:
            skip(SkipReason.UNREADABLE, folder, exc.strerror or str(exc))
            continue
        if (info.st_dev, info.st_ino) in seen:
            skip(SkipReason.LINK_LOOP, folder, f"-> {os.path.realpath(folder)}")
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as exc:
            skip(SkipReason.UNREADABLE, folder, exc.strerror or str(exc))
            continue
        files: list[_Found] = []
        below: list[str] = []
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                below.append(path)
                continue
            found = _regular_file(path, skip)
            if found is not None:
                files.append(found)
        stack.extend(reversed(below))
        yield folder, files


def _regular_file(path: str, skip: SkipCallback) -> _Found | None:
    try:
        info = os.stat(path)
    except OSError as exc:  # a broken link, a file removed during the walk, no permission
        why = "broken symbolic link" if os.path.islink(path) else (exc.strerror or str(exc))
        skip(SkipReason.UNREADABLE, path, why)
        return None
    if not stat.S_ISREG(info.st_mode):
        skip(SkipReason.NOT_A_FILE, path, "")
        return None
    return _Found(path, info.st_size, info.st_mtime_ns)


def read_header(found: _Found) -> tuple[StagedFile, SkipReason | None]:
    """The header of one file as a staged row: PENDING with its UIDs, or SKIPPED with
    its reason (and the reason's detail in the row). Never raises."""
    def skipped(reason: SkipReason, detail: str = "") -> tuple[StagedFile, SkipReason]:
        text = reason.value + (f": {detail}" if detail else "")
        return StagedFile(found.path, found.size, found.mtime_ns, FileState.SKIPPED, text), reason

    if os.path.basename(found.path).upper() == "DICOMDIR":
        return skipped(SkipReason.DICOMDIR)
    try:
        dataset = dcmread(found.path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        return skipped(SkipReason.NOT_DICOM)
    except OSError as exc:
        return skipped(SkipReason.UNREADABLE, exc.strerror or str(exc))
    except _CORRUPT as exc:
        return skipped(SkipReason.UNREADABLE, f"corrupt DICOM header ({type(exc).__name__}: {exc})")
    meta = getattr(dataset, "file_meta", None)
    sop_class = str(dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop_class == MEDIA_DIRECTORY_STORAGE:
        return skipped(SkipReason.DICOMDIR)
    number = dataset.get("InstanceNumber")
    try:
        instance_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        instance_number = None
    header = InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        series_uid=str(dataset.get("SeriesInstanceUID", "")),
        modality=str(dataset.get("Modality", "")),
        instance_number=instance_number,
    )
    invalid = invalid_uid_attribute(header)
    if invalid is not None:
        return skipped(SkipReason.NO_UID, f"{invalid[0]} missing or not a valid UID")
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    return StagedFile(
        found.path, found.size, found.mtime_ns, FileState.PENDING, None, header.sop_instance_uid,
        header.series_uid, header.study_uid, header.modality, header.sop_class_uid, syntax,
        header.instance_number,
    ), None
