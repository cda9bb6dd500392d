"""Workers: route ready arrivals, claim jobs, run pipelines, write results.

One dispatcher thread routes READY arrivals and claims due jobs into a bounded queue
(back-pressure: it claims only as many as there is room for); ``count`` worker threads
take jobs from it. A job that raises is retried with exponential backoff up to
``max_attempts``, then parked as dead with its error and its input quarantined. Input
that can never work (unreadable, wrong kind) is dead at once, without retries.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon import metrics, redaction
from daemon.config import WorkerSettings
from daemon.errors import InputRejected, PipelineLoadError
from daemon.fileio import quarantine
from daemon.jobqueue import Job, JobQueue
from daemon.journal import Arrival, ArrivalState, JobState, Journal
from daemon.registry import PipelineRegistry
from daemon.router import Router
from daemon.sinks.results import ResultSink
from plugins.api import ImageItem, InputKind, InvalidInputError, Pipeline, SeriesItem, Summarizer

__all__ = ["JobRunner", "WorkerPool"]

log = logging.getLogger(__name__)

Loader = Callable[[Arrival], ImageItem | SeriesItem]


@dataclass(frozen=True)
class JobRunner:
    """Runs one claimed job to a journal outcome; shared by the pool and the CLI."""

    journal: Journal
    jobs: JobQueue
    registry: PipelineRegistry
    sink: ResultSink
    loader: Loader
    settings: WorkerSettings
    quarantine_dir: Path
    on_exports: Callable[[], None] = lambda: None

    def run(self, job: Job) -> JobState:
        """Run ``job``; returns the state it ended in. Never raises for job failures."""
        started = time.monotonic()
        redaction.remember(None)
        arrival = self.journal.arrival(job.arrival_id)
        if arrival.generation != job.generation:
            self.jobs.fail(job, "superseded by a newer generation of the input", None)
            return JobState.DEAD
        try:
            pipeline = self.registry.get(job.pipeline)
            item = self.loader(arrival)
            redaction.remember(item.datasets if isinstance(item, SeriesItem) else None)
            expected = ImageItem if pipeline.input_kind is InputKind.IMAGE else SeriesItem
            if not isinstance(item, expected):
                raise InvalidInputError(
                    f"pipeline {pipeline.name} takes {pipeline.input_kind.value}, got {arrival.kind}"
                )
            result = pipeline.run(item)
            outputs, records = self.sink.write(pipeline, arrival, result, job.export)
            export_ids = self.jobs.complete(job, outputs, records)
        except (InputRejected, InvalidInputError) as exc:
            self._reject(job, arrival, str(exc))
            return JobState.DEAD
        except PipelineLoadError as exc:
            return self._failed(job, arrival, str(exc))
        except Exception as exc:  # the worker boundary: any pipeline error fails the job
            log.exception("job %d (%s) failed on arrival %d", job.id, job.pipeline, arrival.id)
            return self._failed(job, arrival, f"{type(exc).__name__}: {exc}")
        elapsed = time.monotonic() - started
        metrics.JOBS.labels(job.pipeline, "done").inc()
        metrics.JOB_DURATION.labels(job.pipeline).observe(elapsed)
        metrics.ARRIVAL_TO_RESULT.labels(job.pipeline).observe(max(0.0, time.time() - job.created_at))
        log.info("job %d (%s) done in %.2f s: %s", job.id, job.pipeline, elapsed, result.summary)
        self._summarize(pipeline, records_groups=[(r.kind, r.group) for r in records])
        if export_ids:
            self.on_exports()
        return JobState.DONE

    def _summarize(self, pipeline: Pipeline, records_groups: list[tuple[str, str]]) -> None:
        if not isinstance(pipeline, Summarizer):
            return
        for kind, group in sorted(set(records_groups)):
            try:
                rows = self.jobs.records(pipeline.name, kind, group)
                summary = pipeline.summarize(group, rows)
                self.sink.write_summary(pipeline, group, summary)
            except Exception:  # a summary failure must not fail the job that succeeded
                log.exception("summary of %s group %s failed", pipeline.name, group)
                metrics.JOBS.labels(pipeline.name, "summary_failed").inc()

    def _reject(self, job: Job, arrival: Arrival, error: str) -> None:
        error = redaction.scrub(error)
        log.error("job %d (%s): input refused: %s", job.id, job.pipeline, error)
        self.jobs.fail(job, error, None)
        self.journal.reject_arrival(arrival.id, error)
        metrics.JOBS.labels(job.pipeline, "rejected").inc()
        metrics.INPUT_ERRORS.labels(arrival.source, "unreadable").inc()
        self._quarantine(arrival, error)

    def _failed(self, job: Job, arrival: Arrival, error: str) -> JobState:
        error = redaction.scrub(error)
        if job.attempts >= self.settings.max_attempts:
            self.jobs.fail(job, error, None)
            metrics.JOBS.labels(job.pipeline, "dead").inc()
            log.error("job %d (%s) is dead after %d attempts: %s", job.id, job.pipeline, job.attempts, error)
            self._quarantine(arrival, error)
            return JobState.DEAD
        delay = min(
            self.settings.retry_max_seconds,
            self.settings.retry_initial_seconds * 2 ** (job.attempts - 1),
        )
        self.jobs.fail(job, error, time.time() + delay)
        metrics.JOBS.labels(job.pipeline, "retry").inc()
        log.warning(
            "job %d (%s) attempt %d failed, retry in %.0f s: %s",
            job.id,
            job.pipeline,
            job.attempts,
            delay,
            error,
        )
        return JobState.PENDING

    def _quarantine(self, arrival: Arrival, error: str) -> None:
        try:
            entry = quarantine(arrival.path, self.quarantine_dir, error, keep_source=True)
        except OSError:
            log.exception("could not quarantine arrival %d (%s)", arrival.id, arrival.path)
            return
        metrics.QUARANTINED.labels(arrival.source).inc()
        log.info("arrival %d quarantined as %s", arrival.id, entry)


class WorkerPool:
    """The dispatcher thread plus ``settings.count`` worker threads."""

    def __init__(self, runner: JobRunner, router: Router) -> None:
        self._runner = runner
        self._router = router
        self._settings = runner.settings
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self._settings.queue_size)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._dispatch, name="acqflow-dispatch", daemon=True)]
        for index in range(self._settings.count):
            self._threads.append(
                threading.Thread(target=self._work, name=f"acqflow-worker-{index}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop claiming, let queued and running jobs finish (drain), then join."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        self._threads[0].join(timeout)
        for _ in self._threads[1:]:
            self._queue.put(None)
        for thread in self._threads[1:]:
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("workers still busy at shutdown: %s (their jobs re-run at next start)", alive)

    def route_ready(self) -> int:
        """Route every READY arrival; returns how many jobs were created.

        Arrivals are counted where they become complete (watcher, series assembler).
        """
        created = 0
        for arrival in self._runner.journal.arrivals_in_state(ArrivalState.READY):
            decisions = self._router.decide(arrival)
            created += len(self._runner.jobs.route(arrival.id, arrival.generation, decisions))
            if not decisions:
                metrics.UNROUTED.labels(arrival.source, arrival.kind).inc()
                log.info("arrival %d (%s) matched no route", arrival.id, arrival.kind)
        return created

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            try:
                self.route_ready()
                room = self._queue.maxsize - self._queue.qsize()
                pipelines = self._runner.registry.available()
                for job in self._runner.jobs.claim(pipelines, room):
                    self._queue.put(job)
            except Exception:  # the dispatcher must survive a bad row or a busy database
                log.exception("dispatcher cycle failed")
            self._wake.wait(self._settings.poll_seconds)
            self._wake.clear()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._in_flight += 1
            try:
                self._runner.run(job)
            except Exception:  # journal errors: the job stays running and re-runs after restart
                log.exception("job %d could not be recorded", job.id)
            finally:
                with self._lock:
                    self._in_flight -= 1
            self._wake.set()
