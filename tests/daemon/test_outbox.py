"""ExportOutbox against a real Orthanc on loopback: lands, retries with backoff, gives up."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from acqflow.daemon import metrics
from acqflow.daemon.config import ExportDestination, ExportSettings
from acqflow.daemon.errors import ExportError
from acqflow.daemon.jobqueue import JobQueue, OutputRow, RouteDecision
from acqflow.daemon.journal import Instance, Journal
from acqflow.daemon.sinks.outbox import ExportOutbox
from tests.support.peers import (
    OrthancPeer,
    PeerSet,
    SyntheticSeries,
    free_port,
    no_thread_leaks,
    write_synthetic_ct,
)

__all__ = ["no_thread_leaks"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_thread_leaks")]

CALLING_AE = "ACQFLOW"


@dataclass
class Setup:
    journal: Journal
    outbox: ExportOutbox
    orthanc: OrthancPeer
    objects: SyntheticSeries
    settings: ExportSettings


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("out"), n_slices=2, seed="outbox", rows=32,
                              cols=32)


def _settings(orthanc: OrthancPeer, **extra: float) -> ExportSettings:
    destination = ExportDestination(name="pacs", ae_title=orthanc.aet, host="127.0.0.1",
                                    port=orthanc.dicom_port)
    values: dict[str, float] = {"retry_initial_seconds": 5.0, "retry_max_seconds": 60.0,
                                "timeout_seconds": 5.0, **extra}
    return ExportSettings(destinations=(destination,), **values)


@pytest.fixture
def setup(tmp_path: Path, peers: PeerSet, objects: SyntheticSeries) -> Iterator[Setup]:
    orthanc = peers.orthanc(modalities={"acqflow": (CALLING_AE, free_port())})
    journal = Journal(tmp_path / "journal.sqlite3")
    settings = _settings(orthanc)
    yield Setup(journal, ExportOutbox(settings, journal, CALLING_AE), orthanc, objects, settings)
    journal.close()


def _queue_exports(journal: Journal, files: list[Path], outputs: Path) -> list[int]:
    """A finished job whose DICOM outputs are to be exported to ``pacs``."""
    journal.open_association("a", "SCU")
    arrival_id, _ = journal.record_instance(
        "series:in", outputs, {"modality": "CT"}, Instance("in.1", 0, outputs / "in", 1, "SCU", "a", 1.0, 1)
    )
    journal.mark_series_ready(arrival_id, 0)
    queue = JobQueue(journal)
    queue.route(arrival_id, 0, [RouteDecision("test", "ct", ("pacs",))])
    (job,) = queue.claim(["test"], 1)
    rows = []
    for source in files:
        target = outputs / source.name
        outputs.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        rows.append(OutputRow("dicom", target, None, ("pacs",)))
    return queue.complete(job, rows, [])


def _export_rows(journal: Journal) -> list[tuple[str, int, float, str | None]]:
    rows = journal.query("SELECT state, attempts, not_before, error FROM exports ORDER BY id")
    return [(r["state"], r["attempts"], r["not_before"], r["error"]) for r in rows]


def test_export_lands_in_orthanc(setup: Setup, tmp_path: Path) -> None:
    _queue_exports(setup.journal, list(setup.objects.paths), tmp_path / "outputs")
    done = metrics.EXPORTS.labels("pacs", "done")._value.get()

    assert setup.outbox.pending_count() == {"pacs": 2}
    assert setup.outbox.send_due() == 2

    assert setup.orthanc.sop_instance_uids() == set(setup.objects.sop_uids)
    assert [row[0] for row in _export_rows(setup.journal)] == ["done", "done"]
    assert setup.outbox.pending_count() == {}
    assert metrics.EXPORTS.labels("pacs", "done")._value.get() == done + 2
    assert metrics.EXPORT_PENDING.labels("pacs")._value.get() == 0
    assert setup.outbox.send_due() == 0


def test_echo(setup: Setup) -> None:
    (destination,) = setup.settings.destinations
    assert setup.outbox.echo(destination, timeout=5) == 0
    nobody = destination.model_copy(update={"port": free_port()})
    with pytest.raises(ExportError, match="unreachable"):
        setup.outbox.echo(nobody, timeout=2)


def test_orthanc_down_retries_with_backoff_and_lands_once(setup: Setup, tmp_path: Path) -> None:
    _queue_exports(setup.journal, [setup.objects.paths[0]], tmp_path / "outputs")
    setup.orthanc.stop()
    t0 = 1_000_000_000.0 + 10  # "now" is passed explicitly: no sleeping for the backoff

    assert setup.outbox.send_due(now=t0) == 0
    ((state, attempts, not_before, error),) = _export_rows(setup.journal)
    assert (state, attempts, not_before) == ("pending", 1, t0 + 5.0) and error
    assert setup.outbox.send_due(now=t0 + 4.0) == 0  # not due yet: no attempt
    assert _export_rows(setup.journal)[0][1] == 1
    assert setup.outbox.send_due(now=t0 + 5.0) == 0  # second failure doubles the delay
    assert _export_rows(setup.journal)[0][1:3] == (2, t0 + 15.0)
    assert setup.outbox.pending_count() == {"pacs": 1}

    setup.orthanc.start()
    assert setup.outbox.send_due(now=t0 + 15.0) == 1
    assert setup.outbox.send_due(now=t0 + 1000.0) == 0
    assert setup.orthanc.sop_instance_uids() == {setup.objects.sop_uids[0]}
    assert len(setup.orthanc.instances()) == 1
    assert _export_rows(setup.journal)[0][0] == "done"


def test_gives_up_after_the_configured_time(setup: Setup, tmp_path: Path) -> None:
    _queue_exports(setup.journal, [setup.objects.paths[0]], tmp_path / "outputs")
    setup.orthanc.stop()
    outbox = ExportOutbox(_settings(setup.orthanc, give_up_after_seconds=60.0), setup.journal,
                          CALLING_AE)
    created = setup.journal.query("SELECT created_at FROM exports")[0]["created_at"]

    assert outbox.send_due(now=created + 1) == 0
    assert _export_rows(setup.journal)[0][0] == "pending"
    assert outbox.send_due(now=created + 61) == 0
    state, _, _, error = _export_rows(setup.journal)[0]
    assert state == "dead" and error is not None and "unreachable" in error


def test_missing_output_file_is_dead_at_once(setup: Setup, tmp_path: Path) -> None:
    _queue_exports(setup.journal, [setup.objects.paths[0]], tmp_path / "outputs")
    (tmp_path / "outputs" / setup.objects.paths[0].name).unlink()
    assert setup.outbox.send_due() == 0
    state, _, _, error = _export_rows(setup.journal)[0]
    assert state == "dead" and error is not None and "missing" in error


def test_object_sent_with_its_own_class_and_syntax(setup: Setup, tmp_path: Path) -> None:
    source = get_testdata_file("JPEG2000.dcm")  # Secondary Capture, JPEG 2000 compressed
    assert source is not None
    _queue_exports(setup.journal, [Path(source)], tmp_path / "outputs")
    assert setup.outbox.send_due() == 1
    (orthanc_id,) = setup.orthanc.instances()
    metadata = setup.orthanc.get(f"/instances/{orthanc_id}/metadata?expand")
    assert metadata["TransferSyntax"] == "1.2.840.10008.1.2.4.91"
    assert metadata["SopClassUid"] == "1.2.840.10008.5.1.4.1.1.7"


def _as_label_map_seg(source: Path, target: Path) -> Path:
    """``source`` relabelled as Label Map Segmentation Storage, which Orthanc 1.10 refuses
    at association negotiation (it never looks inside)."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = LABEL_MAP_SEG
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


LABEL_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"


def test_refused_sop_class_is_dead_at_once_with_the_class_named(setup: Setup, tmp_path: Path) -> None:
    label_map = _as_label_map_seg(setup.objects.paths[0], tmp_path / "labelmap-seg.dcm")
    dead = metrics.EXPORTS.labels("pacs", "dead")._value.get()
    _queue_exports(setup.journal, [label_map, setup.objects.paths[1]], tmp_path / "outputs")

    assert setup.outbox.send_due() == 1  # the CT object, in the same run
    assert setup.orthanc.sop_instance_uids() == {setup.objects.sop_uids[1]}
    (refused, attempts, _, error), (delivered, *_) = _export_rows(setup.journal)
    assert refused == "dead" and attempts == 1 and delivered == "done"
    assert error is not None and "Label Map Segmentation Storage" in error
    assert LABEL_MAP_SEG in error and "not accepted by" in error and "unreachable" not in error
    assert metrics.EXPORTS.labels("pacs", "dead")._value.get() == dead + 1


def test_only_refused_objects_still_get_a_clear_refusal(setup: Setup, tmp_path: Path) -> None:
    # With nothing else to send the peer accepts no context, and pynetdicom aborts the
    # association: still a refusal of the class, not an unreachable destination.
    label_map = _as_label_map_seg(setup.objects.paths[0], tmp_path / "labelmap-seg.dcm")
    _queue_exports(setup.journal, [label_map], tmp_path / "outputs")
    assert setup.outbox.send_due() == 0
    ((state, attempts, _, error),) = _export_rows(setup.journal)
    assert state == "dead" and attempts == 1
    assert error is not None and "Label Map Segmentation Storage" in error
