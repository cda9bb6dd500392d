"""``acqflow import PATH...``: register an archive of DICOM files as series arrivals.

The command only writes the journal (see :mod:`acqflow.daemon.dicom.importing`); the
daemon, running now or started later, routes and processes the series like any other.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from acqflow.daemon.cli.base import (
    ConfigOption,
    JsonOption,
    console,
    err,
    fail,
    handles_errors,
    load_settings_for,
    print_json,
    progress_bar,
    running_state,
)
from acqflow.daemon.dicom.import_index import ImportIndex
from acqflow.daemon.dicom.importing import DicomImport, ImportProgress, ImportSummary
from acqflow.daemon.journal import Journal

__all__ = ["import_files"]

LOG_EVERY_SECONDS = 10.0  # progress lines when stderr is not a terminal


@handles_errors
def import_files(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH",
                                                      help="Files or folders to walk (nested, unsorted).")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy instances into the daemon's state folder "
                                       "instead of referencing the originals.")] = False,
    skipped_csv: Annotated[Path | None, typer.Option(
        "--skipped", help="Write every file skipped (by this and earlier imports) with why, as CSV.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Walk PATHs for DICOM files, group them into series and register each series for
    the daemon: by reference (the files stay where they are) unless --copy. Running it
    again registers only what is new; unreadable or non-DICOM files, duplicates, DICOMDIR
    files and link loops are listed in the summary and the walk goes on."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or folder: {', '.join(missing)}")
    settings = load_settings_for(config)
    journal = Journal(settings.paths.journal)  # created when the daemon never ran: it routes at start
    try:
        importer = DicomImport(journal, settings.paths.imports if copy else None)
        if as_json:
            summary = importer.run(paths)
        elif console.is_terminal:
            with progress_bar() as bar:
                summary = importer.run(paths, _BarProgress(bar))
        else:
            summary = importer.run(paths, _LineProgress())
        if skipped_csv is not None:
            _write_skipped(ImportIndex(journal), skipped_csv)
    finally:
        journal.close()
    running = running_state(settings)
    if as_json:
        print_json({**summary.as_dict(), "daemon_running": running is not None})
    else:
        _print_summary(summary, running is not None)
    if summary.series_failed:
        raise typer.Exit(1)


class _BarProgress(ImportProgress):
    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.walk: TaskID = bar.add_task("reading headers", total=None)
        self.series: TaskID | None = None

    def walking(self, files: int, read: int) -> None:
        self.bar.update(self.walk, completed=files, description=f"reading headers ({read} new)")

    def registering(self, done: int, total: int) -> None:
        if self.series is None:
            self.bar.update(self.walk, total=self.bar.tasks[self.walk].completed)
            self.series = self.bar.add_task("registering series", total=total)
        self.bar.update(self.series, completed=done)


class _LineProgress(ImportProgress):
    """Plain lines on stderr, at most every :data:`LOG_EVERY_SECONDS` (a log, a pipe)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self.last < LOG_EVERY_SECONDS:
            return False
        self.last = now
        return True

    def walking(self, files: int, read: int) -> None:
        if self._due():
            print(f"import: {files} files walked, {read} headers read", file=sys.stderr, flush=True)

    def registering(self, done: int, total: int) -> None:
        if self._due() or done == total:
            print(f"import: {done}/{total} series registered", file=sys.stderr, flush=True)


def _print_summary(summary: ImportSummary, daemon_running: bool) -> None:
    out = console.print
    out(f"import: {summary.files} files in {', '.join(summary.roots)} ({summary.seconds:.1f} s)",
        highlight=False, markup=False, soft_wrap=True)
    out(f"  series registered: {summary.series_new} new, {summary.series_updated} with new instances "
        f"({summary.instances} instances)", highlight=False, markup=False)
    if summary.unchanged:
        out(f"  already imported: {summary.unchanged} files unchanged since the last import",
            highlight=False, markup=False)
    if summary.mixed_folders:
        out(f"  folders holding several series: {summary.mixed_folders} (grouped by Series Instance UID)",
            highlight=False, markup=False)
    if summary.skipped:
        out(f"  skipped: {sum(summary.skipped.values())}", highlight=False, markup=False)
        for reason, count in sorted(summary.skipped.items(), key=lambda item: -item[1]):
            out(f"    {reason}: {count}", highlight=False, markup=False)
            for example in summary.examples.get(reason, []):
                out(f"      {example}", highlight=False, markup=False, soft_wrap=True)
    for failed in summary.series_failed:
        err.print(f"[red]error:[/red] series not registered (the next import retries): {failed}",
                  highlight=False, markup=True)
    if summary.instances:
        where = ("the running daemon routes them now" if daemon_running
                 else "the daemon routes them when it starts")
        out(f"  {where}; `acqflow jobs` shows their jobs", highlight=False, markup=False)


def _write_skipped(index: ImportIndex, target: Path) -> None:
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "state", "reason"])
        for row in index.skipped():
            writer.writerow([row["path"], row["state"], row["reason"]])
