"""One C-STORE at the SCP: its data set streamed into the spool, then committed or refused.

``InstanceReceipt`` receives the fragments of one C-STORE as the association loop reads
them. The header is parsed, checked against the command and looked up for a duplicate
as soon as the first fragment holds it (usually the first: the rest of the data set is
still on its way); on the last fragment the receipt decides the status: make the file
durable (``acqflow.daemon.dicom.spool``) and commit its journal row. Every refusal is logged
(never patient identifiers) and counted.
"""

from __future__ import annotations

import logging
import time
from enum import IntEnum
from typing import Protocol

from pynetdicom.presentation import PresentationContext

from acqflow.daemon import metrics
from acqflow.daemon.dicom.association import DimseStatus, PeerAssociation
from acqflow.daemon.dicom.dimse import DimseRequest
from acqflow.daemon.dicom.part10 import (
    HEADER_BYTES,
    InstanceHeader,
    encode_file_meta,
    invalid_uid_attribute,
    is_valid_uid,
    parse_header,
    parse_header_prefix,
)
from acqflow.daemon.dicom.spool import IncomingInstance, InstanceSpool
from acqflow.daemon.errors import InputRejected
from acqflow.daemon.journal import Instance, Journal

__all__ = ["InstanceReceipt", "ReceiptHost", "StoreRefused", "StoreStatus", "invalid_uid", "series_attrs"]

LOG = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses this SCP returns (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # spool or journal write failed
    DATASET_MISMATCH = 0xA900  # dataset's SOP class/instance differ from the command
    CANNOT_UNDERSTAND = 0xC000  # header unreadable, required UIDs missing or not valid UIDs
    PROCESSING_FAILURE = 0xC001  # unexpected internal error (logged with traceback)
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # the command's SOP class is not its context's


class StoreRefused(Exception):
    """A C-STORE refused with ``status``; ``reason`` labels the metric; ``offending`` is
    the tag of the attribute at fault, answered as Offending Element (0000,0901)."""

    def __init__(self, status: StoreStatus, reason: str, message: str, offending: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.offending = offending


def invalid_uid(name: str, tag: int) -> StoreRefused:
    """The refusal of an instance whose ``name`` attribute is not a valid UID.

    Spool names are the UIDs themselves (``InstanceSpool.path_for``), so only valid UIDs
    can be stored without two instances ever sharing a file. The comment names the
    attribute, never its value.
    """
    return StoreRefused(
        StoreStatus.CANNOT_UNDERSTAND,
        "invalid-uid",
        f"{name} ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a valid UID",
        offending=tag,
    )


class ReceiptHost(Protocol):
    """What a receipt needs from the receiver."""

    @property
    def journal(self) -> Journal: ...

    @property
    def spool(self) -> InstanceSpool: ...

    def take_incoming(self, peer: PeerAssociation) -> IncomingInstance: ...


class InstanceReceipt:
    """One C-STORE: streamed into the spool as it arrives, committed when complete."""

    def __init__(
        self,
        receiver: ReceiptHost,
        peer: PeerAssociation,
        request: DimseRequest,
        context: PresentationContext,
    ) -> None:
        self.receiver = receiver
        self.peer = peer
        self.sop_class = request.sop_class_uid
        self.sop_uid = request.sop_instance_uid
        self.syntax = str(context.transfer_syntax[0])
        self._incoming: IncomingInstance | None = None
        self._refused: StoreRefused | None = None
        self._header: InstanceHeader | None = None
        self._duplicate = False
        self._early = True  # still looking for the header in the first fragments
        if self.sop_class != str(context.abstract_syntax):
            self._refused = StoreRefused(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "unsupported",
                f"SOP class {self.sop_class} sent on a {context.abstract_syntax} context",
            )
            return
        if not is_valid_uid(self.sop_uid):  # the data set that follows is read and dropped
            self._refused = invalid_uid("Affected SOP Instance UID", 0x00001000)
            return
        try:
            meta = encode_file_meta(self.sop_class, self.sop_uid, self.syntax, peer.calling_ae)
            self._incoming = receiver.take_incoming(peer)
            self._incoming.start(meta)
        except ValueError as exc:
            self._refused = StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", str(exc))
        except OSError as exc:
            self.discard()
            self._refused = StoreRefused(StoreStatus.OUT_OF_RESOURCES, "spool", f"spool: {exc}")

    def append(self, fragment: memoryview) -> None:
        if self._incoming is None:
            return  # refused already: the rest of the data set is read and dropped
        try:
            self._incoming.append(fragment)
        except OSError as exc:
            self.discard()
            self._refused = StoreRefused(StoreStatus.OUT_OF_RESOURCES, "spool", f"spool: {exc}")
            return
        if self._early:
            self._read_header_early(self._incoming, fragment)

    def _read_header_early(self, incoming: IncomingInstance, fragment: memoryview) -> None:
        """Parse and check the header from the data received so far, if it is all there.

        Refuses (and stops writing) a data set whose header is unreadable or does not
        match the command, and stops writing a duplicate. Leaves anything undecided,
        including an unexpected error, to :meth:`finish`.
        """
        received = incoming.size - incoming.meta_size
        if received - len(fragment) >= HEADER_BYTES:
            self._early = False
            return
        try:
            if received == len(fragment):  # the first fragment: parse it where it lies
                header = parse_header_prefix(fragment, self.syntax)
            else:
                with incoming.dataset() as dataset:
                    header = parse_header_prefix(dataset, self.syntax)
            if header is None:
                return
            self._early = False
            self._duplicate = self._is_duplicate(header)
            self._header = header
        except InputRejected as exc:
            self._refused = StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", str(exc))
        except StoreRefused as refused:
            self._refused = refused
        except Exception:  # finish() runs the same steps again and reports the failure
            LOG.debug("early header check failed; left to the end of the data set", exc_info=True)
            self._early = False
            return
        if self._refused is not None or self._duplicate:
            self.discard()  # the rest of the data set is read and dropped

    def _is_duplicate(self, header: InstanceHeader) -> bool:
        """Check ``header`` against the command; True when the journal has the instance."""
        invalid = invalid_uid_attribute(header)
        if invalid is not None:  # first: a sender may cut an over-long UID in the command only
            raise invalid_uid(*invalid)
        _check_matches(header.sop_class_uid, self.sop_class, header.sop_instance_uid, self.sop_uid)
        return self.receiver.journal.holds_instance_file(self.sop_uid)

    def discard(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()

    def finish(self) -> DimseStatus:
        """Store the instance durably; returns the C-STORE response (never raises)."""
        started = time.perf_counter()
        peer = self.peer
        try:
            outcome = self._complete()
        except StoreRefused as refused:
            LOG.warning(
                "C-STORE from %s refused (0x%04X %s): %s",
                peer.calling_ae,
                refused.status,
                refused.reason,
                refused,
                extra={"sop_class": self.sop_class, "outcome": refused.reason},
            )
            metrics.DICOM_INSTANCES.labels(refused.reason).inc()
            if refused.status in _INPUT_ERRORS:
                metrics.INPUT_ERRORS.labels("dicom", refused.reason).inc()
            return DimseStatus(int(refused.status), str(refused), refused.offending)
        except Exception as exc:
            LOG.exception(
                "C-STORE from %s failed unexpectedly (association %s)", peer.calling_ae, peer.association,
                extra={"sop_class": self.sop_class, "outcome": "error"},
            )
            metrics.DICOM_INSTANCES.labels("error").inc()
            return DimseStatus(int(StoreStatus.PROCESSING_FAILURE), f"internal error: {type(exc).__name__}")
        finally:
            self.discard()
        metrics.DICOM_INSTANCES.labels(outcome).inc()
        metrics.DICOM_STORE_DURATION.observe(time.perf_counter() - started)
        return DimseStatus(int(StoreStatus.SUCCESS))

    def _complete(self) -> str:
        """Parse, check, commit the file and its row; returns "stored" or "duplicate"."""
        if self._refused is not None:
            raise self._refused
        if self._duplicate:
            return "duplicate"
        incoming = self._incoming
        if incoming is None or incoming.size == incoming.meta_size:
            raise StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", "no data set")
        header = self._header
        if header is None:
            with incoming.dataset() as dataset:
                try:
                    header = parse_header(dataset, self.syntax)
                except (InputRejected, ValueError) as exc:
                    raise StoreRefused(StoreStatus.CANNOT_UNDERSTAND, "unreadable", str(exc)) from exc
            if self._is_duplicate(header):
                return "duplicate"
        journal = self.receiver.journal
        path = self.receiver.spool.path_for(header.series_uid, self.sop_uid)
        try:
            incoming.commit(path)
        except OSError as exc:
            raise StoreRefused(StoreStatus.OUT_OF_RESOURCES, "spool", f"spool: {exc}") from exc
        self._incoming = None
        instance = Instance(
            self.sop_uid,
            0,
            path,
            incoming.size,
            self.peer.calling_ae,
            self.peer.association,
            time.time(),
            header.instance_number,
        )
        attrs = series_attrs(
            header, sop_class_uid=self.sop_class, calling_ae=self.peer.calling_ae, transfer_syntax=self.syntax
        )
        try:
            # The synced spool file is the durable record (acqflow.daemon.dicom.recovery redoes
            # a row lost with the machine), so the row only has to survive the process.
            _, is_new = journal.record_instance(
                "series:" + header.series_uid, path.parent, attrs, instance, durable=False
            )
        except Exception as exc:  # sqlite3 errors, disk full, locked database
            raise StoreRefused(StoreStatus.OUT_OF_RESOURCES, "journal", f"journal: {exc}") from exc
        metrics.DICOM_BYTES.inc(incoming.size)
        if not is_new:  # a held instance whose file was gone (_is_duplicate): restored
            journal.restore_instance(self.sop_uid, path, incoming.size)
            return "restored"
        return "stored"


def series_attrs(
    header: InstanceHeader, *, sop_class_uid: str, calling_ae: str, transfer_syntax: str
) -> dict[str, str]:
    """The attributes a series arrival is recorded with (by the SCP, and again by recovery)."""
    return {
        "modality": header.modality,
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "sop_class_uid": sop_class_uid,
        "calling_ae": calling_ae,
        "transfer_syntax": transfer_syntax,
    }


_INPUT_ERRORS = (
    StoreStatus.CANNOT_UNDERSTAND,
    StoreStatus.DATASET_MISMATCH,
    StoreStatus.SOP_CLASS_NOT_SUPPORTED,
)


def _check_matches(found_class: str, sop_class: str, found_uid: str, sop_uid: str) -> None:
    """The dataset must carry the SOP class and instance named in the C-STORE command."""
    if found_class and found_class != sop_class:
        raise StoreRefused(
            StoreStatus.DATASET_MISMATCH,
            "mismatch",
            f"dataset SOP class {found_class} differs from command {sop_class}",
        )
    if found_uid != sop_uid:
        raise StoreRefused(
            StoreStatus.DATASET_MISMATCH, "mismatch", "dataset SOP Instance UID differs from the command"
        )
