"""Jobs, their outputs, records and export rows in the journal.

A job names its input by arrival id and generation — never by in-memory objects — so
it can run in another process. Completing a job writes its outputs, records and export
rows and marks it done in one transaction: a crash before that commit re-runs the job,
and because output names are deterministic the re-run replaces, never duplicates.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.journal import ArrivalState, JobState, Journal
from daemon.redaction import scrub

__all__ = ["Job", "JobQueue", "OutputRow", "RecordRow", "RouteDecision"]


@dataclass(frozen=True)
class Job:
    id: int
    arrival_id: int
    generation: int
    pipeline: str
    state: JobState
    attempts: int
    export: tuple[str, ...]
    route: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row["id"],
            arrival_id=row["arrival_id"],
            generation=row["generation"],
            pipeline=row["pipeline"],
            state=JobState(row["state"]),
            attempts=row["attempts"],
            export=tuple(json.loads(row["export"])),
            route=row["route"],
            error=row["error"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True)
class RouteDecision:
    pipeline: str
    route: str
    export: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputRow:
    kind: str  # "file" or "dicom"
    path: Path
    sop_instance_uid: str | None = None
    export: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordRow:
    kind: str
    group: str
    identity: str
    fields: Mapping[str, Any] = field(default_factory=dict)


class JobQueue:
    """The jobs table: creation by the router, claiming by workers, completion."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def route(self, arrival_id: int, generation: int, decisions: Sequence[RouteDecision]) -> list[int]:
        """Create one job per decision and mark the arrival routed (or unrouted if none)."""
        now = time.time()
        with self.journal.transaction() as db:
            state = ArrivalState.ROUTED if decisions else ArrivalState.UNROUTED
            cursor = db.execute(
                "UPDATE arrivals SET state=?, updated_at=? WHERE id=? AND generation=? AND state='ready'",
                (state.value, now, arrival_id, generation),
            )
            if cursor.rowcount != 1:
                return []  # re-opened or already routed meanwhile
            return [_insert_job(db, arrival_id, generation, d, now) for d in decisions]

    def add_job(self, arrival_id: int, decision: RouteDecision) -> int:
        """A job outside routing (CLI reprocess) for the arrival's current generation."""
        now = time.time()
        with self.journal.transaction() as db:
            row = db.execute("SELECT generation FROM arrivals WHERE id=?", (arrival_id,)).fetchone()
            return _insert_job(db, arrival_id, row["generation"], decision, now)

    def job(self, job_id: int) -> Job | None:
        rows = self.journal.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def jobs(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        if state is None:
            rows = self.journal.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.journal.query(
                "SELECT * FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?", (state.value, limit)
            )
        return [Job.from_row(r) for r in rows]

    def reset_interrupted(self) -> int:
        """At start: jobs left running by a crash go back to pending (at-least-once)."""
        with self.journal.transaction() as db:
            cursor = db.execute("UPDATE jobs SET state='pending', not_before=0 WHERE state='running'")
        return cursor.rowcount

    def claim(self, pipelines: Sequence[str], limit: int) -> list[Job]:
        """Take up to ``limit`` due pending jobs of the given pipelines, marking them running."""
        if not pipelines or limit <= 0:
            return []
        now = time.time()
        marks = ",".join("?" for _ in pipelines)
        with self.journal.transaction() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE state='pending' AND not_before <= ? AND pipeline IN ({marks})"
                " ORDER BY id LIMIT ?",
                (now, *pipelines, limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?",
                    (now, row["id"]),
                )
            claimed = [db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone() for row in rows]
        return [Job.from_row(r) for r in claimed]

    def complete(self, job: Job, outputs: Sequence[OutputRow], records: Sequence[RecordRow]) -> list[int]:
        """Store outputs, records and export rows; mark the job done. Returns export ids."""
        now = time.time()
        export_ids: list[int] = []
        with self.journal.transaction() as db:
            for output in outputs:
                db.execute(
                    "INSERT INTO outputs(job_id, pipeline, kind, path, sop_instance_uid, written_at)"
                    " VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET job_id=excluded.job_id,"
                    " sop_instance_uid=excluded.sop_instance_uid, written_at=excluded.written_at",
                    (job.id, job.pipeline, output.kind, str(output.path), output.sop_instance_uid, now),
                )
                output_id = db.execute("SELECT id FROM outputs WHERE path=?", (str(output.path),)).fetchone()[
                    "id"
                ]
                for destination in output.export:
                    db.execute(
                        "INSERT INTO exports(output_id, destination, state, created_at)"
                        " VALUES(?, ?, 'pending', ?) ON CONFLICT(output_id, destination) DO UPDATE"
                        " SET state='pending', attempts=0, not_before=0, error=NULL, finished_at=NULL,"
                        " created_at=excluded.created_at",
                        (output_id, destination, now),
                    )
                    export_ids.append(
                        db.execute(
                            "SELECT id FROM exports WHERE output_id=? AND destination=?",
                            (output_id, destination),
                        ).fetchone()["id"]
                    )
            for record in records:
                db.execute(
                    "INSERT INTO records(job_id, pipeline, kind, grp, identity, fields, recorded_at)"
                    " VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pipeline, kind, identity) DO UPDATE SET"
                    " job_id=excluded.job_id, grp=excluded.grp, fields=excluded.fields,"
                    " recorded_at=excluded.recorded_at",
                    (
                        job.id,
                        job.pipeline,
                        record.kind,
                        record.group,
                        record.identity,
                        json.dumps(dict(record.fields)),
                        now,
                    ),
                )
            db.execute("UPDATE jobs SET state='done', error=NULL, finished_at=? WHERE id=?", (now, job.id))
        return export_ids

    def fail(self, job: Job, error: str, retry_at: float | None) -> None:
        """Back to pending until ``retry_at``, or dead with its error when None."""
        error = scrub(error)  # never a patient value in the journal (daemon.redaction)
        with self.journal.transaction() as db:
            if retry_at is None:
                db.execute(
                    "UPDATE jobs SET state='dead', error=?, finished_at=? WHERE id=?",
                    (error, time.time(), job.id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state='pending', error=?, not_before=? WHERE id=?",
                    (error, retry_at, job.id),
                )

    def retry(self, job_id: int) -> bool:
        """A dead job goes back to pending with a fresh attempt count (CLI ``retry``)."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='pending', attempts=0, not_before=0, finished_at=NULL"
                " WHERE id=? AND state='dead'",
                (job_id,),
            )
        return cursor.rowcount == 1

    def records(self, pipeline: str, kind: str, group: str) -> list[dict[str, Any]]:
        rows = self.journal.query(
            "SELECT identity, fields, recorded_at FROM records WHERE pipeline=? AND kind=? AND grp=?"
            " ORDER BY recorded_at, id",
            (pipeline, kind, group),
        )
        return [
            {**json.loads(r["fields"]), "identity": r["identity"], "recorded_at": r["recorded_at"]}
            for r in rows
        ]

    def counts(self) -> dict[tuple[str, str], int]:
        """(pipeline, state) → number of jobs."""
        rows = self.journal.query("SELECT pipeline, state, COUNT(*) AS n FROM jobs GROUP BY 1, 2")
        return {(r["pipeline"], r["state"]): r["n"] for r in rows}


def _insert_job(
    db: sqlite3.Connection, arrival_id: int, generation: int, decision: RouteDecision, now: float
) -> int:
    job_id = db.execute(
        "INSERT INTO jobs(arrival_id, generation, pipeline, state, export, route, created_at)"
        " VALUES(?, ?, ?, 'pending', ?, ?, ?)",
        (arrival_id, generation, decision.pipeline, json.dumps(list(decision.export)), decision.route, now),
    ).lastrowid
    assert job_id is not None
    return job_id
