"""One STOW-RS request body, streamed part by part into the spool and the journal.

A ``multipart/related; type="application/dicom"`` body is parsed as it arrives
(python-multipart); each part, a Part-10 file, is written straight into a spool file
(:class:`~acqflow.daemon.dicom.spool.IncomingInstance`, as a C-STORE is), so no instance
is ever held in memory whole. At the end of a part its header is parsed, the file made
durable under ``<spool>/<series uid>/<sop uid>.dcm`` and its journal row committed, with
the same checks and guarantees as a C-STORE: the response that names an instance stored
is sent only after that. The request is recorded as an association of the client, so its
series complete early when the request ends and they are consistent, like one sent over
an association.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser

from acqflow.daemon import metrics
from acqflow.daemon.dicom.part10 import invalid_uid_attribute, parse_header
from acqflow.daemon.dicom.spool import IncomingInstance, InstanceSpool
from acqflow.daemon.dicom.store import series_attrs
from acqflow.daemon.errors import InputRejected
from acqflow.daemon.journal import Instance, Journal

__all__ = ["StowFailure", "StowRejected", "StowResult", "StowUpload"]

LOG = logging.getLogger(__name__)

PREFIX_BYTES = 64 * 1024  # a part's first bytes kept for its File Meta (never more)

# PS3.18 Table I.2-1 (Failure Reason) and PS3.4 C-STORE statuses used in the answer.
PROCESSING_FAILURE = 0x0110
NOT_SUPPORTED = 0x0112  # SOP class not supported (here: a part that is not DICOM)
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


class StowRejected(Exception):
    """The request as a whole is refused with ``status`` (400, 413, 415, 507)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StowFailure:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    detail: str


@dataclass
class StowResult:
    """What the request stored and what it refused, in part order."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    failed: list[StowFailure] = field(default_factory=list)

    @property
    def status(self) -> int:
        """200 all stored, 202 some refused, 409 none stored (PS3.18 10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def answer(self, retrieve_url: str) -> dict[str, Any]:
        """The response body as DICOM JSON."""
        answer = Dataset()
        answer.RetrieveURL = retrieve_url
        answer.ReferencedSOPSequence = [_item(cls, uid) for cls, uid in self.stored]
        answer.FailedSOPSequence = []
        for failure in self.failed:
            item = _item(failure.sop_class_uid, failure.sop_instance_uid)
            item.FailureReason = failure.reason
            answer.FailedSOPSequence.append(item)
        return dict(answer.to_json_dict())


def _item(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class or "1.2.840.10008.1.1"  # unknown: never empty (type 1)
    item.ReferencedSOPInstanceUID = sop_uid or "0"
    return item


class StowHost(Protocol):
    """What an upload needs from the receiver."""

    @property
    def journal(self) -> Journal: ...

    @property
    def spool(self) -> InstanceSpool: ...


class StowUpload:
    """Feed a request body with :meth:`feed`, then :meth:`finish`; :meth:`abort` when the
    client went away (nothing half-written stays behind)."""

    def __init__(self, host: StowHost, boundary: bytes, client: str, request_id: str,
                 max_instance_bytes: int) -> None:
        self.host, self.client, self.request_id = host, client, request_id
        self.max_instance_bytes = max_instance_bytes
        self.result = StowResult()
        self._incoming: IncomingInstance | None = None
        self._prefix = bytearray()
        self._too_large = False
        self._header_name = b""
        self._part_type = b""
        self._parts = 0
        self._lock = threading.Lock()  # the server's pool may run abort beside a feed
        self._aborted = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
        })

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body; raises StowRejected (400 for a malformed
        body, 507 when the spool cannot take the data)."""
        with self._lock:
            if self._aborted:
                return
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except StowRejected:
            self._discard()
            raise
        except ParseError as exc:  # a malformed body
            self._discard()
            raise StowRejected(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> StowResult:
        """The end of the body; raises StowRejected when it held no complete part."""
        with self._lock:
            return self._finish()

    def _finish(self) -> StowResult:
        try:
            self._parser.finalize()
        except ParseError as exc:
            self._discard()
            raise StowRejected(400, f"malformed multipart body: {exc}") from None
        if self._incoming is not None or not self._parts:
            self._discard()
            raise StowRejected(400, "multipart body without a complete part")
        return self.result

    def abort(self) -> None:
        """Forget the part being received (never raises); later data is ignored."""
        with self._lock:
            self._aborted = True
            self._discard()

    def _discard(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()

    # --- the parser's callbacks -------------------------------------------------

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name = data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        if self._header_name == b"content-type":
            self._part_type += data[start:end]

    def _part_begin(self) -> None:
        self._prefix.clear()
        self._too_large = False
        self._part_type = b""
        self._header_name = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._too_large:
            return
        view = memoryview(data)[start:end]
        if len(self._prefix) < PREFIX_BYTES:
            self._prefix += view[: PREFIX_BYTES - len(self._prefix)]
        try:
            if self._incoming is None:
                self._incoming = self.host.spool.reserve()
                self._incoming.start(b"")
            if self._incoming.size + len(view) > self.max_instance_bytes:
                self._too_large = True
                self._discard()
                return
            self._incoming.append(view)
        except OSError as exc:
            self._discard()
            raise _spool_error(exc) from None

    def _part_end(self) -> None:
        self._parts += 1
        incoming, self._incoming = self._incoming, None
        part_type = self._part_type.split(b";")[0].strip().lower()
        if self._too_large or incoming is None:
            why = "instance larger than dicomweb.max_instance_bytes" if self._too_large else "empty part"
            self._fail("", "", PROCESSING_FAILURE, why)
            return
        if part_type not in (b"", b"application/dicom"):
            incoming.discard()
            self._fail("", "", NOT_SUPPORTED, f"part of type {part_type.decode(errors='replace')}")
            return
        try:
            self._store(incoming)
        except StowRejected:
            incoming.discard()
            raise
        except _Refused as refused:
            incoming.discard()
            self._fail(refused.sop_class, refused.sop_uid, refused.reason, str(refused))

    # --- one instance -------------------------------------------------------------

    def _store(self, incoming: IncomingInstance) -> None:
        meta, meta_size = _file_meta(bytes(self._prefix))
        syntax = str(meta.get("TransferSyntaxUID", ""))
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        incoming.meta_size = meta_size
        with incoming.dataset() as dataset:
            try:
                header = parse_header(dataset, syntax)
            except (InputRejected, ValueError) as exc:
                raise _Refused(CANNOT_UNDERSTAND, str(exc), sop_class, sop_uid) from None
        invalid = invalid_uid_attribute(header)
        if invalid is not None:
            raise _Refused(CANNOT_UNDERSTAND, f"{invalid[0]} missing or not a valid UID", sop_class, sop_uid)
        if header.sop_instance_uid != sop_uid or (header.sop_class_uid and header.sop_class_uid != sop_class):
            raise _Refused(DATASET_MISMATCH, "data set UIDs differ from the File Meta Information",
                           sop_class, sop_uid)
        journal = self.host.journal
        if journal.holds_instance_file(sop_uid):  # stored before: the same object
            incoming.discard()
            self.result.stored.append((sop_class, sop_uid))
            metrics.DICOM_INSTANCES.labels("duplicate").inc()
            return
        path = self.host.spool.path_for(header.series_uid, sop_uid)
        try:
            incoming.commit(path)
            instance = Instance(sop_uid, 0, path, incoming.size, self.client, self.request_id, time.time(),
                                header.instance_number)
            attrs = {**series_attrs(header, sop_class_uid=sop_class, calling_ae=self.client,
                                    transfer_syntax=syntax), "received_by": "stow-rs"}
            _, is_new = journal.record_instance("series:" + header.series_uid, path.parent, attrs, instance,
                                                durable=False)
            if not is_new:  # held, its file removed by the retention: restored, as by C-STORE
                journal.restore_instance(sop_uid, path, incoming.size)
        except OSError as exc:
            raise _spool_error(exc) from None
        except sqlite3.Error as exc:  # the instance is not acknowledged
            LOG.error("STOW-RS instance %s: journal: %s", sop_uid, exc)
            raise _Refused(OUT_OF_RESOURCES, f"journal: {exc}", sop_class, sop_uid) from None
        metrics.DICOM_INSTANCES.labels("stored" if is_new else "restored").inc()
        metrics.DICOM_BYTES.inc(incoming.size)
        self.result.stored.append((sop_class, sop_uid))

    def _fail(self, sop_class: str, sop_uid: str, reason: int, detail: str) -> None:
        LOG.warning("STOW-RS from %s: part %d refused (0x%04X): %s", self.client, self._parts, reason, detail)
        metrics.DICOM_INSTANCES.labels("unreadable" if reason == CANNOT_UNDERSTAND else "refused").inc()
        metrics.INPUT_ERRORS.labels("dicomweb", "unreadable").inc()
        self.result.failed.append(StowFailure(sop_class, sop_uid, reason, detail))


class _Refused(Exception):
    def __init__(self, reason: int, message: str, sop_class: str, sop_uid: str) -> None:
        super().__init__(message)
        self.reason, self.sop_class, self.sop_uid = reason, sop_class, sop_uid


def _spool_error(exc: OSError) -> StowRejected:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StowRejected(507, f"spool full: {exc.strerror}")
    return StowRejected(507, f"spool: {exc}")


def _file_meta(prefix: bytes) -> tuple[Dataset, int]:
    """(File Meta Information, its length with the preamble) of a Part-10 file's first
    bytes; raises _Refused when they are not one."""
    if len(prefix) < 144 or prefix[128:132] != b"DICM" or prefix[132:136] != b"\x02\x00\x00\x00":
        raise _Refused(CANNOT_UNDERSTAND, "not a DICOM Part-10 file (no preamble, DICM and group length)",
                       "", "")
    (group_length,) = struct.unpack_from("<I", prefix, 140)
    end = 144 + group_length
    if end > len(prefix):
        raise _Refused(CANNOT_UNDERSTAND, "File Meta Information longer than 64 KiB", "", "")
    try:
        meta = dcmread(BytesIO(prefix[:end])).file_meta
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, struct.error) as exc:
        raise _Refused(CANNOT_UNDERSTAND, f"unreadable File Meta Information: {exc}", "", "") from None
    return meta, end
