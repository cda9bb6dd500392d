"""``acqflow config check``: the settings, the files they name, and file names explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
)
from acqflow.daemon.config import Settings

app = typer.Typer(rich_markup_mode=None, help="Inspect and validate the configuration.", no_args_is_help=True)

@app.command("check")
@handles_errors
def config_check(
    config: ConfigOption = None,
    explain_names: Annotated[
        bool,
        typer.Option("--explain-names", help="Show what the watcher makes of FILE... (preset, fields)."),
    ] = False,
    files: Annotated[
        list[Path] | None, typer.Argument(metavar="[FILE]...", help="Image files, with --explain-names.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --explain-names: JSON output.")] = False,
) -> None:
    """Validate the settings (file + ACQFLOW_* environment) and the files they name
    (TLS certificate, key and CA bundle, weights folder); print the result. With
    --explain-names, print for each FILE the preset that matched and the parsed fields."""
    from acqflow.daemon.preflight import check_referenced_files

    settings = load_settings_for(config)
    check_referenced_files(settings)
    if not explain_names:
        if files:
            raise fail("FILE arguments are explained only with --explain-names")
        console.print(f"[green]configuration valid[/green] ({config or 'built-in defaults'})")
        console.print_json(settings.model_dump_json(by_alias=True))
        return
    if not files:
        raise fail("--explain-names needs at least one FILE")
    _explain_names(settings, files, as_json)


def _explain_names(settings: Settings, files: list[Path], as_json: bool) -> None:
    from acqflow.daemon.folders.naming.explain import explain_file

    explained = []
    for path in files:
        try:
            explained += explain_file(path, settings.folders)
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps([one.as_json() for one in explained]))
        return
    table = Table("file", "folder / naming", "preset", "experiment", "plate", "well", "position",
                  "time point", "channel", "acquired", title="names explained")
    for one in explained:
        data = one.as_json()
        name = one.path.name + (f" [image {one.series}]" if one.series is not None else "")
        where = f"{data['folder']}" if one.watched else f"not watched: defaults ({data['folder']})"
        preset = data["scheme"] or f"none: {data['note']}"
        if one.header_note:
            preset += f" (header {one.header_note})"
        cells = [name, f"{where} / {data['naming']}", preset,
                 f"{data['experiment']} ({data['experiment_from']})", data["plate"], data["well"],
                 data["position"], data["timepoint"], data["channel"], data["acquired"]]
        table.add_row(*(escape("-" if v is None else str(v)) for v in cells))
    console.print(table)

