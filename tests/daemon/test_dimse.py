"""The SCP's command-set codec against pynetdicom's DIMSE message encoder and decoder."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from acqflow.daemon.dicom.dimse import (
    CommandField,
    DimseRequest,
    decode_request,
    encode_response,
    response_pdus,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP_UID = "1.2.826.0.1.3680043.8.498.1234567890123456789"  # odd length: padded


def _command_bytes(message: DIMSEMessage) -> bytes:
    """The encoded command set pynetdicom sends for ``message``."""
    fragments = [pdv for p in message.encode_msg(1, 0) for _, pdv in p.presentation_data_value_list]
    return b"".join(f[1:] for f in fragments if f[0] & 0x01)


def _store_request(message_id: int = 7) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = SOP_UID
    request.Priority = 0x0002
    request.MoveOriginatorApplicationEntityTitle = "MOVER"
    request.MoveOriginatorMessageID = 3
    request.DataSet = BytesIO(b"\x08\x00\x18\x00")
    return request


def test_decodes_pynetdicom_c_store_request() -> None:
    message = C_STORE_RQ()
    message.primitive_to_message(_store_request())
    decoded = decode_request(_command_bytes(message))
    assert decoded == DimseRequest(CommandField.C_STORE_RQ, 7, CT, SOP_UID, has_data_set=True)


def test_decodes_pynetdicom_c_echo_request() -> None:
    echo = C_ECHO()
    echo.MessageID = 65535
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    decoded = decode_request(_command_bytes(message))
    assert decoded == DimseRequest(CommandField.C_ECHO_RQ, 65535, "1.2.840.10008.1.1", "", has_data_set=False)


@pytest.mark.parametrize("garbage", [b"", b"\x00\x00\x00\x00\x04\x00", b"\x00\x00\x00\x01\x02\x00\x00\x00ab"])
def test_malformed_command_sets_are_value_errors(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        decode_request(garbage)


@pytest.mark.parametrize(
    ("status", "comment"),
    [(0x0000, None), (0xC000, "cannot parse DICOM header: back\\slash and\ttab"), (0xA700, "x" * 80)],
)
def test_c_store_response_matches_pynetdicom(status: int, comment: str | None) -> None:
    request = DimseRequest(CommandField.C_STORE_RQ, 7, CT, SOP_UID, has_data_set=True)
    ours = encode_response(request, status, comment)

    expected = C_STORE()
    expected.MessageIDBeingRespondedTo = 7
    expected.AffectedSOPClassUID = CT
    expected.AffectedSOPInstanceUID = SOP_UID
    expected.Status = status
    if comment is not None:
        cleaned = "".join("?" if c in "\\\t" else c for c in comment)[:64]
        expected.ErrorComment = cleaned  # type: ignore[assignment]
    message = C_STORE_RSP()
    message.primitive_to_message(expected)
    assert ours == _command_bytes(message)

    decoded = decode(BytesIO(ours), True, True)
    assert decoded.Status == status and decoded.CommandField == 0x8001
    assert decoded.MessageIDBeingRespondedTo == 7 and decoded.AffectedSOPInstanceUID == SOP_UID


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_offending_element_matches_pynetdicom() -> None:
    request = DimseRequest(CommandField.C_STORE_RQ, 7, CT, "1.2.3.", has_data_set=True)
    comment = "Affected SOP Instance UID (0000,1000) is not a valid UID"
    ours = encode_response(request, 0xC000, comment, offending=0x00001000)

    expected = C_STORE()
    expected.MessageIDBeingRespondedTo = 7
    expected.AffectedSOPClassUID = CT
    expected.AffectedSOPInstanceUID = "1.2.3."
    expected.Status = 0xC000
    expected.OffendingElement = [0x00001000]  # type: ignore[assignment]
    expected.ErrorComment = comment  # type: ignore[assignment]
    message = C_STORE_RSP()
    message.primitive_to_message(expected)
    assert ours == _command_bytes(message)
    assert decode(BytesIO(ours), True, True).OffendingElement == 0x00001000


def test_c_echo_response_matches_pynetdicom() -> None:
    request = DimseRequest(CommandField.C_ECHO_RQ, 12, "1.2.840.10008.1.1", "", has_data_set=False)
    expected = C_ECHO()
    expected.MessageIDBeingRespondedTo = 12
    expected.AffectedSOPClassUID = "1.2.840.10008.1.1"
    expected.Status = 0
    message = C_ECHO_RSP()
    message.primitive_to_message(expected)
    assert encode_response(request, 0) == _command_bytes(message)


def test_response_pdus_fragment_to_the_peer_limit() -> None:
    request = DimseRequest(CommandField.C_STORE_RQ, 1, CT, SOP_UID, has_data_set=True)
    command = encode_response(request, 0)
    pdus = response_pdus(command, 5, peer_max_pdu=50)
    assert len(pdus) > 1
    reassembled = b""
    for index, pdu in enumerate(pdus):
        decoded = P_DATA_TF()
        decoded.decode(pdu)
        (item,) = decoded.presentation_data_value_items
        assert item.presentation_context_id == 5 and len(pdu) - 6 <= 50
        data = bytes(item.presentation_data_value or b"")
        assert data[0] == (0x03 if index == len(pdus) - 1 else 0x01)
        reassembled += data[1:]
    assert reassembled == command
    assert len(response_pdus(command, 5, peer_max_pdu=0)) == 1
