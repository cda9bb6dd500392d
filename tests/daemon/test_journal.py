from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from acqflow.daemon.jobqueue import JobQueue, OutputRow, RecordRow, RouteDecision
from acqflow.daemon.journal import ArrivalState, Instance, JobState, Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def _instance(uid: str, assoc: str = "a1", number: int = 1) -> Instance:
    return Instance(uid, 0, Path(f"/spool/{uid}.dcm"), 10, "SCU", assoc, time.time(), number)


def test_wal_mode_and_durable_sync(journal: Journal) -> None:
    assert journal.query("PRAGMA journal_mode")[0][0] == "wal"
    assert journal.query("PRAGMA synchronous")[0][0] == 2  # FULL


def test_file_arrival_same_version_once_new_version_new_generation(journal: Journal, tmp_path: Path) -> None:
    attrs = {"fingerprint": [10, 1], "relative_path": "a.tif"}
    first = journal.record_file_arrival("folder", "file:/x/a.tif", tmp_path / "a.tif", attrs)
    assert first is not None and first.state is ArrivalState.READY and first.generation == 0
    assert journal.record_file_arrival("folder", "file:/x/a.tif", tmp_path / "a.tif", attrs) is None
    again = journal.record_file_arrival(
        "folder", "file:/x/a.tif", tmp_path / "a.tif", {**attrs, "fingerprint": [11, 2]}
    )
    assert again is not None and again.id == first.id and again.generation == 1


def test_instances_duplicates_and_reopen_supersedes_pending_jobs(journal: Journal, tmp_path: Path) -> None:
    journal.open_association("a1", "SCU")
    arrival_id, new = journal.record_instance("series:1.2", tmp_path, {"modality": "CT"}, _instance("1.2.1"))
    assert new
    assert journal.record_instance("series:1.2", tmp_path, {}, _instance("1.2.1")) == (arrival_id, False)
    journal.record_instance("series:1.2", tmp_path, {}, _instance("1.2.2", number=2))
    assert journal.series_has_open_association(arrival_id)
    assert journal.close_association("a1", "released") == [arrival_id]
    assert not journal.series_has_open_association(arrival_id)
    assert journal.mark_series_ready(arrival_id, 0)
    queue = JobQueue(journal)
    [job_id] = queue.route(arrival_id, 0, [RouteDecision("p", "r")])
    # a late instance re-opens the series: new generation, the pending job is superseded
    journal.record_instance("series:1.2", tmp_path, {}, _instance("1.2.3", "a2", 3))
    arrival = journal.arrival(arrival_id)
    assert arrival.state is ArrivalState.RECEIVING and arrival.generation == 1
    assert queue.job(job_id).state is JobState.SUPERSEDED
    assert not journal.mark_series_ready(arrival_id, 0)  # stale generation
    assert journal.mark_series_ready(arrival_id, 1)
    assert [i.instance_number for i in journal.instances(arrival_id)] == [1, 2, 3]


def test_claim_complete_and_idempotent_outputs(journal: Journal, tmp_path: Path) -> None:
    arrival = journal.record_file_arrival("folder", "file:/a", tmp_path / "a", {"fingerprint": [1, 1]})
    queue = JobQueue(journal)
    [job_id] = queue.route(arrival.id, 0, [RouteDecision("p", "r", ("pacs",))])
    assert journal.arrival(arrival.id).state is ArrivalState.ROUTED
    assert queue.claim(["other"], 5) == []
    [job] = queue.claim(["p"], 5)
    assert job.id == job_id and job.state is JobState.QUEUED and job.attempts == 0
    assert queue.claim(["p"], 5) == []
    job = queue.start(job)
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 0
    out = [OutputRow("dicom", tmp_path / "seg.dcm", "1.2.3", ("pacs",))]
    rec = [RecordRow("eff", "EXP1", "file:/a#0", {"v": 0.5})]
    exports = queue.complete(job, out, rec)
    assert len(exports) == 1
    # a re-run of the same input replaces outputs, records and re-arms the export
    rerun_id = queue.add_job(arrival.id, RouteDecision("p", "cli", ("pacs",)))
    [rerun] = queue.claim(["p"], 5)
    assert rerun.id == rerun_id
    assert queue.complete(rerun, out, [RecordRow("eff", "EXP1", "file:/a#0", {"v": 0.7})]) == exports
    assert journal.query("SELECT COUNT(*) FROM outputs")[0][0] == 1
    assert journal.query("SELECT COUNT(*) FROM exports")[0][0] == 1
    assert [r["v"] for r in queue.records("p", "eff", "EXP1")] == [0.7]


def test_retry_backoff_dead_and_reset_after_crash(journal: Journal, tmp_path: Path) -> None:
    arrival = journal.record_file_arrival("folder", "file:/b", tmp_path / "b", {"fingerprint": [1, 1]})
    queue = JobQueue(journal)
    queue.route(arrival.id, 0, [RouteDecision("p", "r")])
    [job] = queue.claim(["p"], 1)
    queue.fail(job, "boom", time.time() + 60)
    assert queue.claim(["p"], 1) == []  # not due yet
    journal.query("UPDATE jobs SET not_before = 0")
    [job] = queue.claim(["p"], 1)
    assert job.attempts == 1  # one run ended in a failure; the claims did not count
    assert queue.start(job) is not None
    assert queue.reset_interrupted(3) == (1, [])  # as if the process had died mid-job
    [job] = queue.claim(["p"], 1)
    assert job.attempts == 1 and job.interrupted == 1
    queue.fail(job, "still broken", None)
    assert queue.job(job.id).state is JobState.DEAD and queue.job(job.id).error == "still broken"
    assert queue.retry(job.id) and not queue.retry(job.id)
    assert queue.job(job.id).state is JobState.PENDING and queue.job(job.id).attempts == 0


def test_concurrent_writers_do_not_lose_rows(journal: Journal, tmp_path: Path) -> None:
    def write(prefix: str) -> None:
        for n in range(50):
            journal.record_file_arrival("folder", f"file:/{prefix}/{n}", tmp_path, {"fingerprint": [n, n]})

    threads = [threading.Thread(target=write, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.query("SELECT COUNT(*) FROM arrivals")[0][0] == 200
    # a second connection (the CLI) reads the committed rows while the daemon holds its own
    other = sqlite3.connect(journal.path)
    assert other.execute("SELECT COUNT(*) FROM arrivals").fetchone()[0] == 200
    other.close()
