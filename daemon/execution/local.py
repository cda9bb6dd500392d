"""The local executor: pipelines run in the daemon's own worker threads (the default).

It also holds what every executor runs around ``pipeline.run``: the check that the
input is of the pipeline's kind and the GPU out-of-memory policy (retry with a smaller
batch, then on the CPU when allowed), so a Dask worker behaves exactly as a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from acqflow.daemon import metrics, redaction
from acqflow.daemon.config import WorkerSettings
from acqflow.daemon.errors import TransientError
from acqflow.daemon.execution.base import Computed, ExecutorStatus, PipelineIdentity
from acqflow.daemon.jobqueue import Job
from acqflow.daemon.journal import Arrival
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.resources import DiskWatch, is_gpu_oom
from acqflow.plugins.api import (
    ImageItem,
    InputKind,
    InvalidInputError,
    Pipeline,
    PipelineResult,
    RunHints,
    SeriesItem,
    Summarizer,
)

__all__ = ["GpuOutOfMemory", "LocalExecutor", "RunResources", "check_input_kind", "run_with_oom_policy"]

log = logging.getLogger(__name__)

Loader = Callable[[Arrival], ImageItem | SeriesItem]


class GpuOutOfMemory(TransientError):
    """A run ran out of GPU memory at the smallest batch and no CPU fallback is allowed."""


@dataclass(frozen=True)
class RunResources:
    """What a runner knows of its resources: the disk watch (None: not measured) and a
    way to get a pipeline loaded on the CPU (the GPU out-of-memory fallback)."""

    disks: DiskWatch | None = None
    cpu_pipeline: Callable[[str], Pipeline] | None = None


def _free_gpu_memory() -> None:
    """Give cached GPU blocks back after an out-of-memory error (torch only if in use)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_input_kind(pipeline: Pipeline, item: ImageItem | SeriesItem, arrival: Arrival) -> None:
    """Raises InvalidInputError when ``item`` is not the kind of input ``pipeline`` takes."""
    expected = ImageItem if pipeline.input_kind is InputKind.IMAGE else SeriesItem
    if not isinstance(item, expected):
        raise InvalidInputError(
            f"pipeline {pipeline.name} takes {pipeline.input_kind.value}, got {arrival.kind}"
        )


def run_with_oom_policy(
    pipeline: Pipeline,
    item: ImageItem | SeriesItem,
    settings: WorkerSettings,
    cpu_pipeline: Callable[[str], Pipeline] | None,
) -> PipelineResult:
    """``pipeline.run``; after a GPU out of memory again with half the batch, up to
    ``gpu_oom_retries`` times, then on the CPU when allowed. Raises the last error, or
    GpuOutOfMemory."""
    scale = 1.0
    retries = settings.gpu_oom_retries
    while True:
        try:
            return pipeline.run(dataclasses.replace(item, hints=RunHints(scale)))
        except Exception as exc:
            if not is_gpu_oom(exc):
                raise
            _free_gpu_memory()
            if retries == 0:
                break
        retries -= 1
        scale /= 2
        metrics.GPU_OOM.labels(pipeline.name, "smaller_batch").inc()
        log.warning("%s ran out of GPU memory: again with batch scale %g", pipeline.name, scale)
    if not settings.gpu_oom_cpu_fallback or cpu_pipeline is None:
        metrics.GPU_OOM.labels(pipeline.name, "failed").inc()
        raise GpuOutOfMemory(f"{pipeline.name} ran out of GPU memory at batch scale {scale:g}")
    metrics.GPU_OOM.labels(pipeline.name, "cpu").inc()
    log.warning("%s ran out of GPU memory at batch scale %g: running on the CPU", pipeline.name, scale)
    return cpu_pipeline(pipeline.name).run(dataclasses.replace(item, hints=RunHints()))


@dataclass(frozen=True)
class LocalExecutor:
    """Loads the pipeline from the daemon's registry and runs it in the calling thread."""

    registry: PipelineRegistry
    loader: Loader
    settings: WorkerSettings
    resources: RunResources = RunResources()

    def start(self) -> None:
        """Nothing to start: the worker threads are the pool's."""

    def stop(self) -> None:
        """Nothing to let go of."""

    def ready(self) -> bool:
        return True

    def compute(self, job: Job, arrival: Arrival) -> Computed:
        pipeline = self.registry.get(job.pipeline)
        item = self.loader(arrival)
        redaction.remember(item.datasets if isinstance(item, SeriesItem) else None)
        check_input_kind(pipeline, item, arrival)
        result = run_with_oom_policy(pipeline, item, self.settings, self.resources.cpu_pipeline)
        summarizer = pipeline if isinstance(pipeline, Summarizer) else None
        return Computed(PipelineIdentity(pipeline.name, pipeline.version), result, summarizer)

    def status(self) -> ExecutorStatus:
        return ExecutorStatus(kind="local", connected=True, detail=f"{self.settings.count} worker thread(s)")
