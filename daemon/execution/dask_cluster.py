"""The Dask executor: jobs run on a Dask distributed cluster, results come back here.

The journal stays the ledger. Dask keeps no state across a scheduler restart, so this
executor keeps none either: a job's future lives exactly as long as the daemon thread
that waits for it. A worker killed mid-job is Dask's to handle (the scheduler runs the
task again elsewhere, up to ``distributed.scheduler.allowed-failures`` times; then the
job fails one attempt here). A lost scheduler cancels every future: each job goes back to
pending without counting an attempt, the client reconnects by itself, and the dispatcher
claims them again once it has (every non-terminal job is resubmitted, none twice: a job
completes in the journal only while it is queued or running there).
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import threading
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from acqflow.daemon.config import DaskSettings, InputTransfer, PipelineSettings, WorkerSettings
from acqflow.daemon.errors import InputRejected, PipelineLoadError, TransientError
from acqflow.daemon.execution.base import (
    Computed,
    ExecutorStatus,
    ExecutorUnavailable,
    ExecutorUnreachable,
    PipelineIdentity,
    WorkerStatus,
)
from acqflow.daemon.execution.task import (
    PLUGIN_NAME,
    JobSpec,
    OutcomeStatus,
    PipelineCache,
    ShippedFiles,
    TaskOutcome,
    run_job,
)
from acqflow.daemon.jobqueue import Job
from acqflow.daemon.journal import Arrival, Journal
from acqflow.daemon.registry import PipelineRegistry
from acqflow.plugins.api import Summarizer

__all__ = ["DaskExecutor", "RemoteJobError", "map_path"]

log = logging.getLogger(__name__)

_JOB_KEY = re.compile(r"acqflow-job-(\d+)-[0-9a-f]+")


class RemoteJobError(Exception):
    """A job's run failed on a Dask worker (the message says how, and where)."""


def map_path(path: Path, settings: DaskSettings) -> str:
    """``path`` as the workers see it: absolute, under the longest matching
    ``path_map`` prefix replaced by its worker folder."""
    absolute = path.absolute()
    for mapping in sorted(settings.path_map, key=lambda m: len(m.daemon.absolute().parts), reverse=True):
        try:
            relative = absolute.relative_to(mapping.daemon.absolute())
        except ValueError:
            continue
        return posixpath.join(mapping.worker, relative.as_posix()) if relative.parts else mapping.worker
    return str(absolute)


def _mapped_weights(pipelines: PipelineSettings, settings: DaskSettings) -> PipelineSettings:
    """The pipeline settings with weights folders as the workers see them."""
    weights = pipelines.weights_dir
    if weights is None:
        return pipelines
    if isinstance(weights, dict):
        mapped: Path | dict[str, Path] = {k: Path(map_path(v, settings)) for k, v in weights.items()}
    else:
        mapped = Path(map_path(weights, settings))
    return pipelines.model_copy(update={"weights_dir": mapped})


def _read_blob(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:  # the worker then meets the missing file as the daemon would
        log.warning("cannot read %s to ship it: %s", path, exc)
        return None


class DaskExecutor:
    """Submits jobs to a Dask scheduler (given, or a local cluster it starts)."""

    def __init__(
        self, settings: WorkerSettings, pipelines: PipelineSettings, registry: PipelineRegistry,
        journal: Journal, scratch: Path,
    ) -> None:
        self._settings = settings
        self._dask = settings.dask
        self._registry = registry
        self._journal = journal
        self._scratch = scratch
        self._plugin = PipelineCache(_mapped_weights(pipelines, settings.dask), settings)
        self._client: Any = None
        self._cluster: Any = None
        self._plugin_scheduler: str | None = None  # the scheduler id the plugin is registered with
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        from distributed import Client

        address = self._dask.scheduler
        setting = "workers.dask.scheduler"
        if address is None:
            setting = "workers.dask.local_workers"
            self._cluster = self._local_cluster()
            address = self._cluster.scheduler_address
        try:
            self._client = Client(address, timeout=self._dask.connect_seconds, set_as_default=False)  # type: ignore[no-untyped-call]  # distributed is untyped here
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise ExecutorUnreachable(
                f"{setting}: cannot reach the Dask scheduler at {address} within"
                f" {self._dask.connect_seconds:g} s ({type(exc).__name__}: {exc}); start it, fix the"
                " address, or set workers.dask.fallback_local = true to run on local threads"
            ) from exc
        self._ensure_plugin()
        log.info("jobs run on the Dask cluster at %s", address)

    def _local_cluster(self) -> Any:
        """``local_workers`` worker processes on this machine, one per GPU with dask-cuda."""
        self._scratch.mkdir(parents=True, exist_ok=True)
        # the dashboard (and the scheduler's HTTP endpoint) on loopback, on a free port
        common: dict[str, Any] = {"dashboard_address": "127.0.0.1:0", "local_directory": str(self._scratch)}
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None and self._settings.device != "cpu":
            try:
                return LocalCUDACluster(resources={"GPU": 1}, **common)
            except (RuntimeError, ValueError) as exc:  # no usable GPU: plain processes
                log.warning("dask-cuda could not start a GPU cluster (%s): CPU worker processes", exc)
        from distributed import LocalCluster

        return LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self._dask.local_workers, threads_per_worker=1, processes=True,
            host="127.0.0.1", **common,
        )

    def stop(self) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        for closable in (client, cluster):
            if closable is None:
                continue
            try:
                closable.close()
            except Exception as exc:  # noqa: BLE001  # stopping goes on
                log.warning("closing the Dask %s failed: %s", type(closable).__name__, exc)
        if cluster is not None:
            _reap_worker_processes()

    @property
    def _gpu_jobs(self) -> bool:
        return self._dask.gpu_resources or type(self._cluster).__name__ == "LocalCUDACluster"

    def _ensure_plugin(self) -> None:
        """Register the pipeline cache with the scheduler, again after it restarted (a
        new scheduler knows no plugins; its workers get it as they join)."""
        client = self._client
        if client is None:
            return
        scheduler = str(client.scheduler_info().get("id") or "")
        with self._lock:
            if scheduler and scheduler == self._plugin_scheduler:
                return
            client.register_plugin(self._plugin, name=PLUGIN_NAME)
            self._plugin_scheduler = scheduler
        log.info("acqflow worker plugin registered with scheduler %s", scheduler)

    def ready(self) -> bool:
        client = self._client
        if client is None or client.status != "running":
            return False
        try:
            self._ensure_plugin()
        except (OSError, TimeoutError, CancelledError) as exc:
            log.warning("Dask scheduler not usable yet: %s", exc)
            return False
        return True

    # --- jobs -----------------------------------------------------------------------

    def _spec(self, job: Job, arrival: Arrival, version: str) -> tuple[JobSpec, ShippedFiles | None]:
        files: list[Path] = []
        if arrival.kind == "dicom-series":
            files = [instance.path for instance in self._journal.instances(arrival.id)]
        if self._dask.inputs is InputTransfer.SHIP:
            blobs = tuple(_read_blob(p) for p in (files or [arrival.path]))
            spec = JobSpec(job.id, job.pipeline, version, arrival, tuple(str(p) for p in files))
            return spec, ShippedFiles(blobs)
        mapped = dataclasses.replace(arrival, path=Path(map_path(arrival.path, self._dask)))
        worker_files = tuple(map_path(p, self._dask) for p in files)
        return JobSpec(job.id, job.pipeline, version, mapped, worker_files), None

    def compute(self, job: Job, arrival: Arrival) -> Computed:
        from distributed import KilledWorker

        client = self._client
        if client is None or client.status != "running":
            raise ExecutorUnavailable("not connected to the Dask scheduler")
        declared = self._registry.declaration(job.pipeline)
        spec, shipped = self._spec(job, arrival, declared.version)
        resources = {"GPU": 1} if self._gpu_jobs else None
        futures: list[Any] = []
        try:
            payload = client.scatter(shipped, hash=False) if shipped is not None else None
            if payload is not None:
                futures.append(payload)
            key = f"acqflow-job-{job.id}-{uuid.uuid4().hex[:12]}"
            future = client.submit(
                run_job, spec, payload, key=key, pure=False, retries=0, resources=resources
            )
            futures.append(future)
            outcome: TaskOutcome = future.result()
        except CancelledError as exc:
            raise ExecutorUnavailable(f"the Dask scheduler connection was lost: {exc}") from exc
        except KilledWorker as exc:
            raise RemoteJobError(
                f"the job's runs ended the Dask workers that took it (killed, out of memory?): {exc}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise ExecutorUnavailable(f"the Dask scheduler cannot be reached: {exc}") from exc
        finally:
            for held in futures:
                held.release()
        return self._computed(job, outcome, declared.summarizes)

    def _computed(self, job: Job, outcome: TaskOutcome, summarizes: bool) -> Computed:
        status = outcome.status
        if status is OutcomeStatus.DONE and outcome.result is not None:
            summarizer: Summarizer | None = None
            if summarizes:  # aggregates run here, over the journal's records
                pipeline = self._registry.get(job.pipeline)
                summarizer = pipeline if isinstance(pipeline, Summarizer) else None
            return Computed(PipelineIdentity(job.pipeline, outcome.version), outcome.result, summarizer)
        where = f" (on {outcome.worker})"
        if status is OutcomeStatus.REJECTED:
            raise InputRejected(outcome.error)
        if status is OutcomeStatus.LOAD_FAILED:
            raise PipelineLoadError(outcome.error + where)
        if status is OutcomeStatus.TRANSIENT:
            raise TransientError(outcome.error + where)
        if status is OutcomeStatus.RESOURCE:
            raise OSError(outcome.errno, outcome.error + where)
        raise RemoteJobError(outcome.error + where)

    # --- status ---------------------------------------------------------------------

    def status(self) -> ExecutorStatus:
        client = self._client
        address = self._dask.scheduler or (self._cluster.scheduler_address if self._cluster else None)
        if client is None or client.status != "running":
            return ExecutorStatus("dask", connected=False, address=address, detail="not connected")
        try:
            info = client.scheduler_info()
            processing = client.processing()
        except (OSError, TimeoutError, CancelledError) as exc:
            return ExecutorStatus("dask", connected=False, address=address, detail=str(exc))
        workers = []
        for worker_address, worker in sorted(info.get("workers", {}).items()):
            keys = processing.get(worker_address, ())
            jobs = tuple(sorted(int(m.group(1)) for k in keys if (m := _JOB_KEY.fullmatch(str(k)))))
            workers.append(WorkerStatus(
                name=str(worker.get("name", worker_address)), address=worker_address,
                threads=int(worker.get("nthreads", 0)),
                resources={str(k): float(v) for k, v in dict(worker.get("resources") or {}).items()},
                jobs=jobs,
            ))
        return ExecutorStatus("dask", connected=True, address=address, workers=tuple(workers),
                              detail=f"{len(workers)} worker(s)")


def _reap_worker_processes(timeout: float = 10.0) -> None:
    """Wait for the worker processes of the daemon's own cluster (its multiprocessing
    children) to end, killing any still there after ``timeout``: the daemon never exits
    leaving a worker behind."""
    import multiprocessing
    import time

    deadline = time.monotonic() + timeout
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            log.warning("Dask worker process %s still running after the cluster closed: killed", child.pid)
            child.kill()
            child.join(2.0)
