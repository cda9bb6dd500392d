"""The ``acqflow`` CLI against a running daemon: status, jobs, reprocess, echo, config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from tests.support.daemon_proc import REPO, TEST_PIPELINES, DaemonProcess, journal_rows, wait_until
from tests.support.peers import PeerSet, free_port, storescu, write_synthetic_ct

pytestmark = pytest.mark.integration


def _jobs(daemon: DaemonProcess) -> list[Any]:
    return journal_rows(daemon, "SELECT * FROM jobs ORDER BY id")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "series_quiet_seconds": 1.0},
        "folders": [{"path": str(inbox), "stable_seconds": 0.5}],
        "routes": [
            {"name": "images", "kind": ["image"], "pipelines": ["test-image"]},
            {"name": "series", "kind": ["dicom-series"], "pipelines": ["test-series"]},
        ],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    process = DaemonProcess(tmp_path, settings)
    process.start()
    yield process
    if process.alive():
        assert process.terminate() == 0


def _tiff(path: Path, value: int) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((32, 48), value, dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def test_status_jobs_and_reprocess_of_a_file_and_an_outside_folder(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    _tiff(tmp_path / "inbox" / "E1" / "a.tif", 7)
    wait_until(lambda: [j["state"] for j in _jobs(daemon)] == ["done"], 60, "the first job", daemon)

    status = daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and "test-image" in status.stdout
    states = daemon.state_file_pipelines  # the routed ones are preloaded; test-series never ran
    wait_until(lambda: states()["test-series"] == "loaded", 30, "the preload", daemon)
    assert states()["test-image"] == "loaded"
    assert {states()[name] for name in ("virtual-staining", "ct-muscle", "mr-muscle")} == {"not loaded yet"}
    listed = json.loads(daemon.cli("jobs", "--json").stdout)
    assert [(j["pipeline"], j["state"]) for j in listed] == [("test-image", "done")]

    again = daemon.cli("reprocess", str(tmp_path / "inbox" / "E1" / "a.tif"), "--wait", "--timeout", "60")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "queued 1 job(s) and 0 new input(s)" in again.stdout
    assert [j["state"] for j in _jobs(daemon)] == ["done", "done"]
    assert len(list((tmp_path / "outputs").rglob("stats.json"))) == 1  # replaced, not duplicated

    outside = tmp_path / "archive"
    for index in range(3):
        _tiff(outside / "E2" / f"img{index}.tif", index)
    (outside / "E2" / "notes.txt").write_text("not an image")
    folder = daemon.cli("reprocess", str(outside), "--wait", "--timeout", "60")
    assert folder.returncode == 0, folder.stdout + folder.stderr
    assert "queued 0 job(s) and 3 new input(s)" in folder.stdout
    assert [j["state"] for j in _jobs(daemon)] == ["done"] * 5
    assert len(list((tmp_path / "outputs").rglob("stats.json"))) == 4

    by_job = daemon.cli("reprocess", "job:1", "--pipeline", "test-image", "--wait", "--timeout", "60")
    assert by_job.returncode == 0, by_job.stdout + by_job.stderr
    assert len(_jobs(daemon)) == 6

    missing = daemon.cli("reprocess", str(tmp_path / "nowhere.tif"))
    assert missing.returncode == 2
    assert "is not a file, folder, series UID or job id" in missing.stderr


def _daemon_settings(tmp_path: Path, **pipelines: Any) -> dict[str, Any]:
    return {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port()},
        "routes": [
            {"name": "images", "kind": ["image"], "pipelines": ["test-image"]},
            {"name": "series", "kind": ["dicom-series"], "pipelines": ["test-series"]},
        ],
        "pipelines": {"modules": TEST_PIPELINES, **pipelines},
    }


def test_a_model_that_cannot_load_is_reported_at_start_without_any_arrival(tmp_path: Path) -> None:
    settings = _daemon_settings(
        tmp_path, options={"test-series": {"fail_load": "no weights file test-series.safetensors"}}
    )
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        wait_until(
            lambda: daemon.state_file_pipelines().get("test-series", "").startswith("FileNotFoundError"),
            60,
            "the preload to report test-series",
            daemon,
        )
        assert daemon.state_file_pipelines()["test-image"] == "loaded"
        status = daemon.cli("status")
        assert status.returncode == 0, status.stderr
        assert "failed: FileNotFoundError: no weights file test-series.safetensors" in " ".join(
            status.stdout.split()
        )
        metrics = daemon.metrics_text()
        assert 'acqflow_pipeline_up{pipeline="test-series"} 0.0' in metrics
        assert 'acqflow_pipeline_up{pipeline="test-image"} 1.0' in metrics
        assert journal_rows(daemon, "SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0
    finally:
        assert daemon.terminate() == 0


def test_without_preload_pipelines_load_at_their_first_job(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, _daemon_settings(tmp_path, preload=False))
    daemon.start()
    try:
        time.sleep(1.0)  # what a preload would have done by now (it takes ~0.1 s here)
        states = daemon.state_file_pipelines()
        assert {states["test-image"], states["test-series"]} == {"not loaded yet"}
        assert "not loaded yet" in daemon.cli("status").stdout
    finally:
        assert daemon.terminate() == 0


def test_reprocess_a_series_by_uid(tmp_path: Path, daemon: DaemonProcess) -> None:
    series = write_synthetic_ct(tmp_path / "ct", n_slices=3, seed="cli", rows=64, cols=64)
    assert storescu(daemon.state["dicom_port"], series.paths).returncode == 0
    wait_until(lambda: [j["state"] for j in _jobs(daemon)] == ["done"], 60, "the series job", daemon)
    result = daemon.cli("reprocess", series.series_uid, "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [j["state"] for j in _jobs(daemon)] == ["done", "done"]
    assert len(list((tmp_path / "outputs" / "test-series").rglob("*.dcm"))) == 1


def _acqflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "acqflow.daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_echo_an_orthanc_and_an_unreachable_destination(peers: PeerSet) -> None:
    orthanc = peers.orthanc()
    ok = _acqflow("echo", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    assert ok.returncode == 0, ok.stderr
    assert "success" in ok.stdout
    closed = _acqflow("echo", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "2")
    assert closed.returncode == 2
    assert closed.stderr.count("\n") == 1 and "error:" in closed.stderr


def test_config_check_reports_the_bad_key_in_one_line(tmp_path: Path) -> None:
    good = _acqflow("config", "check", env={"ACQFLOW_PATHS__STATE_DIR": str(tmp_path)})
    assert good.returncode == 0 and "configuration valid" in good.stdout
    bad = _acqflow("config", "check", env={"ACQFLOW_WORKERS__COUNT": "0"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: workers.count: Input should be greater than or equal to 1 (got 0)"
    ]


def test_demo_commands_feed_the_daemon(tmp_path: Path, daemon: DaemonProcess) -> None:
    ct = daemon.cli("demo", "ct", "--seed", "3")
    assert ct.returncode == 0, ct.stdout + ct.stderr
    microscopy = daemon.cli(
        "demo",
        "microscopy",
        "--wells",
        "1",
        "--positions",
        "1",
        "--timepoints",
        "2",
        "--size",
        "64",
        "--interval",
        "0",
    )
    assert microscopy.returncode == 0, microscopy.stdout + microscopy.stderr
    written = sorted(p.name for p in (tmp_path / "inbox" / "EXP1").iterdir())
    assert len(written) == 2 and all(name.endswith("_phase.tif") for name in written)
    wait_until(
        lambda: (
            sorted(j["pipeline"] for j in _jobs(daemon) if j["state"] == "done")
            == ["test-image", "test-image", "test-series"]
        ),
        60,
        "the demo inputs to be processed",
        daemon,
    )
