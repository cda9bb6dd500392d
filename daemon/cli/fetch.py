"""``acqflow fetch``: get studies back from a PACS or DICOMweb service to process them.

The command queries and retrieves (:mod:`acqflow.daemon.dicom.fetching`); the daemon
processes what arrives like any other input. C-MOVE needs the running daemon (the PACS
sends to its SCP); C-GET and WADO-RS write the files and register them in the journal
whether it runs or not.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
    print_json,
    running_state,
)
from acqflow.daemon.dicom.retrieve import FetchQuery, SeriesHit
from acqflow.daemon.fetching import Fetcher, FetchReport
from acqflow.daemon.journal import Journal

__all__ = ["fetch"]

_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@handles_errors
def fetch(
    uid: Annotated[str | None, typer.Argument(metavar="[UID]",
                                              help="A Study or Series Instance UID.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Every study of this Patient ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Only studies from this date on (YYYY-MM-DD).")] = None,
    source: Annotated[str | None, typer.Option(help="The [[sources.pacs]] entry (needed when "
                                               "there are several).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be fetched; fetch "
                                          "nothing.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Query a PACS (C-FIND) or DICOMweb service (QIDO-RS) for a study, a series or a
    patient's studies, and retrieve them (C-MOVE to this daemon, C-GET or WADO-RS); the
    daemon processes them like any arrival."""
    date = None
    if since is not None:
        match = _DATE.match(since)
        if match is None:
            raise fail(f"--since: expected a date YYYY-MM-DD, got {since!r}")
        date = "".join(match.groups())
    try:
        query = FetchQuery(uid=uid, patient_id=patient, since=date)
    except ValueError as exc:
        raise fail(str(exc)) from None
    settings = load_settings_for(config)
    node = settings.source(source)
    journal = Journal(settings.paths.journal)
    try:
        fetcher = Fetcher(settings, journal, node)
        if fetcher.method == "C-MOVE" and not dry_run and running_state(settings) is None:
            raise fail(f"sources.pacs {node.name}: C-MOVE sends to acqflow's own SCP, and no daemon"
                       " runs with these settings: start it first (or set retrieve = \"get\")")
        hits = fetcher.find(query)
        if not hits:
            raise fail(f"sources.pacs {node.name}: nothing found for {_described(query)}", 1)
        if dry_run:
            _show(hits, as_json, node.name, fetcher.method)
            return
        report = fetcher.retrieve(hits)
    finally:
        journal.close()
    _report(report, as_json)
    if report.failed:
        raise typer.Exit(1)


def _described(query: FetchQuery) -> str:
    parts = [query.uid or "", f"patient {query.patient_id}" if query.patient_id else "",
             f"since {query.since}" if query.since else ""]
    return ", ".join(p for p in parts if p)


def _hits_json(hits: list[SeriesHit]) -> list[dict[str, object]]:
    return [{"study_uid": h.study_uid, "series_uid": h.series_uid, "modality": h.modality,
             "instances": h.instances, "study_date": h.study_date, "description": h.description}
            for h in hits]


def _show(hits: list[SeriesHit], as_json: bool, source: str, method: str) -> None:
    if as_json:
        print_json({"source": source, "method": method, "series": _hits_json(hits)})
        return
    table = Table(title=f"would fetch from {escape(source)} by {method}")
    for column in ("study date", "modality", "instances", "series"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        table.add_row(hit.study_date or "-", hit.modality or "-",
                      "-" if hit.instances is None else str(hit.instances), hit.series_uid)
    console.print(table)


def _report(report: FetchReport, as_json: bool) -> None:
    if as_json:
        print_json({"source": report.source, "method": report.method, "series": _hits_json(report.found),
                    "retrieved": {uid: {"completed": o.completed, "failed": o.failed, "error": o.error}
                                  for uid, o in report.retrieved.items()},
                    "registered": report.registered, "restored": report.restored, "failed": report.failed})
        return
    completed = sum(o.completed for o in report.retrieved.values())
    console.print(f"fetch from {report.source} by {report.method}: {len(report.found)} series, "
                  f"{completed} instance(s) retrieved", highlight=False, markup=False)
    if report.method == "C-MOVE":
        console.print("  sent to the daemon's SCP; `acqflow jobs` shows their jobs", highlight=False,
                      markup=False)
    else:
        console.print(f"  {report.registered} instance(s) registered, {report.restored} restored; "
                      "`acqflow jobs` shows their jobs", highlight=False, markup=False)
    for failed in report.failed:
        console.print(f"  failed: {failed}", highlight=False, markup=False, soft_wrap=True)
