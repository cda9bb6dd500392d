"""``acqflow report …``: reports built from the journal and the pipelines' summaries."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    JsonOption,
    console,
    err,
    fail,
    handles_errors,
    load_settings_for,
    open_journal,
    print_json,
)
from acqflow.daemon.cohort import CohortFormat, write_cohort
from acqflow.daemon.summaries import efficiency_summary

app = typer.Typer(rich_markup_mode=None, help="Reports built from the journal.", no_args_is_help=True)

@app.command("efficiency")
@handles_errors
def report_efficiency(
    experiment: Annotated[str, typer.Argument(help="Experiment name (as in the file names or metadata).")],
    config: ConfigOption = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the CSV verbatim instead of a table.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Differentiation efficiency per well and time point, from the daemon's summary:
    elapsed time, efficiency in %, and the final-day forecast where there is one."""
    if as_csv and as_json:
        raise fail("--csv and --json exclude each other")
    settings = load_settings_for(config)
    journal = open_journal(settings)
    try:
        summary = efficiency_summary(journal, settings, experiment)
    finally:
        journal.close()
    if summary is None:
        raise fail("no virtual-staining results in the journal yet")
    table_path = summary / "efficiency.csv"
    if not table_path.is_file():
        raise fail(f"no efficiency time course for experiment {experiment!r} (looked in {summary})")
    text = table_path.read_text()
    if as_csv:
        typer.echo(text, nl=False)  # verbatim: rich would wrap long lines
        return
    records = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in ("well", "efficiency") if records and c not in records[0]]
    if missing:
        raise fail(f"{table_path}: no column {', '.join(missing)} (not an efficiency time course)")
    if as_json:
        print_json([{key: _typed(value) for key, value in row.items()} for row in records])
        return
    console.print(efficiency_table(experiment, records))
    console.print("plot (efficiency.png) and report (report.html) in:", highlight=False)
    console.print(str(summary), highlight=False, markup=False, soft_wrap=True)  # a path, never broken


@app.command("cohort")
@handles_errors
def report_cohort(
    pipeline: Annotated[list[str] | None, typer.Option(
        "--pipeline", "-p", metavar="NAME", help="Only this pipeline's results (repeatable; default: every "
        "segmentation pipeline with results).")] = None,
    fmt: Annotated[CohortFormat, typer.Option("--format", "-f", help="csv, or parquet (needs the "
                                              "parquet extra and --output).")] = CohortFormat.CSV,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the table here "
                                                "(default: CSV on stdout).")] = None,
    identifiers: Annotated[bool, typer.Option("--identifiers", help="Study and Series Instance "
                                              "UIDs instead of pseudonyms.")] = False,
    config: ConfigOption = None,
) -> None:
    """One row per series and structure over every series processed: volume (mL), mean
    HU, low-attenuation fraction, mean uncertainty, review flag, model and pipeline
    version. Study and series are pseudonyms (the same in every report from this
    journal) unless --identifiers; a series processed again counts once, newest results."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    try:
        table = write_cohort(journal, output if output is not None else sys.stdout, fmt, pipeline,
                             identifiers)
    finally:
        journal.close()
    where = str(output) if output is not None else "stdout"
    err.print(f"cohort: {table.rows} rows, {table.series} series from {', '.join(table.pipelines)}"
              f" -> {where}", highlight=False, markup=False, soft_wrap=True)


def _typed(value: str | None) -> str | int | float | None:
    """A CSV cell as JSON: empty is null, numbers are numbers, the rest text."""
    if value is None or value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _percent(value: str | None) -> str:
    """A fraction (0-1) from the CSV as a percentage, '-' when empty."""
    return "-" if not value else f"{100 * float(value):.1f}%"


def human_elapsed(value: str | None) -> str:
    """Elapsed hours from the CSV in human units: hours up to two days, then days."""
    if not value:
        return "-"
    hours = float(value)
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def efficiency_table(experiment: str, records: list[dict[str, str]]) -> Table:
    """The time course as a table that fits 80 columns: well, time point, elapsed time,
    efficiency, and the forecast of the final day (with its interval) where there is one."""
    forecast = any(row.get("forecast_final") for row in records)
    table = Table(title=f"differentiation efficiency: {escape(experiment)}")
    table.add_column("well", no_wrap=True)
    table.add_column("time point", justify="right")
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("efficiency", justify="right", no_wrap=True)
    if forecast:
        table.add_column("final-day forecast", justify="right")
        table.add_column("interval", justify="right", no_wrap=True)
        table.add_column("call", no_wrap=True)
    for row in records:
        cells = [
            escape(row.get("well") or "-"),
            row.get("timepoint") or "-",
            human_elapsed(row.get("elapsed_h")),
            _percent(row.get("efficiency")),
        ]
        if forecast:
            low, high = row.get("forecast_low"), row.get("forecast_high")
            interval = f"{100 * float(low):.0f}-{100 * float(high):.0f}%" if low and high else "-"
            cells += [_percent(row.get("forecast_final")), interval, row.get("forecast_call") or "-"]
        table.add_row(*cells)
    return table
