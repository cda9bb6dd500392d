"""The ``acqflow`` command line.

Errors of the daemon's own kind become a one-line message on stderr and exit code 2;
nothing here imports torch at module level, so the CLI starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from daemon import __version__, redaction
from daemon.config import Settings, load_settings
from daemon.errors import AcqflowError, ConfigError

__all__ = ["app", "main"]

app = typer.Typer(
    name="acqflow",
    help="Acquisition-time AI for microscopy and CT/MR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)
train_app = typer.Typer(help="Train a pipeline's model.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate a pipeline's model on held-out data.", no_args_is_help=True)
report_app = typer.Typer(help="Reports built from the journal.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(report_app, name="report")

console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (default: $ACQFLOW_CONFIG or built-in defaults)."
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def handles_errors(func: F) -> F:
    """Translate the daemon's errors into a one-line message and a non-zero exit."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AcqflowError as exc:
            raise _fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})


def _print_version(value: bool) -> None:
    if value:
        console.print(f"acqflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Acquisition-time AI for microscopy and CT/MR."""


@app.command()
@handles_errors
def serve(
    config: ConfigOption = None,
    dicom_port: Annotated[int | None, typer.Option(help="Override dicom.port.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Override metrics.port.")] = None,
    device: Annotated[str | None, typer.Option(help="Override workers.device (auto, cpu, cuda).")] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    settings = _settings(
        config, **{"dicom.port": dicom_port, "metrics.port": metrics_port, "workers.device": device}
    )
    from daemon.logs import configure_logging
    from daemon.preflight import check_referenced_files

    check_referenced_files(settings)
    configure_logging(settings.log_level, settings.log_format)
    redaction.install()  # no patient value in any log line, whichever logger writes it
    from daemon.service import Daemon

    Daemon(settings).serve_forever()


@config_app.command("check")
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
    from daemon.preflight import check_referenced_files

    settings = _settings(config)
    check_referenced_files(settings)
    if not explain_names:
        if files:
            raise _fail("FILE arguments are explained only with --explain-names")
        console.print(f"[green]configuration valid[/green] ({config or 'built-in defaults'})")
        console.print_json(settings.model_dump_json(by_alias=True))
        return
    if not files:
        raise _fail("--explain-names needs at least one FILE")
    _explain_names(settings, files, as_json)


def _explain_names(settings: Settings, files: list[Path], as_json: bool) -> None:
    from daemon.sources.naming.explain import explain_file

    explained = []
    for path in files:
        try:
            explained += explain_file(path, settings.folders)
        except FileNotFoundError as exc:
            raise _fail(str(exc)) from None
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


def _open_journal(settings: Settings) -> Any:
    from daemon.journal import Journal

    if not settings.paths.journal.exists():
        raise ConfigError(
            f"no journal at {settings.paths.journal}: the daemon has not run with these settings"
        )
    return Journal(settings.paths.journal)


def _running_state(settings: Settings) -> dict[str, Any] | None:
    """The running daemon's ``daemon.json``, None when no daemon runs with these settings."""
    state_file = settings.paths.state_dir / "daemon.json"
    try:
        state = json.loads(state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (FileNotFoundError, ProcessLookupError, ValueError, KeyError, TypeError):
        return None
    except PermissionError:  # running as another user (systemd's acqflow)
        pass
    return dict(state)


def _pipeline_state(state: str) -> str:
    if state == "loaded":
        return "[green]loaded[/green]"
    if state == "not loaded yet":
        return state
    return f"[red]failed[/red]: {escape(state)}"


@app.command()
@handles_errors
def status(config: ConfigOption = None) -> None:
    """Daemon state, its pipelines (loaded or failed), arrivals, jobs per pipeline and exports."""
    settings = _settings(config)
    journal = _open_journal(settings)
    state = _running_state(settings)
    if state is None:
        console.print("daemon: [yellow]not running[/yellow]")
    else:
        ports = f"DICOM port {state.get('dicom_port')}, metrics port {state.get('metrics_port')}"
        console.print(f"daemon: [green]running[/green] (pid {state['pid']}, {ports})")
        pipelines = dict(state.get("pipelines") or {})
        width = max((len(name) for name in pipelines), default=0)
        console.print("pipelines:" if pipelines else "pipelines: none installed")
        for name, loaded in sorted(pipelines.items()):
            console.print(f"  {escape(name):{width}}  {_pipeline_state(str(loaded))}")
    arrivals = journal.query("SELECT kind, state, COUNT(*) n FROM arrivals GROUP BY 1, 2 ORDER BY 1, 2")
    table = Table("arrival kind", "state", "count", title="arrivals")
    for row in arrivals:
        table.add_row(row["kind"], row["state"], str(row["n"]))
    console.print(table)
    jobs = journal.query("SELECT pipeline, state, COUNT(*) n FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
    table = Table("pipeline", "state", "count", title="jobs")
    for row in jobs:
        table.add_row(row["pipeline"], row["state"], str(row["n"]))
    console.print(table)
    from daemon.cli_commands import held_lines

    for line in held_lines(journal):
        console.print(line, highlight=False)
    exports = journal.query("SELECT destination, state, COUNT(*) n FROM exports GROUP BY 1, 2 ORDER BY 1, 2")
    table = Table("destination", "state", "count", title="exports")
    for row in exports:
        table.add_row(row["destination"], row["state"], str(row["n"]))
    console.print(table)
    journal.close()


@app.command()
@handles_errors
def echo(
    destination: Annotated[
        str, typer.Argument(help="A destination name from the settings, or AE@host:port.")
    ],
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(min=0.1)] = 10.0,
) -> None:
    """C-ECHO a DICOM destination."""
    from daemon.config import ExportDestination
    from daemon.sinks.outbox import echo as c_echo

    settings = _settings(config)
    if "@" in destination:
        ae, _, address = destination.partition("@")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise _fail(f"expected AE@host:port, got {destination!r}")
        target = ExportDestination(name="adhoc", ae_title=ae, host=host, port=int(port))
    else:
        target = settings.destination(destination)
    status_code = c_echo(target, settings.dicom.ae_title, timeout)
    if status_code != 0:
        raise _fail(
            f"C-ECHO to {target.ae_title}@{target.host}:{target.port} returned status 0x{status_code:04X}", 1
        )
    console.print(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: success")


def main() -> None:
    from daemon import cli_commands, cli_demo  # register jobs, retry, reprocess, models, demo, report

    if len(sys.argv) > 1 and sys.argv[1] in ("train", "evaluate"):
        cli_commands.register_pipeline_commands()
    del cli_demo
    app()
