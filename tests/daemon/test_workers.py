"""Workers against a real journal and real files; pipelines are registered in memory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from acqflow.daemon.config import PipelineSettings, RouteRule, WorkerSettings
from acqflow.daemon.errors import PipelineLoadError
from acqflow.daemon.jobqueue import JobQueue, RouteDecision
from acqflow.daemon.journal import Arrival, ArrivalState, JobState, Journal
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.router import Router
from acqflow.daemon.sinks.results import ResultSink
from acqflow.daemon.workers import JobRunner, WorkerPool
from acqflow.plugins.api import (
    Figure,
    FileOutput,
    ImageItem,
    ImageMetadata,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    Record,
    RecordValue,
    SeriesItem,
)


class Counting:
    """Sums pixels; 'bad' in the file name is invalid input; summaries list the records."""

    name = "counting"
    version = "2.1"
    input_kind = InputKind.IMAGE
    runs = 0

    def load(self, context: PipelineContext) -> None:
        self.fail_until = int(context.options.get("fail_until", 0))

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        assert isinstance(item, ImageItem)
        type(self).runs += 1
        if "bad" in item.source_path.name:
            raise InvalidInputError("not a phase image")
        if type(self).runs <= self.fail_until:
            raise RuntimeError("device busy")
        total = float(np.asarray(item.array).sum())
        return PipelineResult(
            files=(FileOutput("sum.txt", str(total).encode()),),
            records=(Record("sum", item.metadata.experiment or "-", {"sum": total}),),
            figures=(Figure("differentiation_efficiency", 0.25, {"experiment": "E1", "well": "A01"}),),
        )

    def summarize(self, group: str, records: Sequence[Mapping[str, RecordValue]]) -> PipelineResult:
        body = json.dumps([r["sum"] for r in records]).encode()
        return PipelineResult(files=(FileOutput("all.json", body),))


class Broken:
    name = "broken"
    version = "0"
    input_kind = InputKind.IMAGE

    def load(self, context: PipelineContext) -> None:
        raise FileNotFoundError("weights missing")

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        raise AssertionError("never loaded")


def _loader(arrival: Arrival) -> ImageItem:
    array = np.load(arrival.path)
    return ImageItem(arrival.key, arrival.path, array, "YX", ImageMetadata(experiment="E1"))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Journal, JobQueue, JobRunner]:
    Counting.runs = 0
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    registry = PipelineRegistry(PipelineSettings(options={"counting": {"fail_until": 0}}), device="cpu")
    registry.register("counting", Counting)
    registry.register("broken", Broken)
    runner = JobRunner(
        journal=journal,
        jobs=JobQueue(journal),
        registry=registry,
        sink=ResultSink(tmp_path / "outputs"),
        loader=_loader,
        settings=WorkerSettings(max_attempts=2, retry_initial_seconds=0.05, poll_seconds=0.05),
        quarantine_dir=tmp_path / "quarantine",
    )
    return journal, runner.jobs, runner


def _arrive(journal: Journal, folder: Path, name: str, value: int) -> Arrival:
    path = folder / "in" / f"{name}.npy"
    path.parent.mkdir(exist_ok=True)
    np.save(path, np.full((4, 4), value, dtype=np.uint16))
    arrival = journal.record_file_arrival(
        "folder", f"file:{path}", path, {"fingerprint": [value, 0], "relative_path": f"E1/{name}.tif"}
    )
    assert arrival is not None
    return arrival


def _run_one(jobs: JobQueue, runner: JobRunner, pipeline: str) -> JobState:
    [job] = jobs.claim([pipeline], 1)
    return runner.run(job)


def test_success_writes_deterministic_outputs_records_summary_and_figures(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    first = _arrive(journal, tmp_path, "a", 1)
    second = _arrive(journal, tmp_path, "b", 2)
    for arrival in (first, second):
        jobs.route(arrival.id, 0, [RouteDecision("counting", "r")])
        assert _run_one(jobs, runner, "counting") is JobState.DONE
    root = tmp_path / "outputs" / "counting" / "2.1"
    assert (root / "E1" / "a" / "sum.txt").read_text() == "16.0"
    assert json.loads((root / "_summary" / "E1" / "all.json").read_text()) == [16.0, 32.0]
    records = jobs.records("counting", "sum", "E1")
    assert [r["output_dir"] for r in records] == ["E1/a", "E1/b"]
    value = REGISTRY.get_sample_value(
        "acqflow_differentiation_efficiency", {"experiment": "E1", "well": "A01"}
    )
    assert value == 0.25
    # re-running the same input replaces its output instead of adding one
    jobs.add_job(first.id, RouteDecision("counting", "cli"))
    assert _run_one(jobs, runner, "counting") is JobState.DONE
    assert journal.query("SELECT COUNT(*) FROM outputs")[0][0] == 2
    assert len(jobs.records("counting", "sum", "E1")) == 2


def test_transient_failure_is_retried_with_backoff_then_dead_and_quarantined(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    runner.registry.get("counting").fail_until = 10  # type: ignore[attr-defined]
    arrival = _arrive(journal, tmp_path, "a", 1)
    jobs.route(arrival.id, 0, [RouteDecision("counting", "r")])
    assert _run_one(jobs, runner, "counting") is JobState.PENDING
    assert jobs.claim(["counting"], 1) == []  # backing off
    time.sleep(0.1)
    assert _run_one(jobs, runner, "counting") is JobState.DEAD
    [job] = jobs.jobs()
    assert job.state is JobState.DEAD and job.attempts == 2 and "device busy" in (job.error or "")
    [entry] = (tmp_path / "quarantine").iterdir()
    assert (entry / "a.npy").exists() and "device busy" in (entry / "reason.json").read_text()
    assert arrival.path.exists()  # the input itself is never moved


def test_invalid_input_is_dead_at_once_and_the_arrival_rejected(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    arrival = _arrive(journal, tmp_path, "bad", 1)
    jobs.route(arrival.id, 0, [RouteDecision("counting", "r")])
    assert _run_one(jobs, runner, "counting") is JobState.DEAD
    assert jobs.jobs()[0].attempts == 1
    rejected = journal.arrival(arrival.id)
    assert rejected.state is ArrivalState.REJECTED and rejected.error == "not a phase image"


def test_broken_pipeline_disables_itself_not_the_others(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    arrival = _arrive(journal, tmp_path, "a", 1)
    jobs.route(arrival.id, 0, [RouteDecision("broken", "r"), RouteDecision("counting", "r")])
    assert _run_one(jobs, runner, "broken") is JobState.PENDING
    assert "broken" not in runner.registry.available()
    assert REGISTRY.get_sample_value("acqflow_pipeline_up", {"pipeline": "broken"}) == 0
    assert _run_one(jobs, runner, "counting") is JobState.DONE


def test_pool_routes_and_drains_with_a_small_bounded_queue(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    runner = JobRunner(
        **{**runner.__dict__, "settings": WorkerSettings(count=2, queue_size=1, poll_seconds=0.05)}
    )
    router = Router([RouteRule(name="all", pipelines=("counting",))], runner.registry.available)
    pool = WorkerPool(runner, router)
    for index in range(6):
        _arrive(journal, tmp_path, f"img{index}", index)
    pool.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and jobs.counts().get(("counting", "done"), 0) < 6:
        time.sleep(0.05)
    pool.stop()
    assert jobs.counts() == {("counting", "done"): 6}
    assert all(a.state is ArrivalState.ROUTED for a in journal.arrivals_in_state(ArrivalState.ROUTED))


def test_preload_loads_each_named_pipeline_once_and_reports_a_broken_one() -> None:
    registry = PipelineRegistry(PipelineSettings(), device="cpu")
    registry.register("counting", Counting)
    registry.register("broken", Broken)
    registry.register("unrouted", Counting)
    changes: list[dict[str, str]] = []
    registry.on_change = lambda: changes.append(registry.describe())

    states = registry.preload(["broken", "counting", "broken", "not-installed"])

    assert states == {"broken": "FileNotFoundError: weights missing", "counting": "loaded"}
    assert registry.describe()["unrouted"] == "not loaded yet"
    assert REGISTRY.get_sample_value("acqflow_pipeline_up", {"pipeline": "broken"}) == 0
    assert REGISTRY.get_sample_value("acqflow_pipeline_up", {"pipeline": "counting"}) == 1
    assert [c["broken"] for c in changes] == ["FileNotFoundError: weights missing"] * 2
    assert [c["counting"] for c in changes] == ["not loaded yet", "loaded"]
    loaded = registry.get("counting")
    assert registry.get("counting") is loaded and len(changes) == 2  # no second load, no change
    with pytest.raises(PipelineLoadError, match="is disabled: FileNotFoundError"):
        registry.get("broken")


class Blocking:
    """Runs until ``release`` is set: a job that outlasts the drain."""

    name = "blocking"
    version = "1"
    input_kind = InputKind.IMAGE
    started = threading.Event()
    release = threading.Event()

    def load(self, context: PipelineContext) -> None:
        pass

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        type(self).started.set()
        type(self).release.wait(30)
        return PipelineResult(files=(FileOutput("late.txt", b"late"),))


def test_stop_gives_back_queued_jobs_and_a_job_that_outlasts_the_drain_without_an_attempt(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    Blocking.started.clear()
    Blocking.release.clear()
    runner.registry.register("blocking", Blocking)
    runner = JobRunner(
        **{
            **runner.__dict__,
            "settings": WorkerSettings(count=1, queue_size=4, poll_seconds=0.05, drain_seconds=0.3),
        }
    )
    router = Router([RouteRule(name="all", pipelines=("blocking",))], runner.registry.available)
    pool = WorkerPool(runner, router)
    for index in range(3):
        _arrive(journal, tmp_path, f"img{index}", index)
    pool.start()
    assert Blocking.started.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and jobs.counts().get(("blocking", "queued"), 0) < 2:
        time.sleep(0.05)
    assert jobs.counts() == {("blocking", "running"): 1, ("blocking", "queued"): 2}
    cut_off = pool.stop()
    assert len(cut_off) == 1
    assert jobs.counts() == {("blocking", "pending"): 3}
    assert all((j.attempts, j.interrupted) == (0, 0) for j in jobs.jobs())
    Blocking.release.set()  # the cut-off run ends late: its result is not recorded
    for thread in threading.enumerate():
        if thread.name.startswith("acqflow-worker"):
            thread.join(10)
    assert jobs.counts() == {("blocking", "pending"): 3}
    assert journal.query("SELECT COUNT(*) FROM outputs")[0][0] == 0


def test_two_watched_folders_with_the_same_relative_name_keep_separate_outputs_and_rows(
    setup: tuple[Journal, JobQueue, JobRunner], tmp_path: Path
) -> None:
    journal, jobs, runner = setup
    arrivals = []
    for value, scope in enumerate(("scope1", "scope2"), start=1):
        path = tmp_path / scope / "EXP1" / "img.npy"
        path.parent.mkdir(parents=True)
        np.save(path, np.full((4, 4), value, dtype=np.uint16))
        attrs = {"fingerprint": [value, 0], "relative_path": "EXP1/img.tif", "folder": str(tmp_path / scope)}
        arrival = journal.record_file_arrival("folder", f"file:{path}", path, attrs)
        assert arrival is not None
        arrivals.append(arrival)
    for arrival in arrivals:
        jobs.route(arrival.id, 0, [RouteDecision("counting", "r")])
        assert _run_one(jobs, runner, "counting") is JobState.DONE
    rows = journal.query(
        "SELECT o.path, j.arrival_id FROM outputs o JOIN jobs j ON j.id = o.job_id ORDER BY o.id"
    )
    assert [r["arrival_id"] for r in rows] == [a.id for a in arrivals]
    texts = [Path(r["path"]).read_text() for r in rows]
    assert texts == ["16.0", "32.0"]  # neither replaced the other's file
    folders = [Path(r["path"]).parent.relative_to(tmp_path / "outputs" / "counting" / "2.1") for r in rows]
    assert folders[0] != folders[1]
    assert [f.parts[0].split("-")[0] for f in folders] == ["scope1", "scope2"]
    assert all(f.parts[1:] == ("EXP1", "img") for f in folders)
    assert len(jobs.records("counting", "sum", "E1")) == 2
