"""``serve``, ``status`` and ``echo``: the daemon itself, its state, a DICOM peer."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon import redaction
from acqflow.daemon.cli.base import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
    open_journal,
    print_json,
    running_state,
)
from acqflow.daemon.journal import Journal
from acqflow.daemon.redaction import scrub


def _held(journal: Journal) -> list[dict[str, Any]]:
    """Held work per reason: how many jobs, the latest one's error (scrubbed)."""
    rows = journal.query(
        "SELECT hold_reason, COUNT(*) n, MAX(id) latest FROM jobs WHERE state='held' GROUP BY 1 ORDER BY 1"
    )
    held = []
    for row in rows:
        [latest] = journal.query("SELECT error FROM jobs WHERE id=?", (row["latest"],))
        error = scrub(str(latest["error"] or ""))
        held.append({"reason": row["hold_reason"], "count": row["n"], "error": error})
    return held


def held_lines(journal: Journal) -> list[str]:
    """Lines for ``acqflow status`` saying which work is held and why (none: no lines)."""
    return [
        f"held: {h['count']} job(s), {h['reason']}: {escape(h['error'])}"
        " (they resume by themselves once space returns; nothing is quarantined)"
        for h in _held(journal)
    ]


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


def _counts(journal: Journal, table: str, column: str) -> list[dict[str, Any]]:
    """``column``, state and count of the rows of ``table`` (a fixed name of ours)."""
    rows = journal.query(f"SELECT {column} name, state, COUNT(*) n FROM {table} GROUP BY 1, 2 ORDER BY 1, 2")
    return [{column: row["name"], "state": row["state"], "count": row["n"]} for row in rows]


def status_json(state: dict[str, Any] | None, journal: Journal) -> dict[str, Any]:
    """``status --json``: the same keys whether the daemon runs or not."""
    daemon: dict[str, Any] = {
        "running": state is not None, "pid": None, "dicom_port": None, "metrics_port": None, "pipelines": {},
        "executor": None,
    }
    if state is not None:
        daemon.update(pid=state.get("pid"), dicom_port=state.get("dicom_port"),
                      metrics_port=state.get("metrics_port"),
                      pipelines={str(k): str(v) for k, v in dict(state.get("pipelines") or {}).items()},
                      executor=state.get("executor"))
    return {
        "daemon": daemon,
        "arrivals": _counts(journal, "arrivals", "kind"),
        "jobs": _counts(journal, "jobs", "pipeline"),
        "held": _held(journal),
        "exports": _counts(journal, "exports", "destination"),
    }


def executor_lines(executor: dict[str, Any] | None) -> list[str]:
    """Where jobs run: ``executor: local (2 worker threads)``, or the Dask scheduler and
    each worker with the journal ids of the jobs it runs."""
    if not executor:
        return []
    kind = str(executor.get("kind"))
    if kind == "local":
        return [f"executor: local ({escape(str(executor.get('detail', '')))})"]
    state = "[green]connected[/green]" if executor.get("connected") else "[red]not connected[/red]"
    lines = [f"executor: dask at {escape(str(executor.get('address')))}, {state}"
             f" ({escape(str(executor.get('detail', '')))})"]
    for worker in executor.get("workers") or []:
        jobs = ", ".join(str(j) for j in worker.get("jobs") or []) or "idle"
        held = dict(worker.get("resources") or {})
        resources = "".join(f", {escape(str(k))}={v:g}" for k, v in held.items())
        lines.append(f"  {escape(str(worker.get('name')))} {escape(str(worker.get('address')))}"
                     f" ({worker.get('threads')} thread(s){resources}): jobs {jobs}")
    return lines


def _counts_table(title: str, column: str, rows: list[dict[str, Any]], key: str) -> Table:
    table = Table(column, "state", "count", title=title)
    for row in rows:
        table.add_row(escape(str(row[key])), row["state"], str(row["count"]))
    return table


@handles_errors
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Daemon state, its pipelines (loaded or failed), arrivals, jobs per pipeline and exports."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    state = running_state(settings)
    report = status_json(state, journal)
    held = held_lines(journal)
    journal.close()
    if as_json:
        print_json(report)
        return
    if state is None:
        console.print("daemon: [yellow]not running[/yellow]")
    else:
        ports = f"DICOM port {state.get('dicom_port')}, metrics port {state.get('metrics_port')}"
        console.print(f"daemon: [green]running[/green] (pid {state['pid']}, {ports})")
        pipelines = report["daemon"]["pipelines"]
        width = max((len(name) for name in pipelines), default=0)
        console.print("pipelines:" if pipelines else "pipelines: none installed")
        for name, loaded in sorted(pipelines.items()):
            console.print(f"  {escape(name):{width}}  {_pipeline_state(str(loaded))}")
        for line in executor_lines(report["daemon"]["executor"]):
            console.print(line, highlight=False)
    console.print(_counts_table("arrivals", "arrival kind", report["arrivals"], "kind"))
    console.print(_counts_table("jobs", "pipeline", report["jobs"], "pipeline"))
    for line in held:
        console.print(line, highlight=False)
    console.print(_counts_table("exports", "destination", report["exports"], "destination"))


@handles_errors
def echo(
    destination: Annotated[
        str, typer.Argument(help="A destination name from the settings, or AE@host:port.")
    ],
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(min=0.1)] = 10.0,
) -> None:
    """C-ECHO a DICOM destination (a QIDO-RS search for a DICOMweb one)."""
    from acqflow.daemon.config import DicomWebDestination, ExportDestination
    from acqflow.daemon.sinks.outbox import echo as c_echo

    settings = load_settings_for(config)
    if "@" in destination:
        ae, _, address = destination.partition("@")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise fail(f"expected AE@host:port, got {destination!r}")
        target: ExportDestination | DicomWebDestination = ExportDestination(
            name="adhoc", ae_title=ae, host=host, port=int(port))
    else:
        target = settings.destination(destination)
    if isinstance(target, DicomWebDestination):
        from acqflow.daemon.sinks.dicomweb import StowClient

        http = StowClient(target, timeout).echo()
        console.print(f"QIDO-RS {target.url}: HTTP {http}", highlight=False, markup=False, soft_wrap=True)
        return
    status_code = c_echo(target, settings.dicom.ae_title, timeout)
    if status_code != 0:
        raise fail(
            f"C-ECHO to {target.ae_title}@{target.host}:{target.port} returned status 0x{status_code:04X}", 1
        )
    console.print(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: success")

