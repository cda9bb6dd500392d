"""Executors: where a job's pipeline runs (local threads, or a Dask cluster).

The Dask executor (:mod:`acqflow.daemon.execution.dask_cluster`, with the worker side in
:mod:`acqflow.daemon.execution.task`) needs the ``dask`` extra and is imported only when
``workers.executor = "dask"``.
"""

from __future__ import annotations

from acqflow.daemon.execution.base import (
    Computed,
    Executor,
    ExecutorStatus,
    ExecutorUnavailable,
    ExecutorUnreachable,
    PipelineIdentity,
    WorkerStatus,
)
from acqflow.daemon.execution.local import GpuOutOfMemory, LocalExecutor, RunResources

__all__ = [
    "Computed",
    "Executor",
    "ExecutorStatus",
    "ExecutorUnavailable",
    "ExecutorUnreachable",
    "GpuOutOfMemory",
    "LocalExecutor",
    "PipelineIdentity",
    "RunResources",
    "WorkerStatus",
]
