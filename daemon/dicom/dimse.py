"""DIMSE command sets of the SCP (PS3.7 §9.3, §E): requests in, responses out.

A command set is always Implicit VR Little Endian, every element of defined length:
requests are stepped through by element length (``acqflow.daemon.dicom.part10.defined_elements``);
responses are encoded here, element by element, the way
``acqflow.daemon.dicom.part10`` writes File Meta: a C-STORE-RSP has six fixed elements, and going
through pydicom's ``Dataset`` (what pynetdicom's DIMSE messages do) costs 0.2 to 0.5 ms per
instance — a fifth of what receiving and durably storing a 0.5 MB instance may take.
``tests/daemon/test_dimse.py`` checks the bytes against pynetdicom's encoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from acqflow.daemon.dicom.part10 import NotSteppable, defined_elements

__all__ = ["CommandField", "DimseRequest", "decode_request", "encode_response", "response_pdus"]

_NO_DATA_SET = 0x0101  # CommandDataSetType: no data set follows
_US = struct.Struct("<H")
_AT = struct.Struct("<HH")  # an attribute tag: group, element
_ELEMENT_HEADER = struct.Struct("<HHI")
_P_DATA_HEADER = struct.Struct(">BxLLBB")  # PDU type and length, PDV item length, context, control


class CommandField(IntEnum):
    C_STORE_RQ = 0x0001
    C_ECHO_RQ = 0x0030
    C_STORE_RSP = 0x8001
    C_ECHO_RSP = 0x8030


@dataclass(frozen=True)
class DimseRequest:
    """The fields of a request command set this SCP acts on."""

    command_field: int
    message_id: int
    sop_class_uid: str  # Affected SOP Class UID
    sop_instance_uid: str  # Affected SOP Instance UID ("" for C-ECHO)
    has_data_set: bool


def decode_request(encoded: bytes) -> DimseRequest:
    """Decode a request command set; raises ValueError when it is malformed."""
    try:
        values = {tag: encoded[start:stop] for tag, start, stop in defined_elements(encoded, True, True)}
    except (NotSteppable, ValueError) as exc:
        raise ValueError(f"malformed command set: {exc}") from exc
    try:
        command_field = _US.unpack(values[0x00000100])[0]
        message_id = _US.unpack(values[0x00000110])[0]
        data_set_type = _US.unpack(values.get(0x00000800, _US.pack(_NO_DATA_SET)))[0]
    except (KeyError, struct.error) as exc:
        raise ValueError(f"command set lacks or garbles {exc}") from exc
    return DimseRequest(
        command_field=command_field,
        message_id=message_id,
        sop_class_uid=_text(values.get(0x00000002, b"")),
        sop_instance_uid=_text(values.get(0x00001000, b"")),
        has_data_set=data_set_type != _NO_DATA_SET,
    )


def encode_response(
    request: DimseRequest, status: int, comment: str | None = None, offending: int | None = None
) -> bytes:
    """The command set answering ``request`` (C-STORE-RSP or C-ECHO-RSP), with Offending
    Element (0000,0901) when ``offending`` names a tag and Error Comment (0000,0902).

    Raises ValueError for a request that is neither a C-STORE nor a C-ECHO.
    """
    if request.command_field == CommandField.C_STORE_RQ:
        response_field = CommandField.C_STORE_RSP
    elif request.command_field == CommandField.C_ECHO_RQ:
        response_field = CommandField.C_ECHO_RSP
    else:
        raise ValueError(f"no response for command field 0x{request.command_field:04X}")
    elements = [
        _element(0x0002, _uid(request.sop_class_uid)),
        _element(0x0100, _US.pack(response_field)),
        _element(0x0120, _US.pack(request.message_id)),
        _element(0x0800, _US.pack(_NO_DATA_SET)),
        _element(0x0900, _US.pack(status)),
    ]
    if offending is not None:
        elements.append(_element(0x0901, _AT.pack(offending >> 16, offending & 0xFFFF)))
    if comment:
        elements.append(_element(0x0902, _long_string(comment)))
    if response_field == CommandField.C_STORE_RSP:
        elements.append(_element(0x1000, _uid(request.sop_instance_uid)))
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def response_pdus(command: bytes, context_id: int, peer_max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying ``command``, one PDV each, fragmented to the peer's limit.

    The peer's maximum bounds a PDU's PDV items, 6 bytes of item header included (PS3.8
    9.3.5); ``tests/daemon/test_dimse.py`` decodes the PDUs with pynetdicom.
    """
    room = max(peer_max_pdu - 6, 1) if peer_max_pdu else max(len(command), 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        control = 0x03 if start + len(fragment) >= len(command) else 0x01
        item_length = 2 + len(fragment)
        pdus.append(_P_DATA_HEADER.pack(0x04, 4 + item_length, item_length, context_id, control) + fragment)
    return pdus


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _uid(text: str) -> bytes:
    value = text.encode("ascii", "replace")
    return value + b"\0" if len(value) % 2 else value


def _long_string(text: str) -> bytes:
    """An LO value: at most 64 characters, no backslash or control characters."""
    cleaned = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)[:64]
    value = cleaned.encode("ascii")
    return value + b" " if len(value) % 2 else value


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\0 ")
