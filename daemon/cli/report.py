"""``acqflow report …``: reports built from the journal and the pipelines' summaries."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
    open_journal,
)
from acqflow.daemon.config import Settings
from acqflow.daemon.fileio import safe_name

app = typer.Typer(help="Reports built from the journal.", no_args_is_help=True)

@app.command("efficiency")
@handles_errors
def report_efficiency(
    experiment: Annotated[str, typer.Argument(help="Experiment name (as in the file names or metadata).")],
    config: ConfigOption = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the CSV instead of a table.")] = False,
) -> None:
    """Differentiation efficiency per well and time point, from the daemon's summary."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    rows = journal.query(
        "SELECT o.path FROM outputs o WHERE o.pipeline='virtual-staining' AND o.kind='file'"
        " ORDER BY o.written_at DESC LIMIT 1"
    )
    journal.close()
    if not rows:
        raise fail("no virtual-staining results in the journal yet")
    version_root = _version_root(Path(rows[0]["path"]), settings)
    summary = version_root / "_summary" / safe_name(experiment)
    table_path = summary / "efficiency.csv"
    if not table_path.is_file():
        raise fail(f"no efficiency time course for experiment {experiment!r} (looked in {summary})")
    text = table_path.read_text()
    if as_csv:
        typer.echo(text, nl=False)  # verbatim: rich would wrap long lines
        return
    reader = list(csv.reader(io.StringIO(text)))
    table = Table(*reader[0], title=f"differentiation efficiency — {experiment}")
    for row in reader[1:]:
        table.add_row(*row)
    console.print(table)
    console.print(f"plot: {summary / 'efficiency.png'}\nreport: {summary / 'report.html'}")


def _version_root(output: Path, settings: Settings) -> Path:
    """``<outputs>/virtual-staining/<version>`` from one of its output files."""
    relative = output.relative_to(settings.paths.outputs_dir)
    return settings.paths.outputs_dir / relative.parts[0] / relative.parts[1]

