"""CT and MR muscle end to end through a real Orthanc: the PACS sends a generated study to
the daemon (Orthanc REST ``modalities/.../store``) and gets SEG, uncertainty map and SR
back, referencing the source series."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset

from tests.support.daemon_proc import DaemonProcess, wait_until
from tests.support.peers import LOOPBACK, OrthancPeer, PeerSet, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUIET_SECONDS = 2.0
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def _upload(orthanc: OrthancPeer, datasets: Sequence[Dataset]) -> str:
    """Store the series in Orthanc through REST; returns its Orthanc series id."""
    answer: dict[str, Any] = {}
    for dataset in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        answer = orthanc.request("POST", "/instances", buffer.getvalue(), "application/dicom")
    return str(answer["ParentSeries"])


def _results(orthanc: OrthancPeer, source_series_uid: str) -> dict[str, Dataset]:
    """Instances in Orthanc that are not the source series, keyed by SOP Class UID."""
    found: dict[str, Dataset] = {}
    for orthanc_id in orthanc.instances():
        raw = orthanc.request_bytes(f"/instances/{orthanc_id}/file")
        dataset = pydicom.dcmread(io.BytesIO(raw))
        if dataset.SeriesInstanceUID != source_series_uid:
            found[str(dataset.SOPClassUID)] = dataset
    return found


def _round_trip(
    tmp_path: Path, peers: PeerSet, datasets: Sequence[Dataset], route: dict[str, Any]
) -> tuple[dict[str, Dataset], float]:
    dicom_port = free_port()
    orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", dicom_port)})
    daemon = DaemonProcess(
        tmp_path,
        {
            "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
            "workers": {"device": "cpu", "poll_seconds": 0.2},
            "metrics": {"port": free_port()},
            "dicom": {
                "port": dicom_port,
                "series_quiet_seconds": QUIET_SECONDS,
                "allowed_calling_aes": ["ORTHANC"],
            },
            "export": {
                "destinations": [
                    {"name": "pacs", "ae_title": "ORTHANC", "host": LOOPBACK, "port": orthanc.dicom_port}
                ],
                "poll_seconds": 0.5,
            },
            "folders": [{"path": str(tmp_path / "inbox")}],
            "routes": [route],
            "pipelines": {"options": {route["pipelines"][0]: {"samples": 4}}},
        },
    )
    daemon.start()
    try:
        series_id = _upload(orthanc, datasets)
        started = time.monotonic()
        orthanc.store_to_modality("acqflow", [series_id])
        source_uid = str(datasets[0].SeriesInstanceUID)
        wait_until(lambda: len(_results(orthanc, source_uid)) >= 3, 300, "SEG, map and SR in Orthanc", daemon)
        elapsed = time.monotonic() - started
        return _results(orthanc, source_uid), elapsed
    finally:
        if daemon.alive():
            assert daemon.terminate() == 0


def _check_results(tmp_path: Path, results: dict[str, Dataset], source: Sequence[Dataset]) -> None:
    source_uids = {str(d.SOPInstanceUID) for d in source}
    seg = hd.seg.Segmentation.from_dataset(results[SEG])
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced <= source_uids and referenced
    assert seg.number_of_segments >= 3
    assert PARAMETRIC_MAP in results
    assert any(uid.startswith("1.2.840.10008.5.1.4.1.1.88") for uid in results)  # an SR
    for name, dataset in results.items():
        path = tmp_path / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in check.stderr.splitlines() if line.startswith("Error")]
        assert not errors, f"{name}: {errors}"


def test_ct_study_from_orthanc_comes_back_with_seg_uncertainty_and_sr(tmp_path: Path, peers: PeerSet) -> None:
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    source = demo_ct_series(seed=5)
    route = {"name": "ct", "modality": ["CT"], "pipelines": ["ct-muscle"], "export": ["pacs"]}
    results, elapsed = _round_trip(tmp_path, peers, source, route)
    _check_results(tmp_path, results, source)
    print(f"CT round trip through Orthanc: {elapsed:.1f} s (quiet time {QUIET_SECONDS} s)")


def test_mr_series_from_orthanc_comes_back_with_a_seg_on_the_mr(tmp_path: Path, peers: PeerSet) -> None:
    from acqflow.plugins.mr_muscle.mr_series import demo_mr_series

    source = demo_mr_series(seed=5)
    route = {"name": "mr", "modality": ["MR"], "pipelines": ["mr-muscle"], "export": ["pacs"]}
    results, _elapsed = _round_trip(tmp_path, peers, source, route)
    _check_results(tmp_path, results, source)
    assert all(d.Modality != "CT" for d in results.values())
