"""End to end over a watched folder: inputs that used to be mistaken for bad ones or loop.

Each case ends with a good file written right after it, which must be processed.
"""

from __future__ import annotations

import io
import os
import threading
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

STABLE = 2.0  # stable_seconds of the watched folder


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": STABLE, "incomplete_grace_seconds": 20.0,
                     "rescan_seconds": 1.0}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    process = DaemonProcess(tmp_path, settings)
    process.start()
    yield process
    if process.alive():
        assert process.terminate() == 0


def _tiff(seed: int, shape: tuple[int, int] = (512, 512)) -> bytes:
    data = np.random.default_rng(seed).integers(0, 60000, size=shape, dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, photometric="minisblack")
    return buffer.getvalue()


def _done_jobs(daemon: DaemonProcess) -> list[str]:
    rows = journal_rows(daemon, "SELECT a.path FROM jobs j JOIN arrivals a ON a.id = j.arrival_id"
                                " WHERE j.state = 'done'")
    return sorted(Path(r["path"]).name for r in rows)


def _quarantined(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "state" / "quarantine"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _good_file_after(tmp_path: Path, daemon: DaemonProcess, before: list[str]) -> None:
    (tmp_path / "inbox" / "after.tif").write_bytes(_tiff(seed=99, shape=(64, 64)))
    wait_until(lambda: _done_jobs(daemon) == sorted([*before, "after.tif"]), 60,
               "the good file written after the case", daemon)


def test_writer_pausing_4_s_mid_file_is_processed_once_when_complete(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    payload = _tiff(seed=1)
    path = tmp_path / "inbox" / "EXP1_B03_pos1_t000_phase.tif"

    def writer() -> None:  # half the file, a 4 s pause (stable time 2 s), then the rest
        with path.open("wb") as handle:
            handle.write(payload[: len(payload) // 2])
            handle.flush()
            time.sleep(2 * STABLE)
            handle.write(payload[len(payload) // 2:])

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    wait_until(lambda: _done_jobs(daemon) == [path.name], 60, "the job of the paused file", daemon)
    time.sleep(STABLE + 1.5)  # late events or rescans must not take it again
    [arrival] = journal_rows(daemon, "SELECT * FROM arrivals")
    assert arrival["state"] == "routed" and arrival["generation"] == 0
    assert len(journal_rows(daemon, "SELECT * FROM jobs")) == 1
    text = daemon.metrics_text()
    assert metric_value(text, "acqflow_input_errors_total", {"source": "folder"}) == 0
    assert metric_value(text, "acqflow_quarantined_total") == 0
    assert _quarantined(tmp_path) == []
    _good_file_after(tmp_path, daemon, [path.name])


def test_symlink_to_a_file_outside_the_folder_is_refused_once_and_not_copied(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.tif").write_bytes(_tiff(seed=2, shape=(64, 64)))
    (tmp_path / "inbox" / "link.tif").symlink_to(outside / "secret.tif")
    wait_until(lambda: len(journal_rows(daemon, "SELECT * FROM arrivals")) == 1, 60,
               "the refused link", daemon)
    time.sleep(3.0)  # rescans every second: still refused once
    [arrival] = journal_rows(daemon, "SELECT * FROM arrivals")
    assert arrival["state"] == "rejected" and "symbolic link" in arrival["error"]
    text = daemon.metrics_text()
    assert metric_value(text, "acqflow_input_errors_total",
                        {"source": "folder", "reason": "symlink_outside"}) == 1
    assert _quarantined(tmp_path) == [] and journal_rows(daemon, "SELECT * FROM jobs") == []
    _good_file_after(tmp_path, daemon, [])


def test_file_name_that_is_not_utf8_is_quarantined_once(tmp_path: Path, daemon: DaemonProcess) -> None:
    raw = os.fsencode(tmp_path / "inbox") + b"/Z\xe4hlung_\xff.tif"
    with open(raw, "wb") as handle:
        handle.write(_tiff(seed=3, shape=(64, 64)))
    wait_until(lambda: len(journal_rows(daemon, "SELECT * FROM arrivals")) == 1, 60,
               "the rejected name", daemon)
    time.sleep(3.0)  # rescans every second: no retry loop
    [arrival] = journal_rows(daemon, "SELECT * FROM arrivals")
    assert arrival["state"] == "rejected" and "not valid UTF-8" in arrival["error"]
    text = daemon.metrics_text()
    assert metric_value(text, "acqflow_input_errors_total",
                        {"source": "folder", "reason": "name_not_utf8"}) == 1
    assert metric_value(text, "acqflow_source_errors_total", {"source": "folder"}) == 0
    assert len(_quarantined(tmp_path)) == 1
    assert "retries it" not in daemon.log_tail(100_000)
    _good_file_after(tmp_path, daemon, [])
