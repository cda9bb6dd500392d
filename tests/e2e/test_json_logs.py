"""``log_format = "json"`` on a real ``acqflow serve``: every line is a JSON object and the
lines of one job name its job, arrival, pipeline and outcome."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, wait_until
from tests.support.peers import LOOPBACK, free_port

pytestmark = pytest.mark.integration


def test_a_job_logs_json_lines_with_its_context(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = {
        "log_format": "json",
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"host": LOOPBACK, "port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": 0.3}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        tifffile.imwrite(inbox / "plate_A01_t000.tif", np.full((32, 32), 9, dtype=np.uint8))
        wait_until(lambda: '"outcome": "done"' in daemon.log_tail(100_000), 60, "the job's done line", daemon)
    finally:
        assert daemon.terminate() == 0, daemon.log_tail()
    entries = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]  # each line is JSON
    assert all({"timestamp", "level", "logger", "message"} <= set(e) for e in entries)
    (arrival,) = [e for e in entries if e.get("outcome") == "recorded"]
    assert arrival["source"] == "folder" and arrival["logger"] == "acqflow.daemon.folders.watcher"
    (done,) = [e for e in entries if e.get("outcome") == "done"]
    assert done["pipeline"] == "test-image" and done["arrival_id"] == arrival["arrival_id"]
    assert isinstance(done["job_id"], int) and done["message"].startswith(
        f"job {done['job_id']} (test-image) done"
    )
