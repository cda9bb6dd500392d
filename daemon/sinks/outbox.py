"""The DICOM export outbox: C-STORE SCU (or STOW-RS, :mod:`acqflow.daemon.sinks.dicomweb`)
to configured destinations, with retries.

The outbox state lives in the journal's ``exports`` table (created by
``JobQueue.complete`` next to the durable output files), so it survives restarts.
:meth:`ExportOutbox.send_due` takes the due rows, opens one association per destination,
stores each object with its own SOP class and transfer syntax (plus explicit and
implicit little endian), marks successes done, and reschedules failures with
exponential backoff until ``give_up_after_seconds`` after the export was created, when
the export is parked as dead with its last error.

A destination that refuses an object's SOP class (its presentation contexts rejected,
whether the association still carries other classes or the peer accepted none of them)
or accepts the class only in a transfer syntax the object is not encoded in is not a
transient failure: that export is dead at once, its error naming the class (and syntax)
and the peer, until the operator reconfigures the peer and runs ``acqflow retry``.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, sop_class
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from acqflow.daemon import metrics
from acqflow.daemon.config import DicomWebDestination, ExportDestination, ExportSettings
from acqflow.daemon.dicom.part10 import read_part10
from acqflow.daemon.errors import ExportError, InputRejected
from acqflow.daemon.journal import Journal, PendingExport

__all__ = ["SUCCESS_STATUSES", "ExportOutbox"]

LOG = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8: odd ids 1..255)
# Success and the storage warnings (coercion, elements discarded, SOP class mismatch).
SUCCESS_STATUSES = frozenset({0x0000, 0x0001, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class _Item:
    """A due export with its object's SOP class and transfer syntax (header read only)."""

    export: PendingExport
    sop_class: str
    transfer_syntax: str

    @property
    def syntaxes(self) -> tuple[str, str]:
        return self.sop_class, self.transfer_syntax


class ExportOutbox:
    """Sends due exports; safe to call from several threads (one run at a time)."""

    def __init__(self, settings: ExportSettings, journal: Journal, calling_ae: str) -> None:
        self.settings = settings
        self.journal = journal
        self.calling_ae = calling_ae
        self._destinations = {d.name: d for d in settings.destinations}
        self._running = threading.Lock()

    def send_due(self, now: float | None = None) -> int:
        """Send every due export; returns how many were stored successfully.

        Returns 0 at once when another thread is already sending. Never raises:
        failures are rescheduled in the journal, logged and counted.
        """
        if not self._running.acquire(blocking=False):
            return 0
        try:
            now = time.time() if now is None else now
            groups: dict[str, list[PendingExport]] = {}
            for export in self.journal.due_exports(now):
                groups.setdefault(export.destination, []).append(export)
            sent = 0
            for name, exports in groups.items():
                try:
                    sent += self._send_destination(name, exports, now)
                except Exception:
                    LOG.exception("export to %s failed unexpectedly (%d object(s))", name, len(exports))
                    metrics.CALLBACK_ERRORS.labels("outbox").inc()
            self._publish_pending()
            return sent
        except Exception:
            LOG.exception("export outbox run failed")
            metrics.CALLBACK_ERRORS.labels("outbox").inc()
            return 0
        finally:
            self._running.release()

    def pending_count(self) -> dict[str, int]:
        """Destination name → number of pending exports (due or waiting for a retry)."""
        return self.journal.pending_exports_by_destination()

    def echo(self, destination: ExportDestination | DicomWebDestination, timeout: float) -> int:
        """C-ECHO ``destination`` (a QIDO-RS search for a DICOMweb one); returns the status.
        Raises ExportError when unreachable."""
        if isinstance(destination, DicomWebDestination):
            from acqflow.daemon.sinks.dicomweb import StowClient

            return StowClient(destination, timeout).echo()
        return echo(destination, self.calling_ae, timeout)

    # --- one destination ------------------------------------------------------------

    def _send_destination(self, name: str, exports: Sequence[PendingExport], now: float) -> int:
        destination = self._destinations.get(name)
        if destination is None:
            for export in exports:
                self._failed(export, name, f"no export destination named {name!r}", now, True)
            return 0
        if isinstance(destination, DicomWebDestination):
            return self._send_web(destination, exports, now)
        items = self._load(name, exports, now)
        contexts = _contexts(items)
        items = [item for item in items if item.syntaxes[0] in contexts]  # rest: next round
        if not items:
            return 0
        ae = self._application_entity(destination, self.settings.timeout_seconds)
        ae.requested_contexts = [cx for listed in contexts.values() for cx in listed]
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established and not _answered_contexts(assoc):
            reason = _why_not_established(assoc, destination)
            LOG.warning("export to %s: %s; %d object(s) will be retried", name, reason, len(items))
            for item in items:
                self._failed(item.export, name, reason, now)
            return 0
        try:
            return self._store_all(assoc, name, self._accepted(assoc, destination, items, now), now)
        finally:
            _release(assoc)

    def _send_web(
        self, destination: DicomWebDestination, exports: Sequence[PendingExport], now: float
    ) -> int:
        """STOW-RS each export, one request per instance; a failure that cannot pass
        (the service refused the instance) is dead at once, the rest retried."""
        from acqflow.daemon.sinks.dicomweb import StowClient

        name = destination.name
        try:
            client = StowClient(destination, self.settings.timeout_seconds)
        except ExportError as exc:  # a secret that cannot be read: retried, it may appear
            for export in exports:
                self._failed(export, name, str(exc), now)
            return 0
        sent = 0
        for index, export in enumerate(exports):
            outcome = client.store(export.path)
            if outcome.error is None:
                self.journal.mark_export_done(export.id)
                metrics.EXPORTS.labels(name, "done").inc()
                sent += 1
                continue
            self._failed(export, name, outcome.error, now, permanent=outcome.permanent)
            if not outcome.permanent:  # the service is down or busy: the rest wait for the retry
                for rest in exports[index + 1:]:
                    self._failed(rest, name, outcome.error, now)
                LOG.warning("export to %s: %s; %d object(s) will be retried", name, outcome.error,
                            len(exports) - index)
                break
        LOG.info("export to %s: %d of %d object(s) stored by STOW-RS", name, sent, len(exports))
        return sent

    def _accepted(
        self, assoc: Association, destination: ExportDestination, items: Sequence[_Item], now: float
    ) -> list[_Item]:
        """The items the peer's answer lets us send; the others are refused: dead at once.

        Also called when the peer accepted none of the contexts (pynetdicom then aborts
        the association itself): every item is refused.
        """
        sendable: list[_Item] = []
        for item in items:
            refusal = _refusal(assoc, item, _peer(destination))
            if refusal is None:
                sendable.append(item)
            else:
                self._failed(item.export, destination.name, refusal, now, permanent=True)
        return sendable

    def _store_all(self, assoc: Association, name: str, items: Sequence[_Item], now: float) -> int:
        if not items:
            return 0
        sent = 0
        for index, item in enumerate(items):
            if not assoc.is_established:
                for rest in items[index:]:
                    self._failed(rest.export, name, "association lost during export", now)
                break
            error = _store(assoc, item.export.path)
            if error is None:
                self.journal.mark_export_done(item.export.id)
                metrics.EXPORTS.labels(name, "done").inc()
                sent += 1
            else:
                self._failed(item.export, name, error, now)
        LOG.info("export to %s: %d of %d object(s) stored", name, sent, len(items))
        return sent

    def _load(self, name: str, exports: Sequence[PendingExport], now: float) -> list[_Item]:
        """Read the output files' headers; an unreadable one can never be sent: dead."""
        items: list[_Item] = []
        for export in exports:
            try:
                header = read_part10(export.path, stop_before_pixels=True)
                syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
                sop_class = str(header.get("SOPClassUID", ""))
                if not syntax or not sop_class:
                    raise InputRejected(f"{export.path}: no SOP class or transfer syntax")
                items.append(_Item(export, sop_class, syntax))
            except InputRejected as exc:
                self._failed(export, name, str(exc), now, permanent=True)
        return items

    def _failed(
        self, export: PendingExport, name: str, error: str, now: float, permanent: bool = False
    ) -> None:
        """Reschedule with exponential backoff, or park as dead when it is time to give up."""
        age = now - export.created_at
        if permanent or age >= self.settings.give_up_after_seconds:
            LOG.error(
                "export %d to %s dead after %d attempt(s): %s", export.id, name, export.attempts + 1, error
            )
            self.journal.mark_export_failed(export.id, error, None)
            metrics.EXPORTS.labels(name, "dead").inc()
            return
        delay = min(
            self.settings.retry_max_seconds,
            self.settings.retry_initial_seconds * 2.0 ** min(export.attempts, 32),
        )
        self.journal.mark_export_failed(export.id, error, now + delay)
        metrics.EXPORTS.labels(name, "retry").inc()

    def _application_entity(self, destination: ExportDestination, timeout: float) -> AE:
        return _application_entity(destination, self.calling_ae, timeout)

    def _publish_pending(self) -> None:
        pending = self.pending_count()
        for name in set(self._destinations) | set(pending):
            metrics.EXPORT_PENDING.labels(name).set(pending.get(name, 0))


def _contexts(items: Sequence[_Item]) -> dict[str, list[PresentationContext]]:
    """Presentation contexts per SOP class, at most :data:`MAX_CONTEXTS` in all.

    Each SOP class gets one context offering Explicit and Implicit VR Little Endian and,
    for every other transfer syntax its objects use (compressed ones), a context of its
    own: an acceptor that prefers uncompressed data could otherwise accept the shared
    context with a syntax the encoded object cannot be sent in.
    """
    uncompressed: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    wanted: dict[str, list[str]] = {}
    for item in items:
        sop_class, syntax = item.syntaxes
        listed = wanted.setdefault(sop_class, [])
        if syntax not in uncompressed and syntax not in listed:
            listed.append(syntax)
    contexts: dict[str, list[PresentationContext]] = {}
    used = 0
    for sop_class, own in wanted.items():
        needed = 1 + len(own)
        if used + needed > MAX_CONTEXTS:
            continue  # the rest wait for the next run
        contexts[sop_class] = [build_context(sop_class, [syntax]) for syntax in own]
        contexts[sop_class].append(build_context(sop_class, uncompressed))
        used += needed
    return contexts


def _store(assoc: Association, path: Path) -> str | None:
    """C-STORE one Part-10 file (read only now: one object in memory at a time).

    Returns None on success, else the error text.
    """
    try:
        status = assoc.send_c_store(path)
    except (ValueError, AttributeError, RuntimeError, OSError) as exc:  # no context, bad file
        return f"cannot send: {exc}"
    if "Status" not in status:
        return "no C-STORE response (timeout or association aborted)"
    code = int(status.Status)
    if code in SUCCESS_STATUSES:
        return None
    comment = status.get("ErrorComment", "")
    return f"C-STORE failed with status 0x{code:04X}{': ' + str(comment) if comment else ''}"


def _answered_contexts(assoc: Association) -> bool:
    """Whether the peer answered the proposed presentation contexts (accepted or not).

    dcmtk storescp and Orthanc answer a proposal they accept no context of with an
    A-ASSOCIATE-AC that rejects every context (pynetdicom then aborts): that is a refusal
    of the SOP classes, not an unreachable peer. An A-ASSOCIATE-RJ carries no
    per-context answers, so a rejected association stays a retried failure.
    """
    return bool(assoc.accepted_contexts or assoc.rejected_contexts)


def _refusal(assoc: Association, item: _Item, where: str) -> str | None:
    """Why the peer's answer does not let ``item`` be sent (None: it does)."""
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == item.sop_class]
    if not accepted:
        answers = sorted(
            {cx.status.lower() for cx in assoc.rejected_contexts if cx.abstract_syntax == item.sop_class}
        )
        because = f" ({', '.join(answers)})" if answers else ""
        return f"{_described(item.sop_class)} not accepted by {where}{because}"
    if any(_carries(str(cx.transfer_syntax[0]), item.transfer_syntax) for cx in accepted):
        return None
    offered = ", ".join(sorted({_described(str(cx.transfer_syntax[0])) for cx in accepted}))
    return (
        f"{_described(item.sop_class)} in {_described(item.transfer_syntax)} not accepted by {where}"
        f" (only in {offered}; acqflow does not transcode)"
    )


def _carries(context_syntax: str, object_syntax: str) -> bool:
    """Whether a context in ``context_syntax`` can carry an object encoded in ``object_syntax``.

    pynetdicom's rule: the same syntax, or both uncompressed little endian (explicit and
    implicit VR are converted); compressed data is never transcoded.
    """
    if context_syntax == object_syntax:
        return True
    a, b = UID(context_syntax), UID(object_syntax)
    if not (a.is_transfer_syntax and b.is_transfer_syntax):
        return False
    return not (a.is_compressed or b.is_compressed) and a.is_little_endian == b.is_little_endian


def _described(uid: str) -> str:
    """``Name (uid)``: pydicom's name, else pynetdicom's SOP class keyword, else the uid."""
    name = UID(uid).name
    if name == uid:
        name = _sop_class_names().get(uid, uid)
    return uid if name == uid else f"{name} ({uid})"


@cache
def _sop_class_names() -> dict[str, str]:
    """pynetdicom's SOP classes, uid → name (it knows classes pydicom's table lacks, such
    as Label Map Segmentation Storage)."""
    members = inspect.getmembers(sop_class, lambda value: isinstance(value, sop_class.SOPClass))
    return {str(uid): re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", keyword)
            for keyword, uid in members}


def _peer(destination: ExportDestination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _why_not_established(assoc: Association, destination: ExportDestination) -> str:
    where = _peer(destination)
    if assoc.is_rejected:
        return f"association rejected by {where}"
    # pynetdicom reports a refused or timed-out connection as an abort as well
    return f"{where} unreachable, not answering or aborted the association"


def _release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


def _application_entity(destination: ExportDestination, calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=destination.calling_ae_title or calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def echo(destination: ExportDestination, calling_ae: str, timeout: float) -> int:
    """C-ECHO ``destination`` as ``calling_ae``; returns the status.

    Raises ExportError when the destination is unreachable or does not answer.
    """
    ae = _application_entity(destination, calling_ae, timeout)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ExportError(f"{destination.name}: {_why_not_established(assoc, destination)}")
    try:
        status = assoc.send_c_echo()
    finally:
        _release(assoc)
    if "Status" not in status:
        raise ExportError(f"{destination.name}: no C-ECHO response within {timeout:.0f} s")
    return int(status.Status)
