"""The journal side of ``acqflow import``: the index of files looked at, and series
registered from it.

Every file an import reads is one row of ``import_files`` (path, size, mtime, and what
its header said or why it was skipped). The rows are the import's resume point: a file
whose size and mtime are unchanged is not read again, and a file read but not yet
registered (an import stopped between reading and registering) is registered by the next
run. A series is registered in one transaction: its arrival (new, or a new generation of
one the journal holds) and every instance that is not already there, so the daemon never
routes half of an imported series.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from acqflow.daemon.journal import Journal

__all__ = [
    "IMPORT_AE",
    "FileState",
    "ImportIndex",
    "SeriesRegistration",
    "StagedFile",
]

IMPORT_AE = "acqflow-import"  # the calling AE an import's association is recorded with


class FileState(str, Enum):
    PENDING = "pending"  # header read, not registered yet
    REGISTERED = "registered"  # an instance of a series arrival
    DUPLICATE = "duplicate"  # its SOP Instance UID was already registered from another file
    SKIPPED = "skipped"  # not an instance (not DICOM, unreadable, DICOMDIR, no UIDs)


@dataclass(frozen=True)
class StagedFile:
    """One file as the walk found it: its header, or why it is skipped."""

    path: str
    size: int
    mtime_ns: int
    state: FileState
    reason: str | None = None
    sop_instance_uid: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    transfer_syntax: str | None = None
    instance_number: int | None = None


@dataclass(frozen=True)
class SeriesRegistration:
    """What registering one series did."""

    series_uid: str
    arrival_id: int
    new_arrival: bool
    registered: int  # instances added to the journal
    duplicates: tuple[tuple[str, str], ...]  # (file, why) for instances already registered


# Where a series' instance file lives once registered: the original (by reference) or a
# copy (``--copy``); called with (series UID, SOP Instance UID, original path).
Placement = Callable[[str, str, Path], Path]


class ImportIndex:
    """``import_files`` rows and series registration, on the daemon's journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def unchanged(self, path: str, size: int, mtime_ns: int) -> bool:
        """True when the last import saw this file with this size and mtime."""
        rows = self.journal.query(
            "SELECT 1 FROM import_files WHERE path=? AND size=? AND mtime_ns=?", (path, size, mtime_ns)
        )
        return bool(rows)

    def stage(self, files: Sequence[StagedFile]) -> None:
        """Record files the walk read (replacing what an earlier run recorded for them)."""
        if not files:
            return
        now = time.time()
        with self.journal.transaction(durable=False) as db:  # redone from the files if lost
            db.executemany(
                "INSERT OR REPLACE INTO import_files(path, size, mtime_ns, state, reason,"
                " sop_instance_uid, series_uid, study_uid, modality, sop_class_uid,"
                " transfer_syntax, instance_number, seen_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (f.path, f.size, f.mtime_ns, f.state.value, f.reason, f.sop_instance_uid,
                     f.series_uid, f.study_uid, f.modality, f.sop_class_uid, f.transfer_syntax,
                     f.instance_number, now)
                    for f in files
                ],
            )

    def pending_series(self) -> Iterator[str]:
        """Series UIDs with files read but not registered, in UID order (one query per
        step, so a series registered meanwhile is not returned twice)."""
        last = ""
        while True:
            rows = self.journal.query(
                "SELECT DISTINCT series_uid FROM import_files WHERE state='pending' AND series_uid > ?"
                " ORDER BY series_uid LIMIT 256",
                (last,),
            )
            if not rows:
                return
            for row in rows:
                last = str(row["series_uid"])
                yield last

    def pending_series_count(self) -> int:
        """How many series have files read but not registered."""
        rows = self.journal.query("SELECT COUNT(DISTINCT series_uid) FROM import_files WHERE state='pending'")
        return int(rows[0][0])

    def register(self, series_uid: str, association: str, placement: Placement,
                 attrs_extra: dict[str, str]) -> SeriesRegistration | None:
        """Register the pending files of ``series_uid`` as one series arrival.

        Files are placed first (``placement`` may copy them), then the arrival and its
        instances are committed in one transaction. An instance whose SOP Instance UID the
        journal already holds is a duplicate (the same file registered before counts as
        registered, so a run cut off after the commit is not reported twice). Returns
        None when no file of the series is pending any more. Raises OSError when a copy
        cannot be written and sqlite3.Error when the journal cannot be written.
        """
        rows = self.journal.query(
            "SELECT * FROM import_files WHERE state='pending' AND series_uid=?"
            " ORDER BY instance_number IS NULL, instance_number, path",
            (series_uid,),
        )
        if not rows:
            return None
        placed = [(row, placement(series_uid, str(row["sop_instance_uid"]), Path(row["path"])))
                  for row in rows]
        first = rows[0]
        attrs = {
            "modality": str(first["modality"] or ""),
            "study_uid": str(first["study_uid"]),
            "series_uid": series_uid,
            "sop_class_uid": str(first["sop_class_uid"] or ""),
            "transfer_syntax": str(first["transfer_syntax"] or ""),
            **attrs_extra,
        }
        folder = _common_folder([path for _, path in placed])
        now = time.time()
        with self.journal.transaction() as db:
            arrival_id, new_arrival, state = _series_arrival(db, "series:" + series_uid, folder, attrs, now)
            registered, duplicates = 0, []
            for row, path in placed:
                outcome = _add_instance(db, row, path, arrival_id, association, now)
                registered += outcome is None
                if outcome is None or outcome == "":
                    db.execute("UPDATE import_files SET state='registered', reason=NULL WHERE path=?",
                               (row["path"],))
                else:
                    duplicates.append((str(row["path"]), outcome))
                    db.execute("UPDATE import_files SET state='duplicate', reason=? WHERE path=?",
                               (outcome, row["path"]))
            if registered:
                _complete(db, arrival_id, state, new_arrival, now)
            elif new_arrival:  # every instance was another series' duplicate: no empty arrival
                db.execute("DELETE FROM arrivals WHERE id=?", (arrival_id,))
        return SeriesRegistration(series_uid, arrival_id, new_arrival and bool(registered), registered,
                                  tuple(duplicates))

    def skipped(self, limit: int = 1_000_000) -> list[sqlite3.Row]:
        """Files the imports skipped or found duplicate, with why, in path order."""
        return self.journal.query(
            "SELECT path, state, reason FROM import_files WHERE state IN ('skipped', 'duplicate')"
            " ORDER BY path LIMIT ?",
            (limit,),
        )


def _common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every file (the arrival's path; never deleted for an
    import by reference: the spool's retention removes only its own folders)."""
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _series_arrival(db: sqlite3.Connection, key: str, folder: Path, attrs: dict[str, str],
                    now: float) -> tuple[int, bool, str]:
    """(arrival id, created now, its state before) for the series ``key``."""
    row = db.execute("SELECT id, state FROM arrivals WHERE key=?", (key,)).fetchone()
    if row is not None:
        return int(row["id"]), False, str(row["state"])
    cursor = db.execute(
        "INSERT INTO arrivals(source, kind, key, path, state, attrs, created_at, updated_at,"
        " last_instance_at) VALUES('import', 'dicom-series', ?, ?, 'receiving', ?, ?, ?, ?)",
        (key, str(folder), json.dumps(attrs), now, now, now),
    )
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid), True, "receiving"


def _add_instance(db: sqlite3.Connection, row: sqlite3.Row, path: Path, arrival_id: int,
                  association: str, now: float) -> str | None:
    """Insert one instance; None when added, "" when this same file already was (or this
    file restores one whose file is gone), else why it is a duplicate."""
    sop_uid = str(row["sop_instance_uid"])
    held = db.execute(
        "SELECT i.path, a.key FROM instances i JOIN arrivals a ON a.id=i.arrival_id"
        " WHERE i.sop_instance_uid=?",
        (sop_uid,),
    ).fetchone()
    if held is not None:
        if held["path"] == str(path):
            return ""
        if not os.path.exists(held["path"]):  # its file was removed (retention): this copy restores it
            db.execute("UPDATE instances SET path=?, size=? WHERE sop_instance_uid=?",
                       (str(path), row["size"], sop_uid))
            return ""
        where = "" if held["key"] == f"series:{row['series_uid']}" else f" (in {held['key']})"
        return f"same SOP Instance UID {sop_uid} as {held['path']}{where}"
    db.execute(
        "INSERT INTO instances(sop_instance_uid, arrival_id, path, size, calling_ae, association,"
        " instance_number, received_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
        (sop_uid, arrival_id, str(path), row["size"], IMPORT_AE, association, row["instance_number"], now),
    )
    db.execute("UPDATE associations SET instances = instances + 1 WHERE id = ?", (association,))
    return None


def _complete(db: sqlite3.Connection, arrival_id: int, state: str, created: bool, now: float) -> None:
    """The series took new instances: a new one is READY for the router; one the journal
    held gets a new generation and its pending jobs are superseded (as a late C-STORE
    does). A series still RECEIVING over DICOM stays so: its association or quiet timer
    completes it."""
    if created:
        db.execute("UPDATE arrivals SET state='ready' WHERE id=?", (arrival_id,))
        return
    if state == "receiving":
        db.execute("UPDATE arrivals SET last_instance_at=?, updated_at=? WHERE id=?", (now, now, arrival_id))
        return
    db.execute(
        "UPDATE arrivals SET state='ready', generation=generation+1, error=NULL, last_instance_at=?,"
        " updated_at=? WHERE id=?",
        (now, now, arrival_id),
    )
    db.execute(
        "UPDATE jobs SET state='superseded', finished_at=? WHERE arrival_id=?"
        " AND state IN ('pending', 'queued', 'held')",
        (now, arrival_id),
    )
