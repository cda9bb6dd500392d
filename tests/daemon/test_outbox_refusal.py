"""ExportOutbox against real peers that refuse a SOP class: dead at once, class named.

Orthanc 1.10 does not know Label Map Segmentation Storage; dcmtk storescp is given a
profile that accepts CT Image Storage only. Both answer a context they refuse with
"abstract syntax not supported", and a proposal they accept no context of with an
A-ASSOCIATE-AC that rejects every context (pynetdicom then aborts the association).
An unreachable Orthanc is still retried: see ``test_outbox.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, SegmentationStorage
from typer.testing import CliRunner

from acqflow.daemon import metrics
from acqflow.daemon.cli import app, console
from acqflow.daemon.config import ExportDestination, ExportSettings
from acqflow.daemon.journal import Journal
from acqflow.daemon.sinks.outbox import ExportOutbox
from tests.daemon.test_outbox import CALLING_AE, _export_rows, _queue_exports
from tests.support.peers import (
    LOOPBACK,
    PeerSet,
    SyntheticSeries,
    free_port,
    no_thread_leaks,
    write_synthetic_ct,
)
from tests.support.refusing_peers import storescp_on_port, storescp_profile, write_seg

__all__ = ["no_thread_leaks"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_thread_leaks")]

LABEL_MAP = "Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7)"
SEGMENTATION = "Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4)"


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=2, seed="refusal", rows=32,
                              cols=32)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    yield journal
    journal.close()


def _outbox(journal: Journal, ae_title: str, port: int) -> ExportOutbox:
    destination = ExportDestination(name="pacs", ae_title=ae_title, host=LOOPBACK, port=port)
    settings = ExportSettings(destinations=(destination,), retry_initial_seconds=5.0,
                              retry_max_seconds=60.0, timeout_seconds=5.0)
    return ExportOutbox(settings, journal, CALLING_AE)


def _dead() -> float:
    return float(metrics.EXPORTS.labels("pacs", "dead")._value.get())


def test_orthanc_refuses_label_map_seg_and_takes_the_ct(
    peers: PeerSet, journal: Journal, ct: SyntheticSeries, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    orthanc = peers.orthanc(modalities={"acqflow": (CALLING_AE, free_port())})
    seg = write_seg(ct, tmp_path / "seg" / "labelmap.dcm", labelmap=True)
    _queue_exports(journal, [ct.paths[0], seg], tmp_path / "outputs")
    outbox = _outbox(journal, orthanc.aet, orthanc.dicom_port)
    dead = _dead()

    with caplog.at_level(logging.ERROR, logger="acqflow.daemon.sinks.outbox"):
        assert outbox.send_due() == 1

    refusal = (f"{LABEL_MAP} not accepted by ORTHANC@127.0.0.1:{orthanc.dicom_port}"
               " (abstract syntax not supported)")
    assert _export_rows(journal) == [("done", 1, 0.0, None), ("dead", 1, 0.0, refusal)]
    assert orthanc.sop_instance_uids() == {ct.sop_uids[0]}
    assert _dead() == dead + 1
    assert any(refusal in r.getMessage() and "dead" in r.getMessage() for r in caplog.records)
    assert outbox.pending_count() == {}
    assert outbox.send_due(now=1e12) == 0  # dead, not retried later
    assert _export_rows(journal)[1][:2] == ("dead", 1)


def test_storescp_without_segmentation_storage_takes_the_ct_only(
    peers: PeerSet, journal: Journal, ct: SyntheticSeries, tmp_path: Path
) -> None:
    received = tmp_path / "received"
    _, port = peers.storescp(received, extra=storescp_profile(tmp_path, [CTImageStorage]))
    seg = write_seg(ct, tmp_path / "seg" / "binary.dcm", labelmap=False)
    _queue_exports(journal, [seg, ct.paths[1]], tmp_path / "outputs")

    assert _outbox(journal, "STORESCP", port).send_due() == 1

    refusal = f"{SEGMENTATION} not accepted by STORESCP@127.0.0.1:{port} (abstract syntax not supported)"
    assert _export_rows(journal) == [("dead", 1, 0.0, refusal), ("done", 1, 0.0, None)]
    assert [p.name for p in received.iterdir()] == [f"CT.{ct.sop_uids[1]}"]


def test_peer_accepting_no_context_is_a_refusal_and_a_retry_after_reconfiguring_lands(
    peers: PeerSet, journal: Journal, ct: SyntheticSeries, tmp_path: Path
) -> None:
    received = tmp_path / "received"
    process, port = peers.storescp(received, extra=storescp_profile(tmp_path, [CTImageStorage]))
    seg = write_seg(ct, tmp_path / "seg" / "binary.dcm", labelmap=False)
    (export_id,) = _queue_exports(journal, [seg], tmp_path / "outputs") or []
    outbox = _outbox(journal, "STORESCP", port)
    dead = _dead()

    assert outbox.send_due() == 0
    ((state, attempts, _, error),) = _export_rows(journal)
    assert (state, attempts) == ("dead", 1)
    assert error == (f"{SEGMENTATION} not accepted by STORESCP@127.0.0.1:{port}"
                     " (abstract syntax not supported)")
    assert _dead() == dead + 1

    process.stop()  # the operator adds Segmentation Storage to the peer, then retries
    storescp_on_port(peers, port, received,
                     extra=storescp_profile(tmp_path / "v2", [CTImageStorage, SegmentationStorage]))
    assert journal.retry_export(export_id)
    assert outbox.send_due() == 1
    assert _export_rows(journal)[0][0] == "done"
    # dcmtk names a file <modality>.<SOP instance uid>
    assert [p.name for p in received.iterdir()] == [f"SG.{seg_uid(seg)}"]


def test_transfer_syntax_refused_while_the_class_is_accepted_uncompressed(
    peers: PeerSet, journal: Journal, tmp_path: Path
) -> None:
    source = get_testdata_file("JPEG2000.dcm")  # Secondary Capture, JPEG 2000 compressed
    assert source is not None
    _, port = peers.storescp(tmp_path / "received",
                             extra=storescp_profile(tmp_path, [SecondaryCaptureImageStorage]))
    _queue_exports(journal, [Path(source)], tmp_path / "outputs")

    assert _outbox(journal, "STORESCP", port).send_due() == 0

    ((state, attempts, _, error),) = _export_rows(journal)
    assert (state, attempts) == ("dead", 1)
    assert error == (
        "Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7) in JPEG 2000 Image Compression"
        f" (1.2.840.10008.1.2.4.91) not accepted by STORESCP@127.0.0.1:{port}"
        " (only in Explicit VR Little Endian (1.2.840.10008.1.2.1); acqflow does not transcode)"
    )


def test_association_rejected_for_another_reason_is_still_retried(
    peers: PeerSet, journal: Journal, ct: SyntheticSeries, tmp_path: Path
) -> None:
    _, port = peers.storescp(tmp_path / "received", extra=["--refuse"])
    _queue_exports(journal, [ct.paths[0]], tmp_path / "outputs")
    t0 = 1_000_000_000.0 + 10

    assert _outbox(journal, "STORESCP", port).send_due(now=t0) == 0

    # Retried, not a refusal. storescp --refuse sends A-ASSOCIATE-RJ and closes at once:
    # pynetdicom reads the reject or, when the close wins the race (seen under load), an abort.
    ((state, attempts, not_before, error),) = _export_rows(journal)
    assert (state, attempts, not_before) == ("pending", 1, t0 + 5.0)
    assert error in (f"association rejected by STORESCP@127.0.0.1:{port}",
                     f"STORESCP@127.0.0.1:{port} unreachable, not answering or aborted the association")


def test_cli_shows_the_whole_refusal(
    peers: PeerSet, journal: Journal, ct: SyntheticSeries, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orthanc = peers.orthanc(modalities={"acqflow": (CALLING_AE, free_port())})
    seg = write_seg(ct, tmp_path / "seg" / "labelmap.dcm", labelmap=True)
    (export_id,) = _queue_exports(journal, [seg], tmp_path / "outputs") or []
    _outbox(journal, orthanc.aet, orthanc.dicom_port).send_due()
    config = tmp_path / "acqflow.toml"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    monkeypatch.setattr(console, "width", 400)  # one table row per line
    runner = CliRunner()

    listed = runner.invoke(app, ["exports", "--config", str(config), "--state", "dead"])

    assert listed.exit_code == 0, listed.output
    refusal = f"{LABEL_MAP} not accepted by ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    (row,) = [line for line in listed.output.splitlines() if refusal in line]
    assert "dead" in row and "(abstract syntax not supported)" in row
    retried = runner.invoke(app, ["retry", "--config", str(config), "--export", str(export_id)])
    assert retried.exit_code == 0, retried.output
    assert "1 export(s) queued again" in retried.output
    assert _export_rows(journal)[0][:2] == ("pending", 0)


def seg_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
