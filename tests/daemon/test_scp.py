"""DicomReceiver against real dcmtk peers (storescu, echoscu) on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID
from pynetdicom import AE

from acqflow.daemon import metrics
from acqflow.daemon.config import TlsSettings
from acqflow.daemon.dicom.slots import SLOTS
from acqflow.daemon.journal import ArrivalState, Journal
from tests.support.peers import (
    DCMTK_STORESCU,
    LOOPBACK,
    PeerSet,
    SyntheticSeries,
    echoscu,
    free_port,
    no_thread_leaks,
    nodelay_env,
    storescu,
    wait_for_port,
    write_synthetic_ct,
)
from tests.support.scp import RunningScp
from tests.support.waiting import poll_until

__all__ = ["no_thread_leaks"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_thread_leaks")]


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    running = RunningScp(tmp_path, allowed_calling_aes=("STORESCU", "ECHOSCU"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=5, seed="scp", rows=64,
                              cols=64)


def _count(name: str) -> float:
    return float(metrics.DICOM_INSTANCES.labels(name)._value.get())


def test_storescu_series_is_spooled_and_journaled(scp: RunningScp, small_ct: SyntheticSeries) -> None:
    result = storescu(scp.receiver.port, small_ct.paths)
    assert result.returncode == 0, result.stderr

    arrival = scp.journal.arrival_by_key("series:" + small_ct.series_uid)
    assert arrival is not None and arrival.state is ArrivalState.RECEIVING
    assert arrival.attrs == {
        "modality": "CT",
        "study_uid": small_ct.study_uid,
        "series_uid": small_ct.series_uid,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "calling_ae": "STORESCU",
        "transfer_syntax": "1.2.840.10008.1.2.1",
    }
    instances = scp.journal.instances(arrival.id)
    assert sorted(i.sop_instance_uid for i in instances) == sorted(small_ct.sop_uids)
    assert sorted(i.instance_number or 0 for i in instances) == [1, 2, 3, 4, 5]
    for instance in instances:
        assert instance.path.parent.parent == scp.spool and instance.path.stat().st_size == instance.size
        received = dcmread(instance.path)
        original = dcmread(small_ct.paths[received.InstanceNumber - 1])
        assert received.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert received.file_meta.SourceApplicationEntityTitle == "STORESCU"
        assert np.array_equal(received.pixel_array, original.pixel_array)
    poll_until(lambda: bool(scp.closed))  # the release event runs after storescu is told
    assert scp.closed == [[arrival.id]]
    rows = scp.journal.query("SELECT state, instances FROM associations")
    assert [(r["state"], r["instances"]) for r in rows] == [("released", 5)]


def test_duplicates_are_idempotent(scp: RunningScp, small_ct: SyntheticSeries) -> None:
    assert storescu(scp.receiver.port, small_ct.paths).returncode == 0
    arrival = scp.journal.arrival_by_key("series:" + small_ct.series_uid)
    assert arrival is not None
    assert scp.journal.mark_series_ready(arrival.id, arrival.generation)
    duplicates = _count("duplicate")

    again = storescu(scp.receiver.port, small_ct.paths[:2])

    assert again.returncode == 0, again.stderr
    after = scp.journal.arrival(arrival.id)
    assert after.state is ArrivalState.READY and after.generation == arrival.generation
    assert len(scp.journal.instances(arrival.id)) == 5
    assert _count("duplicate") == duplicates + 2


def test_unknown_calling_ae_is_rejected(scp: RunningScp, small_ct: SyntheticSeries) -> None:
    result = storescu(scp.receiver.port, small_ct.paths[:1], calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "calling ae title not recognized" in (result.stdout + result.stderr).lower()
    assert scp.journal.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    assert echoscu(scp.receiver.port, calling_ae="INTRUDER").returncode != 0


def test_echoscu_succeeds(scp: RunningScp) -> None:
    result = echoscu(scp.receiver.port)
    assert result.returncode == 0, result.stdout + result.stderr


def test_address_allow_list_rejects_others(tmp_path: Path) -> None:
    running = RunningScp(tmp_path, allowed_addresses=("10.0.0.0/8",))
    try:
        assert echoscu(running.receiver.port).returncode != 0
    finally:
        running.stop()
    allowed = RunningScp(tmp_path / "b", allowed_addresses=("127.0.0.0/8",))
    try:
        assert echoscu(allowed.receiver.port).returncode == 0
    finally:
        allowed.stop()


def test_other_sop_class_refused_and_server_keeps_running(scp: RunningScp, small_ct: SyntheticSeries) -> None:
    secondary_capture = get_testdata_file("JPEG2000.dcm")
    assert secondary_capture is not None
    refused = storescu(scp.receiver.port, [Path(secondary_capture)])
    assert refused.returncode != 0 or "no presentation context" in refused.stderr.lower()
    assert scp.journal.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    assert storescu(scp.receiver.port, small_ct.paths[:1]).returncode == 0
    assert scp.journal.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1


def test_unreadable_dataset_gets_failure_status(scp: RunningScp, small_ct: SyntheticSeries,
                                                tmp_path: Path) -> None:
    broken = dcmread(small_ct.paths[0])
    del broken.SeriesInstanceUID
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7")
    broken_path = tmp_path / "broken.dcm"
    broken.save_as(broken_path)
    unreadable = _count("unreadable")

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(broken.SOPClassUID, broken.file_meta.TransferSyntaxUID)
    assoc = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW")
    assert assoc.is_established
    status = assoc.send_c_store(broken_path)
    good = assoc.send_c_store(small_ct.paths[1])
    assoc.release()

    assert status.Status == 0xC000 and "series_uid" in status.ErrorComment
    assert good.Status == 0x0000
    assert _count("unreadable") == unreadable + 1
    uids = [r["sop_instance_uid"] for r in scp.journal.query("SELECT * FROM instances")]
    assert uids == [small_ct.sop_uids[1]]


@pytest.mark.parametrize(
    ("name", "propose"),
    [("MR_small_jp2klossless.dcm", "-xv"), ("MR_small_RLE.dcm", "-xr"), ("MR_small.dcm", "-xd")],
)
def test_compressed_transfer_syntaxes(scp: RunningScp, tmp_path: Path, name: str, propose: str) -> None:
    source = get_testdata_file(name)
    assert source is not None
    local = tmp_path / name
    shutil.copy(source, local)
    original = dcmread(local)

    result = storescu(scp.receiver.port, [local], extra=[propose, "-R"])

    assert result.returncode == 0, result.stderr
    (instance,) = scp.journal.instances(scp.journal.arrivals_in_state(ArrivalState.RECEIVING)[0].id)
    received = dcmread(instance.path)
    expected = "1.2.840.10008.1.2.1.99" if propose == "-xd" else original.file_meta.TransferSyntaxUID
    assert received.file_meta.TransferSyntaxUID == expected
    assert instance.path.read_bytes()[128:132] == b"DICM"
    assert np.array_equal(received.pixel_array, original.pixel_array)


def test_spool_failure_returns_out_of_resources(scp: RunningScp, small_ct: SyntheticSeries) -> None:
    blocker = scp.spool / _series_folder(small_ct.series_uid)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the series folder should be")
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW")
    status = assoc.send_c_store(small_ct.paths[0])
    assoc.release()
    assert status.Status == 0xA700
    assert echoscu(scp.receiver.port).returncode == 0  # still serving


def _series_folder(series_uid: str) -> str:
    from acqflow.daemon.fileio import safe_name

    return safe_name(series_uid)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "scp.crt", folder / "scp.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_echo_and_store(tmp_path: Path, small_ct: SyntheticSeries) -> None:
    cert, key = _self_signed(tmp_path)
    running = RunningScp(tmp_path, tls=TlsSettings(certificate=cert, private_key=key))
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate(LOOPBACK, running.receiver.port, ae_title="ACQFLOW",
                             tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(small_ct.paths[0]).Status == 0x0000
        assoc.release()
        assert echoscu(running.receiver.port).returncode != 0  # plain DICOM is refused
        assert len(running.journal.query("SELECT * FROM instances")) == 1
    finally:
        running.stop()


def test_orthanc_pushes_a_series(tmp_path: Path, peers: PeerSet, small_ct: SyntheticSeries) -> None:
    running = RunningScp(tmp_path)
    try:
        orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", running.receiver.port)})
        for path in small_ct.paths:
            orthanc.upload(path)
        answer = orthanc.store_to_modality("acqflow", orthanc.series())
        assert answer.get("InstancesCount", len(small_ct.paths)) == len(small_ct.paths)
        arrival = running.journal.arrival_by_key("series:" + small_ct.series_uid)
        assert arrival is not None
        stored = {i.sop_instance_uid for i in running.journal.instances(arrival.id)}
        assert stored == set(small_ct.sop_uids)
        assert arrival.attrs["calling_ae"] == orthanc.aet
    finally:
        running.stop()


_RECEIVER_PROCESS = """
import sys, time
from pathlib import Path
from acqflow.daemon.config import DicomSettings
from acqflow.daemon.journal import Journal
from acqflow.daemon.dicom.scp import DicomReceiver
root = Path(sys.argv[1])
journal = Journal(root / "journal.sqlite3")
settings = DicomSettings(port=int(sys.argv[2]), spool_slots=int(sys.argv[3]), spool_slot_bytes=256 * 1024)
receiver = DicomReceiver(settings, journal, root / "spool", lambda ids: None)
receiver.start()
if receiver.spool.slots is not None:
    assert receiver.spool.slots.wait_filled(120)
(root / "ready").touch()
time.sleep(600)
"""


# 0: every instance a new file (two flushes); 450: every instance in a slot (one flush)
@pytest.mark.parametrize("slots", [0, 450])
def test_kill_9_keeps_every_acknowledged_instance(tmp_path: Path, peers: PeerSet, slots: int) -> None:
    # long enough that the kill, ~10 ms after the 10th row, lands mid-transfer
    series = write_synthetic_ct(tmp_path / "ct", n_slices=400, seed="kill", rows=256, cols=256)
    port = free_port()
    state = tmp_path / "state"
    receiver = peers.spawn("receiver",
                           [sys.executable, "-c", _RECEIVER_PROCESS, str(state), str(port), str(slots)],
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    poll_until(lambda: (state / "ready").exists(), timeout=120)
    wait_for_port(port, timeout=30)
    sender = subprocess.Popen(
        [DCMTK_STORESCU, "-v", "-aec", "ACQFLOW", "-aet", "STORESCU", LOOPBACK, str(port),
         *map(str, series.paths)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=nodelay_env(),
    )
    poll_until(lambda: _journaled(state) >= 10, timeout=60)
    os.kill(receiver.pid, signal.SIGKILL)
    output, _ = sender.communicate(timeout=60)

    acknowledged = output.count("Received Store Response (Success)")
    assert 10 <= acknowledged < len(series.paths), output[-2000:]
    journal = Journal(state / "journal.sqlite3")
    try:
        rows = {r["sop_instance_uid"]: Path(r["path"]) for r in journal.query("SELECT * FROM instances")}
    finally:
        journal.close()
    for index in range(acknowledged):  # storescu sends the files in order, one at a time
        path = rows[series.sop_uids[index]]
        received, sent = dcmread(path), dcmread(series.paths[index])
        assert received.SOPInstanceUID == sent.SOPInstanceUID and received.PixelData == sent.PixelData
    if slots:  # each acknowledged instance took a slot (and one more may have been sealed unanswered)
        left = len(list((state / "spool" / SLOTS).iterdir()))
        assert slots - acknowledged - 1 <= left <= slots - acknowledged


def _journaled(state: Path) -> int:
    path = state / "journal.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
