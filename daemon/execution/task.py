"""What runs inside a Dask worker: the pipeline cache (a worker plugin) and one job.

A job reaches a worker as a :class:`JobSpec`: ids, the pipeline's name and version, the
arrival (its path as the worker sees it) and the instance files of a series; never
decoded images. Where the workers do not see the daemon's files, the daemon ships the
files' bytes beside it (:class:`ShippedFiles`), written to the worker's scratch folder
for the run and removed after it. The worker reads the input with the daemon's own
readers and runs the pipeline under the same GPU out-of-memory policy as a local
thread; every outcome comes back as a :class:`TaskOutcome` (exceptions are not sent
back raw: several of ours do not survive pickling, and their class decides the job's
fate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from acqflow.daemon import redaction
from acqflow.daemon.config import PipelineSettings, WorkerSettings
from acqflow.daemon.errors import InputRejected, PipelineLoadError, TransientError
from acqflow.daemon.execution.local import check_input_kind, run_with_oom_policy
from acqflow.daemon.journal import Arrival
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.resources import ResourceCondition, resource_condition
from acqflow.plugins.api import ImageItem, InvalidInputError, Pipeline, PipelineResult, SeriesItem

__all__ = [
    "PLUGIN_NAME",
    "JobSpec",
    "OutcomeStatus",
    "PipelineCache",
    "ShippedFiles",
    "TaskOutcome",
    "run_job",
]

log = logging.getLogger(__name__)

PLUGIN_NAME = "acqflow-pipelines"


class OutcomeStatus(str, Enum):
    DONE = "done"
    REJECTED = "rejected"  # the input can never work
    LOAD_FAILED = "load_failed"  # the pipeline would not load on the worker
    TRANSIENT = "transient"  # may pass (file unreachable for now)
    RESOURCE = "resource"  # a full or read-only disk on the worker
    FAILED = "failed"  # any other error of the run


@dataclass(frozen=True)
class JobSpec:
    """One job as a worker gets it; ``files`` are a series' instance files in arrival
    order (empty for an image, whose file is ``arrival.path``)."""

    job_id: int
    pipeline: str
    version: str
    arrival: Arrival
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShippedFiles:
    """The bytes of a job's files where workers share no file system with the daemon:
    ``blobs[i]`` is file i of the spec (the arrival's file for an image), None where the
    daemon could not read it (the worker then fails to read it the way the daemon would)."""

    blobs: tuple[bytes | None, ...]


@dataclass(frozen=True)
class TaskOutcome:
    status: OutcomeStatus
    worker: str
    version: str = ""
    result: PipelineResult | None = None
    error: str = ""
    errno: int = 0


class PipelineCache(WorkerPlugin):
    """Each worker process loads a pipeline once, at its first job, and keeps it."""

    name = PLUGIN_NAME

    def __init__(self, pipelines: PipelineSettings, workers: WorkerSettings) -> None:
        self.pipelines = pipelines
        self.workers = workers
        self._registry: PipelineRegistry | None = None

    def setup(self, worker: Any) -> None:
        registry = PipelineRegistry(self.pipelines, self.workers.device)
        registry.discover()
        self._registry = registry
        log.info("acqflow pipelines on worker %s: %s", worker.address, ", ".join(registry.names()))

    @property
    def registry(self) -> PipelineRegistry:
        if self._registry is None:
            raise PipelineLoadError("the acqflow worker plugin was not set up on this worker")
        return self._registry

    def cpu_pipeline(self, name: str) -> Pipeline:
        return self.registry.get_on_device(name, "cpu")


def _load_input(arrival: Arrival, files: tuple[str, ...]) -> ImageItem | SeriesItem:
    if arrival.kind == "dicom-series":
        from acqflow.daemon.dicom.part10 import read_series_files

        return read_series_files(arrival, [Path(f) for f in files])
    from acqflow.daemon.imageio import read_image

    return read_image(arrival)


@contextlib.contextmanager
def _materialised(spec: JobSpec, shipped: ShippedFiles | None, scratch: str) -> Iterator[JobSpec]:
    """``spec`` with its files where this worker can read them: as they are, or the
    shipped bytes written to a scratch folder removed afterwards."""
    if shipped is None:
        yield spec
        return
    folder = Path(tempfile.mkdtemp(prefix=f"acqflow-job-{spec.job_id}-", dir=scratch))
    try:
        names = spec.files or (str(spec.arrival.path),)
        paths = []
        for index, (name, blob) in enumerate(zip(names, shipped.blobs, strict=True)):
            path = folder / f"{index:06d}-{Path(name).name}"
            if blob is not None:
                path.write_bytes(blob)
            paths.append(str(path))
        if spec.files:
            yield dataclasses.replace(spec, files=tuple(paths))
        else:
            yield dataclasses.replace(spec, arrival=dataclasses.replace(spec.arrival, path=Path(paths[0])))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _outcome(status: OutcomeStatus, worker: str, exc: BaseException, plain: bool = False) -> TaskOutcome:
    message = str(exc) if plain else f"{type(exc).__name__}: {exc}"
    code = 0
    if status is OutcomeStatus.RESOURCE:
        code = errno.ENOSPC if resource_condition(exc) is ResourceCondition.DISK_FULL else errno.EROFS
    return TaskOutcome(status, worker, error=redaction.scrub(message), errno=code)


def run_job(spec: JobSpec, shipped: ShippedFiles | None = None) -> TaskOutcome:
    """Run one job on this worker; every failure comes back as an outcome."""
    worker = get_worker()
    cache = worker.plugins.get(PLUGIN_NAME)
    redaction.remember(None)
    try:
        if not isinstance(cache, PipelineCache):
            raise PipelineLoadError("the acqflow worker plugin is not registered on this worker")
        pipeline = cache.registry.get(spec.pipeline)
        if pipeline.version != spec.version:
            raise PipelineLoadError(
                f"worker {worker.address} has {spec.pipeline} {pipeline.version}, the daemon expects"
                f" {spec.version}: install the same acqflow version on the workers"
            )
        with _materialised(spec, shipped, worker.local_directory) as local:
            item = _load_input(local.arrival, local.files)
            redaction.remember(item.datasets if isinstance(item, SeriesItem) else None)
            check_input_kind(pipeline, item, local.arrival)
            result = run_with_oom_policy(pipeline, item, cache.workers, cache.cpu_pipeline)
    except (InputRejected, InvalidInputError) as exc:
        return _outcome(OutcomeStatus.REJECTED, worker.address, exc, plain=True)
    except PipelineLoadError as exc:
        return _outcome(OutcomeStatus.LOAD_FAILED, worker.address, exc, plain=True)
    except TransientError as exc:
        return _outcome(OutcomeStatus.TRANSIENT, worker.address, exc)
    except Exception as exc:  # the task boundary: the daemon decides what a failure means
        if resource_condition(exc) is not None:
            return _outcome(OutcomeStatus.RESOURCE, worker.address, exc)
        log.exception("job %d (%s) failed on worker %s", spec.job_id, spec.pipeline, worker.address)
        return _outcome(OutcomeStatus.FAILED, worker.address, exc)
    return TaskOutcome(OutcomeStatus.DONE, worker.address, version=pipeline.version, result=result)
