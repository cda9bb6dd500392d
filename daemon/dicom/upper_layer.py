"""The DICOM upper layer (PS3.8) of the SCP: blocking PDU I/O and association negotiation.

One thread owns one connection and reads whole PDUs with ``recv_into`` into a buffer it
keeps for the life of the association (no hand-over between threads). On a plain TCP
socket the idle timeout is the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``) rather than
Python's, which would add a ``poll`` before every ``recv``; and each body read asks for
the next PDU header too, so a PDU usually costs one system call.
Association PDUs are decoded and encoded by pynetdicom's PDU classes and primitives,
presentation contexts are negotiated by ``pynetdicom.presentation``. Only the
presentation data values (PDVs) of a P-DATA-TF are walked here, in place: they are the
hot path, and pynetdicom's decoder would copy every dataset fragment twice.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from pydicom.uid import UID
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from acqflow.daemon import metrics

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "ConnectionRefusal",
    "Negotiated",
    "PduConnection",
    "PduType",
    "PeerClosed",
    "ProtocolViolation",
    "Rejection",
    "decode_association_request",
    "negotiate",
    "presentation_data_values",
    "reject_pdu",
]

# The DICOM Application Context Name (PS3.7 A.2.1), the only one DICOM defines.
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
MAX_PDU_CAP = 64 * 1024 * 1024  # a peer that ignores our maximum gets this much, then an abort
_ASSOCIATION_PDU_CAP = 1024 * 1024
_INITIAL_BUFFER = 16384 + 6
_GROWTH_STEP = 1024 * 1024  # a larger PDU's buffer starts here, then doubles as bytes arrive


class PduType(IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class ConnectionRefusal(str, Enum):
    """Why a connection was closed or aborted at the network edge (a metric label)."""

    ADDRESS_LIMIT = "address_limit"
    ASSOCIATION_TIMEOUT = "association_timeout"
    COMMAND_TOO_LARGE = "command_too_large"
    PDU_TOO_LARGE = "pdu_too_large"

    def counted(self) -> None:
        metrics.CONNECTIONS_REFUSED.labels(self.value).inc()


class PeerClosed(Exception):
    """The peer closed the connection (or it broke) between or inside PDUs."""


class ProtocolViolation(Exception):
    """The peer broke the protocol; ``reason`` is the A-P-ABORT provider reason, ``refusal``
    the metric label when it is one of the network edge's bounds."""

    def __init__(self, message: str, reason: int = 0x00, refusal: ConnectionRefusal | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.refusal = refusal


class Rejection(IntEnum):
    """A-ASSOCIATE-RJ (result, source, reason) triples this SCP sends, by cause."""

    ADDRESS_NOT_ALLOWED = 0x010101
    APPLICATION_CONTEXT = 0x010102
    CALLING_AE_NOT_RECOGNIZED = 0x010103
    LOCAL_LIMIT_EXCEEDED = 0x020302

    @property
    def triple(self) -> tuple[int, int, int]:
        return (self.value >> 16) & 0xFF, (self.value >> 8) & 0xFF, self.value & 0xFF


class PduConnection:
    """Whole PDUs over one (optionally TLS) socket; ``read`` from one thread only."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, max_pdu: int) -> None:
        self.sock = sock
        self._kernel_timeouts = not isinstance(sock, ssl.SSLSocket)
        if self._kernel_timeouts:
            sock.settimeout(None)  # blocking: SO_RCVTIMEO ends a wait, not a poll
        self._timeout: float | None = None if self._kernel_timeouts else sock.gettimeout()
        # a body, then room for the next PDU's header read along with it; small until a
        # PDU needs more, so that a connection still negotiating holds little memory
        self._buffer = bytearray(min(max_pdu, _INITIAL_BUFFER) if max_pdu else _INITIAL_BUFFER)
        self._header = bytearray(6)
        self._carried = 0  # bytes of the next header already in self._header
        self._send_lock = threading.Lock()

    @property
    def buffer_bytes(self) -> int:
        """The size of the receive buffer now (it grows only as a large PDU arrives)."""
        return len(self._buffer)

    def read(self, timeout: float | None) -> tuple[int, memoryview]:
        """The next PDU's type and body (valid until the next ``read``).

        Raises PeerClosed, TimeoutError (nothing arrived for ``timeout`` seconds) or
        ProtocolViolation (a PDU larger than :data:`MAX_PDU_CAP`).
        """
        self._set_timeout(timeout)
        self._fill(memoryview(self._header)[self._carried :])
        self._carried = 0
        pdu_type, length = _PDU_HEADER.unpack(self._header)
        if length + 6 > len(self._buffer):
            cap = MAX_PDU_CAP if pdu_type == PduType.P_DATA_TF else _ASSOCIATION_PDU_CAP
            if length > cap:
                raise ProtocolViolation(
                    f"PDU of {length} bytes exceeds {cap}", 0x06, ConnectionRefusal.PDU_TOO_LARGE
                )
            extra = self._fill_growing(length)
        else:
            extra = self._fill(memoryview(self._buffer)[: length + 6], minimum=length)
        view = memoryview(self._buffer)
        if extra:  # the start of the next PDU's header came with this body
            self._header[:extra] = view[length : length + extra]
            self._carried = extra
        return pdu_type, view[:length]

    def _fill_growing(self, length: int) -> int:
        """Receive a body of ``length`` bytes into a buffer grown (doubling) as its bytes
        arrive, so that a length a peer declares costs memory only once it is sent.

        Returns what :meth:`_fill` does. The earlier buffer is replaced, not resized: the
        body :meth:`read` returned last may still be referenced.
        """
        received = 0
        while True:
            size = min(length + 6, max(2 * len(self._buffer), _GROWTH_STEP))
            if size > len(self._buffer):
                grown = bytearray(size)
                with memoryview(self._buffer) as old:
                    grown[:received] = old[:received]
                self._buffer = grown
            view = memoryview(self._buffer)
            if size > length:
                return self._fill(view[received : length + 6], minimum=length - received)
            self._fill(view[received:size])
            received = size

    def _fill(self, view: memoryview, minimum: int | None = None) -> int:
        """Receive at least ``minimum`` bytes (all of ``view`` by default) into ``view``.

        Returns how many bytes beyond ``minimum`` arrived.
        """
        wanted = len(view) if minimum is None else minimum
        received = 0
        while received < wanted:
            try:
                count = self.sock.recv_into(view[received:])
            except BlockingIOError as exc:  # SO_RCVTIMEO expired
                raise TimeoutError(f"nothing received for {self._timeout} s") from exc
            except (ConnectionError, ssl.SSLError) as exc:
                raise PeerClosed(str(exc)) from exc
            if not count:
                raise PeerClosed("connection closed by the peer")
            received += count
        return received - wanted

    def _set_timeout(self, timeout: float | None) -> None:
        if timeout == self._timeout:
            return
        self._timeout = timeout
        if not self._kernel_timeouts:
            self.sock.settimeout(timeout)
            return
        seconds = 0.0 if timeout is None else max(timeout, 0.001)  # 0: wait for ever
        value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))  # struct timeval
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)

    def send(self, *pdus: bytes) -> None:
        """Send encoded PDUs in order; raises PeerClosed when the connection is gone."""
        with self._send_lock:
            try:
                for pdu in pdus:
                    self.sock.sendall(pdu)
            except OSError as exc:
                raise PeerClosed(str(exc)) from exc

    def abort(self, reason: int | None = None) -> None:
        """Send A-ABORT (service user, or provider with ``reason``); never raises."""
        primitive: A_ABORT | A_P_ABORT
        if reason is None:
            primitive = A_ABORT()
            primitive.abort_source = 0x00
        else:
            primitive = A_P_ABORT()
            primitive.provider_reason = reason
        with contextlib.suppress(PeerClosed):  # nobody left to tell
            self.send(A_ABORT_RQ(primitive).encode())

    def send_release_rp(self) -> None:
        self.send(A_RELEASE_RP().encode())

    def close(self) -> None:
        """Shut the connection down; unblocks a ``read`` in another thread."""
        with contextlib.suppress(OSError):  # already closed by the peer
            self.sock.shutdown(socket.SHUT_RDWR)


def presentation_data_values(body: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(context id, message control header + fragment) of each PDV in a P-DATA-TF body.

    Raises ProtocolViolation when an item length does not fit the PDU.
    """
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ProtocolViolation("truncated presentation data value item", 0x06)
        length, context_id, _control = _PDV_HEADER.unpack_from(body, offset)
        stop = offset + 4 + length
        if length < 2 or stop > end:
            raise ProtocolViolation("presentation data value length outside the PDU", 0x06)
        yield context_id, body[offset + 5 : stop]
        offset = stop


@dataclass(frozen=True)
class Negotiated:
    """The outcome of a successful negotiation: the A-ASSOCIATE-AC and what it agreed."""

    accept_pdu: bytes
    contexts: dict[int, PresentationContext]
    rejected: list[PresentationContext]
    peer_max_pdu: int


def negotiate(
    request: A_ASSOCIATE,
    supported: Sequence[PresentationContext],
    max_pdu: int,
    implementation: tuple[str, str],
) -> Negotiated:
    """Accept ``request`` for the ``supported`` contexts; builds the A-ASSOCIATE-AC.

    Asynchronous operations are answered with a window of 1/1 when proposed; SCP/SCU
    role selection items are answered as ``negotiate_as_acceptor`` decides.
    """
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in request.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    results, role_items = negotiate_as_acceptor(
        request.presentation_context_definition_list, list(supported), roles or None
    )
    answer = A_ASSOCIATE()
    answer.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    answer.calling_ae_title = request.calling_ae_title
    answer.called_ae_title = request.called_ae_title
    answer.result = 0x00
    answer.result_source = 0x01
    answer.presentation_context_definition_results_list = results
    answer.user_information = [*_user_information(request, max_pdu, implementation), *role_items]
    accepted = {int(cx.context_id or 0): cx for cx in results if cx.result == 0x00}
    return Negotiated(
        accept_pdu=A_ASSOCIATE_AC(answer).encode(),
        contexts=accepted,
        rejected=[cx for cx in results if cx.result != 0x00],
        peer_max_pdu=int(request.maximum_length_received or 0),
    )


_AcceptItem = (
    MaximumLengthNotification
    | ImplementationClassUIDNotification
    | ImplementationVersionNameNotification
    | AsynchronousOperationsWindowNegotiation
    | SCP_SCU_RoleSelectionNegotiation
)


def _user_information(
    request: A_ASSOCIATE, max_pdu: int, implementation: tuple[str, str]
) -> list[_AcceptItem]:
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(implementation[0])
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = implementation[1]
    items: list[_AcceptItem] = [maximum, class_uid, version]
    if any(isinstance(i, AsynchronousOperationsWindowNegotiation) for i in request.user_information):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        items.append(window)
    return items


def decode_association_request(body: memoryview) -> A_ASSOCIATE:
    """The A-ASSOCIATE primitive of an A-ASSOCIATE-RQ PDU body.

    Raises ProtocolViolation when the PDU cannot be decoded.
    """
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(_PDU_HEADER.pack(PduType.ASSOCIATE_RQ, len(body)) + bytes(body))
        return pdu.to_primitive()
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as exc:
        raise ProtocolViolation(f"undecodable A-ASSOCIATE-RQ: {exc}", 0x06) from exc


def reject_pdu(rejection: Rejection) -> bytes:
    """An encoded A-ASSOCIATE-RJ for ``rejection``."""
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = rejection.triple
    return A_ASSOCIATE_RJ(primitive).encode()
