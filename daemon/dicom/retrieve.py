"""Query/retrieve from a DIMSE PACS (``[[sources.pacs]]``): C-FIND, then C-MOVE or C-GET.

The query is hierarchical in the Study Root model: studies first (by Study Instance UID,
Patient ID and a study date range), then each study's series. A UID that names no study
is tried as a series (a SERIES-level query without the study, which Orthanc, dcm4chee
and most archives answer). C-MOVE asks the PACS to send the series to acqflow's own SCP
(the daemon must run; the instances arrive through the normal C-STORE path); C-GET
receives them on the query's own association and writes them as files under
``folder/<series>/<sop>.dcm``, which the caller then registers like an import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from acqflow.daemon.config import PacsSource
from acqflow.daemon.dicom.part10 import is_valid_uid
from acqflow.daemon.errors import ExportError
from acqflow.daemon.fileio import write_atomic

__all__ = ["FetchQuery", "RetrieveOutcome", "SeriesHit", "find_series", "get_series", "move_series"]

LOG = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # ... - MOVE
GET = "1.2.840.10008.5.1.4.1.2.2.3"  # ... - GET


@dataclass(frozen=True)
class FetchQuery:
    """What to fetch: a study or series UID, or a patient (with a first study date)."""

    uid: str | None = None
    patient_id: str | None = None
    since: str | None = None  # YYYYMMDD

    def __post_init__(self) -> None:
        if self.uid is None and self.patient_id is None:
            raise ValueError("a fetch needs a study or series UID or a patient ID")
        if self.uid is not None and not is_valid_uid(self.uid):
            raise ValueError(f"not a valid UID: {self.uid!r}")
        if self.since is not None and not (len(self.since) == 8 and self.since.isdigit()):
            raise ValueError(f"--since must be a date YYYYMMDD or YYYY-MM-DD, got {self.since!r}")


@dataclass(frozen=True)
class SeriesHit:
    study_uid: str
    series_uid: str
    modality: str
    instances: int | None  # Number of Series Related Instances, when the PACS says
    study_date: str = ""
    description: str = ""


@dataclass(frozen=True)
class RetrieveOutcome:
    completed: int
    failed: int
    warning: int = 0
    error: str | None = None


def _entity(source: PacsSource, calling_ae: str, timeout: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=source.calling_ae_title or calling_ae)
    ae.connection_timeout = ae.acse_timeout = min(timeout, 30.0)
    ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: Any, source: PacsSource, **options: Any) -> Any:
    """An association with ``source`` (``options``: pynetdicom's, e.g. C-GET's roles and
    storage handler); raises ExportError when it is not established."""
    assoc = ae.associate(source.host, source.port, ae_title=source.ae_title, **options)
    if not assoc.is_established:
        raise ExportError(f"sources.pacs {source.name}: no association with "
                          f"{source.ae_title}@{source.host}:{source.port} (rejected, unreachable or aborted)")
    return assoc


def find_series(source: PacsSource, query: FetchQuery, calling_ae: str, timeout: float) -> list[SeriesHit]:
    """The series ``query`` names at ``source``; raises ExportError when the PACS cannot
    be reached or refuses the query."""
    ae = _entity(source, calling_ae, timeout)
    ae.add_requested_context(FIND)
    assoc = _associate(ae, source)
    try:
        studies = list(_find(assoc, FIND, _study_query(query), source))
        hits: list[SeriesHit] = []
        for study in studies:
            found = _find(assoc, FIND, _series_query(str(study.StudyInstanceUID)), source)
            hits += [_hit(study, s) for s in found]
        if not studies and query.uid is not None:  # not a study: perhaps a series
            one = _series_query("")
            one.SeriesInstanceUID = query.uid
            hits = [_hit(None, s) for s in _find(assoc, FIND, one, source)]
    finally:
        assoc.release()
    return hits


def _study_query(query: FetchQuery) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = query.uid or ""
    ds.PatientID = query.patient_id or ""
    ds.StudyDate = f"{query.since}-" if query.since else ""
    return ds


def _series_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.SeriesDescription = ""
    ds.NumberOfSeriesRelatedInstances = ""
    ds.StudyDate = ""
    return ds


def _find(assoc: Any, model: Any, identifier: Dataset, source: PacsSource) -> Iterator[Dataset]:
    for status, found in assoc.send_c_find(identifier, model):
        code = int(status.Status) if "Status" in status else -1
        if code in PENDING and found is not None:
            yield found
        elif code not in (0x0000, *PENDING):
            raise ExportError(f"sources.pacs {source.name}: C-FIND failed with status 0x{code & 0xFFFF:04X}")


def _hit(study: Dataset | None, series: Dataset) -> SeriesHit:
    count = series.get("NumberOfSeriesRelatedInstances")
    try:
        instances = int(count) if count not in (None, "") else None
    except (TypeError, ValueError):
        instances = None
    date = str(series.get("StudyDate", "") or (study.get("StudyDate", "") if study is not None else ""))
    return SeriesHit(str(series.StudyInstanceUID), str(series.SeriesInstanceUID),
                     str(series.get("Modality", "")), instances, date,
                     str(series.get("SeriesDescription", "")))


def _retrieve_identifier(hit: SeriesHit) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = hit.study_uid
    ds.SeriesInstanceUID = hit.series_uid
    return ds


def _outcome(status: Dataset | None, source: PacsSource, what: str) -> RetrieveOutcome:
    if status is None or "Status" not in status:
        return RetrieveOutcome(0, 0, error=f"sources.pacs {source.name}: no {what} response (timeout)")
    code = int(status.Status)
    completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
    warning = int(status.get("NumberOfWarningSuboperations", 0) or 0)
    error = (None if code in (0x0000, 0xB000)
             else f"sources.pacs {source.name}: {what} ended with status 0x{code:04X}")
    return RetrieveOutcome(completed, failed, warning, error)


def move_series(source: PacsSource, hit: SeriesHit, destination_ae: str, calling_ae: str,
                timeout: float) -> RetrieveOutcome:
    """C-MOVE one series to ``destination_ae`` (acqflow's SCP); raises ExportError when
    the PACS cannot be reached."""
    ae = _entity(source, calling_ae, timeout)
    ae.add_requested_context(MOVE)
    assoc = _associate(ae, source)
    last: Dataset | None = None
    try:
        for status, _identifier in assoc.send_c_move(_retrieve_identifier(hit), destination_ae, MOVE):
            last = status
    finally:
        assoc.release()
    return _outcome(last, source, "C-MOVE")


def get_series(source: PacsSource, hit: SeriesHit, folder: Path, calling_ae: str,
               timeout: float) -> RetrieveOutcome:
    """C-GET one series; each instance is written durably as ``folder/<series>/<sop>.dcm``.
    Raises ExportError when the PACS cannot be reached."""
    from pynetdicom import StoragePresentationContexts, build_role, evt

    from acqflow.daemon.dicom.part10 import encode_file_meta

    def store(event: Any) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if not is_valid_uid(sop_uid):
            return 0xC000
        try:
            meta = encode_file_meta(str(event.request.AffectedSOPClassUID), sop_uid,
                                    str(event.context.transfer_syntax), source.ae_title)
        except ValueError:
            return 0xC000
        try:
            data = bytes(event.encoded_dataset(include_meta=False))
            write_atomic(folder / hit.series_uid / f"{sop_uid}.dcm", meta + data)
        except OSError as exc:
            LOG.error("C-GET: cannot write instance %s: %s", sop_uid, exc)
            return 0xA700
        return 0x0000

    ae = _entity(source, calling_ae, timeout)
    ae.add_requested_context(GET)
    storage = [str(c.abstract_syntax) for c in StoragePresentationContexts[:127] if c.abstract_syntax]
    for sop_class in storage:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in storage]
    assoc = _associate(ae, source, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
    (folder / hit.series_uid).mkdir(parents=True, exist_ok=True)
    last: Dataset | None = None
    try:
        for status, _identifier in assoc.send_c_get(_retrieve_identifier(hit), GET):
            last = status
    finally:
        assoc.release()
    written = len([n for n in os.listdir(folder / hit.series_uid) if n.endswith(".dcm")])
    LOG.info("C-GET of series %s: %d instance file(s)", hit.series_uid, written)
    return _outcome(last, source, "C-GET")
