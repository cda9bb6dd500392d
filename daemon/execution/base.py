"""What every executor offers the workers: run one job's pipeline, say where it runs.

An executor turns a claimed job into a :class:`Computed` (the pipeline that ran and its
result) or raises what the job runner translates at its boundary: InputRejected /
InvalidInputError (never works: dead, quarantined), PipelineLoadError, TransientError,
an OSError of a resource condition (held), :class:`ExecutorUnavailable` (the job goes
back to the journal without counting an attempt) or any other error (a failed attempt).
The daemon writes the result with its own sinks whichever executor computed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from acqflow.daemon.errors import StartupError, TransientError
from acqflow.daemon.jobqueue import Job
from acqflow.daemon.journal import Arrival
from acqflow.plugins.api import PipelineResult, Summarizer

__all__ = [
    "Computed",
    "Executor",
    "ExecutorStatus",
    "ExecutorUnavailable",
    "ExecutorUnreachable",
    "PipelineIdentity",
    "WorkerStatus",
]


class ExecutorUnavailable(TransientError):
    """The executor cannot take or finish jobs now (the scheduler connection is lost):
    the job goes back to pending, not counted as an attempt, and runs once it is back."""


class ExecutorUnreachable(StartupError):
    """The executor could not be reached at start; the message names the setting."""


@dataclass(frozen=True)
class PipelineIdentity:
    """What the sinks need of a pipeline that ran elsewhere: its name and version."""

    name: str
    version: str


@dataclass(frozen=True)
class Computed:
    """A job's result and the pipeline that made it. ``summarizer`` is the pipeline to
    aggregate its records with, where it aggregates (None: nothing to summarise)."""

    pipeline: PipelineIdentity
    result: PipelineResult
    summarizer: Summarizer | None = None


@dataclass(frozen=True)
class WorkerStatus:
    """One worker of a cluster as ``acqflow status`` shows it."""

    name: str
    address: str
    threads: int
    resources: dict[str, float] = field(default_factory=dict)
    jobs: tuple[int, ...] = ()  # journal ids of the jobs it runs now


@dataclass(frozen=True)
class ExecutorStatus:
    """Where jobs run now: ``kind`` (local or dask), the scheduler, its workers."""

    kind: str
    connected: bool
    address: str | None = None
    workers: tuple[WorkerStatus, ...] = ()
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "connected": self.connected,
            "address": self.address,
            "detail": self.detail,
            "workers": [
                {"name": w.name, "address": w.address, "threads": w.threads,
                 "resources": dict(w.resources), "jobs": list(w.jobs)}
                for w in self.workers
            ],
        }


class Executor(Protocol):
    """Runs pipelines for the worker pool; thread-safe (several workers call compute)."""

    def start(self) -> None:
        """Connect or start what it needs. Raises ExecutorUnreachable."""

    def stop(self) -> None:
        """Let go of its resources; in-flight computations are abandoned (the journal
        gives their jobs back)."""

    def ready(self) -> bool:
        """Whether a job handed over now can run (False: the dispatcher claims nothing)."""

    def compute(self, job: Job, arrival: Arrival) -> Computed:
        """Run ``job``'s pipeline on ``arrival``'s input; raises as the module says."""

    def status(self) -> ExecutorStatus:
        """Where jobs run, for ``acqflow status``."""
