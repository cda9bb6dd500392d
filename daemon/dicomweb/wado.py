"""Query/retrieve from a DICOMweb service (``[[sources.pacs]]`` with ``kind = "dicomweb"``):
QIDO-RS to find studies and series, WADO-RS to fetch a series' instances as files
``folder/<series>/<sop>.dcm`` (written one at a time, durably)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from pydicom import dcmwrite

from acqflow.daemon.config import DicomWebSource
from acqflow.daemon.dicom.part10 import is_valid_uid
from acqflow.daemon.dicom.retrieve import FetchQuery, RetrieveOutcome, SeriesHit
from acqflow.daemon.errors import ExportError
from acqflow.daemon.fileio import write_atomic
from acqflow.daemon.sinks.dicomweb import web_client

__all__ = ["find_series_web", "get_series_web"]

LOG = logging.getLogger(__name__)


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def find_series_web(source: DicomWebSource, query: FetchQuery, timeout: float) -> list[SeriesHit]:
    """The series ``query`` names (QIDO-RS); raises ExportError when the service cannot be
    reached or answers with an error."""
    import requests

    _session, client = web_client(source, timeout)
    filters: dict[str, Any] = {}
    if query.patient_id:
        filters["PatientID"] = query.patient_id
    if query.since:
        filters["StudyDate"] = f"{query.since}-"
    try:
        if query.uid is not None:
            studies = client.search_for_studies(search_filters={"StudyInstanceUID": query.uid, **filters})
        else:
            studies = client.search_for_studies(search_filters=filters)
        hits = []
        for study in studies:
            study_uid = _value(study, "0020000D")
            for series in client.search_for_series(study_instance_uid=study_uid):
                hits.append(_hit(series, study_uid, _value(study, "00080020")))
        if not studies and query.uid is not None:
            hits = [_hit(s, _value(s, "0020000D"), "")
                    for s in client.search_for_series(search_filters={"SeriesInstanceUID": query.uid})]
    except requests.RequestException as exc:
        raise ExportError(f"sources.pacs {source.name}: QIDO-RS failed: {exc}") from None
    return hits


def _hit(series: dict[str, Any], study_uid: str, date: str) -> SeriesHit:
    count = _value(series, "00201209")
    return SeriesHit(study_uid, _value(series, "0020000E"), _value(series, "00080060"),
                     int(count) if count.isdigit() else None, date, _value(series, "0008103E"))


def get_series_web(source: DicomWebSource, hit: SeriesHit, folder: Path, timeout: float) -> RetrieveOutcome:
    """WADO-RS one series into ``folder/<series>/``; never raises for the service's
    errors (they are the outcome's error)."""
    import requests

    try:
        _session, client = web_client(source, timeout)
        completed = failed = 0
        for dataset in client.iter_series(hit.study_uid, hit.series_uid):
            sop_uid = str(dataset.get("SOPInstanceUID", ""))
            if not is_valid_uid(sop_uid):
                failed += 1
                continue
            buffer = io.BytesIO()
            dcmwrite(buffer, dataset, enforce_file_format=True)
            write_atomic(folder / hit.series_uid / f"{sop_uid}.dcm", buffer.getbuffer())
            completed += 1
    except (requests.RequestException, ExportError, ValueError) as exc:
        return RetrieveOutcome(0, 0, error=f"sources.pacs {source.name}: WADO-RS failed: {exc}")
    except OSError as exc:
        return RetrieveOutcome(0, 0, error=f"sources.pacs {source.name}: cannot write: {exc}")
    LOG.info("WADO-RS of series %s: %d instance(s)", hit.series_uid, completed)
    return RetrieveOutcome(completed, failed)
