"""Choosing the executor at start from ``workers.executor``."""

from __future__ import annotations

import logging

from acqflow.daemon.config import ExecutorKind, Settings
from acqflow.daemon.errors import ConfigError
from acqflow.daemon.execution.base import Executor, ExecutorUnreachable
from acqflow.daemon.journal import Journal
from acqflow.daemon.registry import PipelineRegistry

__all__ = ["start_executor"]

log = logging.getLogger(__name__)


def start_executor(settings: Settings, registry: PipelineRegistry, journal: Journal) -> Executor | None:
    """The started Dask executor when the settings ask for it; None for local threads.

    Raises ExecutorUnreachable when the scheduler cannot be reached (unless
    ``workers.dask.fallback_local`` allows local threads instead), ConfigError when the
    ``dask`` extra is not installed.
    """
    workers = settings.workers
    if workers.executor is not ExecutorKind.DASK:
        return None
    try:
        from acqflow.daemon.execution.dask_cluster import DaskExecutor
    except ImportError as exc:
        raise ConfigError(
            f"workers.executor: dask needs the dask extra (pip install 'acqflow[dask]'): {exc}"
        ) from exc
    executor = DaskExecutor(workers, settings.pipelines, registry, journal, settings.paths.state_dir / "dask")
    try:
        executor.start()
    except ExecutorUnreachable as exc:
        if not workers.dask.fallback_local:
            raise
        log.warning("%s: running on %d local thread(s) instead (workers.dask.fallback_local)",
                    exc, workers.count)
        return None
    return executor
