"""``/healthz`` and ``/readyz`` on the metrics endpoint of a real ``acqflow serve``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, wait_until
from tests.support.peers import LOOPBACK, free_port

pytestmark = pytest.mark.integration


def _get(daemon: DaemonProcess, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://{LOOPBACK}:{daemon.state['metrics_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _settings(root: Path, **sections: Any) -> dict[str, Any]:
    (root / "inbox").mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"host": LOOPBACK, "port": free_port()},
        "dicom": {"enabled": True, "host": LOOPBACK, "port": free_port()},
        "folders": [{"path": str(root / "inbox"), "stable_seconds": 0.3}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    settings.update(sections)
    return settings


@pytest.fixture
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, **getattr(request, "param", {})))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.kill()


def test_healthz_answers_and_readyz_is_200_once_everything_is_up(running: DaemonProcess) -> None:
    assert _get(running, "/healthz") == (200, {"status": "ok"})
    wait_until(lambda: _get(running, "/readyz")[0] == 200, 30, "ready", running)
    assert _get(running, "/readyz") == (200, {"status": "ok"})
    with urllib.request.urlopen(f"http://{LOOPBACK}:{running.state['metrics_port']}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "acqflow_pipeline_up" in text  # the exposition is still there
    # No GPU here: the device each pipeline runs on is the CPU, and no GPU gauge is exported.
    assert 'acqflow_pipeline_device_info{device="cpu",pipeline="test-image"} 1.0' in text
    assert "acqflow_gpu_memory_used_bytes{" not in text


@pytest.mark.parametrize(
    "running",
    [{"pipelines": {"modules": TEST_PIPELINES, "options": {"test-image": {"fail_load": "no weights here"}}}}],
    indirect=True,
)
def test_readyz_names_a_routed_pipeline_that_failed_to_load(running: DaemonProcess) -> None:
    wait_until(
        lambda: running.state_file_pipelines().get("test-image") != "not loaded yet", 30, "load", running
    )
    status, body = _get(running, "/readyz")
    assert status == 503, body
    assert body["status"] == "not ready"
    assert set(body["not_ready"]) == {"pipelines"}, body
    assert "test-image FileNotFoundError: no weights here" in body["not_ready"]["pipelines"]
    assert _get(running, "/healthz")[0] == 200  # alive all the same


@pytest.mark.parametrize("running", [{"workers": {"min_free_bytes": 1 << 60}}], indirect=True)
def test_readyz_reports_full_disks(running: DaemonProcess) -> None:
    status, body = _get(running, "/readyz")
    assert status == 503
    assert {"disk state", "disk outputs"} <= set(body["not_ready"]), body
    assert "bytes free, below" in body["not_ready"]["disk state"]
