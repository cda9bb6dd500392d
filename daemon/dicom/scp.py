"""The DICOM source: a C-ECHO and C-STORE SCP that feeds the journal.

One thread per association (``acqflow.daemon.dicom.association``, on pynetdicom's PDU,
presentation and DIMSE classes) reads PDUs with blocking receives and streams every
dataset fragment behind a File Meta header into the spool as it arrives, without
decoding the dataset (``acqflow.daemon.dicom.store``). On the last fragment the header is
parsed, the file is made durable as ``<spool>/<series uid>/<sop uid>.dcm``
(``acqflow.daemon.dicom.spool``) and its journal row committed — only then does the peer get
Success (0x0000). Every failure is
caught, logged (never patient identifiers) and counted, so the server keeps running.
See ``docs/conformance.md`` for the conformance statement and the durability argument.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from pathlib import Path

from pydicom.uid import UID
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context

from acqflow.daemon import metrics
from acqflow.daemon.config import DicomSettings, TlsSettings
from acqflow.daemon.dicom.association import (
    AssociationControl,
    AssociationEnd,
    AssociationLimits,
    DimseStatus,
    PeerAssociation,
    serve_association,
)
from acqflow.daemon.dicom.dimse import DimseRequest
from acqflow.daemon.dicom.listener import ConnectionListener, ListenerLimits
from acqflow.daemon.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from acqflow.daemon.dicom.recovery import recover_spool
from acqflow.daemon.dicom.spool import IncomingInstance, InstanceSpool
from acqflow.daemon.dicom.store import InstanceReceipt, StoreStatus
from acqflow.daemon.dicom.upper_layer import (
    APPLICATION_CONTEXT_NAME,
    ConnectionRefusal,
    Negotiated,
    PduConnection,
    PeerClosed,
    Rejection,
    negotiate,
)
from acqflow.daemon.errors import BindError
from acqflow.daemon.journal import Journal

__all__ = ["SCP_SOP_CLASSES", "SCP_TRANSFER_SYNTAXES", "DicomReceiver", "StoreStatus", "server_tls_context"]

LOG = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"

SCP_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
)

SCP_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server TLS context from the settings; raises OSError/ssl.SSLError on bad files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(str(tls.ca_certificates))
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class DicomReceiver:
    """C-ECHO/C-STORE SCP writing instances durably to the spool and the journal.

    ``on_association_closed`` receives the ids of the series arrivals an association
    carried once it is released, aborted or its connection closes.
    """

    def __init__(
        self,
        settings: DicomSettings,
        journal: Journal,
        spool_dir: Path,
        on_association_closed: Callable[[list[int]], None],
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.spool_dir = spool_dir
        self.on_association_closed = on_association_closed
        self.spool = InstanceSpool(spool_dir, settings.spool_slots, settings.spool_slot_bytes)
        self._networks = [ip_network(a, strict=False) for a in settings.allowed_addresses]
        self._supported = [build_context(VERIFICATION)] + [
            build_context(sop_class, list(SCP_TRANSFER_SYNTAXES)) for sop_class in SCP_SOP_CLASSES
        ]
        self._lock = threading.Lock()
        self._connections: dict[AssociationControl, threading.Thread] = {}
        self._associated: set[threading.Thread] = set()  # admitted, counted in max_associations
        self._stopping = False
        # per association: its next incoming file, created ahead (only its thread touches it)
        self._standby: dict[str, IncomingInstance] = {}
        self._listener: ConnectionListener | None = None
        self._tls: ssl.SSLContext | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Recover the spool, bind and serve in background threads.

        Raises BindError (naming dicom.port) when the port cannot be bound, OSError when
        the spool cannot be prepared, and ssl.SSLError/OSError when the TLS files cannot
        be loaded.
        """
        if self._listener is not None:
            return
        self._recover_spool()
        self._stopping = False
        self._tls = server_tls_context(self.settings.tls) if self.settings.tls is not None else None
        limits = ListenerLimits(
            self.settings.max_connections_per_address, self.settings.association_request_timeout_seconds
        )
        try:
            self._listener = ConnectionListener(
                (self.settings.host, self.settings.port), limits, self._serve_connection
            )
        except OSError as exc:
            raise BindError("dicom", self.settings.host, self.settings.port, exc) from exc
        self._listener.start()
        if self.spool.slots is not None:
            self.spool.slots.start()
        LOG.info(
            "DICOM SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if self._tls else "",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort open associations and wait for their threads to end."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop(timeout)
        with self._lock:
            self._stopping = True
            active = dict(self._connections)
        for control in active:
            control.abort()
        deadline = time.monotonic() + timeout
        for thread in active.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.spool.slots is not None:
            self.spool.slots.stop(max(0.0, deadline - time.monotonic()))
        LOG.info("DICOM SCP stopped (%d association(s) aborted)", len(active))

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every instance file acknowledged so far is final (its spool slot
        cut to the instance, ``acqflow.daemon.dicom.slots``); False on timeout."""
        return self.spool.slots.settle(timeout) if self.spool.slots is not None else True

    @property
    def port(self) -> int:
        """The bound TCP port (useful when ``settings.port`` is 0); raises if not started."""
        if self._listener is None:
            raise RuntimeError("DICOM receiver is not started")
        return self._listener.port

    def open_connections(self, address: str) -> int:
        """TCP connections open from ``address``, associated or not (0 when stopped)."""
        return self._listener.connections(address) if self._listener is not None else 0

    @property
    def listening(self) -> bool:
        """True while the server socket is open and its accepting thread runs."""
        return self._listener is not None and self._listener.accepting

    def _recover_spool(self) -> None:
        """Sort out spool files the journal does not know (``acqflow.daemon.dicom.recovery``)."""
        done = recover_spool(self.spool, self.journal)
        if done.slots_placed or done.slots_torn:
            LOG.info(
                "spool: %d sealed slot(s) put in place, %d torn slot(s) (never acknowledged) reused",
                done.slots_placed,
                done.slots_torn,
            )
        if done.partial_removed or done.removed:
            LOG.info(
                "spool: removed %d partial and %d complete unacknowledged instance(s)",
                done.partial_removed,
                done.removed,
            )
        if done.registered:
            LOG.warning(
                "spool: machine restarted or journal replaced; %d instance(s) without a row registered",
                done.registered,
            )

    def _serve_connection(self, plain: socket.socket, address: str, request_timeout: float) -> None:
        """One connection that has sent data, in its own thread: TLS, then the association
        (its A-ASSOCIATE-RQ within ``request_timeout`` seconds); never raises."""
        timeout = self.settings.network_timeout_seconds
        sock: socket.socket | ssl.SSLSocket = plain
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(request_timeout)
                sock = self._tls.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            LOG.warning("TLS handshake with %s failed: %s", address, exc)
            if isinstance(exc, TimeoutError):  # no A-ASSOCIATE-RQ in time either
                ConnectionRefusal.ASSOCIATION_TIMEOUT.counted()
            return
        control = AssociationControl(PduConnection(sock, self.settings.max_pdu))
        thread = threading.current_thread()
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._connections[control] = thread
        if stopping:  # accepted just before stop(): never served
            control.connection.close()
            sock.close()
            return
        try:
            serve_association(control, address, self, (request_timeout, timeout), self.limits)
        except PeerClosed as exc:
            LOG.info("connection from %s lost during association setup: %s", address, exc)
        except Exception:  # a bug must cost one association, never the server
            LOG.exception("association from %s failed unexpectedly", address)
            metrics.CALLBACK_ERRORS.labels("scp").inc()
            control.connection.abort()
        finally:
            with self._lock:
                self._connections.pop(control, None)
                self._associated.discard(thread)
            if isinstance(sock, ssl.SSLSocket):  # the listener closes only the plain socket
                sock.close()

    # --- association policy (called by acqflow.daemon.dicom.association) --------------------

    @property
    def limits(self) -> AssociationLimits:
        return AssociationLimits(self.settings.max_command_set_bytes)

    def admit(self, address: str, request: A_ASSOCIATE) -> Rejection | None:
        """Address and calling-AE allow-lists and the association limit, in that order."""
        calling_ae = request.calling_ae_title.strip()
        rejection = None
        if self._networks and not any(ip_address(address) in n for n in self._networks):
            LOG.warning("association from %s refused: address not allowed", address)
            rejection = Rejection.ADDRESS_NOT_ALLOWED
        elif request.application_context_name != APPLICATION_CONTEXT_NAME:
            LOG.warning("association from %s refused: application context %s", address,
                        request.application_context_name)
            rejection = Rejection.APPLICATION_CONTEXT
        elif self.settings.allowed_calling_aes and calling_ae not in self.settings.allowed_calling_aes:
            rejection = Rejection.CALLING_AE_NOT_RECOGNIZED
        else:
            # counted here, in the connection's own thread, and released when it ends:
            # connections that have not asked for an association never count
            with self._lock:
                if len(self._associated) >= self.settings.max_associations:
                    rejection = Rejection.LOCAL_LIMIT_EXCEEDED
                else:
                    self._associated.add(threading.current_thread())
        if rejection is not None and rejection is not Rejection.ADDRESS_NOT_ALLOWED:
            LOG.warning(
                "association from AE %r at %s rejected (%s)", calling_ae, address, rejection.name.lower()
            )
        if rejection is not None:
            metrics.ASSOCIATIONS.labels("rejected").inc()
        return rejection

    def negotiate(self, request: A_ASSOCIATE) -> Negotiated:
        return negotiate(
            request,
            self._supported,
            self.settings.max_pdu,
            (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION),
        )

    def opened(self, request: A_ASSOCIATE, negotiated: Negotiated) -> PeerAssociation:
        peer = PeerAssociation(uuid.uuid4().hex, request.calling_ae_title.strip())
        metrics.ASSOCIATIONS.labels("accepted").inc()
        if negotiated.rejected and LOG.isEnabledFor(logging.DEBUG):
            # not counted: storescu & co propose every storage class they know by default
            names = sorted({UID(str(cx.abstract_syntax)).name for cx in negotiated.rejected})
            LOG.debug(
                "association %s from %s: %d presentation context(s) refused: %s",
                peer.association,
                peer.calling_ae,
                len(negotiated.rejected),
                ", ".join(names),
            )
        try:
            self.journal.open_association(peer.association, peer.calling_ae)
        except Exception:
            LOG.exception("association %s from %s: journal open failed", peer.association, peer.calling_ae)
            metrics.CALLBACK_ERRORS.labels("scp").inc()
        return peer

    def closed(self, peer: PeerAssociation, end: AssociationEnd) -> None:
        """Close the association in the journal, then hand its series on (never raises)."""
        metrics.ASSOCIATIONS.labels(end.value).inc()
        standby = self._standby.pop(peer.association, None)
        if standby is not None:
            standby.discard()
        try:
            arrival_ids = self.journal.close_association(peer.association, end.value)
            self.on_association_closed(arrival_ids)
        except Exception:
            LOG.exception(
                "association %s from %s: closing (%s) failed", peer.association, peer.calling_ae, end.value
            )
            metrics.CALLBACK_ERRORS.labels("scp").inc()

    def echo(self, peer: PeerAssociation, request: DimseRequest) -> DimseStatus:
        metrics.DICOM_INSTANCES.labels("echo").inc()
        return DimseStatus(int(StoreStatus.SUCCESS))

    def begin_store(
        self, peer: PeerAssociation, request: DimseRequest, context: PresentationContext
    ) -> InstanceReceipt:
        return InstanceReceipt(self, peer, request, context)

    def responded(self, peer: PeerAssociation) -> None:
        """Create the next incoming file while the peer prepares its next request."""
        if peer.association in self._standby:
            return
        try:
            self._standby[peer.association] = self.spool.reserve()
        except OSError as exc:  # reported by the C-STORE that needs the file
            LOG.debug("association %s: no incoming file ready: %s", peer.association, exc)

    def take_incoming(self, peer: PeerAssociation) -> IncomingInstance:
        """The association's prepared incoming file, or a new one; raises OSError."""
        standby = self._standby.pop(peer.association, None)
        return standby if standby is not None else self.spool.reserve()
