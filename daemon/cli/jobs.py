"""Commands that work through the journal: ``jobs``, ``exports``, ``retry`` and
``reprocess``.

``reprocess`` never runs a pipeline itself: it writes arrivals and jobs into the journal
and the running daemon (now or at its next start) picks them up, so the same command
works whether the daemon runs on this machine or not.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from acqflow.daemon.cli.base import (
    ConfigOption,
    console,
    fail,
    handles_errors,
    load_settings_for,
    open_journal,
    progress_bar,
)
from acqflow.daemon.config import FolderSettings, Settings
from acqflow.daemon.errors import InputRejected
from acqflow.daemon.jobqueue import JobQueue, RouteDecision
from acqflow.daemon.journal import Arrival, ExportState, JobState, Journal
from acqflow.daemon.redaction import scrub

log = logging.getLogger(__name__)


SERIES_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


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
def jobs(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="pending, queued, running, held, done, dead or superseded.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List recent jobs with their input and error."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    try:
        wanted = JobState(state) if state else None
    except ValueError:
        raise fail(f"--state must be one of {', '.join(s.value for s in JobState)}") from None
    rows = JobQueue(journal).jobs(wanted, limit)
    if as_json:
        fields = [
            {
                "id": j.id,
                "pipeline": j.pipeline,
                "state": j.state.value,
                "attempts": j.attempts,
                "interrupted": j.interrupted,
                "hold_reason": j.hold_reason,
                "arrival": j.arrival_id,
                "error": scrub(j.error) if j.error else None,
            }
            for j in rows
        ]
        console.print_json(json.dumps(fields))
        return
    table = Table("job", "pipeline", "state", "attempts", "input", "error", title="jobs")
    for job in rows:
        arrival = journal.arrival(job.arrival_id)
        state_text = f"{job.state.value} ({job.hold_reason})" if job.hold_reason else job.state.value
        table.add_row(
            str(job.id),
            job.pipeline,
            state_text,
            str(job.attempts) + (f" +{job.interrupted} cut off" if job.interrupted else ""),
            arrival.path.name,
            scrub(job.error or "")[:80],
        )
    console.print(table)
    journal.close()


@handles_errors
def exports(
    config: ConfigOption = None,
    state: Annotated[str | None, typer.Option(help="pending, done or dead.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 30,
) -> None:
    """List recent DICOM exports with their destination, attempts and error."""
    settings = load_settings_for(config)
    journal = open_journal(settings)
    try:
        wanted = ExportState(state).value if state else None
    except ValueError:
        raise fail(f"--state must be one of {', '.join(s.value for s in ExportState)}") from None
    rows = journal.query(
        "SELECT e.id, e.destination, e.state, e.attempts, e.error, o.job_id FROM exports e"
        " JOIN outputs o ON o.id = e.output_id WHERE ? IS NULL OR e.state = ? ORDER BY e.id DESC LIMIT ?",
        (wanted, wanted, limit),
    )
    table = Table("export", "destination", "state", "attempts", "job", "error", title="exports")
    for row in rows:
        table.add_row(
            str(row["id"]), row["destination"], row["state"], str(row["attempts"]), str(row["job_id"]),
            escape(str(row["error"] or "")[:300]),  # rich wraps it in the cell
        )
    console.print(table)
    journal.close()


@handles_errors
def retry(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Dead job ids to run again.")] = None,
    export_ids: Annotated[
        list[int] | None, typer.Option("--export", help="A dead export id to send again (repeatable).")
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead job and every dead export.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Put dead jobs and dead exports back in the queue with a fresh attempt count.

    Nothing dead to retry is not an error (exit 0); ids that are not dead are skipped.
    """
    settings = load_settings_for(config)
    journal = open_journal(settings)
    queue = JobQueue(journal)
    jobs_named = list(job_ids or [])
    exports_named = list(export_ids or [])
    if not (jobs_named or exports_named or all_dead):
        raise fail("name job ids, --export ids, or use --all-dead")
    if all_dead:
        jobs_named += [j.id for j in queue.jobs(JobState.DEAD, limit=1_000_000)]
        exports_named += journal.dead_exports()
        if not (jobs_named or exports_named):
            console.print("nothing dead to retry")
            journal.close()
            return
    retried_jobs = [i for i in dict.fromkeys(jobs_named) if queue.retry(i)]
    retried_exports = [i for i in dict.fromkeys(exports_named) if journal.retry_export(i)]
    journal.close()
    skipped_jobs = sorted(set(jobs_named) - set(retried_jobs))
    skipped_exports = sorted(set(exports_named) - set(retried_exports))
    message = f"{len(retried_jobs)} job(s) and {len(retried_exports)} export(s) queued again"
    if skipped_jobs:
        message += f"; jobs not dead, skipped: {skipped_jobs}"
    if skipped_exports:
        message += f"; exports not dead, skipped: {skipped_exports}"
    console.print(message)


def _folder_for(settings: Settings, path: Path) -> FolderSettings:
    """The watched folder that contains ``path``, or a default one rooted at its parent."""
    for folder in settings.folders:
        try:
            path.relative_to(folder.path)
        except ValueError:
            continue
        return folder
    return FolderSettings(path=path.parent)


def _file_inputs(settings: Settings, path: Path, root: Path) -> list[Any]:
    """The inputs (ImageInput: key and attributes) of a file new to the journal, as the
    watcher would record them: one per image of a multi-image OME-TIFF."""
    from acqflow.daemon.folders.image_inputs import image_inputs
    from acqflow.daemon.imageio import read_tiff_header

    folder = _folder_for(settings, path)
    stat = path.stat()
    try:
        header = read_tiff_header(path)
    except (OSError, InputRejected):
        header = None  # the worker reports unreadable files; here only the metadata is missing
    relative = path.relative_to(folder.path) if path.is_relative_to(folder.path) else path.relative_to(root)
    attrs = {
        "fingerprint": [stat.st_size, stat.st_mtime_ns],
        "relative_path": relative.as_posix(),
        "folder": str(folder.path),
    }
    return image_inputs(f"file:{path}", path, folder, header, attrs)


def _known_file(journal: Journal, path: Path) -> list[Arrival]:
    """The arrivals of a file already in the journal: one per image it was split into."""
    from acqflow.daemon.folders.image_inputs import SERIES_MARK

    key = f"file:{path}"
    rows = journal.query(
        "SELECT * FROM arrivals WHERE key = ? OR substr(key, 1, ?) = ? ORDER BY id",
        (key, len(key) + len(SERIES_MARK), key + SERIES_MARK),
    )
    return [Arrival.from_row(row) for row in rows]


def _arrivals_for_target(settings: Settings, journal: Journal, target: str) -> Iterable[Arrival | Path]:
    """Existing arrivals for ``target``, or file paths that are new to the journal."""
    if target.startswith("job:") or target.isdigit():
        job = JobQueue(journal).job(int(target.removeprefix("job:")))
        if job is None:
            raise fail(f"no job {target}")
        yield journal.arrival(job.arrival_id)
        return
    path = Path(target).expanduser()
    if path.is_file():
        files = _known_file(journal, path.resolve())
        yield from files if files else [path.resolve()]
        return
    if path.is_dir():
        include = (
            [p.lower() for p in settings.folders[0].include] if settings.folders else ["*.tif", "*.tiff"]
        )
        for file in sorted(path.resolve().rglob("*")):
            if (
                file.is_file()
                and not file.name.startswith(".")
                and any(file.name.lower().endswith(g.lstrip("*")) for g in include)
            ):
                arrivals = _known_file(journal, file)
                yield from arrivals if arrivals else [file]
        return
    if SERIES_UID.match(target):
        known = journal.arrival_by_key(f"series:{target}")
        if known is None:
            raise fail(f"no series {target} in the journal")
        yield known
        return
    raise fail(f"{target!r} is not a file, folder, series UID or job id")


@handles_errors
def reprocess(
    target: Annotated[str, typer.Argument(help="A file, a folder, a series UID, or a job id (N or job:N).")],
    config: ConfigOption = None,
    pipeline: Annotated[
        str | None, typer.Option(help="Run this pipeline instead of the routed ones.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the daemon to finish the jobs, with a progress bar.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 3600.0,
) -> None:
    """Queue inputs for processing again; the daemon runs them."""
    from acqflow.daemon.registry import PipelineRegistry
    from acqflow.daemon.router import Router

    settings = load_settings_for(config)
    journal = open_journal(settings)
    queue = JobQueue(journal)
    registry = PipelineRegistry(settings.pipelines, "cpu")
    registry.discover()
    router = Router(settings.routes, registry.available)
    job_ids: list[int] = []
    new_arrivals: list[int] = []
    root = Path(target).expanduser().resolve()
    with progress_bar() as progress:
        task = progress.add_task("queueing", total=None)
        for found in _arrivals_for_target(settings, journal, target):
            if isinstance(found, Path):
                for one in _file_inputs(settings, found, root if root.is_dir() else found.parent):
                    arrival = journal.record_file_arrival("cli", one.key, found, one.attrs)
                    if arrival is None:
                        continue
                    new_arrivals.append(arrival.id)
                    if pipeline:
                        job_ids += queue.route(
                            arrival.id, arrival.generation, [RouteDecision(pipeline, "cli")]
                        )
            else:
                decisions = [RouteDecision(pipeline, "cli")] if pipeline else router.decide(found)
                if not decisions:
                    console.print(f"[yellow]{found.path.name}: no route matches[/yellow]")
                job_ids += [queue.add_job(found.id, d) for d in decisions]
            progress.advance(task)
        progress.update(task, total=progress.tasks[0].completed)
    console.print(f"queued {len(job_ids)} job(s) and {len(new_arrivals)} new input(s)")
    if wait:
        _wait_for(journal, job_ids, new_arrivals, timeout)


def _wait_for(journal: Journal, job_ids: list[int], arrival_ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with progress_bar() as progress:
        task = progress.add_task("processing", total=None)
        while True:
            ids = set(job_ids)
            if arrival_ids:
                marks = ",".join("?" for _ in arrival_ids)
                ids |= {
                    r["id"]
                    for r in journal.query(f"SELECT id FROM jobs WHERE arrival_id IN ({marks})", arrival_ids)
                }
            marks = ",".join("?" for _ in ids) or "NULL"
            rows = journal.query(f"SELECT state FROM jobs WHERE id IN ({marks})", list(ids))
            finished = sum(1 for r in rows if r["state"] in ("done", "dead", "superseded"))
            progress.update(task, total=max(len(ids), 1), completed=finished)
            unrouted = journal.query(
                "SELECT COUNT(*) n FROM arrivals WHERE id IN ({}) AND state='ready'".format(
                    ",".join("?" for _ in arrival_ids) or "NULL"
                ),
                arrival_ids,
            )[0]["n"]
            if finished == len(ids) and not unrouted:
                break
            if time.monotonic() > deadline:
                raise fail(
                    f"timed out with {len(ids) - finished} job(s) unfinished (is the daemon running?)", 1
                )
            time.sleep(0.5)
    dead = journal.query(
        "SELECT id, error FROM jobs WHERE state='dead' AND id IN ({})".format(
            ",".join("?" for _ in job_ids) or "NULL"
        ),
        job_ids,
    )
    for row in dead:
        console.print(f"[red]job {row['id']} dead:[/red] {scrub(row['error'] or '')}")
    if dead:
        raise typer.Exit(1)

