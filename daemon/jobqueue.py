"""Jobs, their outputs, records and export rows in the journal.

A job names its input by arrival id and generation — never by in-memory objects — so
it can run in another process. Completing a job writes its outputs, records and export
rows and marks it done in one transaction: a crash before that commit re-runs the job,
and because output names are deterministic the re-run replaces, never duplicates.

A job's states say what is true: ``pending`` (waiting in the journal), ``queued`` (taken
by the dispatcher for a worker), ``running`` (a worker has started it), ``held`` (a
resource condition stops it), then ``done``, ``dead`` or ``superseded``. ``attempts``
counts runs that ended in a failure; a run the process never finished (a kill, an OOM
kill of the whole daemon) counts in ``interrupted`` instead, so that restarts do not
spend the retry budget, and a job that takes the process down every time is parked
after ``max_interrupted`` such runs instead of blocking everything after it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acqflow.daemon.journal import ArrivalState, JobState, Journal
from acqflow.daemon.redaction import scrub

__all__ = ["Job", "JobQueue", "OutputRow", "RecordRow", "RouteDecision"]


@dataclass(frozen=True)
class Job:
    id: int
    arrival_id: int
    generation: int
    pipeline: str
    state: JobState
    attempts: int
    interrupted: int
    hold_reason: str | None
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
            interrupted=row["interrupted"],
            hold_reason=row["hold_reason"],
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

    def reset_interrupted(self, max_interrupted: int) -> tuple[int, list[Job]]:
        """At start: jobs a stop left queued or running go back to pending (at-least-once).

        Queued jobs had not started: nothing is counted. A running job's run never ended,
        which is counted in ``interrupted`` (not in ``attempts``); a job whose runs were
        cut off ``max_interrupted`` times is parked as dead, since it is likely what brings
        the process down. Returns (jobs resumed, jobs parked).
        """
        error = (
            f"the process ended {max_interrupted} times while this job ran (killed, out of memory?);"
            " parked so that the jobs after it run"
        )
        now = time.time()
        with self.journal.transaction() as db:
            db.execute("UPDATE jobs SET interrupted=interrupted+1 WHERE state='running'")
            parked = db.execute(
                "SELECT id FROM jobs WHERE state='running' AND interrupted >= ?", (max_interrupted,)
            ).fetchall()
            db.execute(
                "UPDATE jobs SET state='dead', error=?, finished_at=? WHERE state='running'"
                " AND interrupted >= ?",
                (error, now, max_interrupted),
            )
            cursor = db.execute(
                "UPDATE jobs SET state='pending', not_before=0, started_at=NULL"
                " WHERE state IN ('queued', 'running')"
            )
        jobs = [self.job(int(r["id"])) for r in parked]
        return cursor.rowcount, [j for j in jobs if j is not None]

    def claim(self, pipelines: Sequence[str], limit: int) -> list[Job]:
        """Take up to ``limit`` due pending jobs of the given pipelines for the workers' queue.

        They become ``queued``, not running: :meth:`start` marks the one a worker runs.
        """
        if not pipelines or limit <= 0:
            return []
        now = time.time()
        marks = ",".join("?" for _ in pipelines)
        with self.journal.transaction() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE state='pending' AND not_before <= ? AND pipeline IN ({marks})"
                " ORDER BY id LIMIT ?",
                (now, *pipelines, limit),
            ).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET state='queued' WHERE id=?", (row["id"],))
            claimed = [db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone() for row in rows]
        return [Job.from_row(r) for r in claimed]

    def start(self, job: Job) -> Job | None:
        """A worker starts ``job``: queued → running. None when it is no longer queued
        (superseded by a newer generation of its input, or given back at a stop)."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='running', started_at=? WHERE id=? AND state='queued'",
                (time.time(), job.id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job.id,)).fetchone()
        return Job.from_row(row) if cursor.rowcount == 1 else None

    def requeue(self, job_ids: Sequence[int]) -> int:
        """Queued or running jobs go back to pending without counting anything: a
        graceful stop gives them back. Returns how many went back."""
        if not job_ids:
            return 0
        marks = ",".join("?" for _ in job_ids)
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='pending', not_before=0, started_at=NULL"
                f" WHERE id IN ({marks}) AND state IN ('queued', 'running')",
                list(job_ids),
            )
        return cursor.rowcount

    def hold(self, job: Job, reason: str, error: str) -> bool:
        """A resource condition stopped ``job``: held, not an attempt, until released."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='held', hold_reason=?, error=?, started_at=NULL"
                " WHERE id=? AND state IN ('pending', 'queued', 'running')",
                (reason, error, job.id),
            )
        return cursor.rowcount == 1

    def hold_pending(self, reason: str, error: str) -> int:
        """Hold every pending job while a resource condition lasts; returns how many."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='held', hold_reason=?, error=? WHERE state='pending'",
                (reason, error),
            )
        return cursor.rowcount

    def release_held(self) -> int:
        """Held jobs go back to pending, due now (the condition cleared); returns how many."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='pending', hold_reason=NULL, error=NULL, not_before=0"
                " WHERE state='held'"
            )
        return cursor.rowcount

    def held_counts(self) -> dict[str, int]:
        """Held jobs per reason."""
        rows = self.journal.query("SELECT hold_reason, COUNT(*) n FROM jobs WHERE state='held' GROUP BY 1")
        return {str(r["hold_reason"]): int(r["n"]) for r in rows}

    def complete(
        self, job: Job, outputs: Sequence[OutputRow], records: Sequence[RecordRow]
    ) -> list[int] | None:
        """Store outputs, records and export rows; mark the job done. Returns export ids.

        Nothing is stored, and None returned, for a job no longer queued or running
        (given back at a stop: it runs again).
        """
        now = time.time()
        export_ids: list[int] = []
        with self.journal.transaction() as db:
            if not _is_active(db, job.id):
                return None
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

    def fail(self, job: Job, error: str, retry_at: float | None, attempt: bool = True) -> None:
        """A run ended in a failure: back to pending until ``retry_at``, or dead with its
        error when None. ``attempt`` False for a job that never ran (superseded input)."""
        spent = 1 if attempt else 0
        error = scrub(error)  # never a patient value in the journal (acqflow.daemon.redaction)
        with self.journal.transaction() as db:
            if not _is_active(db, job.id):
                return
            if retry_at is None:
                db.execute(
                    "UPDATE jobs SET state='dead', attempts=attempts+?, error=?, finished_at=? WHERE id=?",
                    (spent, error, time.time(), job.id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state='pending', attempts=attempts+?, error=?, not_before=?,"
                    " started_at=NULL WHERE id=?",
                    (spent, error, retry_at, job.id),
                )

    def retry(self, job_id: int) -> bool:
        """A dead job goes back to pending with fresh attempt counts (CLI ``retry``)."""
        with self.journal.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state='pending', attempts=0, interrupted=0, not_before=0,"
                " finished_at=NULL WHERE id=? AND state='dead'",
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


def _is_active(db: sqlite3.Connection, job_id: int) -> bool:
    row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    return row is not None and row["state"] in (JobState.QUEUED.value, JobState.RUNNING.value)


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
