"""The daemon: wires sources, journal, router, workers, sinks, scheduler and metrics.

Start order: referenced files → umask and state folders → journal (and crash recovery)
→ ``daemon.json`` (a first, pid-less "starting" copy) → pipelines → workers, outbox,
series assembler → metrics (with ``/healthz``, ``/readyz``) → scheduler → sources (DICOM
receiver, folder watchers) last → ``daemon.json`` → watchdog → model preload → READY=1.
Any failure on the way stops what had started and raises StartupError, so nothing is
acknowledged by a daemon whose scheduler or workers are not running. Shutdown (SIGTERM)
runs the other way: sources stop first so nothing new is acknowledged, then in-flight
jobs drain, then the journal is closed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

from acqflow.daemon import metrics
from acqflow.daemon.config import Settings
from acqflow.daemon.dicom.scp import DicomReceiver
from acqflow.daemon.errors import BindError, ConfigError, StartupError
from acqflow.daemon.execution import Executor
from acqflow.daemon.execution.startup import start_executor
from acqflow.daemon.fileio import write_atomic
from acqflow.daemon.folders.watcher import FolderWatcher
from acqflow.daemon.gpu import GpuSampler, record_pipeline_devices
from acqflow.daemon.health import Heartbeat, Readiness, Watchdog, WatchdogRules, watchdog_interval
from acqflow.daemon.jobqueue import Job, JobQueue
from acqflow.daemon.journal import Arrival, JobState, Journal
from acqflow.daemon.preflight import check_referenced_files
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.resources import DiskPath, DiskWatch
from acqflow.daemon.router import Router
from acqflow.daemon.scheduler import Housekeeping
from acqflow.daemon.series import SeriesAssembler
from acqflow.daemon.sinks.outbox import ExportOutbox
from acqflow.daemon.sinks.results import ResultSink
from acqflow.daemon.workers import JobRunner, RunResources, WorkerPool
from acqflow.plugins.api import ImageItem, SeriesItem

__all__ = ["Daemon", "load_item"]


class _Component(Protocol):
    def stop(self) -> object: ...

log = logging.getLogger(__name__)


def load_item(journal: Journal, arrival: Arrival) -> ImageItem | SeriesItem:
    """Read an arrival's input from disk. Raises InputRejected for unreadable input."""
    if arrival.kind == "dicom-series":
        from acqflow.daemon.dicom.part10 import read_series

        return read_series(journal, arrival)
    from acqflow.daemon.imageio import read_image

    return read_image(arrival)


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` lies strictly below ``root``."""
    return path != root and path.is_relative_to(root)


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness, status, keep-alives and stopping;
    a no-op outside systemd. A socket that cannot be reached is logged, not raised."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


def _watching(watcher: FolderWatcher) -> Callable[[], str | None]:
    return lambda: None if watcher.watching else "not watching"


class Daemon:
    """One acqflow process. ``start`` returns once every component is up."""

    def __init__(self, settings: Settings, registry: PipelineRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or PipelineRegistry(settings.pipelines, settings.workers.device)
        self.journal: Journal | None = None
        self._components: list[tuple[str, _Component]] = []
        self._stop_requested = threading.Event()
        self._stopped = False
        self._left_running: list[int] = []  # jobs still in their pipeline after the drain
        self._parked: list[Job] = []  # jobs that ended the process too often: quarantined at start
        self._state_lock = threading.Lock()
        self._started_at = 0.0
        self.dicom_port: int | None = None
        self.stow_port: int | None = None
        self.web_port: int | None = None
        self.metrics_port: int | None = None
        self._step = "starting"  # what start() is doing: named by a start-up error
        self._receiver: DicomReceiver | None = None
        self._folders: list[FolderWatcher] = []
        self._preload_beat = Heartbeat("acqflow-preload")
        self._preload_beat.idle()
        self._housekeeping_beat = Heartbeat("acqflow-housekeeping")
        self._gpu = GpuSampler()
        self._loading: str | None = None  # the STATUS= line while models preload
        self._executor: Executor | None = None  # None: local worker threads

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start every component, the sources last, so nothing is acknowledged before
        the rest runs. Raises StartupError (one line naming the step) or ConfigError
        after stopping whatever had started."""
        try:
            self._start()
        except (KeyboardInterrupt, SystemExit):
            self._abort_start()
            raise
        except Exception as exc:
            step = self._step
            self._abort_start()
            if isinstance(exc, (ConfigError, BindError)):  # they name the setting already
                raise
            raise StartupError(f"start-up failed while {step}: {exc}") from exc

    def _abort_start(self) -> None:
        try:
            self.stop()
        except Exception as exc:  # noqa: BLE001  # the start-up error is the one to report
            log.warning("stopping after the failed start: %s: %s", type(exc).__name__, exc)

    def _start(self) -> None:
        s = self.settings
        self._started_at = time.time()
        self._step = "checking the files the settings name"
        check_referenced_files(s)
        journal, jobs = self._open_state()
        self._step = "discovering pipelines"
        if not self.registry.names():
            self.registry.discover()
        for name in self.registry.names():
            metrics.PIPELINE_UP.labels(name).set(1)
        outbox, assembler = self._start_workers(journal, jobs)
        self._step = "starting the metrics endpoint"
        if s.metrics.enabled:
            try:
                self.metrics_port = metrics.serve_metrics(
                    s.metrics.host, s.metrics.port, readiness=self.not_ready
                )
            except OSError as exc:
                raise BindError("metrics", s.metrics.host, s.metrics.port, exc) from exc
        self._start_housekeeping(assembler, outbox, jobs)
        self._start_sources(assembler)
        self._step = "writing the state file"
        self.registry.on_change = self._pipelines_changed
        self._write_state_file()
        self._start_watchdog()
        if s.pipelines.preload:
            self._start_preload()
        else:
            self._ready()
        log.info("acqflow started: %s", self.describe())

    def _open_state(self) -> tuple[Journal, JobQueue]:
        """umask, state folders, journal and crash recovery, a first ``daemon.json``."""
        s = self.settings
        self._step = "preparing the state folders"
        os.umask(s.paths.umask_bits)
        for folder in (s.paths.state_dir, s.paths.outputs_dir, s.paths.spool, s.paths.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        self._step = "opening the journal"
        journal = self.journal = Journal(s.paths.journal)
        jobs = self._jobs = JobQueue(journal)
        resumed, parked = jobs.reset_interrupted(s.workers.max_interrupted_runs)
        self._parked = parked
        orphans = journal.close_orphan_associations()
        if resumed or orphans:
            log.warning(
                "recovered after an unclean stop: %d jobs resumed, %d associations closed", resumed, orphans
            )
        self._step = "writing the state file"
        self._write_state_file(starting=True)  # proves the state folder writable before any listener
        return journal, jobs

    def _start_workers(self, journal: Journal, jobs: JobQueue) -> tuple[ExportOutbox, SeriesAssembler]:
        s = self.settings
        self._step = "starting the workers"
        outbox = ExportOutbox(s.export, journal, s.dicom.ae_title)
        self._outbox = outbox
        executor = self._start_executor(journal)
        runner = JobRunner(
            journal=journal,
            jobs=jobs,
            registry=self.registry,
            sink=ResultSink(s.paths.outputs_dir),
            loader=lambda arrival: load_item(journal, arrival),
            settings=s.workers,
            quarantine_dir=s.paths.quarantine,
            on_exports=self._send_exports_soon,
            resources=self._run_resources(),
            executor=executor,
        )
        threads = s.workers.dask.in_flight if executor is not None else s.workers.count
        pool = WorkerPool(runner, Router(s.routes, self.registry.available), threads=threads)
        for job in self._parked:
            runner.quarantine_parked(job)
        pool.start()
        self.pool = pool
        self._components.append(("workers", self.pool))
        return outbox, SeriesAssembler(journal, s.dicom.series_quiet_seconds, self.pool.wake)

    def _start_executor(self, journal: Journal) -> Executor | None:
        self._step = "connecting to the Dask cluster"
        self._executor = start_executor(self.settings, self.registry, journal)
        return self._executor

    def _ready(self) -> None:
        _sd_notify(f"READY=1\nSTATUS={self._status_line()}")
        log.info("acqflow ready")

    def _run_resources(self) -> RunResources:
        """The disk watch over the daemon's folders and the CPU fallback for a GPU out of memory."""
        paths = self.settings.paths
        folders = {
            DiskPath.STATE: paths.state_dir,
            DiskPath.SPOOL: paths.spool,
            DiskPath.OUTPUTS: paths.outputs_dir,
            DiskPath.OUTBOX: paths.outbox,
        }
        return RunResources(
            disks=DiskWatch(folders, self.settings.workers.min_free_bytes),
            cpu_pipeline=lambda name: self.registry.get_on_device(name, "cpu"),
        )

    def _start_preload(self) -> None:
        """Load the pipelines the routes name, in the background, in route order, then
        tell systemd READY=1.

        A model that cannot load is then reported at start (log, ``acqflow_pipeline_up``
        0, ``acqflow status``, ``/readyz``) rather than when the first arrival needs it,
        and the first arrival does not wait for the load. Sources take data meanwhile; a
        job that needs a pipeline still loading waits for it. Each load extends systemd's
        start timeout (``EXTEND_TIMEOUT_USEC``) by ``health.busy_seconds``.
        """
        names = list(dict.fromkeys(name for rule in self.settings.routes for name in rule.pipelines))
        heartbeat = self._preload_beat
        extend = int(self.settings.health.busy_seconds * 1e6)

        def preload() -> None:
            for index, name in enumerate(names, 1):
                heartbeat.busy()
                self._loading = f"loading models: {name} ({index} of {len(names)})"
                _sd_notify(f"EXTEND_TIMEOUT_USEC={extend}\nSTATUS={self._loading}")
                states = self.registry.preload([name])
                if states:
                    log.info("pipeline preloaded: %s %s", name, states[name])
            heartbeat.idle()
            self._loading = None
            self._ready()

        thread = threading.Thread(target=preload, name="acqflow-preload", daemon=True)
        thread.start()

    def _start_sources(self, assembler: SeriesAssembler) -> None:
        assert self.journal is not None
        s = self.settings
        if s.dicom.enabled:
            self._step = "starting the DICOM receiver"
            receiver = DicomReceiver(s.dicom, self.journal, s.paths.spool, assembler.association_closed)
            self._components.append(("dicom", receiver))  # stopped again if a later step fails
            receiver.start()
            self._receiver = receiver
            assembler.settle = receiver.settle
            self.dicom_port = receiver.port
        if s.dicomweb.enabled:
            self._step = "starting the STOW-RS receiver"
            self.stow_port = self._start_stow(assembler)
        if s.web.enabled:
            self._step = "starting the web console"
            from acqflow.daemon.web.app import WebConsole

            console = WebConsole(s, self.journal, Router(s.routes, self.registry.available))
            self._components.append(("web", console))
            console.start()
            self.web_port = console.port
        for watcher in self._folders:
            self._step = f"watching {watcher.settings.path}"
            self._components.append((f"folder {watcher.settings.path}", watcher))
            watcher.start()
            watcher.rescan()

    def _start_stow(self, assembler: SeriesAssembler) -> int:
        """The STOW-RS receiver, on the DICOM receiver's spool (or its own, recovered
        first, when DIMSE is off); returns its port."""
        from acqflow.daemon.dicom.spool import InstanceSpool
        from acqflow.daemon.dicomweb.server import StowReceiver

        assert self.journal is not None
        if self._receiver is not None:
            spool = self._receiver.spool
        else:
            from acqflow.daemon.dicom.recovery import recover_spool

            spool = InstanceSpool(self.settings.paths.spool)
            recover_spool(spool, self.journal)
        stow = StowReceiver(self.settings.dicomweb, self.journal, spool, assembler.association_closed)
        self._components.append(("dicomweb", stow))
        stow.start()
        return stow.port

    def _start_housekeeping(self, assembler: SeriesAssembler, outbox: ExportOutbox, jobs: JobQueue) -> None:
        s = self.settings
        assert self.journal is not None
        self._step = "starting housekeeping"
        self._folders = [
            FolderWatcher(folder, self.journal, s.paths.quarantine, self.pool.wake) for folder in s.folders
        ]
        house = self._housekeeping = Housekeeping()
        house.every("series-quiet", 1.0, assembler.check)
        house.every("heartbeat", min(5.0, s.health.stall_seconds / 4), self._housekeeping_beat.beat)
        house.every("gpu", 5.0, self._gpu.sample)
        house.every("exports", s.export.poll_seconds, outbox.send_due)
        house.every("queue-depth", 5.0, lambda: self._refresh_gauges(jobs))
        if self._executor is not None:  # where the cluster's jobs are, for acqflow status
            house.every("executor-status", 5.0, self._write_state_file)
        house.every("disk-space", s.workers.disk_check_seconds, self.pool.check_resources)
        house.every("retention", s.retention.check_hours * 3600.0, self.purge_spool)
        for watcher, folder in zip(self._folders, s.folders, strict=True):
            house.every(f"rescan {folder.path}", folder.rescan_seconds, watcher.rescan)
        house.start()
        self._housekeeping_beat.beat()
        self._refresh_gauges(jobs)
        self.pool.check_resources()

    def _send_exports_soon(self) -> None:
        threading.Thread(target=self._outbox.send_due, name="acqflow-export-now", daemon=True).start()

    def _refresh_gauges(self, jobs: JobQueue) -> None:
        counts = jobs.counts()
        for pipeline in {p for p, _ in counts} | set(self.registry.names()):
            for state in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.HELD, JobState.DEAD):
                metrics.QUEUE_DEPTH.labels(pipeline, state.value).set(counts.get((pipeline, state.value), 0))
        for destination, count in self._outbox.pending_count().items():
            metrics.EXPORT_PENDING.labels(destination).set(count)

    def purge_spool(self) -> int:
        """Delete spooled (and imported copies of) instances of series whose jobs all finished
        ``spool_days`` ago; files imported by reference are never touched."""
        assert self.journal is not None
        cutoff = time.time() - self.settings.retention.spool_days * 86400.0
        rows = self.journal.query(
            "SELECT a.id, a.path FROM arrivals a WHERE a.kind='dicom-series'"
            " AND a.state IN ('routed', 'unrouted') AND a.updated_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.arrival_id=a.id"
            " AND j.state IN ('pending', 'queued', 'running', 'held'))",
            (cutoff,),
        )
        purged = 0
        # Only the daemon's own copies: a series imported by reference points at the
        # user's archive, which is never deleted.
        owned = (self.settings.paths.spool.resolve(), self.settings.paths.imports.resolve())
        for row in rows:
            folder = Path(row["path"])
            if folder.is_dir() and any(_inside(folder.resolve(), root) for root in owned):
                shutil.rmtree(folder)
                purged += 1
        if purged:
            log.info("retention: removed the spool of %d finished series", purged)
        return purged

    def _pipelines_changed(self) -> None:
        """After each pipeline load attempt: the state file and the device gauge."""
        self._write_state_file()
        record_pipeline_devices(self.registry.describe(), self.registry.device)

    def _write_state_file(self, starting: bool = False) -> None:
        """``<state_dir>/daemon.json``: what ``acqflow status`` and the CLI read.

        Written first while starting (no ``pid`` yet: ``status`` says not running), then
        once everything runs, then whenever a pipeline loads or fails to
        (``pipelines``: name → state).
        """
        with self._state_lock:
            if self._stopped:
                return
            state: dict[str, object] = {"starting": True, "started_at": self._started_at}
            if not starting:
                state = {
                    "pid": os.getpid(),
                    "started_at": self._started_at,
                    "dicom_port": self.dicom_port,
                    "stow_port": self.stow_port,
                    "web_port": self.web_port,
                    "metrics_port": self.metrics_port,
                    "ae_title": self.settings.dicom.ae_title,
                    "pipelines": self.registry.describe(),
                    "executor": self._executor_status(),
                }
            write_atomic(self.settings.paths.state_dir / "daemon.json", json.dumps(state).encode())

    def _executor_status(self) -> dict[str, object]:
        """Where jobs run now, with the jobs each Dask worker holds (``acqflow status``)."""
        if self._executor is None:
            return {"kind": "local", "connected": True, "address": None,
                    "detail": f"{self.settings.workers.count} worker thread(s)", "workers": []}
        return self._executor.status().as_dict()

    # --- health ---------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        """Keep-alives for systemd's ``WatchdogSec=`` while every loop makes progress."""
        interval = watchdog_interval()
        if interval is None:
            return
        health = self.settings.health
        watchdog = Watchdog(
            _sd_notify,
            interval,
            WatchdogRules(loop_allowance=health.stall_seconds, busy_allowance=health.busy_seconds),
            self._status_line,
        )
        watchdog.watch([*self.pool.heartbeats, self._housekeeping_beat, self._preload_beat])
        watchdog.watch(w.heartbeat for w in self._folders)
        receiver = self._receiver
        if receiver is not None:
            watchdog.probe("dicom", lambda: None if receiver.listening else "not listening")
        watchdog.start()
        self._components.append(("watchdog", watchdog))  # stopped first
        log.info("systemd watchdog: keep-alive every %.1f s", interval)

    def _status_line(self) -> str:
        """systemd's STATUS=, e.g. ``ready: 3 pipelines, 2 queued, 1 running``."""
        if self._loading is not None:
            return self._loading
        loaded = sum(1 for state in self.registry.describe().values() if state == "loaded")
        counts: dict[str, int] = {}
        for (_pipeline, state), count in self._jobs.counts().items():
            counts[state] = counts.get(state, 0) + count
        return (
            f"ready: {loaded} pipelines, {counts.get(JobState.PENDING.value, 0)} queued,"
            f" {counts.get(JobState.RUNNING.value, 0)} running"
        )

    def not_ready(self) -> dict[str, str]:
        """``/readyz``: check → reason for each that fails (journal writable, sources
        listening, routed pipelines loaded, disks not full); empty when ready."""
        s = self.settings
        readiness = Readiness(s.workers.min_free_bytes)
        readiness.add("journal", self._journal_problem)
        receiver = self._receiver
        if s.dicom.enabled:
            readiness.add("dicom", lambda: None if receiver and receiver.listening else "not listening")
        for watcher in self._folders:
            readiness.add(f"folder {watcher.settings.path}", _watching(watcher))
        readiness.add("pipelines", self._pipelines_problem)
        readiness.add_disk("state", s.paths.state_dir)
        readiness.add_disk("outputs", s.paths.outputs_dir)
        return readiness.failures()

    def _journal_problem(self) -> str | None:
        if self.journal is None or self._stopped:
            return "not open"
        try:
            with self.journal.transaction(durable=False) as db:  # a real write, without a flush
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('ready_checked_at', ?)",
                    (repr(time.time()),),
                )
        except sqlite3.Error as exc:
            return f"not writable: {exc}"
        return None

    def _pipelines_problem(self) -> str | None:
        states = self.registry.describe()
        problems = []
        for name in dict.fromkeys(n for rule in self.settings.routes for n in rule.pipelines):
            state = states.get(name, "not installed")
            if state == "loaded" or (state == "not loaded yet" and not self.settings.pipelines.preload):
                continue
            problems.append(f"{name} {'loading' if state == 'not loaded yet' else state}")
        return "; ".join(problems) or None

    def describe(self) -> str:
        s = self.settings
        parts = []
        if self.dicom_port is not None:
            parts.append(f"DICOM {s.dicom.ae_title}@{s.dicom.host}:{self.dicom_port}")
        if self.stow_port is not None:
            parts.append(f"STOW-RS {s.dicomweb.host}:{self.stow_port}{s.dicomweb.path}/studies")
        if self.web_port is not None:
            parts.append(f"console http{'s' if s.web.tls else ''}://{s.web.host}:{self.web_port}/")
        if self.metrics_port is not None:
            parts.append(f"metrics http://{s.metrics.host}:{self.metrics_port}/metrics")
        parts.extend(f"watching {f.path}" for f in s.folders)
        parts.append(f"pipelines {', '.join(self.registry.names()) or 'none'}")
        parts.append(f"device {s.workers.device}")
        return "; ".join(parts)

    def stop(self) -> None:
        """Stop sources, drain in-flight jobs, flush and close the journal. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _sd_notify("STOPPING=1")
        log.info("acqflow stopping: sources first, then draining jobs")
        for name, component in reversed(self._components):
            if name == "workers":
                continue
            try:
                component.stop()
            except Exception:  # keep stopping the rest
                log.exception("stopping %s failed", name)
        if hasattr(self, "_housekeeping"):
            self._housekeeping.stop()
        if hasattr(self, "pool"):
            self._left_running = self.pool.stop()
        if self._executor is not None:
            self._executor.stop()
        if self.journal is not None:
            self.journal.close()
        with self._state_lock:
            (self.settings.paths.state_dir / "daemon.json").unlink(missing_ok=True)
        log.info("acqflow stopped")

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start, block until SIGTERM/SIGINT, then stop gracefully."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            self.stop()
        if self._left_running:
            # A worker thread is still inside its pipeline (its job is back in the queue).
            # A normal interpreter exit would destroy native threads under it (torch:
            # "terminate called without an active exception", exit 134): end here.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
