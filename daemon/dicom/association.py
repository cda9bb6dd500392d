"""One association of the SCP, from A-ASSOCIATE-RQ to release or abort, in one thread.

The loop reads whole PDUs (``upper_layer.PduConnection``), decodes command sets
(``acqflow.daemon.dicom.dimse``), and hands every dataset fragment to the
:class:`StoreReceipt` of the C-STORE it belongs to the moment it arrives. What to admit,
how to store and what to answer is decided by an :class:`AssociationPolicy` (the
``DicomReceiver``); this module only speaks the protocol.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from acqflow.daemon.dicom.dimse import (
    CommandField,
    DimseRequest,
    decode_request,
    encode_response,
    response_pdus,
)
from acqflow.daemon.dicom.upper_layer import (
    ConnectionRefusal,
    Negotiated,
    PduConnection,
    PduType,
    PeerClosed,
    ProtocolViolation,
    Rejection,
    decode_association_request,
    presentation_data_values,
    reject_pdu,
)

__all__ = [
    "AssociationControl",
    "AssociationEnd",
    "AssociationLimits",
    "AssociationPolicy",
    "DimseStatus",
    "PeerAssociation",
    "StoreReceipt",
    "serve_association",
]

LOG = logging.getLogger(__name__)


class AssociationEnd(str, Enum):
    RELEASED = "released"
    ABORTED = "aborted"
    CLOSED = "closed"


@dataclass(frozen=True)
class AssociationLimits:
    """Bounds on what one association may make the SCP hold."""

    max_command_set_bytes: int = 64 * 1024  # a command set's fragments, together


@dataclass(frozen=True)
class DimseStatus:
    """What to answer a request with: a status and, for failures, a comment and the tag
    of the attribute at fault."""

    status: int
    comment: str | None = None
    offending: int | None = None


class StoreReceipt(Protocol):
    """One C-STORE being received: fed fragments as they arrive, then finished once."""

    def append(self, fragment: memoryview) -> None: ...

    def finish(self) -> DimseStatus:
        """Store the instance; the status to answer with (never raises)."""
        ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class PeerAssociation:
    """An accepted association as the policy knows it."""

    association: str
    calling_ae: str


class AssociationPolicy(Protocol):
    """What the protocol loop asks of the receiver."""

    def admit(self, address: str, request: A_ASSOCIATE) -> Rejection | None: ...

    def negotiate(self, request: A_ASSOCIATE) -> Negotiated: ...

    def opened(self, request: A_ASSOCIATE, negotiated: Negotiated) -> PeerAssociation: ...

    def begin_store(
        self, peer: PeerAssociation, request: DimseRequest, context: PresentationContext
    ) -> StoreReceipt: ...

    def echo(self, peer: PeerAssociation, request: DimseRequest) -> DimseStatus: ...

    def responded(self, peer: PeerAssociation) -> None:
        """Called after each response, while the peer prepares its next request."""
        ...

    def closed(self, peer: PeerAssociation, end: AssociationEnd) -> None: ...


class AssociationControl:
    """Lets the receiver abort an association from another thread (at stop)."""

    def __init__(self, connection: PduConnection) -> None:
        self.connection = connection
        self.aborted = threading.Event()

    def abort(self) -> None:
        self.aborted.set()
        if not isinstance(self.connection.sock, ssl.SSLSocket):
            # not over TLS: an SSL object must not write while its owner thread reads
            self.connection.abort()
        self.connection.close()


def serve_association(
    control: AssociationControl,
    address: str,
    policy: AssociationPolicy,
    timeouts: tuple[float, float],
    limits: AssociationLimits,
) -> None:
    """Run one association to its end; raises only on a bug in the policy or here.

    ``timeouts``: seconds for the A-ASSOCIATE-RQ to arrive, then the idle timeout.
    """
    connection = control.connection
    request_timeout, timeout = timeouts
    try:
        pdu_type, body = connection.read(request_timeout)
        if pdu_type != PduType.ASSOCIATE_RQ:
            raise ProtocolViolation(f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ", 0x02)
        request = decode_association_request(body)
    except PeerClosed as exc:
        LOG.info("connection from %s ended before an association request: %s", address, exc)
        return
    except TimeoutError:
        LOG.info("connection from %s closed: no whole A-ASSOCIATE-RQ in time", address)
        ConnectionRefusal.ASSOCIATION_TIMEOUT.counted()
        return
    except ProtocolViolation as exc:
        LOG.warning("connection from %s refused: %s", address, exc)
        if exc.refusal is not None:
            exc.refusal.counted()
        connection.abort(exc.reason)
        return
    rejection = policy.admit(address, request)
    if rejection is not None:
        connection.send(reject_pdu(rejection))
        return
    negotiated = policy.negotiate(request)
    connection.send(negotiated.accept_pdu)
    peer = policy.opened(request, negotiated)
    end = AssociationEnd.ABORTED
    try:
        end = _DimseLoop(connection, policy, peer, negotiated, (timeout, limits)).run()
    finally:
        if control.aborted.is_set():
            end = AssociationEnd.ABORTED
        policy.closed(peer, end)


class _DimseLoop:
    """P-DATA-TF in, DIMSE responses out, until release, abort or connection loss."""

    def __init__(
        self,
        connection: PduConnection,
        policy: AssociationPolicy,
        peer: PeerAssociation,
        negotiated: Negotiated,
        bounds: tuple[float, AssociationLimits],
    ) -> None:
        self.connection = connection
        self.policy = policy
        self.peer = peer
        self.negotiated = negotiated
        self.timeout, self.limits = bounds
        self.command = bytearray()
        self.receipt: StoreReceipt | None = None
        self.receipt_context = 0
        self.request: DimseRequest | None = None

    def run(self) -> AssociationEnd:
        try:
            return self._serve()
        finally:
            if self.receipt is not None:  # ended inside a data set: never acknowledged
                self.receipt.discard()
                self.receipt = None

    def _serve(self) -> AssociationEnd:
        while True:
            try:
                pdu_type, body = self.connection.read(self.timeout)
                if pdu_type == PduType.P_DATA_TF:
                    self._data(body)
                    continue
            except TimeoutError:
                LOG.warning("association %s idle for %.0f s: aborting", self.peer.association, self.timeout)
                self.connection.abort()
                return AssociationEnd.ABORTED
            except PeerClosed:
                return AssociationEnd.CLOSED
            except ProtocolViolation as exc:
                LOG.warning("association %s aborted: %s", self.peer.association, exc)
                if exc.refusal is not None:
                    exc.refusal.counted()
                self.connection.abort(exc.reason)
                return AssociationEnd.ABORTED
            if pdu_type == PduType.RELEASE_RQ:
                self.connection.send_release_rp()
                return AssociationEnd.RELEASED
            if pdu_type == PduType.ABORT:
                return AssociationEnd.ABORTED
            LOG.warning(
                "association %s: unexpected PDU type 0x%02X, aborting", self.peer.association, pdu_type
            )
            self.connection.abort(0x02 if pdu_type in {t.value for t in PduType} else 0x01)
            return AssociationEnd.ABORTED

    def _data(self, body: memoryview) -> None:
        for context_id, pdv in presentation_data_values(body):
            if context_id not in self.negotiated.contexts:
                raise ProtocolViolation(f"data for presentation context {context_id}, not accepted", 0x06)
            control = pdv[0]
            if control & 0x01:
                self._command_fragment(context_id, pdv, last=bool(control & 0x02))
            elif self.receipt is None or context_id != self.receipt_context:
                raise ProtocolViolation("data set fragment without a C-STORE command", 0x05)
            else:
                self.receipt.append(pdv[1:])
                if control & 0x02:
                    receipt, request, self.receipt, self.request = self.receipt, self.request, None, None
                    assert request is not None  # set together with the receipt
                    self._respond(request, receipt.finish(), context_id)

    def _command_fragment(self, context_id: int, pdv: memoryview, last: bool) -> None:
        if self.receipt is not None:
            raise ProtocolViolation("command fragment inside a data set", 0x05)
        if len(self.command) + len(pdv) - 1 > self.limits.max_command_set_bytes:
            self.command = bytearray()  # not clear(): give the memory back now
            raise ProtocolViolation(
                f"command set longer than {self.limits.max_command_set_bytes} bytes",
                0x06,
                ConnectionRefusal.COMMAND_TOO_LARGE,
            )
        self.command += pdv[1:]
        if not last:
            return
        try:
            request = decode_request(bytes(self.command))
        except ValueError as exc:
            raise ProtocolViolation(f"undecodable command set: {exc}", 0x05) from exc
        finally:
            self.command.clear()
        self._dispatch(request, context_id)

    def _dispatch(self, request: DimseRequest, context_id: int) -> None:
        context = self.negotiated.contexts[context_id]
        if request.command_field == CommandField.C_ECHO_RQ:
            self._respond(request, self.policy.echo(self.peer, request), context_id)
        elif request.command_field == CommandField.C_STORE_RQ:
            receipt = self.policy.begin_store(self.peer, request, context)
            if request.has_data_set:
                self.receipt, self.receipt_context, self.request = receipt, context_id, request
            else:
                self._respond(request, receipt.finish(), context_id)
        else:
            raise ProtocolViolation(f"command 0x{request.command_field:04X} is not offered here", 0x05)

    def _respond(self, request: DimseRequest, answer: DimseStatus, context_id: int) -> None:
        command = encode_response(request, answer.status, answer.comment, answer.offending)
        self.connection.send(*response_pdus(command, context_id, self.negotiated.peer_max_pdu))
        self.policy.responded(self.peer)
