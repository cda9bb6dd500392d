"""End to end over DICOM: dcmtk storescu → ``acqflow serve`` → test pipeline → Orthanc.

Everything is real: the daemon runs as a subprocess, dcmtk's storescu/echoscu send to
it, and a real Orthanc on loopback is the PACS that receives the exported results.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, metric_value, wait_until
from tests.support.peers import (
    DCMTK_STORESCU,
    LOOPBACK,
    OrthancPeer,
    PeerSet,
    SyntheticSeries,
    echoscu,
    free_port,
    nodelay_env,
    storescu,
    write_synthetic_ct,
)

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path, orthanc: OrthancPeer | None, quiet: float = 2.0, dicom_port: int = 0
) -> dict[str, Any]:
    destinations = []
    routes: dict[str, Any] = {"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}
    if orthanc is not None:
        destinations.append(
            {"name": "pacs", "ae_title": orthanc.aet, "host": LOOPBACK, "port": orthanc.dicom_port}
        )
        routes["export"] = ["pacs"]
    return {
        "log_level": "INFO",
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "retry_initial_seconds": 0.5, "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {
            "port": dicom_port or free_port(),
            "ae_title": "ACQFLOW",
            "series_quiet_seconds": quiet,
            "allowed_calling_aes": ["STORESCU", "ECHOSCU", "ORTHANC"],
        },
        "export": {
            "destinations": destinations,
            "retry_initial_seconds": 0.5,
            "retry_max_seconds": 1.0,
            "poll_seconds": 0.5,
        },
        "folders": [{"path": str(tmp_path / "inbox")}],
        "routes": [routes],
        "pipelines": {"modules": TEST_PIPELINES},
    }


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(settings: dict[str, Any]) -> DaemonProcess:
        process = DaemonProcess(tmp_path, settings)
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        if process.alive():
            process.terminate()
    assert not any(p.alive() for p in started)


def _journal(daemon: DaemonProcess) -> sqlite3.Connection:
    db = sqlite3.connect(daemon.state_dir / "journal.sqlite3", timeout=10)
    db.row_factory = sqlite3.Row
    return db


def _jobs(daemon: DaemonProcess) -> list[sqlite3.Row]:
    with _journal(daemon) as db:
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()


def test_300_slice_series_assembled_once_processed_and_exported_to_orthanc(
    tmp_path: Path, peers: PeerSet, daemon_factory: Callable[[dict[str, Any]], DaemonProcess]
) -> None:
    series = write_synthetic_ct(tmp_path / "ct", n_slices=300, seed="e2e-300")
    dicom_port = free_port()
    orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", dicom_port)})
    daemon = daemon_factory(_settings(tmp_path, orthanc, quiet=30.0, dicom_port=dicom_port))
    port = daemon.state["dicom_port"]

    sent = storescu(port, series.paths, max_pdu=65536)
    assert sent.returncode == 0, sent.stderr

    wait_until(lambda: [j["state"] for j in _jobs(daemon)] == ["done"], 120, "the job", daemon)
    with _journal(daemon) as db:
        arrivals = db.execute("SELECT * FROM arrivals").fetchall()
        assert len(arrivals) == 1 and arrivals[0]["generation"] == 0
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 300
        [output] = db.execute("SELECT * FROM outputs WHERE kind='dicom'").fetchall()
    assert len(_jobs(daemon)) == 1  # assembled once: one job for the one series
    result = pydicom.dcmread(output["path"])
    assert result.StudyInstanceUID == series.study_uid
    assert result.SeriesInstanceUID != series.series_uid

    wait_until(
        lambda: result.SOPInstanceUID in orthanc.sop_instance_uids(), 60, "the result in Orthanc", daemon
    )
    metrics = daemon.metrics_text()
    assert metric_value(metrics, "acqflow_series_completed_total") == 1
    assert metric_value(metrics, "acqflow_dicom_instances_total", {"outcome": "stored"}) == 300
    assert metric_value(metrics, "acqflow_exports_total", {"destination": "pacs", "outcome": "done"}) >= 1
    assert daemon.terminate() == 0


def test_unknown_calling_ae_is_rejected_and_echo_succeeds(
    tmp_path: Path, daemon_factory: Callable[[dict[str, Any]], DaemonProcess]
) -> None:
    daemon = daemon_factory(_settings(tmp_path, None))
    port = daemon.state["dicom_port"]
    assert echoscu(port, calling_ae="ECHOSCU").returncode == 0
    refused = echoscu(port, calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()
    series = write_synthetic_ct(tmp_path / "ct", n_slices=2, seed="intruder", rows=64, cols=64)
    assert storescu(port, series.paths, calling_ae="INTRUDER").returncode != 0
    with _journal(daemon) as db:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def _acknowledged(log_text: str, series: SyntheticSeries) -> set[str]:
    """SOP Instance UIDs whose C-STORE storescu saw answered with success."""
    index = {str(p): uid for p, uid in zip(series.paths, series.sop_uids, strict=True)}
    acked: set[str] = set()
    current: str | None = None
    for line in log_text.splitlines():
        sending = re.search(r"Sending file: (\S+)", line)
        if sending:
            current = sending.group(1)
        elif "Received Store Response (Success)" in line and current in index:
            acked.add(index[current])
    return acked


def test_kill_9_mid_transfer_loses_no_acknowledged_instance_and_duplicates_nothing(
    tmp_path: Path, daemon_factory: Callable[[dict[str, Any]], DaemonProcess]
) -> None:
    # long enough that the kill, ~10 ms after the 40th acknowledgement, lands mid-transfer
    series = write_synthetic_ct(tmp_path / "ct", n_slices=400, seed="kill-9", rows=256, cols=256)
    settings = _settings(tmp_path, None, quiet=1.0)
    daemon = daemon_factory(settings)
    port = daemon.state["dicom_port"]
    log_path = tmp_path / "storescu.log"
    with log_path.open("w") as log:
        sender = subprocess.Popen(
            [
                DCMTK_STORESCU,
                "-v",
                "-aec",
                "ACQFLOW",
                "-aet",
                "STORESCU",
                "-to",
                "10",
                "-ta",
                "10",
                "-td",
                "10",
                LOOPBACK,
                str(port),
                *map(str, series.paths),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=nodelay_env(),
        )
    try:
        wait_until(
            lambda: log_path.read_text().count("Store Response (Success)") >= 40,
            60,
            "40 acknowledged instances",
            daemon,
            poll=0.01,
        )
        daemon.kill()
        sender.wait(30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    acked = _acknowledged(log_path.read_text(), series)
    assert 40 <= len(acked) < len(series.paths)

    with _journal(daemon) as db:
        stored = {r["sop_instance_uid"]: r["path"] for r in db.execute("SELECT * FROM instances")}
    assert acked <= set(stored), "an acknowledged instance is missing from the journal"
    for uid in acked:
        assert pydicom.dcmread(stored[uid]).SOPInstanceUID == uid

    restarted = daemon_factory(settings)
    wait_until(
        lambda: [j["state"] for j in _jobs(restarted)] == ["done"], 60, "the partial series job", restarted
    )
    [summary] = (tmp_path / "outputs" / "test-series").rglob("summary.json")
    assert f'"instances": {len(stored)}' in summary.read_text()

    # the sender retries the whole series: duplicates are idempotent, the rest re-opens it
    resend = storescu(restarted.state["dicom_port"], series.paths)
    assert resend.returncode == 0, resend.stderr
    wait_until(
        lambda: len(_jobs(restarted)) == 2 and all(j["state"] == "done" for j in _jobs(restarted)),
        60,
        "the completed series job",
        restarted,
    )
    with _journal(restarted) as db:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == len(series.paths)
        assert db.execute("SELECT COUNT(*) FROM outputs WHERE kind='dicom'").fetchone()[0] == 1
    results = list((tmp_path / "outputs" / "test-series").rglob("*.dcm"))
    assert len(results) == 1
    assert f'"instances": {len(series.paths)}' in summary.read_text()
    assert restarted.terminate() == 0


def test_export_is_retried_while_orthanc_is_down_and_lands_once(
    tmp_path: Path, peers: PeerSet, daemon_factory: Callable[[dict[str, Any]], DaemonProcess]
) -> None:
    dicom_port = free_port()
    orthanc = OrthancPeer(
        peers,
        aet="ORTHANC",
        modalities={"acqflow": ("ACQFLOW", dicom_port)},
        http_port=free_port(),
        dicom_port=free_port(),
    )
    daemon = daemon_factory(_settings(tmp_path, orthanc, quiet=1.0, dicom_port=dicom_port))
    series = write_synthetic_ct(tmp_path / "ct", n_slices=5, seed="outage", rows=64, cols=64)
    assert storescu(daemon.state["dicom_port"], series.paths).returncode == 0

    def failed_attempts() -> float:
        return metric_value(
            daemon.metrics_text(), "acqflow_exports_total", {"destination": "pacs", "outcome": "retry"}
        )

    wait_until(lambda: failed_attempts() >= 2, 60, "failed export attempts", daemon)
    with _journal(daemon) as db:
        [export] = db.execute("SELECT * FROM exports").fetchall()
        uid = db.execute("SELECT sop_instance_uid FROM outputs WHERE kind='dicom'").fetchone()[0]
    assert export["state"] == "pending" and export["attempts"] >= 2 and export["error"]

    orthanc.start()
    wait_until(lambda: uid in orthanc.sop_instance_uids(), 60, "the export after Orthanc came back", daemon)
    with _journal(daemon) as db:
        assert db.execute("SELECT state FROM exports").fetchone()[0] == "done"
    time.sleep(2.0)  # a wrongly repeated export would show up as a second instance now
    assert len(orthanc.instances()) == 1
