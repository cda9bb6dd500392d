"""Periodic housekeeping on APScheduler: series-quiet checks, export retries, folder
rescans, queue-depth gauges and retention clean-up.

Every task is wrapped so that an exception is logged with the task's name and counted,
and the task runs again at its next tick; overlapping runs are coalesced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from acqflow.daemon import metrics

__all__ = ["Housekeeping"]

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )

    def every(self, name: str, seconds: float, task: Callable[[], object]) -> None:
        """Run ``task`` every ``seconds`` (first run one interval after start)."""

        def guarded() -> None:
            try:
                task()
            except Exception:  # a failing task must not stop the scheduler
                log.exception("scheduled task %s failed", name)
                metrics.SCHEDULED_TASK_FAILURES.labels(name).inc()

        self._scheduler.add_job(guarded, "interval", seconds=seconds, id=name, name=name)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
