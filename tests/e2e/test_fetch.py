"""``acqflow fetch`` against a real Orthanc: C-FIND then C-MOVE to the daemon's SCP, C-GET,
and QIDO-RS/WADO-RS through Orthanc's DICOMweb plugin; ``reprocess`` of a series whose
spool files the retention removed fetches it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_proc import (
    TEST_PIPELINES,
    DaemonProcess,
    journal_rows,
    metric_value,
    toml_dumps,
    wait_until,
)
from tests.support.peers import OrthancPeer, PeerSet, free_port, write_synthetic_ct

pytestmark = pytest.mark.integration


def _settings(root: Path, dicom_port: int, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": dicom_port, "series_quiet_seconds": 1.0, "allowed_calling_aes": ["ORTHANC"]},
        "sources": {"pacs": [{"name": "pacs", **source}]},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }


def _orthanc_with_study(peers: PeerSet, tmp_path: Path, dicom_port: int, seed: str,
                        dicomweb: bool = False) -> tuple[OrthancPeer, Any]:
    orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", dicom_port)}, dicomweb=dicomweb)
    series = write_synthetic_ct(tmp_path / "source", n_slices=4, seed=seed, rows=16, cols=16)
    for path in series.paths:
        orthanc.upload(path)
    return orthanc, series


def _dimse(orthanc: OrthancPeer, retrieve: str) -> dict[str, Any]:
    return {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port, "retrieve": retrieve}


def _done(daemon: DaemonProcess, count: int) -> bool:
    jobs = journal_rows(daemon, "SELECT state FROM jobs")
    return len(jobs) == count and all(j["state"] == "done" for j in jobs)


def test_fetch_by_c_move_lists_first_then_the_daemon_processes_the_study(
    tmp_path: Path, peers: PeerSet
) -> None:
    port = free_port()
    orthanc, series = _orthanc_with_study(peers, tmp_path, port, "fetch-move")
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, port, _dimse(orthanc, "move")))
    daemon.start()
    try:
        listed = daemon.cli("fetch", series.study_uid, "--dry-run", "--json")
        assert listed.returncode == 0, listed.stderr
        plan = json.loads(listed.stdout)
        assert plan["method"] == "C-MOVE"
        assert [(s["series_uid"], s["modality"], s["instances"]) for s in plan["series"]] == [
            (series.series_uid, "CT", 4)]
        by_patient = daemon.cli("fetch", "--patient", "SYN-fetch-move", "--since", "2025-12-31", "--dry-run",
                                "--json")
        assert [s["series_uid"] for s in json.loads(by_patient.stdout)["series"]] == [series.series_uid]
        later = daemon.cli("fetch", "--patient", "SYN-fetch-move", "--since", "2026-01-02", "--dry-run")
        assert later.returncode == 1
        assert "nothing found for patient SYN-fetch-move, since 20260102" in later.stderr
        assert journal_rows(daemon, "SELECT id FROM arrivals") == []  # a dry run fetches nothing
        fetched = daemon.cli("fetch", series.study_uid)
        assert fetched.returncode == 0, fetched.stderr
        assert "fetch from pacs by C-MOVE: 1 series, 4 instance(s) retrieved" in fetched.stdout
        wait_until(lambda: _done(daemon, 1), 60, "the moved series processed", daemon)
        missing = daemon.cli("fetch", "1.2.3.999")
        assert missing.returncode == 1 and "nothing found for 1.2.3.999" in missing.stderr
    finally:
        assert daemon.terminate() == 0
    [row] = journal_rows(daemon, "SELECT calling_ae, COUNT(*) n FROM instances GROUP BY calling_ae")
    assert (row["calling_ae"], row["n"]) == ("ORTHANC", 4)


def test_fetch_by_c_get_and_by_wado_rs_without_a_running_daemon(tmp_path: Path, peers: PeerSet) -> None:
    """C-GET and WADO-RS write the files and register them; the daemon, started later,
    processes both series; a second fetch of the same series registers nothing."""
    port = free_port()
    orthanc, first = _orthanc_with_study(peers, tmp_path, port, "fetch-get", dicomweb=True)
    second = write_synthetic_ct(tmp_path / "second", n_slices=3, seed="fetch-wado", rows=16, cols=16)
    for path in second.paths:
        orthanc.upload(path)
    settings = _settings(tmp_path, port, _dimse(orthanc, "get"))
    settings["sources"]["pacs"].append({"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url})
    daemon = DaemonProcess(tmp_path, settings)
    daemon.config_path.write_text(toml_dumps(settings))
    got = daemon.cli("fetch", first.series_uid, "--source", "pacs", "--json")
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert (report["method"], report["registered"]) == ("C-GET", 4)
    web = daemon.cli("fetch", second.study_uid, "--source", "web", "--json")
    assert web.returncode == 0, web.stderr
    assert (json.loads(web.stdout)["method"], json.loads(web.stdout)["registered"]) == ("WADO-RS", 3)
    again = daemon.cli("fetch", second.study_uid, "--source", "web", "--json")
    assert json.loads(again.stdout)["registered"] == 0
    daemon.start()
    try:
        wait_until(lambda: _done(daemon, 2), 60, "both fetched series processed", daemon)
    finally:
        assert daemon.terminate() == 0
    imported = sorted(p.name for p in (tmp_path / "state" / "imports").rglob("*.dcm"))
    assert imported == sorted(f"{uid}.dcm" for uid in (*first.sop_uids, *second.sop_uids))


def test_reprocess_of_a_purged_series_fetches_it_again(tmp_path: Path, peers: PeerSet) -> None:
    port = free_port()
    orthanc, series = _orthanc_with_study(peers, tmp_path, port, "fetch-purged")
    settings = _settings(tmp_path, port, _dimse(orthanc, "move"))
    settings["retention"] = {"spool_days": 1e-5, "check_hours": 0.0005}  # purged within seconds
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        assert daemon.cli("fetch", series.study_uid).returncode == 0
        wait_until(lambda: _done(daemon, 1), 60, "the first run", daemon)
        spool = tmp_path / "state" / "spool" / series.series_uid
        wait_until(lambda: not spool.exists(), 30, "the spool purged by the retention", daemon)
        again = daemon.cli("reprocess", series.series_uid, "--wait", "--timeout", "60")
        assert again.returncode == 0, again.stderr
        assert f"series {series.series_uid}: fetched again from pacs by C-MOVE" in again.stdout
        assert _done(daemon, 2)
        metrics = daemon.metrics_text()
        restored = metric_value(metrics, "acqflow_dicom_instances_total", {"outcome": "restored"})
        assert restored == 4  # the SCP took the held instances again, their files gone
    finally:
        assert daemon.terminate() == 0
    assert len(journal_rows(daemon, "SELECT * FROM instances")) == 4  # restored, not added


def test_reprocess_of_a_purged_series_without_a_source_says_what_to_set(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "in", n_slices=2, seed="fetch-nosource", rows=16, cols=16)
    settings = _settings(tmp_path, free_port(), {})
    settings["sources"] = {}
    settings["dicom"]["allowed_calling_aes"] = ["STORESCU"]
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        from tests.support.peers import storescu

        storescu(daemon.settings["dicom"]["port"], series.paths)
        wait_until(lambda: _done(daemon, 1), 60, "the series processed", daemon)
    finally:
        assert daemon.terminate() == 0
    for path in (tmp_path / "state" / "spool" / series.series_uid).iterdir():
        path.unlink()
    refused = daemon.cli("reprocess", series.series_uid)
    assert refused.returncode == 2
    assert "2 instance file(s) removed by the spool retention; add the PACS under [[sources.pacs]]" \
        in refused.stderr
