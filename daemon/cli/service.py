"""``serve``, ``status`` and ``echo``: the daemon itself, its state, a DICOM peer."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon import redaction
from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
    open_journal,
    running_state,
)
from acqflow.daemon.journal import Journal


def held_lines(journal: Journal) -> list[str]:
    """Lines for ``acqflow status`` saying which work is held and why (none: no lines)."""
    rows = journal.query(
        "SELECT hold_reason, COUNT(*) n, MAX(id) latest FROM jobs WHERE state='held' GROUP BY 1 ORDER BY 1"
    )
    lines = []
    for row in rows:
        [latest] = journal.query("SELECT error FROM jobs WHERE id=?", (row["latest"],))
        lines.append(
            f"held: {row['n']} job(s), {row['hold_reason']}: {escape(str(latest['error'] or ''))}"
            " (they resume by themselves once space returns; nothing is quarantined)"
        )
    return lines


@handles_errors
def serve(
    config: ConfigOption = None,
    dicom_port: Annotated[int | None, typer.Option(help="Override dicom.port.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Override metrics.port.")] = None,
    device: Annotated[str | None, typer.Option(help="Override workers.device (auto, cpu, cuda).")] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    settings = load_settings_for(
        config, **{"dicom.port": dicom_port, "metrics.port": metrics_port, "workers.device": device}
    )
    from acqflow.daemon.logs import configure_logging
    from acqflow.daemon.preflight import check_referenced_files

    check_referenced_files(settings)
    configure_logging(settings.log_level, settings.log_format)
    redaction.install()  # no patient value in any log line, whichever logger writes it
    from acqflow.daemon.service import Daemon

    Daemon(settings).serve_forever()


def _pipeline_state(state: str) -> str:
    if state == "loaded":
        return "[green]loaded[/green]"
    if state == "not loaded yet":
        return state
    return f"[red]failed[/red]: {escape(state)}"


@handles_errors
def status(config: ConfigOption = None) -> None:
    """Daemon state, its pipelines (loaded or failed), arrivals, jobs per pipeline and exports."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    state = running_state(settings)
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
    for line in held_lines(journal):
        console.print(line, highlight=False)
    exports = journal.query("SELECT destination, state, COUNT(*) n FROM exports GROUP BY 1, 2 ORDER BY 1, 2")
    table = Table("destination", "state", "count", title="exports")
    for row in exports:
        table.add_row(row["destination"], row["state"], str(row["n"]))
    console.print(table)
    journal.close()


@handles_errors
def echo(
    destination: Annotated[
        str, typer.Argument(help="A destination name from the settings, or AE@host:port.")
    ],
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(min=0.1)] = 10.0,
) -> None:
    """C-ECHO a DICOM destination."""
    from acqflow.daemon.config import ExportDestination
    from acqflow.daemon.sinks.outbox import echo as c_echo

    settings = load_settings_for(config)
    if "@" in destination:
        ae, _, address = destination.partition("@")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise fail(f"expected AE@host:port, got {destination!r}")
        target = ExportDestination(name="adhoc", ae_title=ae, host=host, port=int(port))
    else:
        target = settings.destination(destination)
    status_code = c_echo(target, settings.dicom.ae_title, timeout)
    if status_code != 0:
        raise fail(
            f"C-ECHO to {target.ae_title}@{target.host}:{target.port} returned status 0x{status_code:04X}", 1
        )
    console.print(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: success")

