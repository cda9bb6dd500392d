"""The journal: one SQLite database in WAL mode, the single source of truth.

Arrivals (an image file, or a DICOM series with its instances), jobs, outputs, exports
and records live here. Every state change is one transaction; after a crash the daemon
resumes from these rows (at-least-once). The connection is shared by the daemon's
threads behind a lock: SQLite serialises writers anyway, and one connection keeps
``synchronous=FULL`` commits cheap. A writer whose own record is already durable (the
SCP's synced spool file) may commit without the fsync (``durable=False``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from acqflow.daemon.errors import JournalError
from acqflow.daemon.journal_schema import SCHEMA, migrate

__all__ = [
    "Arrival",
    "ArrivalState",
    "ExportState",
    "Instance",
    "JobState",
    "Journal",
    "PendingExport",
]

class ArrivalState(str, Enum):
    RECEIVING = "receiving"  # DICOM series still taking instances
    READY = "ready"  # complete, waiting for the router
    ROUTED = "routed"  # jobs created
    UNROUTED = "unrouted"  # no rule matched: logged and counted, not an error
    REJECTED = "rejected"  # unreadable input, quarantined


class JobState(str, Enum):
    PENDING = "pending"  # waiting in the journal (due at ``not_before``)
    QUEUED = "queued"  # taken by the dispatcher, waiting for a free worker
    RUNNING = "running"  # a worker runs it now
    HELD = "held"  # a resource condition (disk full, read-only) stops it; not an attempt
    DONE = "done"
    DEAD = "dead"
    SUPERSEDED = "superseded"  # a late instance re-opened the series before it ran


class ExportState(str, Enum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True)
class Arrival:
    id: int
    source: str
    kind: str
    key: str
    path: Path
    state: ArrivalState
    generation: int
    attrs: Mapping[str, Any]
    error: str | None
    created_at: float
    updated_at: float
    last_instance_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Arrival:
        return cls(
            id=row["id"],
            source=row["source"],
            kind=row["kind"],
            key=row["key"],
            path=Path(row["path"]),
            state=ArrivalState(row["state"]),
            generation=row["generation"],
            attrs=json.loads(row["attrs"]),
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_instance_at=row["last_instance_at"],
        )


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    arrival_id: int
    path: Path
    size: int
    calling_ae: str
    association: str
    received_at: float
    instance_number: int | None = None


class Journal:
    """Thread-safe access to the journal database; opened once per process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            migrate(self._db)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT), rolled back on error.

        ``durable`` False commits with ``synchronous=NORMAL``: no fsync, so the commit
        survives a crash of the process but may be lost with the machine (never half
        applied). The next durable commit makes it durable too.
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:  # disk full, I/O error: never leave the transaction open
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params))

    def meta_value(self, key: str) -> str | None:
        """A value of the journal's own ``meta`` table, None when unset."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set (durably) a value of the ``meta`` table."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    # --- arrivals -------------------------------------------------------------------

    def arrival(self, arrival_id: int) -> Arrival:
        rows = self.query("SELECT * FROM arrivals WHERE id = ?", (arrival_id,))
        if not rows:
            raise JournalError(f"no arrival {arrival_id}")
        return Arrival.from_row(rows[0])

    def arrival_by_key(self, key: str) -> Arrival | None:
        rows = self.query("SELECT * FROM arrivals WHERE key = ?", (key,))
        return Arrival.from_row(rows[0]) if rows else None

    def arrivals_in_state(self, state: ArrivalState) -> list[Arrival]:
        rows = self.query("SELECT * FROM arrivals WHERE state = ? ORDER BY id", (state.value,))
        return [Arrival.from_row(r) for r in rows]

    def record_file_arrival(
        self, source: str, key: str, path: Path, attrs: Mapping[str, Any]
    ) -> Arrival | None:
        """Record a complete file; returns None when the same version was already recorded.

        ``attrs["fingerprint"]`` (size and mtime) tells a rewritten file from the same one:
        a new fingerprint starts a new generation of the same arrival.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT * FROM arrivals WHERE key = ?", (key,)).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO arrivals(source, kind, key, path, state, attrs, created_at, updated_at)"
                    " VALUES(?, 'image', ?, ?, 'ready', ?, ?, ?)",
                    (source, key, str(path), json.dumps(dict(attrs)), now, now),
                )
                arrival_id = cursor.lastrowid
            else:
                old = json.loads(row["attrs"])
                if old.get("fingerprint") == attrs.get("fingerprint"):
                    return None
                arrival_id = row["id"]
                db.execute(
                    "UPDATE arrivals SET state='ready', generation=generation+1, attrs=?, error=NULL,"
                    " source=?, path=?, updated_at=? WHERE id=?",
                    (json.dumps(dict(attrs)), source, str(path), now, arrival_id),
                )
            result = db.execute("SELECT * FROM arrivals WHERE id = ?", (arrival_id,)).fetchone()
        return Arrival.from_row(result)

    def reject_arrival(self, arrival_id: int, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE arrivals SET state='rejected', error=?, updated_at=? WHERE id=?",
                (error, time.time(), arrival_id),
            )

    def record_rejected_file(
        self, source: str, key: str, path: Path, error: str, attrs: Mapping[str, Any]
    ) -> None:
        """Record an input that cannot be read (zero-byte, truncated, not an image)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO arrivals(source, kind, key, path, state, attrs, error, created_at, updated_at)"
                " VALUES(?, 'image', ?, ?, 'rejected', ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET state='rejected', error=excluded.error,"
                " attrs=excluded.attrs, updated_at=excluded.updated_at",
                (source, key, str(path), json.dumps(dict(attrs)), error, now, now),
            )

    # --- DICOM instances and series -------------------------------------------------

    def record_instance(
        self,
        series_key: str,
        spool_dir: Path,
        attrs: Mapping[str, Any],
        instance: Instance,
        durable: bool = True,
    ) -> tuple[int, bool]:
        """Commit one received instance (its file is already durable in the spool).

        Creates the series arrival when new; a new instance for a series that was
        already complete re-opens it (new generation). Returns (arrival id, is_new):
        a duplicate SOP Instance UID changes nothing and returns is_new False.
        ``durable`` False: see :meth:`transaction` (for callers that can redo the row
        from their own durable record, like the SCP from its spool).
        """
        now = instance.received_at
        with self.transaction(durable) as db:
            dup = db.execute(
                "SELECT arrival_id FROM instances WHERE sop_instance_uid = ?",
                (instance.sop_instance_uid,),
            ).fetchone()
            if dup is not None:
                return int(dup["arrival_id"]), False
            row = db.execute("SELECT id, state FROM arrivals WHERE key = ?", (series_key,)).fetchone()
            if row is None:
                arrival_id = db.execute(
                    "INSERT INTO arrivals(source, kind, key, path, state, attrs, created_at,"
                    " updated_at, last_instance_at) VALUES('dicom', 'dicom-series', ?, ?,"
                    " 'receiving', ?, ?, ?, ?)",
                    (series_key, str(spool_dir), json.dumps(dict(attrs)), now, now, now),
                ).lastrowid
            else:
                arrival_id = row["id"]
                reopen = row["state"] != ArrivalState.RECEIVING.value
                db.execute(
                    "UPDATE arrivals SET last_instance_at=?, updated_at=?,"
                    " state='receiving', error=NULL, generation=generation+?"
                    " WHERE id=?",
                    (now, now, 1 if reopen else 0, arrival_id),
                )
                if reopen:
                    db.execute(
                        "UPDATE jobs SET state='superseded', finished_at=? WHERE arrival_id=?"
                        " AND state IN ('pending', 'queued', 'held')",
                        (now, arrival_id),
                    )
            db.execute(
                "INSERT INTO instances(sop_instance_uid, arrival_id, path, size, calling_ae,"
                " association, instance_number, received_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance.sop_instance_uid,
                    arrival_id,
                    str(instance.path),
                    instance.size,
                    instance.calling_ae,
                    instance.association,
                    instance.instance_number,
                    now,
                ),
            )
            db.execute(
                "UPDATE associations SET instances = instances + 1 WHERE id = ?",
                (instance.association,),
            )
        assert arrival_id is not None
        return int(arrival_id), True

    def instances(self, arrival_id: int) -> list[Instance]:
        rows = self.query(
            "SELECT * FROM instances WHERE arrival_id = ?"
            " ORDER BY received_at, instance_number, sop_instance_uid",
            (arrival_id,),
        )
        return [
            Instance(
                sop_instance_uid=r["sop_instance_uid"],
                arrival_id=r["arrival_id"],
                path=Path(r["path"]),
                size=r["size"],
                calling_ae=r["calling_ae"],
                association=r["association"],
                received_at=r["received_at"],
                instance_number=r["instance_number"],
            )
            for r in rows
        ]

    def open_association(self, association: str, calling_ae: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO associations(id, calling_ae, state, started_at)"
                " VALUES(?, ?, 'open', ?)",
                (association, calling_ae, time.time()),
            )

    def close_association(self, association: str, state: str) -> list[int]:
        """Mark an association released/aborted; returns the series arrivals it carried."""
        with self.transaction() as db:
            db.execute(
                "UPDATE associations SET state=?, ended_at=? WHERE id=?",
                (state, time.time(), association),
            )
            rows = db.execute(
                "SELECT DISTINCT arrival_id FROM instances WHERE association = ?", (association,)
            ).fetchall()
        return [int(r["arrival_id"]) for r in rows]

    def series_has_open_association(self, arrival_id: int) -> bool:
        rows = self.query(
            "SELECT 1 FROM instances i JOIN associations a ON a.id = i.association"
            " WHERE i.arrival_id = ? AND a.state = 'open' LIMIT 1",
            (arrival_id,),
        )
        return bool(rows)

    def mark_series_ready(self, arrival_id: int, generation: int) -> bool:
        """RECEIVING → READY if nothing arrived since ``generation`` was read."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE arrivals SET state='ready', updated_at=? WHERE id=? AND state='receiving'"
                " AND generation=?",
                (time.time(), arrival_id, generation),
            )
        return cursor.rowcount == 1

    def close_orphan_associations(self) -> int:
        """At start: associations left open by a crash are over."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE associations SET state='aborted', ended_at=? WHERE state='open'",
                (time.time(),),
            )
        return cursor.rowcount

    # --- additions for the DICOM source, series assembly and export outbox ----------

    def instance_path(self, sop_instance_uid: str) -> Path | None:
        """Where the journal holds this instance's file (None: not held)."""
        rows = self.query("SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return Path(rows[0]["path"]) if rows else None

    def holds_instance_file(self, sop_instance_uid: str) -> bool:
        """True when the journal holds the instance and its file is still there: a copy
        received again is a duplicate. Held but its file removed (spool retention): the
        copy restores it (:meth:`restore_instance`)."""
        held = self.instance_path(sop_instance_uid)
        return held is not None and held.exists()

    def restore_instance(self, sop_instance_uid: str, path: Path, size: int) -> bool:
        """Point a held instance whose file was removed (spool retention) at ``path``,
        a copy received again; its series keeps its generation (the same content)."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE instances SET path=?, size=? WHERE sop_instance_uid=?",
                                (str(path), size, sop_instance_uid))
        return cursor.rowcount == 1

    def instance_arrival(self, sop_instance_uid: str) -> int | None:
        """The series arrival that already holds this SOP Instance UID, if any."""
        rows = self.query("SELECT arrival_id FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return int(rows[0]["arrival_id"]) if rows else None

    def mark_series_ready_if_quiet(
        self, arrival_id: int, generation: int, last_instance_at: float | None
    ) -> bool:
        """RECEIVING → READY only if no instance arrived since the row was read.

        Unlike :meth:`mark_series_ready` this also compares ``last_instance_at``, so an
        instance committed between reading the series and deciding it is quiet keeps
        the series open.
        """
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE arrivals SET state='ready', updated_at=? WHERE id=? AND state='receiving'"
                " AND generation=? AND last_instance_at IS ?",
                (time.time(), arrival_id, generation, last_instance_at),
            )
        return cursor.rowcount == 1

    def due_exports(self, now: float, limit: int = 500) -> list[PendingExport]:
        """Pending exports whose ``not_before`` has passed, with their output file."""
        rows = self.query(
            "SELECT e.id, e.destination, e.attempts, e.created_at, o.path, o.sop_instance_uid"
            " FROM exports e JOIN outputs o ON o.id = e.output_id"
            " WHERE e.state = 'pending' AND e.not_before <= ? ORDER BY e.id LIMIT ?",
            (now, limit),
        )
        return [
            PendingExport(
                id=r["id"],
                destination=r["destination"],
                attempts=r["attempts"],
                created_at=r["created_at"],
                path=Path(r["path"]),
                sop_instance_uid=r["sop_instance_uid"],
            )
            for r in rows
        ]

    def mark_export_done(self, export_id: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE exports SET state='done', attempts=attempts+1, error=NULL, finished_at=?"
                " WHERE id=? AND state='pending'",
                (time.time(), export_id),
            )

    def mark_export_failed(self, export_id: int, error: str, retry_at: float | None) -> None:
        """Back to pending until ``retry_at``, or dead with its error when None."""
        with self.transaction() as db:
            if retry_at is None:
                db.execute(
                    "UPDATE exports SET state='dead', attempts=attempts+1, error=?, finished_at=?"
                    " WHERE id=? AND state='pending'",
                    (error, time.time(), export_id),
                )
            else:
                db.execute(
                    "UPDATE exports SET attempts=attempts+1, error=?, not_before=?"
                    " WHERE id=? AND state='pending'",
                    (error, retry_at, export_id),
                )

    def dead_exports(self, limit: int = 1_000_000) -> list[int]:
        """Ids of exports parked as dead, oldest first."""
        rows = self.query("SELECT id FROM exports WHERE state='dead' ORDER BY id LIMIT ?", (limit,))
        return [int(r["id"]) for r in rows]

    def retry_export(self, export_id: int) -> bool:
        """A dead export goes back to pending, due now, with a fresh attempt count and a
        new ``created_at`` (its give-up time counts from now). False when it is not dead."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE exports SET state='pending', attempts=0, not_before=0, finished_at=NULL,"
                " created_at=? WHERE id=? AND state='dead'",
                (time.time(), export_id),
            )
        return cursor.rowcount == 1

    def pending_exports_by_destination(self) -> dict[str, int]:
        rows = self.query("SELECT destination, COUNT(*) AS n FROM exports WHERE state='pending' GROUP BY 1")
        return {str(r["destination"]): int(r["n"]) for r in rows}


@dataclass(frozen=True)
class PendingExport:
    """One due row of the export outbox joined with its output file."""

    id: int
    destination: str
    attempts: int
    created_at: float
    path: Path
    sop_instance_uid: str | None
