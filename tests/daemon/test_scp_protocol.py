"""DicomReceiver's streaming receive path, driven PDU by PDU and by real peers.

The raw client here builds every PDU with pynetdicom's own PDU and DIMSE classes, so it
can send what ordinary SCUs do not: a command set split over several fragments, many
PDVs in one P-DATA-TF, a data set cut off by an abort, silence.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    P_DATA,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context

from acqflow.daemon.dicom.spool import INCOMING, SERVED_MARKER
from acqflow.daemon.journal import Journal
from tests.support.peers import LOOPBACK, SyntheticSeries, no_thread_leaks, storescu, write_synthetic_ct
from tests.support.scp import RunningScp
from tests.support.waiting import poll_until

__all__ = ["no_thread_leaks"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_thread_leaks")]

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningScp]:
    scp = RunningScp(tmp_path)
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=3, seed="protocol", rows=64,
                              cols=64)


class RawScu:
    """A hand-driven association: one presentation context (id 1), CT, Explicit VR LE."""

    def __init__(self, port: int, calling_ae: str = "RAWSCU") -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        request = A_ASSOCIATE()
        request.application_context_name = APPLICATION_CONTEXT_NAME
        request.calling_ae_title = calling_ae
        request.called_ae_title = "ACQFLOW"
        context = build_context(CT, [ExplicitVRLittleEndian])
        context.context_id = 1
        request.presentation_context_definition_list = [context]
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = 16384
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.3.4"
        request.user_information = [maximum, implementation]
        self.sock.sendall(A_ASSOCIATE_RQ(request).encode())
        pdu_type, _ = self.read()
        assert pdu_type == 0x02, f"association not accepted (PDU type {pdu_type})"

    def read(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        pdu_type, length = struct.unpack(">BxL", header)
        return pdu_type, self._exactly(length)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def pdvs(self, path: Path, fragment: int, command_uid: str | None = None) -> list[tuple[int, bytes]]:
        """All PDVs (context id, control + data) of a C-STORE of ``path``, ``fragment`` bytes each.

        ``command_uid``: the Affected SOP Instance UID to put in the command instead of
        the data set's own.
        """
        dataset = dcmread(path)
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = dataset.SOPClassUID
        request.AffectedSOPInstanceUID = command_uid or dataset.SOPInstanceUID
        request.Priority = 0
        encoded = encode(dataset, False, True)  # as pynetdicom's SCU sends it
        assert encoded is not None
        request.DataSet = BytesIO(encoded)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        return [pdv for p in message.encode_msg(1, fragment + 6) for pdv in p.presentation_data_value_list]

    def send_pdvs(self, pdvs: list[tuple[int, bytes]]) -> None:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(pdvs)
        self.sock.sendall(P_DATA_TF(primitive).encode())

    def response_status(self) -> int:
        command = b""
        while True:
            pdu_type, body = self.read()
            assert pdu_type == 0x04, f"expected P-DATA-TF, got PDU type {pdu_type}"
            offset = 0
            while offset < len(body):
                length = struct.unpack_from(">L", body, offset)[0]
                command += body[offset + 6 : offset + 4 + length]
                last = body[offset + 5] & 0x02
                offset += 4 + length
            if last:
                return int(decode(BytesIO(command), True, True).Status)

    def release(self) -> None:
        self.sock.sendall(A_RELEASE_RQ().encode())
        assert self.read()[0] == 0x06
        self.sock.close()

    def abort(self) -> None:
        primitive = A_ABORT()
        primitive.abort_source = 0x00
        self.sock.sendall(A_ABORT_RQ(primitive).encode())
        self.sock.close()


def test_command_set_over_many_fragments_and_many_pdvs_per_pdu(running: RunningScp,
                                                               small_ct: SyntheticSeries) -> None:
    scu = RawScu(running.receiver.port)
    pdvs = scu.pdvs(small_ct.paths[0], fragment=40)
    commands = [p for p in pdvs if p[1][0] & 0x01]
    assert len(commands) >= 3  # the ~150-byte command set arrives in pieces
    for index in range(0, len(pdvs), 7):  # seven PDVs to a P-DATA-TF
        scu.send_pdvs(pdvs[index : index + 7])
    assert scu.response_status() == 0x0000
    scu.release()

    assert running.instance_rows() == [small_ct.sop_uids[0]]
    (stored,) = [p for p in running.spool_files() if p.suffix == ".dcm"]
    assert dcmread(stored).PixelData == dcmread(small_ct.paths[0]).PixelData


@pytest.mark.parametrize("fragment", [40, 16000])
def test_mismatch_and_duplicate_are_settled_from_the_first_fragments(
    running: RunningScp, small_ct: SyntheticSeries, fragment: int
) -> None:
    """The header is checked while the data set still arrives; the rest is read and dropped."""
    scu = RawScu(running.receiver.port)
    for pdvs, status in [
        (scu.pdvs(small_ct.paths[0], fragment, command_uid="1.2.3.999"), 0xA900),
        (scu.pdvs(small_ct.paths[0], fragment), 0x0000),
        (scu.pdvs(small_ct.paths[0], fragment), 0x0000),  # a duplicate
    ]:
        for index in range(0, len(pdvs), 3):
            scu.send_pdvs(pdvs[index : index + 3])
        assert scu.response_status() == status
    scu.release()

    assert running.instance_rows() == [small_ct.sop_uids[0]]
    assert [p.name for p in running.spool_files() if p.suffix == ".dcm"] == [f"{small_ct.sop_uids[0]}.dcm"]
    # the next instance's incoming file, made ahead, goes when the association closes
    poll_until(lambda: not any(p.suffix == ".part" for p in running.spool_files()),
               what="no incoming files left")


def test_abort_inside_a_data_set_leaves_no_file_and_no_row(running: RunningScp,
                                                           small_ct: SyntheticSeries) -> None:
    scu = RawScu(running.receiver.port)
    pdvs = scu.pdvs(small_ct.paths[0], fragment=1000)
    scu.send_pdvs(pdvs[: len(pdvs) // 2])
    poll_until(lambda: any(p.suffix == ".part" for p in running.spool_files()))  # half written
    scu.abort()

    poll_until(lambda: running.closed == [[]])
    assert running.association_states() == ["aborted"]
    assert running.instance_rows() == []
    assert running.spool_files() == []


def test_connection_lost_inside_a_data_set_leaves_nothing(running: RunningScp,
                                                          small_ct: SyntheticSeries) -> None:
    scu = RawScu(running.receiver.port)
    pdvs = scu.pdvs(small_ct.paths[1], fragment=1000)
    scu.send_pdvs(pdvs[:3])
    scu.sock.close()

    poll_until(lambda: running.closed == [[]])
    assert running.association_states() == ["closed"]
    assert running.instance_rows() == [] and running.spool_files() == []


def test_data_for_an_unaccepted_context_aborts(running: RunningScp, small_ct: SyntheticSeries) -> None:
    scu = RawScu(running.receiver.port)
    pdvs = [(3, data) for _, data in scu.pdvs(small_ct.paths[0], fragment=1000)]
    scu.send_pdvs(pdvs[:2])
    assert scu.read()[0] == 0x07  # A-ABORT
    poll_until(lambda: running.association_states() == ["aborted"])
    assert running.instance_rows() == []


def test_idle_association_is_aborted(tmp_path: Path) -> None:
    scp = RunningScp(tmp_path, network_timeout_seconds=0.5)
    try:
        scu = RawScu(scp.receiver.port)
        started = time.monotonic()
        assert scu.read()[0] == 0x07
        assert 0.4 < time.monotonic() - started < 5
        poll_until(lambda: scp.association_states() == ["aborted"])
    finally:
        scp.stop()


def test_association_limit_rejects_transiently(tmp_path: Path) -> None:
    scp = RunningScp(tmp_path, max_associations=1)
    try:
        first = RawScu(scp.receiver.port)
        ae = AE(ae_title="SECOND")
        ae.add_requested_context(CT, ExplicitVRLittleEndian)
        second = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW")
        assert second.is_rejected
        assert second.acceptor.primitive is not None
        assert (second.acceptor.primitive.result, second.acceptor.primitive.result_source,
                second.acceptor.primitive.diagnostic) == (0x02, 0x03, 0x02)
        first.release()
    finally:
        scp.stop()


def test_small_max_pdu_splits_every_instance(tmp_path: Path, small_ct: SyntheticSeries) -> None:
    scp = RunningScp(tmp_path, max_pdu=4096)
    try:
        assert storescu(scp.receiver.port, small_ct.paths, max_pdu=4096).returncode == 0
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CT, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW", max_pdu=4096)
        assert assoc.is_established and assoc.acceptor.maximum_length == 4096
        assert assoc.send_c_store(small_ct.paths[0]).Status == 0x0000  # a duplicate by now
        assoc.release()
        assert sorted(scp.instance_rows()) == sorted(small_ct.sop_uids)
        for path in small_ct.paths:
            sop_uid = dcmread(path).SOPInstanceUID
            (row,) = scp.journal.query("SELECT path FROM instances WHERE sop_instance_uid=?", (sop_uid,))
            assert dcmread(row["path"]).PixelData == dcmread(path).PixelData
    finally:
        scp.stop()


def test_stop_aborts_open_associations(tmp_path: Path) -> None:
    scp = RunningScp(tmp_path)
    scu = RawScu(scp.receiver.port)
    scp.stop()
    assert scu.read()[0] == 0x07
    assert scp.closed == [[]]


def _store_then_lose_rows(root: Path, series: SyntheticSeries) -> None:
    """Store ``series``, stop, then delete all rows but the first (as a power cut might)."""
    scp = RunningScp(root)
    try:
        assert storescu(scp.receiver.port, series.paths).returncode == 0
    finally:
        scp.stop()
    journal = Journal(root / "journal.sqlite3")
    with journal.transaction() as db:
        db.execute("DELETE FROM instances WHERE sop_instance_uid != ?", (series.sop_uids[0],))
    journal.close()


def test_rows_lost_with_the_machine_are_registered_again(tmp_path: Path,
                                                         small_ct: SyntheticSeries) -> None:
    _store_then_lose_rows(tmp_path, small_ct)
    marker = tmp_path / "spool" / SERVED_MARKER
    served = json.loads(marker.read_text())
    marker.write_text(json.dumps({**served, "boot_id": "the boot before the power cut"}))
    stray = tmp_path / "spool" / INCOMING / "123-4.part"
    stray.write_bytes(b"half an instance that was never acknowledged")

    again = RunningScp(tmp_path)
    try:
        assert sorted(again.instance_rows()) == sorted(small_ct.sop_uids)
        arrival = again.journal.arrival_by_key("series:" + small_ct.series_uid)
        assert arrival is not None and arrival.attrs["calling_ae"] == "STORESCU"
        assert arrival.attrs["transfer_syntax"] == "1.2.840.10008.1.2.1"
        rows = again.journal.query("SELECT * FROM instances WHERE association = 'recovered'")
        assert len(rows) == 2 and {r["calling_ae"] for r in rows} == {"STORESCU"}
        assert {r["instance_number"] for r in rows} == {2, 3}
        assert not stray.exists()
        assert storescu(again.receiver.port, small_ct.paths).returncode == 0  # all duplicates now
        assert len(again.instance_rows()) == 3
    finally:
        again.stop()


def test_a_series_lost_with_the_machine_is_recorded_again_as_the_scp_recorded_it(
        tmp_path: Path, small_ct: SyntheticSeries) -> None:
    scp = RunningScp(tmp_path)
    try:
        assert storescu(scp.receiver.port, small_ct.paths).returncode == 0
    finally:
        scp.stop()
    key = "series:" + small_ct.series_uid
    columns = "sop_instance_uid, path, size, calling_ae, instance_number"
    journal = Journal(tmp_path / "journal.sqlite3")
    recorded = journal.arrival_by_key(key)
    assert recorded is not None
    instances = sorted(tuple(r) for r in journal.query(f"SELECT {columns} FROM instances"))
    with journal.transaction() as db:  # every row of the series lost
        db.execute("DELETE FROM instances")
        db.execute("DELETE FROM arrivals")
    journal.close()
    marker = tmp_path / "spool" / SERVED_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "boot_id": "before the power cut"}))

    again = RunningScp(tmp_path)
    try:
        arrival = again.journal.arrival_by_key(key)
        assert arrival is not None and arrival.attrs == recorded.attrs
        assert (arrival.path, arrival.state) == (recorded.path, recorded.state)
        assert sorted(tuple(r) for r in again.journal.query(f"SELECT {columns} FROM instances")) == instances
    finally:
        again.stop()


def test_unrecorded_files_of_the_same_boot_were_never_acknowledged(tmp_path: Path,
                                                                    small_ct: SyntheticSeries) -> None:
    _store_then_lose_rows(tmp_path, small_ct)  # same boot: the process died between file and row

    again = RunningScp(tmp_path)
    try:
        assert again.instance_rows() == [small_ct.sop_uids[0]]
        assert [p.stem for p in again.spool_files() if p.suffix == ".dcm"] == [small_ct.sop_uids[0]]
        assert storescu(again.receiver.port, small_ct.paths).returncode == 0  # the sender retries
        assert sorted(again.instance_rows()) == sorted(small_ct.sop_uids)
    finally:
        again.stop()


def test_async_operations_and_role_selection_are_answered(running: RunningScp,
                                                          small_ct: SyntheticSeries) -> None:
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role = True
    role.scp_role = False
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, running.receiver.port, ae_title="ACQFLOW", ext_neg=[window, role])
    try:
        assert assoc.is_established
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        assert assoc.acceptor.implementation_class_uid == "2.25.156488349616440232212263718513540716591"
        assert assoc.send_c_store(small_ct.paths[2]).Status == 0x0000
    finally:
        assoc.release()
    assert running.instance_rows() == [small_ct.sop_uids[2]]


def test_unrecorded_files_are_kept_when_the_journal_was_replaced(tmp_path: Path,
                                                                 small_ct: SyntheticSeries) -> None:
    _store_then_lose_rows(tmp_path, small_ct)
    journal = Journal(tmp_path / "journal.sqlite3")  # e.g. restored from an older backup
    journal.set_meta("spool_token", "the token of another journal")
    journal.close()

    again = RunningScp(tmp_path)
    try:
        assert sorted(again.instance_rows()) == sorted(small_ct.sop_uids)
        assert len(again.journal.query("SELECT * FROM instances WHERE association = 'recovered'")) == 2
    finally:
        again.stop()
