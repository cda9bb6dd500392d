"""Property-based tests of what parses network input: dicomio's header parser, the DIMSE
command-set decoder and the upper layer's PDU reader.

For arbitrary bytes each raises nothing but its own error types and allocates within its
bound; valid encodings (built by pydicom and pynetdicom) round-trip. Example counts are
bounded so that each test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from io import BytesIO

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA, MaximumLengthNotification
from pynetdicom.presentation import build_context

from acqflow.daemon.dicom.dimse import decode_request
from acqflow.daemon.dicom.part10 import (
    INFLATED_HEADER_BYTES,
    NotSteppable,
    defined_elements,
    parse_header,
    parse_header_prefix,
)
from acqflow.daemon.dicom.upper_layer import (
    MAX_PDU_CAP,
    PduConnection,
    PeerClosed,
    ProtocolViolation,
    decode_association_request,
    presentation_data_values,
)
from acqflow.daemon.errors import InputRejected

SYNTAXES = (
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian
)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_UID = st.from_regex(r"\A[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,6})){1,6}\Z")
_ELEMENT = st.tuples(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.sampled_from([b"UI", b"CS", b"OB", b"SQ", b"\x00\x01"]),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=40),
)


@st.composite
def _dicom_like(draw: st.DrawFn) -> bytes:
    """Byte strings that look like data sets often enough to reach deep into the parsers."""
    parts = []
    for group, element, vr, length, value in draw(st.lists(_ELEMENT, max_size=8)):
        if draw(st.booleans()):
            length = len(value)
        parts.append(struct.pack("<HH2sHI", group, element, vr, 0, length) + value)
    return b"".join(parts) + draw(st.binary(max_size=64))


_NETWORK_BYTES = st.binary(max_size=512) | _dicom_like()


@FAST
@given(data=_NETWORK_BYTES, syntax=st.sampled_from(SYNTAXES))
@example(data=b"\0\0\0\0AA\0\0\0\0\0\0UN\0\0", syntax=ExplicitVRLittleEndian)
def test_header_parser_raises_only_input_rejected(data: bytes, syntax: str) -> None:
    payload = zlib.compress(data)[2:-4] if syntax == DeflatedExplicitVRLittleEndian else data
    for candidate in (data, payload):
        try:
            header = parse_header(candidate, syntax)
        except InputRejected:
            pass
        else:  # what it returns has the UIDs it requires
            assert header.sop_instance_uid and header.series_uid and header.study_uid
        with contextlib.suppress(InputRejected):
            parse_header_prefix(candidate, syntax)


@FAST
@given(data=_NETWORK_BYTES, implicit=st.booleans(), little=st.booleans())
# found by a longer run: a long-VR header cut after 8 of its 12 bytes
@example(data=b"\0\0\0\0AA\0\0\0\0\0\0UN\0\0", implicit=False, little=False)
def test_element_stepper_raises_only_its_own_errors(data: bytes, implicit: bool, little: bool) -> None:
    try:
        for _tag, start, stop in defined_elements(data, implicit, little):
            assert 0 <= start <= stop <= len(data)
    except (NotSteppable, ValueError):
        pass


@FAST
@given(data=_NETWORK_BYTES)
@example(data=b"\0\0\0\0AA\0\0\0\0\0\0UN\0\0")
def test_command_set_decoder_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_request(data)


def _header_dataset(uids: tuple[str, str, str], modality: str, number: int | None, filler: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uids
    ds.Modality = modality
    ds.PatientName = "PROPERTY^TEST"
    ds.ImageComments = "x" * filler  # pushes the later tags past a fragment boundary
    if number is not None:
        ds.InstanceNumber = number
    ds.Rows = 2
    return ds


def _encode(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax != ExplicitVRBigEndian
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    encoded = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = deflater.compress(encoded) + deflater.flush()
    return encoded


@FAST
@given(
    uids=st.tuples(_UID, _UID, _UID),
    modality=st.sampled_from(["CT", "MR", "OT"]),
    number=st.none() | st.integers(-(2**31), 2**31 - 1),
    filler=st.integers(0, 3000),
    syntax=st.sampled_from(SYNTAXES),
    cut=st.integers(0, 4000),
)
def test_valid_headers_round_trip(
    uids: tuple[str, str, str], modality: str, number: int | None, filler: int, syntax: str, cut: int
) -> None:
    encoded = _encode(_header_dataset(uids, modality, number, filler), syntax)
    header = parse_header(encoded, syntax)
    assert (header.sop_instance_uid, header.study_uid, header.series_uid) == uids
    assert (header.modality, header.instance_number) == (modality, number)
    prefix = parse_header_prefix(encoded[:cut], syntax)  # a data set still arriving
    assert prefix is None or prefix == header


def test_a_deflate_bomb_is_inflated_only_as_far_as_the_header() -> None:
    ds = _header_dataset(("1.2.3", "1.2.4", "1.2.5"), "CT", 1, 0)
    ds.PixelData = b"\0" * (256 << 20)  # 256 MiB of zeros: about 256 kB deflated
    ds["PixelData"].VR = "OB"
    bomb = _encode(ds, DeflatedExplicitVRLittleEndian)
    del ds
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        header = parse_header(bomb, DeflatedExplicitVRLittleEndian)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header.series_uid == "1.2.5"
    assert peak < 4 * INFLATED_HEADER_BYTES


# --- the PDU reader ------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _read_all(data: bytes, max_pdu: int = 16384) -> tuple[list[tuple[int, bytes]], int]:
    """Every PDU a connection reads from ``data`` (then EOF), and its largest buffer."""
    ours, theirs = socket.socketpair()
    try:
        connection = PduConnection(ours, max_pdu)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        pdus: list[tuple[int, bytes]] = []
        largest = 0
        try:
            while True:
                pdu_type, body = connection.read(5.0)
                largest = max(largest, connection.buffer_bytes)
                pdus.append((pdu_type, bytes(body)))
        except (PeerClosed, ProtocolViolation):
            largest = max(largest, connection.buffer_bytes)
        return pdus, largest
    finally:
        ours.close()
        theirs.close()


_PDUS = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 0xFFFFFFFF), st.binary(max_size=300)), max_size=6
)
_PDU_STREAM = _PDUS.map(lambda pdus: b"".join(struct.pack(">BxL", t, n) + b for t, n, b in pdus)) | st.binary(
    max_size=600
)


@FAST
@given(data=_PDU_STREAM)
def test_pdu_reader_raises_only_its_own_errors_within_its_bound(data: bytes) -> None:
    pdus, largest = _read_all(data)
    assert sum(6 + len(body) for _t, body in pdus) <= len(data)
    # a declared length costs memory only once its bytes arrive
    assert largest <= max(16384 + 6, 1 << 20, 2 * len(data) + 6)


@FAST
@given(body=_NETWORK_BYTES)
def test_pdv_walker_and_association_decoder_raise_only_protocol_violation(body: bytes) -> None:
    view = memoryview(body)
    try:
        for _context, pdv in presentation_data_values(view):
            assert len(pdv) >= 1
    except ProtocolViolation:
        pass
    with contextlib.suppress(ProtocolViolation):
        decode_association_request(view)


def test_a_declared_length_alone_allocates_nothing_large() -> None:
    """A P-DATA-TF header declaring 60 MB, then 1 kB: the buffer stays at the first step."""
    pdus, largest = _read_all(struct.pack(">BxL", 0x04, MAX_PDU_CAP - 1) + b"\0" * 1024)
    assert pdus == [] and largest <= 1 << 20


@FAST
@given(
    fragments=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4),
    context_id=st.integers(1, 255).filter(lambda n: n % 2),
)
def test_p_data_pdus_round_trip(fragments: list[bytes], context_id: int) -> None:
    stream = b""
    for index, fragment in enumerate(fragments):
        primitive = P_DATA()
        control = 0x02 if index == len(fragments) - 1 else 0x00
        primitive.presentation_data_value_list.append((context_id, bytes([control]) + fragment))
        stream += P_DATA_TF(primitive).encode()
    pdus, _ = _read_all(stream, max_pdu=1024)  # smaller than some PDUs: the buffer grows
    assert [t for t, _b in pdus] == [0x04] * len(fragments)
    for (_type, body), fragment in zip(pdus, fragments, strict=True):
        ((found_context, pdv),) = list(presentation_data_values(memoryview(body)))
        assert found_context == context_id and bytes(pdv[1:]) == fragment


@FAST
@given(
    calling=st.from_regex(r"\A[A-Z][A-Z0-9]{0,15}\Z"),
    max_length=st.integers(0, 2**32 - 1),
    sop_classes=st.lists(_UID, min_size=1, max_size=5, unique=True),
)
def test_association_requests_round_trip(calling: str, max_length: int, sop_classes: list[str]) -> None:
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title = calling
    request.called_ae_title = "ACQFLOW"
    contexts = []
    for index, sop_class in enumerate(sop_classes):
        context = build_context(sop_class, [ExplicitVRLittleEndian])
        context.context_id = 2 * index + 1
        contexts.append(context)
    request.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
    request.user_information = [maximum]
    encoded = A_ASSOCIATE_RQ(request).encode()
    ((pdu_type, body),), _ = _read_all(encoded)
    decoded = decode_association_request(memoryview(body))
    assert pdu_type == 0x01 and decoded.calling_ae_title == calling
    assert decoded.maximum_length_received == max_length
    assert [str(c.abstract_syntax) for c in decoded.presentation_context_definition_list] == sop_classes


@FAST
@given(message_id=st.integers(0, 0xFFFF), sop_uid=_UID, store=st.booleans())
def test_command_sets_round_trip(message_id: int, sop_uid: str, store: bool) -> None:
    primitive: C_STORE | C_ECHO
    if store:
        primitive = C_STORE()
        primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        primitive.AffectedSOPInstanceUID = sop_uid
        primitive.Priority = 0
        primitive.DataSet = BytesIO(b"\0\0")
        message: C_STORE_RQ | C_ECHO_RQ = C_STORE_RQ()
    else:
        primitive = C_ECHO()
        primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
        message = C_ECHO_RQ()
    primitive.MessageID = message_id
    message.primitive_to_message(primitive)
    command = b"".join(
        pdv[1:] for pdu in message.encode_msg(1, 1 << 20) for _c, pdv in pdu.presentation_data_value_list
        if pdv[0] & 0x01
    )
    request = decode_request(command)
    assert request.message_id == message_id and request.has_data_set == store
    assert request.sop_instance_uid == (sop_uid if store else "")
