"""End to end over a watched folder: files written like a microscope writes them."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, journal_rows, metric_value, wait_until
from tests.support.peers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, "max_attempts": 2, "retry_initial_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [
            {
                "path": str(inbox),
                "stable_seconds": 1.0,
                "incomplete_grace_seconds": 2.0,
                "rescan_seconds": 30.0,
            }
        ],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    process = DaemonProcess(tmp_path, settings)
    process.start()
    yield process
    if process.alive():
        assert process.terminate() == 0


def _tiff_bytes(shape: tuple[int, int], dtype: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, photometric="minisblack")
    return buffer.getvalue()


def test_slow_copy_is_processed_exactly_once_after_it_is_complete(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    payload = _tiff_bytes((600, 700), "uint16", seed=1)
    target = tmp_path / "inbox" / "EXP1" / "EXP1_B03_pos1_t000_phase.tif"
    target.parent.mkdir()
    chunks = [payload[i : i + len(payload) // 5 + 1] for i in range(0, len(payload), len(payload) // 5 + 1)]
    with target.open("wb") as handle:
        for chunk in chunks:  # several partial writes, flushed, with pauses between them
            handle.write(chunk)
            handle.flush()
            time.sleep(0.4)
    wait_until(
        lambda: [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")] == ["done"],
        60,
        "the job",
        daemon,
    )
    time.sleep(2.0)  # late events or a rescan must not process it a second time
    assert len(journal_rows(daemon, "SELECT * FROM jobs")) == 1
    [stats] = (tmp_path / "outputs" / "test-image").rglob("stats.json")
    expected = float(tifffile.imread(io.BytesIO(payload)).astype(np.float64).mean())
    assert json.loads(stats.read_text())["mean"] == pytest.approx(expected)
    assert stats.parent.name == "EXP1_B03_pos1_t000_phase"
    [arrival] = journal_rows(daemon, "SELECT attrs FROM arrivals")
    metadata = json.loads(arrival["attrs"])["metadata"]
    assert (metadata["well"], metadata["timepoint"], metadata["channel"]) == ("B03", 0, "phase")


def test_bad_files_are_errors_with_metrics_and_the_daemon_keeps_running(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "empty.tif").write_bytes(b"")
    good = _tiff_bytes((256, 256), "uint8", seed=2)
    (inbox / "truncated.tif").write_bytes(good[: len(good) // 2])
    (inbox / "notes.tif").write_bytes(b"these are lab notes, not an image\n" * 20)
    wait_until(
        lambda: len(journal_rows(daemon, "SELECT * FROM arrivals WHERE state='rejected'")) == 3,
        60,
        "three rejected inputs",
        daemon,
    )
    rejected = {Path(r["path"]).name: r["error"] for r in journal_rows(daemon, "SELECT * FROM arrivals")}
    assert set(rejected) == {"empty.tif", "truncated.tif", "notes.tif"}
    assert all(rejected.values()), rejected
    text = daemon.metrics_text()
    assert metric_value(text, "acqflow_input_errors_total", {"source": "folder"}) >= 3
    assert metric_value(text, "acqflow_quarantined_total") >= 3
    quarantined = {p.name for p in (tmp_path / "state" / "quarantine").glob("*/*.tif")}
    assert quarantined == {"empty.tif", "truncated.tif", "notes.tif"}
    assert all((inbox / name).exists() for name in quarantined)  # inputs are never moved

    (inbox / "fine.tif").write_bytes(good)
    wait_until(
        lambda: any(r["state"] == "done" for r in journal_rows(daemon, "SELECT state FROM jobs")),
        60,
        "a good file after the bad ones",
        daemon,
    )
    assert daemon.alive()


def test_sigterm_drains_the_running_job_and_a_failing_job_is_retried_then_dead(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    marker = tmp_path / "fail-while-present"
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, "max_attempts": 2, "retry_initial_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": 0.5}],
        "routes": [
            {"name": "slow", "path_glob": "slow/*", "pipelines": ["test-image"]},
        ],
        "pipelines": {
            "modules": TEST_PIPELINES,
            "options": {"test-image": {"delay_seconds": 3.0, "fail_marker": str(marker)}},
        },
    }
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        marker.touch()
        (inbox / "slow").mkdir()
        (inbox / "slow" / "a.tif").write_bytes(_tiff_bytes((64, 64), "uint8", seed=3))
        wait_until(
            lambda: [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")] == ["dead"],
            60,
            "the failing job to be parked as dead",
            daemon,
        )
        [dead] = journal_rows(daemon, "SELECT * FROM jobs")
        assert dead["attempts"] == 2 and "failing on purpose" in dead["error"]
        assert metric_value(daemon.metrics_text(), "acqflow_jobs_total", {"outcome": "retry"}) == 1

        marker.unlink()
        retried = daemon.cli("retry", str(dead["id"]))
        assert retried.returncode == 0, retried.stderr
        wait_until(
            lambda: [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")] == ["running"],
            30,
            "the retried job to start",
            daemon,
        )
        assert daemon.terminate(timeout=60) == 0  # SIGTERM while the job runs: drain, then exit
        assert [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")] == ["done"]
        assert "acqflow stopped" in daemon.log_tail()
    finally:
        daemon.kill()


def test_two_watched_folders_with_the_same_relative_name_keep_their_own_outputs(tmp_path: Path) -> None:
    scopes = [tmp_path / "scope1", tmp_path / "scope2"]
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(s), "stable_seconds": 0.5} for s in scopes],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    for scope in scopes:
        (scope / "EXP1").mkdir(parents=True)
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        payloads = [_tiff_bytes((64, 64), "uint16", seed=seed) for seed in (3, 4)]
        for scope, payload in zip(scopes, payloads, strict=True):
            (scope / "EXP1" / ".img.tif.part").write_bytes(payload)
            (scope / "EXP1" / ".img.tif.part").rename(scope / "EXP1" / "img.tif")
        wait_until(
            lambda: [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")] == ["done", "done"],
            60,
            "both jobs",
            daemon,
        )
        rows = journal_rows(
            daemon, "SELECT o.path, j.arrival_id FROM outputs o JOIN jobs j ON j.id = o.job_id"
        )
        stats = sorted(Path(r["path"]) for r in rows if r["path"].endswith("stats.json"))
        assert len(stats) == 2 and len({r["arrival_id"] for r in rows}) == 2
        assert sorted(
            p.relative_to(tmp_path / "outputs" / "test-image").parts[1].split("-")[0] for p in stats
        ) == [
            "scope1",
            "scope2",
        ]
        means = sorted(json.loads(p.read_text())["mean"] for p in stats)
        expected = sorted(float(tifffile.imread(io.BytesIO(b)).astype(np.float64).mean()) for b in payloads)
        assert means == pytest.approx(expected)
    finally:
        if daemon.alive():
            assert daemon.terminate() == 0
