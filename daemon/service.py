"""The daemon: wires sources, journal, router, workers, sinks, scheduler and metrics.

Start order: journal (and crash recovery) → pipelines → metrics → workers → outbox →
series assembler → sources → scheduler. Shutdown (SIGTERM) runs the other way: sources
stop first so nothing new is acknowledged, then in-flight jobs drain, then the journal
is closed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Protocol

from daemon import metrics
from daemon.config import Settings
from daemon.fileio import write_atomic
from daemon.jobqueue import JobQueue
from daemon.journal import Arrival, JobState, Journal
from daemon.registry import PipelineRegistry
from daemon.resources import DiskPath, DiskWatch
from daemon.router import Router
from daemon.scheduler import Housekeeping
from daemon.series import SeriesAssembler
from daemon.sinks.outbox import ExportOutbox
from daemon.sinks.results import ResultSink
from daemon.sources.folder import FolderWatcher
from daemon.sources.scp import DicomReceiver
from daemon.workers import JobRunner, RunResources, WorkerPool
from plugins.api import ImageItem, SeriesItem

__all__ = ["Daemon", "load_item"]


class _Component(Protocol):
    def stop(self) -> object: ...

log = logging.getLogger(__name__)


def load_item(journal: Journal, arrival: Arrival) -> ImageItem | SeriesItem:
    """Read an arrival's input from disk. Raises InputRejected for unreadable input."""
    if arrival.kind == "dicom-series":
        from daemon.dicomio import read_series

        return read_series(journal, arrival)
    from daemon.imageio import read_image

    return read_image(arrival)


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness/stopping; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


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
        self._state_lock = threading.Lock()
        self._started_at = 0.0
        self.dicom_port: int | None = None
        self.metrics_port: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._started_at = time.time()
        for folder in (s.paths.state_dir, s.paths.outputs_dir, s.paths.spool, s.paths.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        journal = self.journal = Journal(s.paths.journal)
        jobs = JobQueue(journal)
        resumed, parked = jobs.reset_interrupted(s.workers.max_interrupted_runs)
        orphans = journal.close_orphan_associations()
        if resumed or orphans:
            log.warning(
                "recovered after an unclean stop: %d jobs resumed, %d associations closed", resumed, orphans
            )
        if not self.registry.names():
            self.registry.discover()
        for name in self.registry.names():
            metrics.PIPELINE_UP.labels(name).set(1)
        if s.metrics.enabled:
            self.metrics_port = metrics.serve_metrics(s.metrics.host, s.metrics.port)

        outbox = ExportOutbox(s.export, journal, s.dicom.ae_title)
        self._outbox = outbox
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
        )
        for job in parked:
            runner.quarantine_parked(job)
        self.pool = WorkerPool(runner, Router(s.routes, self.registry.available))
        self.pool.start()
        self._components.append(("workers", self.pool))
        assembler = SeriesAssembler(journal, s.dicom.series_quiet_seconds, self.pool.wake)
        self._start_sources(assembler)
        self._start_housekeeping(assembler, outbox, jobs)
        self.registry.on_change = self._write_state_file
        self._write_state_file()
        if s.pipelines.preload:
            self._start_preload()
        _sd_notify("READY=1")
        log.info("acqflow ready: %s", self.describe())

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
        """Load the pipelines the routes name, in the background, in route order.

        A model that cannot load is then reported at start (log, ``acqflow_pipeline_up``
        0, ``acqflow status``) rather than when the first arrival needs it, and the
        first arrival does not wait for the load. Sources take data meanwhile; a job
        that needs a pipeline still loading waits for it.
        """
        names = [name for rule in self.settings.routes for name in rule.pipelines]

        def preload() -> None:
            states = self.registry.preload(names)
            if states:
                log.info("pipelines preloaded: %s", ", ".join(f"{n} {s}" for n, s in states.items()))

        thread = threading.Thread(target=preload, name="acqflow-preload", daemon=True)
        thread.start()

    def _start_sources(self, assembler: SeriesAssembler) -> None:
        assert self.journal is not None
        s = self.settings
        if s.dicom.enabled:
            receiver = DicomReceiver(s.dicom, self.journal, s.paths.spool, assembler.association_closed)
            receiver.start()
            assembler.settle = receiver.settle
            self.dicom_port = receiver.port
            self._components.append(("dicom", receiver))
        self._folders: list[FolderWatcher] = []
        for folder in s.folders:
            folder.path.mkdir(parents=True, exist_ok=True)
            watcher = FolderWatcher(folder, self.journal, s.paths.quarantine, self.pool.wake)
            watcher.start()
            watcher.rescan()
            self._folders.append(watcher)
            self._components.append((f"folder {folder.path}", watcher))

    def _start_housekeeping(self, assembler: SeriesAssembler, outbox: ExportOutbox, jobs: JobQueue) -> None:
        s = self.settings
        house = self._housekeeping = Housekeeping()
        house.every("series-quiet", 1.0, assembler.check)
        house.every("exports", s.export.poll_seconds, outbox.send_due)
        house.every("queue-depth", 5.0, lambda: self._refresh_gauges(jobs))
        house.every("disk-space", s.workers.disk_check_seconds, self.pool.check_resources)
        house.every("retention", s.retention.check_hours * 3600.0, self.purge_spool)
        for watcher, folder in zip(self._folders, s.folders, strict=True):
            house.every(f"rescan {folder.path}", folder.rescan_seconds, watcher.rescan)
        house.start()
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
        """Delete spooled instances of series whose jobs all finished ``spool_days`` ago."""
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
        for row in rows:
            folder = Path(row["path"])
            if folder.is_dir():
                shutil.rmtree(folder)
                purged += 1
        if purged:
            log.info("retention: removed the spool of %d finished series", purged)
        return purged

    def _write_state_file(self) -> None:
        """``<state_dir>/daemon.json``: what ``acqflow status`` and the CLI read.

        Rewritten whenever a pipeline loads or fails to (``pipelines``: name → state).
        """
        with self._state_lock:
            if self._stopped:
                return
            state = {
                "pid": os.getpid(),
                "started_at": self._started_at,
                "dicom_port": self.dicom_port,
                "metrics_port": self.metrics_port,
                "ae_title": self.settings.dicom.ae_title,
                "pipelines": self.registry.describe(),
            }
            write_atomic(self.settings.paths.state_dir / "daemon.json", json.dumps(state).encode())

    def describe(self) -> str:
        s = self.settings
        parts = []
        if self.dicom_port is not None:
            parts.append(f"DICOM {s.dicom.ae_title}@{s.dicom.host}:{self.dicom_port}")
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
