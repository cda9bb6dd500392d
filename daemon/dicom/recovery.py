"""Spool files without a journal row, sorted out when the DICOM receiver starts.

Slots sealed or cut but not yet in place are put in place first
(``acqflow.daemon.dicom.slots``); from then on they are committed files like any other.

The SCP commits an instance's row without an fsync (``Journal.record_instance(...,
durable=False)``): its synced spool file is the durable record. Such a row survives a
crash of the process but not of the machine. So a committed spool file (``*.dcm`` in a
series folder) without a row means:

- *the same journal served this spool last, in this same boot* (the boot id the spool
  recorded, and a random token recorded in both at every start, match): every acknowledged instance's
  row is still in the journal (the process died, or a journal commit failed), so the
  file was never acknowledged; it is removed, as if its data set had been cut off.
- *anything else* — the machine restarted (new boot id), or the journal is not the one
  that last served the spool (restored from a backup, replaced): the row may be lost
  with an acknowledged instance. The file is registered again from its File Meta and
  header (calling AE from Source Application Entity Title) under the association
  ``recovered``; its series re-opens and completes by the quiet timer. At worst this
  takes in an instance that was complete but never acknowledged (at-least-once), never
  loses one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from acqflow.daemon import metrics
from acqflow.daemon.dicom.part10 import InstanceHeader
from acqflow.daemon.dicom.spool import InstanceSpool, current_boot_id
from acqflow.daemon.dicom.store import series_attrs
from acqflow.daemon.journal import Instance, Journal

__all__ = ["RECOVERED_ASSOCIATION", "SpoolRecovery", "recover_spool"]

LOG = logging.getLogger(__name__)

RECOVERED_ASSOCIATION = "recovered"
_TOKEN_KEY = "spool_token"  # pairs the journal with the spool it last served
_UNREADABLE = (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, OSError)


@dataclass(frozen=True)
class SpoolRecovery:
    """What :func:`recover_spool` did."""

    partial_removed: int  # files in .incoming
    slots_placed: int  # sealed slots put in place (acqflow.daemon.dicom.slots)
    slots_torn: int  # slots sealed by a crash mid-flush (never acknowledged), reused
    registered: int  # unrecorded files journaled again (machine restarted)
    removed: int  # unrecorded files dropped as never acknowledged (same boot)


def recover_spool(spool: InstanceSpool, journal: Journal) -> SpoolRecovery:
    """Prepare the spool for serving; raises OSError when it cannot be prepared.

    A file that cannot be read is logged, counted and left where it is.
    """
    partial = spool.prepare()
    slots = spool.recover_slots()
    boot_id, token = spool.last_served()
    same_session = (
        boot_id is not None
        and boot_id == current_boot_id()
        and token is not None
        and token == journal.meta_value(_TOKEN_KEY)
    )
    recorded = {str(r["sop_instance_uid"]) for r in journal.query("SELECT sop_instance_uid FROM instances")}
    registered = removed = 0
    unrecorded = [p for p in spool.committed_files() if p.stem not in recorded]
    for path in sorted(unrecorded, key=lambda p: p.stat().st_mtime):
        try:
            dataset = dcmread(path, stop_before_pixels=True)
            sop_uid = str(dataset.SOPInstanceUID)
        except _UNREADABLE as exc:
            LOG.error("spool file %s without a journal row cannot be read: %s", path.name, exc)
            metrics.INPUT_ERRORS.labels("dicom", "spool-recovery").inc()
            continue
        if sop_uid in recorded:
            continue
        if same_session:
            path.unlink()
            removed += 1
        else:
            registered += _register(journal, path, dataset)
    token = uuid.uuid4().hex  # the journal first: a crash in between only means "register"
    journal.set_meta(_TOKEN_KEY, token)
    spool.mark_served(token)
    placed, torn = (slots.placed, slots.torn) if slots is not None else (0, 0)
    return SpoolRecovery(partial, placed, torn, registered, removed)


def _register(journal: Journal, path: Path, dataset: Dataset) -> int:
    """Journal one spool file again; returns 1 when a row was added."""
    try:
        meta = dataset.file_meta
        calling_ae = str(meta.get("SourceApplicationEntityTitle", "")).strip()
        number = dataset.get("InstanceNumber")
        header = InstanceHeader(
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            study_uid=str(dataset.StudyInstanceUID),
            series_uid=str(dataset.SeriesInstanceUID),
            modality=str(dataset.get("Modality", "")),
            instance_number=int(number) if number not in (None, "") else None,
        )
        stat = path.stat()
        instance = Instance(
            header.sop_instance_uid,
            0,
            path,
            stat.st_size,
            calling_ae,
            RECOVERED_ASSOCIATION,
            stat.st_mtime,
            header.instance_number,
        )
        attrs = series_attrs(
            header,
            sop_class_uid=header.sop_class_uid,
            calling_ae=calling_ae,
            transfer_syntax=str(meta.TransferSyntaxUID),
        )
    except _UNREADABLE as exc:
        LOG.error("spool file %s cannot be registered again: %s", path.name, exc)
        metrics.INPUT_ERRORS.labels("dicom", "spool-recovery").inc()
        return 0
    _, is_new = journal.record_instance("series:" + header.series_uid, path.parent, attrs, instance)
    return int(is_new)
