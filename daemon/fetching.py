"""``acqflow fetch`` and the refetch behind ``acqflow reprocess`` of a purged series.

A fetch queries the configured source, then retrieves each series it found:

- **C-MOVE** (DIMSE sources, ``retrieve = "move"``): the PACS sends the series to
  acqflow's own SCP, so the running daemon receives it like any C-STORE;
- **C-GET** (``retrieve = "get"``) and **WADO-RS** (DICOMweb sources): the files are
  written under ``<state_dir>/imports/<series>/`` and registered as an import by
  reference (:mod:`acqflow.daemon.dicom.importing`), which the spool retention later
  removes like the spool.

Either way an instance the journal already holds is not registered again; one whose file
the retention removed is restored (its row points at the file received again), which is
how ``reprocess`` gets a purged series back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from acqflow.daemon.config import DicomWebSource, PacsSource, RetrieveMode, Settings
from acqflow.daemon.dicom.importing import DicomImport
from acqflow.daemon.dicom.retrieve import (
    FetchQuery,
    RetrieveOutcome,
    SeriesHit,
    find_series,
    get_series,
    move_series,
)
from acqflow.daemon.errors import ExportError
from acqflow.daemon.journal import Arrival, Journal

__all__ = ["FetchReport", "Fetcher", "missing_instances"]

WAIT_POLL_SECONDS = 0.5


@dataclass
class FetchReport:
    """What a fetch found and retrieved, per series."""

    source: str
    method: str  # C-MOVE, C-GET, WADO-RS
    found: list[SeriesHit] = field(default_factory=list)
    retrieved: dict[str, RetrieveOutcome] = field(default_factory=dict)
    registered: int = 0  # instances new to the journal (C-GET, WADO-RS)
    restored: int = 0  # held instances whose removed files came back

    @property
    def failed(self) -> list[str]:
        return [f"{uid}: {o.error or f'{o.failed} instance(s) failed'}"
                for uid, o in self.retrieved.items() if o.error or o.failed]


class Fetcher:
    """Queries and retrieves from one ``[[sources.pacs]]`` entry."""

    def __init__(self, settings: Settings, journal: Journal, source: PacsSource | DicomWebSource) -> None:
        self.settings, self.journal, self.source = settings, journal, source
        self.timeout = settings.sources.retrieve_timeout_seconds

    @property
    def method(self) -> str:
        if isinstance(self.source, DicomWebSource):
            return "WADO-RS"
        return "C-MOVE" if self.source.retrieve is RetrieveMode.MOVE else "C-GET"

    def find(self, query: FetchQuery) -> list[SeriesHit]:
        """The series the source holds for ``query``; raises ExportError."""
        if isinstance(self.source, DicomWebSource):
            from acqflow.daemon.dicomweb.wado import find_series_web

            return find_series_web(self.source, query, self.timeout)
        return find_series(self.source, query, self.settings.dicom.ae_title, self.timeout)

    def retrieve(self, hits: list[SeriesHit]) -> FetchReport:
        """Retrieve every series of ``hits``; raises ExportError when the source cannot be
        reached at all (one series failing is in the report)."""
        report = FetchReport(self.source.name, self.method, list(hits))
        folder = self.settings.paths.imports
        for hit in hits:
            report.retrieved[hit.series_uid] = self._retrieve_one(hit, folder)
            if self.method != "C-MOVE" and (folder / hit.series_uid).is_dir():
                before = self._held_paths(hit.series_uid)
                summary = DicomImport(self.journal).run([folder / hit.series_uid])
                report.registered += summary.instances
                report.restored += self._restored(hit.series_uid, before)
        return report

    def _retrieve_one(self, hit: SeriesHit, folder: Path) -> RetrieveOutcome:
        source = self.source
        if isinstance(source, DicomWebSource):
            from acqflow.daemon.dicomweb.wado import get_series_web

            return get_series_web(source, hit, folder, self.timeout)
        if source.retrieve is RetrieveMode.GET:
            return get_series(source, hit, folder, self.settings.dicom.ae_title, self.timeout)
        destination = source.move_destination or self.settings.dicom.ae_title
        return move_series(source, hit, destination, self.settings.dicom.ae_title, self.timeout)

    def _held_paths(self, series_uid: str) -> dict[str, str]:
        rows = self.journal.query(
            "SELECT i.sop_instance_uid, i.path FROM instances i JOIN arrivals a ON a.id = i.arrival_id"
            " WHERE a.key = ?", (f"series:{series_uid}",))
        return {str(r["sop_instance_uid"]): str(r["path"]) for r in rows}

    def _restored(self, series_uid: str, before: dict[str, str]) -> int:
        after = self._held_paths(series_uid)
        return sum(1 for sop, path in before.items() if after.get(sop) != path)

    def refetch(self, arrival: Arrival, wait_seconds: float) -> FetchReport:
        """Get a series whose spool files were removed back from the source, so that it can
        be processed again; raises ExportError when the source does not hold it or the
        files do not come back (C-MOVE: within ``wait_seconds``, through the daemon)."""
        series_uid = str(arrival.attrs.get("series_uid", ""))
        study_uid = str(arrival.attrs.get("study_uid", ""))
        hits = [h for h in self.find(FetchQuery(uid=study_uid or series_uid)) if h.series_uid == series_uid]
        if not hits:
            raise ExportError(f"sources.pacs {self.source.name} does not hold series {series_uid}")
        report = self.retrieve(hits)
        if report.failed:
            raise ExportError(f"series {series_uid} not retrieved: {'; '.join(report.failed)}")
        deadline = time.monotonic() + wait_seconds
        while missing_instances(self.journal, arrival):
            if time.monotonic() > deadline:
                left = len(missing_instances(self.journal, arrival))
                raise ExportError(f"series {series_uid}: {left} instance file(s) still missing after "
                                  f"{self.method} from {self.source.name}")
            time.sleep(WAIT_POLL_SECONDS)
        return report


def missing_instances(journal: Journal, arrival: Arrival) -> list[str]:
    """SOP Instance UIDs of ``arrival`` whose files are gone (the spool retention)."""
    return [i.sop_instance_uid for i in journal.instances(arrival.id) if not i.path.exists()]
