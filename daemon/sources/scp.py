"""The DICOM source: a C-ECHO and C-STORE SCP (pynetdicom) that feeds the journal.

Each received instance is wrapped in a File Meta header without decoding the dataset,
written to ``<spool>/<series uid>/<sop uid>.dcm`` with an fsync, and its journal row is
committed — only then does the peer get Success (0x0000). Handlers are bound as data;
every handler catches, logs (never patient identifiers) and counts its failures, so the
server keeps running. See ``docs/conformance.md`` for the conformance statement.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from daemon import metrics
from daemon.config import DicomSettings, TlsSettings
from daemon.dicomio import encode_file_meta, parse_header
from daemon.errors import InputRejected
from daemon.fileio import safe_name, write_atomic
from daemon.journal import Instance, Journal

__all__ = ["SCP_SOP_CLASSES", "SCP_TRANSFER_SYNTAXES", "DicomReceiver", "StoreStatus"]

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


class StoreStatus(IntEnum):
    """C-STORE response statuses this SCP returns (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # spool or journal write failed
    DATASET_MISMATCH = 0xA900  # dataset's SOP class/instance differ from the command
    CANNOT_UNDERSTAND = 0xC000  # header unreadable or required UIDs missing
    PROCESSING_FAILURE = 0xC001  # unexpected internal error (logged with traceback)


class _StoreRefused(Exception):
    """Internal: a C-STORE refused with ``status``; ``reason`` labels the metric."""

    def __init__(self, status: StoreStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Peer:
    association: str
    calling_ae: str


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
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


DUL_LOOP_DELAY_SECONDS = 0.0001


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
        self._networks = [ip_network(a, strict=False) for a in settings.allowed_addresses]
        self._peers: dict[Association, _Peer] = {}
        self._lock = threading.Lock()
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in background threads; raises OSError when the port is taken."""
        if self._server is not None:
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        ae = self._application_entity()
        tls = _tls_context(self.settings.tls) if self.settings.tls is not None else None
        server = ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            ssl_context=tls,
            evt_handlers=self._handlers(),
        )
        assert server is not None  # non-blocking start always returns the server
        self._ae, self._server = ae, server
        LOG.info(
            "DICOM SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if tls else "",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort open associations and wait for their threads to end."""
        server, self._server = self._server, None
        if server is None:
            return
        active = server.active_associations
        server.shutdown()
        for assoc in active:
            assoc.abort()
        deadline = time.monotonic() + timeout
        for assoc in active:
            assoc.join(max(0.0, deadline - time.monotonic()))
        LOG.info("DICOM SCP stopped (%d association(s) aborted)", len(active))

    @property
    def port(self) -> int:
        """The bound TCP port (useful when ``settings.port`` is 0); raises if not started."""
        if self._server is None:
            raise RuntimeError("DICOM receiver is not started")
        return int(self._server.server_address[1])

    def _application_entity(self) -> AE:
        settings = self.settings
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = settings.max_pdu
        ae.maximum_associations = settings.max_associations
        ae.network_timeout = settings.network_timeout_seconds
        ae.acse_timeout = settings.network_timeout_seconds
        ae.dimse_timeout = settings.network_timeout_seconds
        ae.require_calling_aet = list(settings.allowed_calling_aes)
        ae.add_supported_context(VERIFICATION)
        for sop_class in SCP_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(SCP_TRANSFER_SYNTAXES))
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]

    # --- association events ---------------------------------------------------------

    def _on_requested(self, event: Event) -> None:
        """Address allow-list: reject (permanent, service user, no reason) at association."""
        if not self._networks:
            return
        try:
            address = ip_address(event.assoc.requestor.address)
            if any(address in network for network in self._networks):
                return
            LOG.warning("association from %s refused: address not allowed", address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
            metrics.ASSOCIATIONS.labels("rejected").inc()
        except Exception:  # a handler must never take the server down
            LOG.exception("address check failed; rejecting the association")
            metrics.CALLBACK_ERRORS.labels("scp").inc()
            event.assoc.acse.send_reject(0x02, 0x01, 0x01)

    def _on_accepted(self, event: Event) -> None:
        # pynetdicom's DUL reactor sleeps 1 ms each time it finds nothing to do, also
        # while our C-STORE response waits to be sent: a shorter pause for the life of
        # the association takes ~0.5 ms off every instance for a little CPU while it is open.
        dul = getattr(event.assoc, "dul", None)
        if dul is not None and hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = DUL_LOOP_DELAY_SECONDS
        peer = _Peer(uuid.uuid4().hex, event.assoc.requestor.ae_title.strip())
        with self._lock:
            self._peers[event.assoc] = peer
        metrics.ASSOCIATIONS.labels("accepted").inc()
        refused = event.assoc.rejected_contexts
        if refused and LOG.isEnabledFor(logging.DEBUG):
            # not counted: storescu & co propose every storage class they know by default
            names = sorted({UID(str(cx.abstract_syntax)).name for cx in refused})
            LOG.debug(
                "association %s from %s: %d presentation context(s) refused: %s",
                peer.association,
                peer.calling_ae,
                len(refused),
                ", ".join(names),
            )
        try:
            self.journal.open_association(peer.association, peer.calling_ae)
        except Exception:
            LOG.exception("association %s from %s: journal open failed", peer.association, peer.calling_ae)
            metrics.CALLBACK_ERRORS.labels("scp").inc()

    def _on_rejected(self, event: Event) -> None:
        LOG.warning(
            "association from AE %r at %s rejected (AE not allowed or limit reached)",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
        )
        metrics.ASSOCIATIONS.labels("rejected").inc()

    def _on_released(self, event: Event) -> None:
        self._close(event.assoc, "released")

    def _on_aborted(self, event: Event) -> None:
        self._close(event.assoc, "aborted")

    def _on_connection_closed(self, event: Event) -> None:
        self._close(event.assoc, "closed")

    def _close(self, assoc: Association, state: str) -> None:
        """Close the association in the journal once, then hand its series on."""
        with self._lock:
            peer = self._peers.pop(assoc, None)
        if peer is None:
            return  # never accepted, or already closed by an earlier event
        metrics.ASSOCIATIONS.labels(state).inc()
        try:
            arrival_ids = self.journal.close_association(peer.association, state)
            self.on_association_closed(arrival_ids)
        except Exception:
            LOG.exception(
                "association %s from %s: closing (%s) failed", peer.association, peer.calling_ae, state
            )
            metrics.CALLBACK_ERRORS.labels("scp").inc()

    def _on_echo(self, event: Event) -> int:
        metrics.DICOM_INSTANCES.labels("echo").inc()
        return int(StoreStatus.SUCCESS)

    # --- C-STORE ----------------------------------------------------------------------

    def _on_store(self, event: Event) -> int | Dataset:
        """Store one instance durably; returns the C-STORE status (never raises)."""
        started = time.perf_counter()
        peer = self._peer(event.assoc)
        try:
            outcome = self._store(event, peer)
        except _StoreRefused as refused:
            LOG.warning(
                "C-STORE from %s refused (0x%04X %s): %s",
                peer.calling_ae,
                refused.status,
                refused.reason,
                refused,
            )
            metrics.DICOM_INSTANCES.labels(refused.reason).inc()
            if refused.status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_MISMATCH):
                metrics.INPUT_ERRORS.labels("dicom", refused.reason).inc()
            return _failure(refused.status, str(refused))
        except Exception as exc:
            LOG.exception(
                "C-STORE from %s failed unexpectedly (association %s)", peer.calling_ae, peer.association
            )
            metrics.DICOM_INSTANCES.labels("error").inc()
            return _failure(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        metrics.DICOM_INSTANCES.labels(outcome).inc()
        metrics.DICOM_STORE_DURATION.observe(time.perf_counter() - started)
        return int(StoreStatus.SUCCESS)

    def _peer(self, assoc: Association) -> _Peer:
        with self._lock:
            peer = self._peers.get(assoc)
        return peer or _Peer("unknown", assoc.requestor.ae_title.strip())

    def _store(self, event: Event, peer: _Peer) -> str:
        """Write + commit one instance; returns "stored" or "duplicate"."""
        request = cast(C_STORE, event.request)
        stream = request.DataSet
        if not isinstance(stream, BytesIO):
            raise _StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", "no data set")
        sop_class = str(request.AffectedSOPClassUID)
        sop_uid = str(request.AffectedSOPInstanceUID)
        syntax = str(event.context.transfer_syntax)
        with stream.getbuffer() as dataset:
            try:
                header = parse_header(dataset, syntax)
                meta = encode_file_meta(sop_class, sop_uid, syntax, peer.calling_ae)
            except (InputRejected, ValueError) as exc:
                raise _StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", str(exc)) from exc
            _check_matches(header.sop_class_uid, sop_class, header.sop_instance_uid, sop_uid)
            if self.journal.instance_arrival(sop_uid) is not None:
                return "duplicate"
            part10 = b"".join((meta, dataset))
        folder = self.spool_dir / safe_name(header.series_uid)
        path = folder / f"{safe_name(sop_uid)}.dcm"
        try:
            write_atomic(path, part10)
        except OSError as exc:
            raise _StoreRefused(StoreStatus.OUT_OF_RESOURCES, "spool", f"spool: {exc}") from exc
        instance = Instance(
            sop_uid,
            0,
            path,
            len(part10),
            peer.calling_ae,
            peer.association,
            time.time(),
            header.instance_number,
        )
        attrs = {
            "modality": header.modality,
            "study_uid": header.study_uid,
            "series_uid": header.series_uid,
            "sop_class_uid": sop_class,
            "calling_ae": peer.calling_ae,
            "transfer_syntax": syntax,
        }
        try:
            _, is_new = self.journal.record_instance("series:" + header.series_uid, folder, attrs, instance)
        except Exception as exc:  # sqlite3 errors, disk full, locked database
            raise _StoreRefused(StoreStatus.OUT_OF_RESOURCES, "journal", f"journal: {exc}") from exc
        metrics.DICOM_BYTES.inc(len(part10))
        return "stored" if is_new else "duplicate"


def _check_matches(found_class: str, sop_class: str, found_uid: str, sop_uid: str) -> None:
    """The dataset must carry the SOP class and instance named in the C-STORE command."""
    if found_class and UID(found_class) != UID(sop_class):
        raise _StoreRefused(
            StoreStatus.DATASET_MISMATCH,
            "mismatch",
            f"dataset SOP class {found_class} differs from command {sop_class}",
        )
    if found_uid != sop_uid:
        raise _StoreRefused(
            StoreStatus.DATASET_MISMATCH, "mismatch", "dataset SOP Instance UID differs from the command"
        )


def _failure(status: StoreStatus, comment: str) -> Dataset:
    response = Dataset()
    response.Status = int(status)
    response.ErrorComment = comment[:64]
    return response
