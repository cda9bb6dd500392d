"""Workers: route ready arrivals, claim jobs, run pipelines, write results.

One dispatcher thread routes READY arrivals and claims due jobs into a bounded queue
(back-pressure: it claims only as many as there is room for; a claimed job is
``queued``, and ``running`` only once a worker starts it); ``count`` worker threads take
jobs from it. A run that raises is retried with exponential backoff up to
``max_attempts`` runs, then parked as dead with its error and its input quarantined.
Input that can never work (unreadable, wrong kind) is dead at once, without retries.

Resource conditions are not failures of the job: a full or read-only disk holds the job
(no attempt, no quarantine) until :class:`acqflow.daemon.resources.DiskWatch` sees the condition
clear, and a GPU out of memory is retried at once with a smaller batch
(:class:`acqflow.plugins.api.RunHints`), then on the CPU when ``gpu_oom_cpu_fallback`` allows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from acqflow.daemon import metrics, redaction
from acqflow.daemon.config import WorkerSettings
from acqflow.daemon.errors import InputRejected, PipelineLoadError
from acqflow.daemon.execution import Computed, Executor, ExecutorUnavailable, LocalExecutor, RunResources
from acqflow.daemon.fileio import quarantine, quarantine_files
from acqflow.daemon.gpu import job_memory_peak
from acqflow.daemon.health import Heartbeat
from acqflow.daemon.jobqueue import Job, JobQueue
from acqflow.daemon.journal import Arrival, ArrivalState, JobState, Journal
from acqflow.daemon.logs import log_context
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.resources import ResourceCondition, resource_condition
from acqflow.daemon.router import Router
from acqflow.daemon.sinks.results import ResultSink
from acqflow.plugins.api import ImageItem, InvalidInputError, SeriesItem, Summarizer

__all__ = ["JobRunner", "RunResources", "WorkerPool"]

log = logging.getLogger(__name__)

Loader = Callable[[Arrival], ImageItem | SeriesItem]


@dataclass(frozen=True)
class JobRunner:
    """Runs one claimed job to a journal outcome; shared by the pool and the CLI.

    The pipeline runs on ``executor`` (None: the local executor over ``registry`` and
    ``loader``, in the calling thread); the result is written here, by the daemon's sinks,
    whichever executor computed it.
    """

    journal: Journal
    jobs: JobQueue
    registry: PipelineRegistry
    sink: ResultSink
    loader: Loader
    settings: WorkerSettings
    quarantine_dir: Path
    on_exports: Callable[[], None] = lambda: None
    resources: RunResources = field(default_factory=RunResources)
    executor: Executor | None = None

    @property
    def active_executor(self) -> Executor:
        if self.executor is not None:
            return self.executor
        return LocalExecutor(self.registry, self.loader, self.settings, self.resources)

    def run(self, job: Job) -> JobState:
        """Start and run ``job``; returns the state it ended in. Never raises for job
        failures; a job no longer queued (superseded, given back) is not run."""
        if job.state is JobState.QUEUED:
            started_job = self.jobs.start(job)
            if started_job is None:
                current = self.jobs.job(job.id)
                return current.state if current is not None else JobState.DEAD
            job = started_job
        started = time.monotonic()
        redaction.remember(None)
        arrival = self.journal.arrival(job.arrival_id)
        if arrival.generation != job.generation:
            self.jobs.fail(job, "superseded by a newer generation of the input", None, attempt=False)
            return JobState.DEAD
        try:
            computed = self.active_executor.compute(job, arrival)
            outputs, records = self.sink.write(computed.pipeline, arrival, computed.result, job.export)
            export_ids = self.jobs.complete(job, outputs, records)
        except ExecutorUnavailable as exc:
            self.jobs.requeue([job.id])
            log.warning("job %d (%s) given back, it runs once the executor is back: %s", job.id,
                        job.pipeline, exc)
            return JobState.PENDING
        except (InputRejected, InvalidInputError) as exc:
            self._reject(job, arrival, str(exc))
            return JobState.DEAD
        except PipelineLoadError as exc:
            return self._failed(job, arrival, str(exc))
        except Exception as exc:  # the worker boundary: any pipeline error fails the job
            condition = resource_condition(exc)
            if condition is not None:
                return self._hold(job, condition, f"{type(exc).__name__}: {exc}")
            log.exception("job %d (%s) failed on arrival %d", job.id, job.pipeline, arrival.id)
            return self._failed(job, arrival, f"{type(exc).__name__}: {exc}")
        if export_ids is None:
            log.warning("job %d (%s) ended after it was given back: not recorded, it runs again",
                        job.id, job.pipeline)
            return JobState.PENDING
        self._done(job, computed, started, records_groups=[(r.kind, r.group) for r in records])
        if export_ids:
            self.on_exports()
        return JobState.DONE

    def _done(
        self, job: Job, computed: Computed, started: float, records_groups: list[tuple[str, str]]
    ) -> None:
        elapsed = time.monotonic() - started
        metrics.JOBS.labels(job.pipeline, "done").inc()
        metrics.JOB_DURATION.labels(job.pipeline).observe(elapsed)
        metrics.ARRIVAL_TO_RESULT.labels(job.pipeline).observe(max(0.0, time.time() - job.created_at))
        log.info("job %d (%s) done in %.2f s: %s", job.id, job.pipeline, elapsed, computed.result.summary,
                 extra={"outcome": "done"})
        if computed.summarizer is not None:
            self._summarize(computed, records_groups)

    def _hold(self, job: Job, condition: ResourceCondition, error: str) -> JobState:
        """A full or read-only disk: the job waits, not an attempt, nothing quarantined."""
        if self.resources.disks is not None:
            self.resources.disks.note_failure(condition)
        self.jobs.hold(job, condition.value, error)
        metrics.JOBS.labels(job.pipeline, "held").inc()
        log.warning("job %d (%s) held (%s), resumes when space returns: %s", job.id, job.pipeline,
                    condition.value, error)
        return JobState.HELD

    def _summarize(self, computed: Computed, records_groups: list[tuple[str, str]]) -> None:
        summarizer: Summarizer | None = computed.summarizer
        name = computed.pipeline.name
        for kind, group in sorted(set(records_groups)):
            try:
                rows = self.jobs.records(name, kind, group)
                assert summarizer is not None
                summary = summarizer.summarize(group, rows)
                self.sink.write_summary(computed.pipeline, group, summary)
            except Exception:  # a summary failure must not fail the job that succeeded
                log.exception("summary of %s group %s failed", name, group)
                metrics.JOBS.labels(name, "summary_failed").inc()

    def _reject(self, job: Job, arrival: Arrival, error: str) -> None:
        error = redaction.scrub(error)
        log.error("job %d (%s): input refused: %s", job.id, job.pipeline, error,
                  extra={"outcome": "rejected"})
        self.jobs.fail(job, error, None)
        self.journal.reject_arrival(arrival.id, error)
        metrics.JOBS.labels(job.pipeline, "rejected").inc()
        metrics.INPUT_ERRORS.labels(arrival.source, "unreadable").inc()
        self._quarantine(arrival, error)

    def _failed(self, job: Job, arrival: Arrival, error: str) -> JobState:
        error = redaction.scrub(error)
        attempts = job.attempts + 1  # this run ended in a failure
        if attempts >= self.settings.max_attempts:
            self.jobs.fail(job, error, None)
            metrics.JOBS.labels(job.pipeline, "dead").inc()
            log.error("job %d (%s) is dead after %d attempts: %s", job.id, job.pipeline, attempts, error,
                      extra={"outcome": "dead"})
            self._quarantine(arrival, error)
            return JobState.DEAD
        delay = min(
            self.settings.retry_max_seconds,
            self.settings.retry_initial_seconds * 2 ** (attempts - 1),
        )
        self.jobs.fail(job, error, time.time() + delay)
        metrics.JOBS.labels(job.pipeline, "retry").inc()
        log.warning(
            "job %d (%s) attempt %d failed, retry in %.0f s: %s",
            job.id,
            job.pipeline,
            attempts,
            delay,
            error,
            extra={"outcome": "retry"},
        )
        return JobState.PENDING

    def quarantine_parked(self, job: Job) -> None:
        """Quarantine the input of a job parked at start (its runs kept being cut off)."""
        arrival = self.journal.arrival(job.arrival_id)
        metrics.JOBS.labels(job.pipeline, "dead").inc()
        log.error("job %d (%s) parked: %s", job.id, job.pipeline, job.error)
        self._quarantine(arrival, job.error or "parked")

    def _quarantine(self, arrival: Arrival, error: str) -> None:
        if arrival.path.is_symlink():  # a followed link of a watched folder: never copy its target
            log.warning("arrival %d is a symbolic link: not copied to quarantine", arrival.id)
            return
        try:
            if arrival.kind == "dicom-series":  # its instances, not a folder: an import's may hold more
                files = [instance.path for instance in self.journal.instances(arrival.id)]
                entry = quarantine_files(files, arrival.path, self.quarantine_dir, error)
            else:
                entry = quarantine(arrival.path, self.quarantine_dir, error, keep_source=True)
        except OSError:
            log.exception("could not quarantine arrival %d (%s)", arrival.id, arrival.path)
            return
        metrics.QUARANTINED.labels(arrival.source).inc()
        log.info("arrival %d quarantined as %s", arrival.id, entry)


class WorkerPool:
    """The dispatcher thread plus ``threads`` worker threads (default ``settings.count``;
    with a Dask executor each thread waits for one job's result on the cluster)."""

    def __init__(self, runner: JobRunner, router: Router, threads: int | None = None) -> None:
        self._runner = runner
        self._router = router
        self._settings = runner.settings
        self._count = threads if threads is not None else self._settings.count
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=self._settings.queue_size)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, Job] = {}
        self._unrecorded: list[int] = []  # jobs whose hold could not be written (state disk full)
        self._lock = threading.Lock()
        # Progress marks for the systemd watchdog (acqflow.daemon.health): the dispatcher beats
        # every cycle; a worker is idle while it waits for a job, busy inside one.
        self.heartbeats = [Heartbeat("acqflow-dispatch")] + [
            Heartbeat(f"acqflow-worker-{index}") for index in range(self._count)
        ]

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._dispatch, name="acqflow-dispatch", daemon=True)]
        for index in range(self._count):
            self._threads.append(
                threading.Thread(target=self._work, args=(self.heartbeats[index + 1],),
                                 name=f"acqflow-worker-{index}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> list[int]:
        """Stop claiming; give queued jobs back at once and let running ones finish for
        ``timeout`` (default ``drain_seconds``). Jobs still running then go back to the
        queue too, without counting an attempt. Returns the ids of those still running
        (their threads are left behind: the caller ends the process)."""
        drain = self._settings.drain_seconds if timeout is None else timeout
        deadline = time.monotonic() + drain
        self._stopping.set()
        self._wake.set()
        self._threads[0].join(max(0.1, drain))
        waiting: list[int] = []
        while True:
            try:
                waiting.append(self._queue.get_nowait().id)
            except queue.Empty:
                break
        self._runner.jobs.requeue(waiting)
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            cut_off = sorted(self._running)
        if cut_off:
            self._runner.jobs.requeue(cut_off)
            log.warning(
                "jobs %s still running after the %.0f s drain: back in the queue, they run at the next start",
                cut_off,
                drain,
            )
        return cut_off

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

    def check_resources(self) -> None:
        """Measure the disks: hold pending jobs while a condition lasts, release held
        ones (and jobs whose hold could not be recorded) once it cleared."""
        disks = self._runner.resources.disks
        if disks is None:
            return
        jobs = self._runner.jobs
        condition = disks.check()
        if condition is None:
            with self._lock:
                stranded, self._unrecorded = self._unrecorded, []
            released = jobs.release_held() + jobs.requeue(stranded)
            if released:
                log.info("%d held job(s) back in the queue", released)
                self._wake.set()
        else:
            try:
                jobs.hold_pending(condition[0].value, condition[1])
            except Exception as exc:  # the journal's own disk is full: they stay pending, unclaimed
                if resource_condition(exc) is None:
                    raise
        counts = jobs.held_counts()
        for reason in ResourceCondition:
            metrics.JOBS_HELD.labels(reason.value).set(counts.get(reason.value, 0))

    def _note_resource(self, exc: Exception) -> bool:
        """True when ``exc`` is a resource condition: noted (work pauses until the disk
        check clears it) and logged once, not as a failure."""
        condition = resource_condition(exc)
        disks = self._runner.resources.disks
        if condition is None or disks is None:
            return False
        if disks.condition is None:
            log.warning("journal write failed (%s), work paused: %s", condition.value, exc)
        disks.note_failure(condition)
        return True

    def _claimable(self) -> bool:
        """Claim only while the disks have room and the executor can take jobs."""
        disks = self._runner.resources.disks
        return (disks is None or disks.condition is None) and self._runner.active_executor.ready()

    def running(self) -> list[int]:
        """Ids of the jobs the worker threads are inside now."""
        with self._lock:
            return sorted(self._running)

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            self.heartbeats[0].beat()
            try:
                if self._claimable():  # under a resource condition arrivals wait, ready
                    self.route_ready()
                    room = self._queue.maxsize - self._queue.qsize()
                    pipelines = self._runner.registry.available()
                    for job in self._runner.jobs.claim(pipelines, room):
                        self._queue.put(job)
            except Exception as exc:  # the dispatcher must survive a bad row or a busy database
                if not self._note_resource(exc):
                    log.exception("dispatcher cycle failed")
            self._wake.wait(self._settings.poll_seconds)
            self._wake.clear()

    def _work(self, heartbeat: Heartbeat) -> None:
        while not self._stopping.is_set():
            heartbeat.idle()
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            heartbeat.busy()
            if self._stopping.is_set():  # taken just as the stop began: give it back
                self._runner.jobs.requeue([job.id])
                return
            with self._lock:
                self._running[job.id] = job
            try:
                with (
                    log_context(job_id=job.id, arrival_id=job.arrival_id, pipeline=job.pipeline),
                    job_memory_peak(job.pipeline, lambda: self._runner.registry.device),
                ):
                    self._runner.run(job)
            except Exception as exc:  # journal errors: the job re-runs after a restart
                if self._note_resource(exc):
                    with self._lock:
                        self._unrecorded.append(job.id)
                else:
                    log.exception("job %d could not be recorded", job.id)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)
            self._wake.set()
