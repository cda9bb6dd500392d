"""The job lifecycle against the real daemon process and the real CLI: SIGTERM while a job
outlasts the drain, a job that kills the process on every start, a full outputs disk
(a real tmpfs), and ``acqflow retry`` for dead jobs and dead exports."""

from __future__ import annotations

import errno
import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from acqflow.daemon.jobqueue import JobQueue, OutputRow, RouteDecision
from acqflow.daemon.journal import Journal
from tests.support.daemon_proc import (
    TEST_PIPELINES,
    DaemonProcess,
    journal_rows,
    metric_value,
    toml_dumps,
    wait_until,
)
from tests.support.peers import free_port

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, options: dict[str, Any] | None = None, **workers: Any) -> dict[str, Any]:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, **workers},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": 0.3}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES, "options": {"test-image": options or {}}},
    }


def _tiff(path: Path, value: int) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((16, 16), value, dtype=np.uint8))
    path.write_bytes(buffer.getvalue())


def _jobs(daemon: DaemonProcess) -> list[Any]:
    return journal_rows(daemon, "SELECT * FROM jobs ORDER BY id")


@pytest.fixture
def stopped() -> Iterator[list[DaemonProcess]]:
    """Daemons a test started; any still alive at the end is killed."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def test_sigterm_while_a_job_outlasts_the_drain_gives_it_back_and_exits_0(
    tmp_path: Path, stopped: list[DaemonProcess]
) -> None:
    # torch computing in the worker thread: a normal interpreter exit under it aborts
    # ("terminate called without an active exception", exit 134)
    settings = _settings(tmp_path, {"torch_busy_seconds": 60}, drain_seconds=1.0)
    daemon = DaemonProcess(tmp_path, settings)
    stopped.append(daemon)
    daemon.start()
    _tiff(tmp_path / "inbox" / "slow.tif", 7)
    wait_until(lambda: [r["state"] for r in _jobs(daemon)] == ["running"], 60, "the job running", daemon)
    began = time.monotonic()
    assert daemon.terminate(timeout=30) == 0
    assert time.monotonic() - began < 25  # the drain (1 s), not the job (60 s)
    [job] = _jobs(daemon)
    assert (job["state"], job["attempts"], job["interrupted"]) == ("pending", 0, 0)
    assert "back in the queue" in daemon.log_tail()
    assert "Traceback" not in daemon.log_tail() and "terminate called" not in daemon.log_tail()
    settings["pipelines"]["options"]["test-image"] = {}
    daemon.start()
    wait_until(lambda: [r["state"] for r in _jobs(daemon)] == ["done"], 60, "the job done", daemon)
    [job] = _jobs(daemon)
    assert job["attempts"] == 0
    assert daemon.terminate() == 0


def test_a_job_that_kills_the_process_every_time_is_parked_and_the_next_one_runs(
    tmp_path: Path, stopped: list[DaemonProcess]
) -> None:
    marker = tmp_path / "kill-while-this-exists"
    marker.touch()
    settings = _settings(tmp_path, {"kill_marker": str(marker)}, max_interrupted_runs=2)
    daemon = DaemonProcess(tmp_path, settings)
    stopped.append(daemon)
    daemon.start()
    _tiff(tmp_path / "inbox" / "huge.tif", 1)
    daemon.process.wait(60)  # type: ignore[union-attr]  # killed by its own job
    [job] = _jobs(daemon)
    assert job["state"] == "running"
    _start_until_killed(daemon)  # the first restart resumes it, and it kills the process again
    [job] = _jobs(daemon)
    assert (job["interrupted"], job["attempts"]) == (1, 0)
    daemon.start()  # the second restart parks it
    wait_until(lambda: _jobs(daemon)[0]["state"] == "dead", 30, "the job parked", daemon)
    [job] = _jobs(daemon)
    assert job["interrupted"] == 2 and "2 times" in job["error"]
    assert len(list((tmp_path / "state" / "quarantine").iterdir())) == 1
    marker.unlink()
    _tiff(tmp_path / "inbox" / "next.tif", 2)
    wait_until(lambda: [r["state"] for r in _jobs(daemon)] == ["dead", "done"], 60, "the next job", daemon)
    assert daemon.terminate() == 0


def _start_until_killed(daemon: DaemonProcess) -> None:
    """Start a daemon whose job kills it, maybe before it is ready, and wait for the kill."""
    try:
        daemon.start()
    except RuntimeError as exc:
        assert "exited with -9" in str(exc)
    assert daemon.process is not None and daemon.process.wait(60) == -9


@pytest.fixture
def tmpfs_outputs(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "outputs"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_outputs_disk_holds_the_job_status_says_why_and_it_completes_later(
    tmp_path: Path, tmpfs_outputs: Path, stopped: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, min_free_bytes=0, disk_check_seconds=0.5))
    stopped.append(daemon)
    daemon.start()
    filler = tmpfs_outputs / "filler"
    with filler.open("wb") as handle, pytest.raises(OSError) as full:
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    assert full.value.errno == errno.ENOSPC
    _tiff(tmp_path / "inbox" / "a.tif", 5)
    wait_until(lambda: [r["state"] for r in _jobs(daemon)] == ["held"], 60, "the job held", daemon)
    wait_until(
        lambda: metric_value(daemon.metrics_text(), "acqflow_jobs_held", {"reason": "disk_full"}) == 1,
        30, "the held gauge", daemon,
    )
    assert metric_value(daemon.metrics_text(), "acqflow_disk_free_bytes", {"path": "outputs"}) < 65536
    status = daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "held: 1 job(s), disk_full" in status.stdout and "No space left" in status.stdout
    [job] = _jobs(daemon)
    assert (job["attempts"], job["hold_reason"]) == (0, "disk_full")
    quarantine = tmp_path / "state" / "quarantine"
    assert not quarantine.exists() or not any(quarantine.iterdir())
    filler.unlink()
    wait_until(lambda: [r["state"] for r in _jobs(daemon)] == ["done"], 60, "the job done", daemon)
    assert len(list(tmpfs_outputs.rglob("stats.json"))) == 1
    assert not quarantine.exists() or not any(quarantine.iterdir())
    assert "held:" not in daemon.cli("status").stdout
    assert daemon.terminate() == 0


def _journal_with_dead_work(tmp_path: Path) -> tuple[DaemonProcess, int, int]:
    settings = _settings(tmp_path)
    process = DaemonProcess(tmp_path, settings)
    process.config_path.write_text(toml_dumps(settings))
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    try:
        arrival = journal.record_file_arrival(
            "folder", "file:/a.tif", tmp_path / "a.tif", {"fingerprint": [1]}
        )
        assert arrival is not None
        queue = JobQueue(journal)
        [_, dead_id] = queue.route(
            arrival.id, 0, [RouteDecision("test-image", "r"), RouteDecision("test-image", "r2")]
        )
        done, dead = queue.claim(["test-image"], 2)
        [export_id] = queue.complete(done, [OutputRow("dicom", tmp_path / "o.dcm", "1.2.3", ("pacs",))], [])
        queue.fail(dead, "RuntimeError: broken", None)
        journal.mark_export_failed(export_id, "association rejected", None)
    finally:
        journal.close()
    return process, dead_id, export_id


def test_retry_requeues_dead_jobs_and_dead_exports_and_nothing_dead_is_exit_0(tmp_path: Path) -> None:
    process, dead_id, export_id = _journal_with_dead_work(tmp_path)
    listed = process.cli("exports", "--state", "dead")
    assert listed.returncode == 0 and "association rejected" in listed.stdout, listed.stderr
    only_export = process.cli("retry", "--export", str(export_id))
    assert only_export.returncode == 0, only_export.stderr
    assert "0 job(s) and 1 export(s) queued again" in only_export.stdout
    [row] = journal_rows(process, "SELECT state, attempts FROM exports")
    assert (row["state"], row["attempts"]) == ("pending", 0)
    db = Journal(tmp_path / "state" / "journal.sqlite3")
    db.mark_export_failed(export_id, "association rejected again", None)
    db.close()
    everything = process.cli("retry", "--all-dead")
    assert everything.returncode == 0, everything.stderr
    assert "1 job(s) and 1 export(s) queued again" in everything.stdout
    states = journal_rows(process, "SELECT id, state, attempts FROM jobs ORDER BY id")
    assert [(r["state"], r["attempts"]) for r in states if r["id"] == dead_id] == [("pending", 0)]
    assert [r["state"] for r in journal_rows(process, "SELECT state FROM exports")] == ["pending"]
    nothing = process.cli("retry", "--all-dead")
    assert nothing.returncode == 0, nothing.stderr
    assert "nothing dead to retry" in nothing.stdout
    assert process.cli("retry").returncode == 2  # naming nothing is a usage error


def test_kill_9_while_results_are_written_leaves_one_whole_result_and_no_partial_file(tmp_path: Path) -> None:
    from tests.reliability.kill9 import kill_during_file_write

    figures = kill_during_file_write(tmp_path)
    assert figures["note"].startswith("1 partial file(s) after the kill"), figures  # it was cut midway
    assert figures["present"] == 1, figures  # the re-run wrote the whole result
    assert figures["duplicates"] == 0 and figures["stale"] == 0, figures
