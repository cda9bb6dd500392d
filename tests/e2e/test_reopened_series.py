"""A re-opened series gets new result UIDs, end to end through a real Orthanc.

dcmtk storescu sends 40 slices of a 64-slice CT series; ct-muscle runs and its SEG,
map and SR are exported to Orthanc. Then the other 24 slices arrive: the series is
re-opened (a new generation), processed again, and the new results must carry new SOP
Instance UIDs, so that Orthanc holds the complete 64-slice SEG next to the stale one
instead of keeping the stale one under the same UID and marking the export done.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series
from tests.support.daemon_proc import DaemonProcess, journal_rows, wait_until
from tests.support.peers import LOOPBACK, OrthancPeer, PeerSet, free_port, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
OPTIONS = PhantomOptions(shape=(64, 64, 64), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)


def _segs(orthanc: OrthancPeer) -> Sequence[Dataset]:
    found = []
    for orthanc_id in orthanc.instances():
        ds = pydicom.dcmread(io.BytesIO(orthanc.request_bytes(f"/instances/{orthanc_id}/file")))
        if ds.SOPClassUID == SEG:
            found.append(ds)
    return found


def _referenced(seg: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID)
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence}


def _exports_settled(daemon: DaemonProcess, jobs: int) -> bool:
    """``jobs`` ct-muscle jobs done and every export (one row per output file and
    destination, re-queued when a new generation rewrites the file) delivered."""
    done = journal_rows(daemon, "SELECT id FROM jobs WHERE pipeline='ct-muscle' AND state='done'")
    exports = journal_rows(daemon, "SELECT state FROM exports")
    return len(done) == jobs and len(exports) == 3 and all(r["state"] == "done" for r in exports)


def test_completed_series_gets_new_uids_and_both_segs_reach_orthanc(
    tmp_path: Path, peers: PeerSet
) -> None:
    dicom_port = free_port()
    orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", dicom_port)})
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": dicom_port, "ae_title": "ACQFLOW", "series_quiet_seconds": 1.0,
                  "allowed_calling_aes": ["STORESCU"]},
        "export": {"destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": LOOPBACK,
                                     "port": orthanc.dicom_port}], "poll_seconds": 0.5},
        "folders": [{"path": str(tmp_path / "inbox")}],
        "routes": [{"name": "ct", "modality": ["CT"], "pipelines": ["ct-muscle"],
                    "export": ["pacs"]}],
        "pipelines": {"options": {"ct-muscle": {"samples": 2}}},
    }
    folder = tmp_path / "send"
    folder.mkdir()
    paths = []
    for index, ds in enumerate(demo_ct_series(21, OPTIONS)):
        path = folder / f"CT{index:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        first = storescu(daemon.state["dicom_port"], paths[:40])
        assert first.returncode == 0, first.stderr
        wait_until(lambda: _exports_settled(daemon, 1), 120, "the 40-slice result exported", daemon)
        (stale,) = _segs(orthanc)
        assert len(_referenced(stale)) == 40

        rest = storescu(daemon.state["dicom_port"], paths[40:])
        assert rest.returncode == 0, rest.stderr
        wait_until(lambda: _exports_settled(daemon, 2) and len(_segs(orthanc)) == 2, 120,
                   "the 64-slice result exported", daemon)
        generations = journal_rows(daemon, "SELECT generation FROM jobs ORDER BY id")
        assert [r["generation"] for r in generations] == [0, 1]
        segs = {str(ds.SOPInstanceUID): ds for ds in _segs(orthanc)}
        assert len(segs) == 2 and str(stale.SOPInstanceUID) in segs
        (current,) = [ds for uid, ds in segs.items() if uid != str(stale.SOPInstanceUID)]
        assert current.SeriesInstanceUID != stale.SeriesInstanceUID
        assert len(_referenced(current)) == 64
        assert int(current.NumberOfFrames) > int(stale.NumberOfFrames)
    finally:
        if daemon.alive():
            assert daemon.terminate() == 0
