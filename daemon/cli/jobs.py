"""Commands that work through the journal: ``jobs``, ``exports``, ``retry`` and
``reprocess``.

``reprocess`` never runs a pipeline itself: it writes arrivals and jobs into the journal
and the running daemon (now or at its next start) picks them up, so the same command
works whether the daemon runs on this machine or not.
"""

from __future__ import annotations

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
    JsonOption,
    console,
    fail,
    handles_errors,
    iso_time,
    load_settings_for,
    open_journal,
    print_json,
    progress_bar,
    running_state,
    warn,
)
from acqflow.daemon.config import FolderSettings, Settings
from acqflow.daemon.errors import ConfigError, InputRejected
from acqflow.daemon.jobqueue import Job, JobQueue, RouteDecision
from acqflow.daemon.journal import Arrival, ExportState, JobState, Journal
from acqflow.daemon.redaction import scrub

log = logging.getLogger(__name__)


SERIES_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def job_json(job: Job, arrival: Arrival) -> dict[str, Any]:
    """One job for ``--json`` output: always the same keys; patient values scrubbed."""
    return {
        "id": job.id,
        "pipeline": job.pipeline,
        "state": job.state.value,
        "attempts": job.attempts,
        "interrupted": job.interrupted,
        "hold_reason": job.hold_reason,
        "arrival": job.arrival_id,
        "input": scrub(str(arrival.path)),
        "input_kind": arrival.kind,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "error": scrub(job.error) if job.error else None,
    }


@handles_errors
def jobs(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="pending, queued, running, held, done, dead or superseded.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 30,
    as_json: JsonOption = False,
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
        print_json([job_json(j, journal.arrival(j.arrival_id)) for j in rows])
        journal.close()
        return
    table = Table("job", "pipeline", "state", "tries", "input", title="jobs")
    for column in table.columns[:4]:
        column.no_wrap = True
    table.columns[4].overflow = "fold"  # a name longer than the terminal breaks, never cut
    errors: list[str] = []
    for job in rows:
        arrival = journal.arrival(job.arrival_id)
        state_text = f"{job.state.value} ({job.hold_reason})" if job.hold_reason else job.state.value
        table.add_row(
            str(job.id),
            job.pipeline,
            state_text,
            str(job.attempts) + (f" +{job.interrupted} cut off" if job.interrupted else ""),
            escape(scrub(arrival.path.name)),
        )
        if job.error:
            errors.append(f"job {job.id} ({job.state.value}): {escape(scrub(job.error))}")
    journal.close()
    console.print(table if rows else "no jobs")
    for line in errors:  # below the table: the terminal's width wraps them, nothing is cut
        console.print(line, highlight=False)


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
    as_json: JsonOption = False,
) -> None:
    """Put dead jobs and dead exports back in the queue with a fresh attempt count.

    Nothing dead to retry is not an error (exit 0), also before the daemon ever ran;
    ids that are not dead are skipped.
    """
    settings = load_settings_for(config)
    jobs_named = list(job_ids or [])
    exports_named = list(export_ids or [])
    if not (jobs_named or exports_named or all_dead):
        raise fail("name job ids, --export ids, or use --all-dead")
    try:
        journal = open_journal(settings)
    except ConfigError:
        if jobs_named or exports_named:
            raise
        # No journal: the daemon never ran with these settings, so nothing can be dead.
        message = f"nothing dead to retry (no journal yet at {settings.paths.journal})"
        _retried(as_json, [], [], [], [], message)
        return
    queue = JobQueue(journal)
    if all_dead:
        jobs_named += [j.id for j in queue.jobs(JobState.DEAD, limit=1_000_000)]
        exports_named += journal.dead_exports()
        if not (jobs_named or exports_named):
            journal.close()
            _retried(as_json, [], [], [], [], "nothing dead to retry")
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
    _retried(as_json, retried_jobs, retried_exports, skipped_jobs, skipped_exports, message)


def _retried(
    as_json: bool, jobs: list[int], exports: list[int], skipped_jobs: list[int],
    skipped_exports: list[int], message: str,
) -> None:
    """What ``retry`` did: one line, or JSON with the same keys every time."""
    if as_json:
        print_json({"jobs": jobs, "exports": exports, "skipped_jobs": skipped_jobs,
                    "skipped_exports": skipped_exports, "message": message})
    else:
        console.print(message, highlight=False, markup=False)


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
    source: Annotated[str | None, typer.Option(help="Where to fetch a series whose spool files were "
                                               "removed ([[sources.pacs]] name).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue inputs for processing again; the daemon runs them (now, or at its next start).
    A series whose spool files the retention removed is fetched again from the PACS first.

    With --wait and no daemon running, it says so at once (exit 1); the jobs stay queued.
    """
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
    unrouted: list[str] = []
    root = Path(target).expanduser().resolve()
    found_all = list(_arrivals_for_target(settings, journal, target))  # bad targets fail before the bar
    for found in found_all:
        if isinstance(found, Arrival) and found.kind == "dicom-series":
            _refetch_if_purged(settings, journal, found, source, timeout, as_json)
    with progress_bar(disable=as_json) as progress:
        task = progress.add_task("queueing", total=len(found_all))
        for found in found_all:
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
                    unrouted.append(found.path.name)
                job_ids += [queue.add_job(found.id, d) for d in decisions]
            progress.advance(task)
    for name in unrouted:  # after the bar: a warning never lands inside it
        warn(f"{scrub(name)}: no route matches")
    message = f"queued {len(job_ids)} job(s) and {len(new_arrivals)} new input(s)"
    if not as_json:
        console.print(message, highlight=False)
    dead: list[dict[str, Any]] = []
    if wait:
        if running_state(settings) is None:
            _report_queued(as_json, job_ids, new_arrivals, unrouted, message, dead)
            raise fail(_not_running(settings, len(job_ids) + len(new_arrivals)), 1)
        dead = _wait_for(settings, journal, (job_ids, new_arrivals), timeout, as_json)
    _report_queued(as_json, job_ids, new_arrivals, unrouted, message, dead)
    if dead:
        raise typer.Exit(1)


def _refetch_if_purged(settings: Settings, journal: Journal, arrival: Arrival, source: str | None,
                       timeout: float, quiet: bool) -> None:
    """Fetch a series back whose spool files were removed; fails naming what to set when
    there is no source."""
    from acqflow.daemon.fetching import Fetcher, missing_instances

    missing = missing_instances(journal, arrival)
    if not missing:
        return
    uid = arrival.attrs.get("series_uid", arrival.key)
    if not settings.sources.pacs:
        raise fail(f"series {uid}: {len(missing)} instance file(s) removed by the spool retention; "
                   "add the PACS under [[sources.pacs]] to fetch it again")
    fetcher = Fetcher(settings, journal, settings.source(source))
    if fetcher.method == "C-MOVE" and running_state(settings) is None:
        raise fail(f"series {uid}: its files were removed and C-MOVE sends to the daemon's SCP: "
                   "start the daemon first")
    report = fetcher.refetch(arrival, wait_seconds=min(timeout, settings.sources.retrieve_timeout_seconds))
    if not quiet:
        console.print(f"series {uid}: fetched again from {report.source} by {report.method}",
                      highlight=False, markup=False, soft_wrap=True)


def _not_running(settings: Settings, count: int, what: str = "queued item(s)") -> str:
    return (
        f"--wait: no daemon runs with these settings (no live daemon.json in {settings.paths.state_dir});"
        f" the {count} {what} stay queued and run at its next start (acqflow serve)"
    )


def _report_queued(
    as_json: bool, job_ids: list[int], arrival_ids: list[int], unrouted: list[str], message: str,
    dead: list[dict[str, Any]],
) -> None:
    """``reprocess --json``: the jobs and new inputs queued, those no route took, dead ones."""
    if as_json:
        print_json({"jobs": job_ids, "new_inputs": arrival_ids, "unrouted": [scrub(n) for n in unrouted],
                    "dead": dead, "message": message})
    else:
        for row in dead:
            console.print(f"[red]job {row['id']} dead:[/red] {escape(row['error'])}", highlight=False)


def _job_ids(journal: Journal, job_ids: list[int], arrival_ids: list[int]) -> set[int]:
    """The named jobs and those the router made for the new inputs so far."""
    ids = set(job_ids)
    if arrival_ids:
        marks = ",".join("?" for _ in arrival_ids)
        ids |= {
            r["id"] for r in journal.query(f"SELECT id FROM jobs WHERE arrival_id IN ({marks})", arrival_ids)
        }
    return ids


def _wait_for(
    settings: Settings, journal: Journal, queued: tuple[list[int], list[int]], timeout: float, quiet: bool
) -> list[dict[str, Any]]:
    """Wait until every job is finished; returns the dead ones (id, scrubbed error).

    ``queued``: the job ids and the new arrival ids. Fails (exit 1) on the timeout, or
    at once when the daemon stops meanwhile; ``quiet``: no progress bar.
    """
    job_ids, arrival_ids = queued
    deadline = time.monotonic() + timeout
    problem: str | None = None
    with progress_bar(disable=quiet) as progress:
        task = progress.add_task("processing", total=None)
        while True:
            ids = _job_ids(journal, job_ids, arrival_ids)
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
                problem = f"timed out after {timeout:g} s with {len(ids) - finished} job(s) unfinished"
                break
            if running_state(settings) is None:
                problem = _not_running(settings, len(ids) - finished, "unfinished job(s)")
                break
            time.sleep(0.5)
    if problem is not None:  # the bar has stopped: the error is a line of its own
        raise fail(problem, 1)
    dead = journal.query(
        "SELECT id, error FROM jobs WHERE state='dead' AND id IN ({})".format(
            ",".join("?" for _ in ids) or "NULL"
        ),
        list(ids),
    )
    return [{"id": row["id"], "error": scrub(row["error"] or "")} for row in dead]
