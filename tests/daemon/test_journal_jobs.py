"""The job lifecycle in the journal: states that say what is true, attempts that count
runs that ended, restarts that spend nothing, held jobs, dead exports, the migration."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acqflow.daemon.jobqueue import JobQueue, OutputRow, RouteDecision
from acqflow.daemon.journal import JobState, Journal


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def _job(journal: Journal, tmp_path: Path, name: str = "a") -> int:
    arrival = journal.record_file_arrival("folder", f"file:/{name}", tmp_path / name, {"fingerprint": [1, 1]})
    assert arrival is not None
    [job_id] = JobQueue(journal).route(arrival.id, 0, [RouteDecision("p", "r")])
    return job_id


def test_restarts_while_jobs_wait_spend_no_attempt_and_waiting_jobs_are_not_running(
    journal: Journal, tmp_path: Path
) -> None:
    queue = JobQueue(journal)
    job_ids = [_job(journal, tmp_path, name) for name in "abc"]
    for _restart in range(8):  # claimed, never started, then the process stops
        claimed = queue.claim(["p"], 10)
        assert [j.state for j in claimed] == [JobState.QUEUED] * 3
        assert queue.counts() == {("p", "queued"): 3}  # waiting, not "running"
        assert queue.reset_interrupted(3) == (3, [])
    jobs = [queue.job(i) for i in job_ids]
    assert all(j is not None and j.state is JobState.PENDING for j in jobs)
    assert all(j is not None and (j.attempts, j.interrupted) == (0, 0) for j in jobs)
    # the first real failure is one attempt of the budget, not the last
    [first, *_] = queue.claim(["p"], 10)
    started = queue.start(first)
    assert started is not None and started.state is JobState.RUNNING
    queue.fail(started, "device busy", time.time())
    after = queue.job(first.id)
    assert after is not None and after.state is JobState.PENDING and after.attempts == 1


def test_a_job_whose_runs_keep_being_cut_off_is_parked_and_the_next_ones_run(
    journal: Journal, tmp_path: Path
) -> None:
    queue = JobQueue(journal)
    killer = _job(journal, tmp_path, "huge")
    for round_ in range(1, 4):
        [job, *rest] = queue.claim(["p"], 10)
        assert job.id == killer
        assert queue.start(job) is not None  # then the kernel kills the process
        resumed, parked = queue.reset_interrupted(3)
        if round_ < 3:
            assert (resumed, parked) == (1, [])
            again = queue.job(killer)
            assert again is not None and again.interrupted == round_ and again.attempts == 0
        else:
            assert [p.id for p in parked] == [killer]
            assert parked[0].state is JobState.DEAD and "3 times" in (parked[0].error or "")
        queue.requeue([j.id for j in rest])
    after = _job(journal, tmp_path, "next")
    [job] = queue.claim(["p"], 10)
    assert job.id == after
    dead = queue.job(killer)
    assert dead is not None and queue.retry(killer)
    fresh = queue.job(killer)
    assert fresh is not None and (fresh.state, fresh.attempts, fresh.interrupted) == (JobState.PENDING, 0, 0)


def test_a_started_job_given_back_at_a_stop_is_pending_and_its_late_result_is_not_stored(
    journal: Journal, tmp_path: Path
) -> None:
    queue = JobQueue(journal)
    job_id = _job(journal, tmp_path)
    [job] = queue.claim(["p"], 1)
    running = queue.start(job)
    assert running is not None
    assert queue.requeue([job_id]) == 1
    back = queue.job(job_id)
    assert back is not None and (back.state, back.attempts, back.interrupted) == (JobState.PENDING, 0, 0)
    assert queue.complete(running, [OutputRow("file", tmp_path / "late.txt")], []) is None
    assert journal.query("SELECT COUNT(*) FROM outputs")[0][0] == 0
    assert queue.start(job) is None  # no longer queued: a worker does not run it


def test_held_jobs_are_not_claimed_until_released(journal: Journal, tmp_path: Path) -> None:
    queue = JobQueue(journal)
    first = _job(journal, tmp_path, "a")
    _job(journal, tmp_path, "b")
    [job] = queue.claim(["p"], 1)
    started = queue.start(job)
    assert started is not None and queue.hold(started, "disk_full", "OSError: [Errno 28] No space left")
    assert queue.hold_pending("disk_full", "outputs folder full") == 1
    assert queue.claim(["p"], 10) == []
    assert queue.held_counts() == {"disk_full": 2}
    held = queue.job(first)
    assert held is not None and held.state is JobState.HELD and held.attempts == 0
    assert queue.release_held() == 2
    assert [j.state for j in queue.claim(["p"], 10)] == [JobState.QUEUED] * 2
    assert queue.held_counts() == {}


def test_dead_exports_are_retried_with_a_fresh_count(journal: Journal, tmp_path: Path) -> None:
    queue = JobQueue(journal)
    _job(journal, tmp_path)
    [job] = queue.claim(["p"], 1)
    [export_id] = queue.complete(job, [OutputRow("dicom", tmp_path / "seg.dcm", "1.2.3", ("pacs",))], [])
    journal.mark_export_failed(export_id, "refused", None)
    assert journal.dead_exports() == [export_id]
    before = time.time()
    assert journal.retry_export(export_id) and not journal.retry_export(export_id)
    [row] = journal.query("SELECT state, attempts, not_before, error, created_at FROM exports")
    assert (row["state"], row["attempts"], row["not_before"]) == ("pending", 0, 0)
    assert row["created_at"] >= before  # give_up_after_seconds counts from the retry
    assert journal.dead_exports() == []


V1_JOBS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE arrivals (id INTEGER PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE, path TEXT NOT NULL, state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0, attrs TEXT NOT NULL DEFAULT '{}', error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, last_instance_at REAL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, arrival_id INTEGER NOT NULL REFERENCES arrivals(id),
    generation INTEGER NOT NULL, pipeline TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    export TEXT NOT NULL DEFAULT '[]', route TEXT NOT NULL DEFAULT '', error TEXT,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL);
INSERT INTO meta VALUES('schema_version', '1');
INSERT INTO arrivals VALUES(1, 'folder', 'image', 'file:/a', '/a', 'routed', 0, '{}', NULL, 0, 0, NULL);
INSERT INTO jobs VALUES(1, 1, 0, 'p', 'pending', 7, 0, '[]', 'r', NULL, 0, NULL, NULL);
INSERT INTO jobs VALUES(2, 1, 0, 'p', 'running', 9, 0, '[]', 'r', NULL, 0, 0, NULL);
INSERT INTO jobs VALUES(3, 1, 0, 'p', 'dead', 3, 0, '[]', 'r', 'boom', 0, 0, 1);
"""


def test_a_version_1_journal_is_migrated_and_its_claim_counts_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(V1_JOBS)
    db.close()
    journal = Journal(path)
    try:
        assert journal.meta_value("schema_version") == "2"
        queue = JobQueue(journal)
        jobs = {i: queue.job(i) for i in (1, 2, 3)}
        assert all(j is not None for j in jobs.values())
        assert [(j.attempts, j.interrupted) for j in jobs.values() if j] == [(0, 0), (0, 0), (3, 0)]
        assert queue.reset_interrupted(3) == (1, [])
    finally:
        journal.close()
    again = Journal(path)  # opening a migrated journal changes nothing
    try:
        job = JobQueue(again).job(3)
        assert job is not None and job.attempts == 3 and again.meta_value("schema_version") == "2"
    finally:
        again.close()
