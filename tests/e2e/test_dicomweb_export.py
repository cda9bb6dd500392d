"""STOW-RS export to a real Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb):
results arrive and read back through WADO-RS; a target that is down gets them once it is
up, each once; an instance the target refuses is dead with the target's reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, journal_rows, toml_dumps, wait_until
from tests.support.peers import OrthancPeer, PeerSet, free_port, storescu, write_synthetic_ct

pytestmark = pytest.mark.integration

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def _daemon(root: Path, orthanc: OrthancPeer, pipeline: str, **options: Any) -> DaemonProcess:
    return DaemonProcess(root, {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "series_quiet_seconds": 0.5, "allowed_calling_aes": ["STORESCU"]},
        "export": {"poll_seconds": 0.3, "retry_initial_seconds": 0.5, "retry_max_seconds": 1.0,
                   "destinations": [{"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url}]},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": [pipeline], "export": ["web"]}],
        "pipelines": {"modules": TEST_PIPELINES, "options": {pipeline: options}},
    })


def _exports(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [dict(r) for r in journal_rows(daemon, "SELECT state, attempts, error FROM exports ORDER BY id")]


def test_seg_map_and_sr_arrive_by_stow_and_read_back_by_wado(tmp_path: Path, peers: PeerSet) -> None:
    from dicomweb_client import DICOMwebClient

    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    orthanc = peers.orthanc(dicomweb=True)
    daemon = _daemon(tmp_path, orthanc, "ct-muscle", samples=2)
    source = demo_ct_series(seed=7)
    folder = tmp_path / "ct"
    folder.mkdir()
    for index, dataset in enumerate(source):
        dataset.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)
    daemon.start()
    try:
        echo = daemon.cli("echo", "web")
        assert echo.returncode == 0, echo.stderr
        assert f"QIDO-RS {orthanc.dicomweb_url}: HTTP 200" in echo.stdout
        storescu(daemon.settings["dicom"]["port"], sorted(folder.glob("*.dcm")))
        wait_until(lambda: len(_exports(daemon)) >= 3 and all(e["state"] == "done" for e in _exports(daemon)),
                   300, "every result stored by STOW-RS", daemon)
    finally:
        assert daemon.terminate() == 0
    client = DICOMwebClient(orthanc.dicomweb_url)
    study = str(source[0].StudyInstanceUID)
    found = {}
    for series in client.search_for_series(study_instance_uid=study):
        uid = series["0020000E"]["Value"][0]
        if uid == str(source[0].SeriesInstanceUID):
            continue
        for instance in client.retrieve_series(study, uid):
            found[str(instance.SOPClassUID)] = instance
    assert SEG in found and PARAMETRIC_MAP in found
    assert any(uid.startswith("1.2.840.10008.5.1.4.1.1.88") for uid in found)  # an SR
    written = {str(dcmread(r["path"]).SOPInstanceUID) for r in journal_rows(
        daemon, "SELECT path FROM outputs WHERE kind='dicom'")}
    assert {str(d.SOPInstanceUID) for d in found.values()} == written

    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(found[SEG])
    assert seg.number_of_segments >= 3 and seg.StudyInstanceUID == study


def test_a_target_down_gets_each_result_once_it_is_up_and_a_refused_one_is_dead(
    tmp_path: Path, peers: PeerSet
) -> None:
    """Orthanc stopped while two series are processed: their exports are retried; one
    result file loses its Study Instance UID meanwhile, which Orthanc refuses. Once it is
    up: the good one stored once, the refused one dead with Orthanc's Failure Reason."""
    orthanc = peers.orthanc(dicomweb=True)
    orthanc.stop()
    daemon = _daemon(tmp_path, orthanc, "test-series")
    daemon.start()
    try:
        for index in range(2):
            series = write_synthetic_ct(tmp_path / f"in{index}", n_slices=3, seed=f"stow-{index}", rows=16,
                                        cols=16)
            storescu(daemon.settings["dicom"]["port"], series.paths)
        wait_until(lambda: len(_exports(daemon)) == 2 and all(e["attempts"] >= 2 for e in _exports(daemon)),
                   60, "exports retried while the target is down", daemon)
        assert all(e["state"] == "pending" and "unreachable" in e["error"] for e in _exports(daemon))
        [first, *_] = journal_rows(daemon, "SELECT path FROM outputs WHERE kind='dicom' ORDER BY id")
        broken = dcmread(first["path"])
        del broken.StudyInstanceUID
        broken.save_as(first["path"], enforce_file_format=True)
        orthanc.start()
        wait_until(lambda: {e["state"] for e in _exports(daemon)} == {"done", "dead"}, 60,
                   "one export stored, one refused", daemon)
        time.sleep(1.0)  # a duplicate send would land in this time
    finally:
        assert daemon.terminate() == 0
    dead, done = _exports(daemon)
    assert dead["state"] == "dead" and "refused the instance (STOW-RS Failure Reason 0x" in dead["error"]
    assert "HTTP 400" in dead["error"] and done["state"] == "done"
    tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.instances()]
    results = [t for t in tags if t.get("SeriesDescription") == "acqflow test result"]
    assert len(results) == 1
    statistics = orthanc.statistics()
    assert statistics["CountInstances"] == 1


def test_basic_auth_from_a_password_file(tmp_path: Path, peers: PeerSet) -> None:
    """Orthanc with HTTP authentication: the password file's secret lets the QIDO-RS echo
    through; a wrong one is a one-line error naming the status."""
    orthanc = peers.orthanc(dicomweb=True, users={"acqflow": "s3cret"})
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    daemon = _daemon(tmp_path, orthanc, "test-series")
    daemon.settings["export"]["destinations"][0].update(
        {"auth": "basic", "username": "acqflow", "password_file": str(secret)})
    daemon.config_path.write_text(toml_dumps(daemon.settings))
    good = daemon.cli("echo", "web")
    assert good.returncode == 0 and "HTTP 200" in good.stdout, good.stderr
    secret.write_text("wrong")
    bad = daemon.cli("echo", "web")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: web: QIDO-RS answered HTTP 401"), bad.stderr
