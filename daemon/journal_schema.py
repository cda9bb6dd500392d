"""The journal's SQLite schema and the migration of journals written by older versions."""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA", "SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrivals (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_instance_at REAL
);
CREATE INDEX IF NOT EXISTS arrivals_state ON arrivals(state);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    arrival_id INTEGER NOT NULL REFERENCES arrivals(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    association TEXT NOT NULL,
    instance_number INTEGER,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_arrival ON instances(arrival_id);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    arrival_id INTEGER NOT NULL REFERENCES arrivals(id),
    generation INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    hold_reason TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    export TEXT NOT NULL DEFAULT '[]',
    route TEXT NOT NULL DEFAULT '',
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);
CREATE TABLE IF NOT EXISTS outputs (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    pipeline TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    written_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    id INTEGER PRIMARY KEY,
    output_id INTEGER NOT NULL REFERENCES outputs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE(output_id, destination)
);
CREATE INDEX IF NOT EXISTS exports_state ON exports(state, not_before);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    pipeline TEXT NOT NULL,
    kind TEXT NOT NULL,
    grp TEXT NOT NULL,
    identity TEXT NOT NULL,
    fields TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    UNIQUE(pipeline, kind, identity)
);
CREATE INDEX IF NOT EXISTS records_group ON records(pipeline, kind, grp);
-- acqflow import: every file an import looked at (its index, so that a second run reads
-- only what is new or changed) and what became of it.
CREATE TABLE IF NOT EXISTS import_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    sop_instance_uid TEXT,
    series_uid TEXT,
    study_uid TEXT,
    modality TEXT,
    sop_class_uid TEXT,
    transfer_syntax TEXT,
    instance_number INTEGER,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS import_files_state ON import_files(state, series_uid);
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a journal written by an older version to ``SCHEMA_VERSION``, in one transaction.

    Version 1 had no ``jobs.interrupted`` / ``jobs.hold_reason`` and counted a claim as an
    attempt, so the attempts of its unfinished jobs say nothing about real failures: they
    start again from 0 (at most ``max_attempts`` more runs each).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = SCHEMA_VERSION if row is None else int(row[0])
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in (("interrupted", "INTEGER NOT NULL DEFAULT 0"), ("hold_reason", "TEXT")):
            if name not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        if version < 2:
            db.execute("UPDATE jobs SET attempts=0 WHERE state IN ('pending', 'running')")
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)",
            (str(max(version, SCHEMA_VERSION)),),
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
