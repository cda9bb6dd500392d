"""Resource conditions are not input errors: a full or read-only outputs disk holds the job
(a real tmpfs mount), a GPU out of memory is retried with a smaller batch, then on the CPU."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from acqflow.daemon.config import PipelineSettings, RouteRule, WorkerSettings
from acqflow.daemon.jobqueue import JobQueue, RouteDecision
from acqflow.daemon.journal import Arrival, ArrivalState, JobState, Journal
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.resources import DiskPath, DiskWatch, ResourceCondition, is_gpu_oom, resource_condition
from acqflow.daemon.router import Router
from acqflow.daemon.sinks.results import ResultSink
from acqflow.daemon.workers import JobRunner, RunResources, WorkerPool
from acqflow.plugins.api import ImageItem, ImageMetadata
from tests.support.pipelines import ImageStats, OutOfMemoryError


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")


@pytest.fixture
def small_outputs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs as the outputs folder, unmounted afterwards."""
    folder = tmp_path / "outputs"
    _mount_tmpfs(folder, "2m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder: Path) -> Path:
    """Write into ``folder`` until its file system is full; returns the filler file."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _loader(arrival: Arrival) -> ImageItem:
    return ImageItem(arrival.key, arrival.path, np.load(arrival.path), "YX", ImageMetadata(experiment="E1"))


@dataclass
class Setup:
    journal: Journal
    jobs: JobQueue
    runner: JobRunner
    pool: WorkerPool
    disks: DiskWatch


def _setup(tmp_path: Path, outputs: Path, options: dict[str, object], device: str = "cpu",
           **settings: object) -> Setup:
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    registry = PipelineRegistry(PipelineSettings(options={"test-image": options}), device=device)
    registry.register("test-image", ImageStats)
    disks = DiskWatch(
        {DiskPath.STATE: tmp_path / "state", DiskPath.OUTPUTS: outputs}, min_free_bytes=0
    )
    runner = JobRunner(
        journal=journal,
        jobs=JobQueue(journal),
        registry=registry,
        sink=ResultSink(outputs),
        loader=_loader,
        settings=WorkerSettings(max_attempts=1, **settings),  # type: ignore[arg-type]
        quarantine_dir=tmp_path / "quarantine",
        resources=RunResources(disks, lambda name: registry.get_on_device(name, "cpu")),
    )
    pool = WorkerPool(runner, Router([RouteRule(name="all", pipelines=("test-image",))], registry.available))
    return Setup(journal, runner.jobs, runner, pool, disks)


def _arrive(s: Setup, tmp_path: Path, name: str = "a") -> Arrival:
    path = tmp_path / "in" / f"{name}.npy"
    path.parent.mkdir(exist_ok=True)
    np.save(path, np.full((4, 4), 3, dtype=np.uint16))
    arrival = s.journal.record_file_arrival("folder", f"file:{path}", path, {"fingerprint": [1, 0]})
    assert arrival is not None
    s.jobs.route(arrival.id, 0, [RouteDecision("test-image", "r")])
    return arrival


def _run_one(s: Setup) -> JobState:
    [job] = s.jobs.claim(["test-image"], 1)
    return s.runner.run(job)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_full_outputs_disk_holds_the_job_and_it_completes_when_space_returns(
    tmp_path: Path, small_outputs: Path
) -> None:
    s = _setup(tmp_path, small_outputs, {})
    arrival = _arrive(s, tmp_path)
    filler = _fill(small_outputs)
    held_before = _sample("acqflow_jobs_total", {"pipeline": "test-image", "outcome": "held"})
    assert _run_one(s) is JobState.HELD  # even with min_free_bytes 0: the write met ENOSPC
    [job] = s.jobs.jobs()
    assert (job.state, job.attempts, job.hold_reason) == (JobState.HELD, 0, "disk_full")
    assert "No space left" in (job.error or "")
    assert _sample("acqflow_jobs_total", {"pipeline": "test-image", "outcome": "held"}) == held_before + 1
    s.pool.check_resources()  # no space came back: still held, nothing claimable
    assert s.jobs.job(job.id).state is JobState.HELD  # type: ignore[union-attr]
    assert s.jobs.claim(["test-image"], 1) == []
    assert _sample("acqflow_jobs_held", {"reason": "disk_full"}) == 1
    assert _sample("acqflow_disk_free_bytes", {"path": "outputs"}) < 65536
    assert not (tmp_path / "quarantine").exists()
    assert s.journal.arrival(arrival.id).state is ArrivalState.ROUTED  # not rejected
    filler.unlink()
    s.pool.check_resources()
    assert _sample("acqflow_jobs_held", {"reason": "disk_full"}) == 0
    assert _sample("acqflow_disk_free_bytes", {"path": "outputs"}) > 1_000_000
    assert _run_one(s) is JobState.DONE
    [stats] = small_outputs.rglob("stats.json")
    assert json.loads(stats.read_text())["mean"] == 3.0
    [done] = s.jobs.jobs()
    assert (done.state, done.attempts) == (JobState.DONE, 0)
    assert not (tmp_path / "quarantine").exists()


def test_a_disk_under_min_free_bytes_or_read_only_holds_pending_jobs_before_they_run(
    tmp_path: Path, small_outputs: Path
) -> None:
    s = _setup(tmp_path, small_outputs, {})
    s.disks = DiskWatch({DiskPath.OUTPUTS: small_outputs}, min_free_bytes=1_000_000)
    s.runner = JobRunner(**{**s.runner.__dict__, "resources": RunResources(s.disks)})
    s.pool = WorkerPool(s.runner, Router([RouteRule(name="all", pipelines=("test-image",))],
                                         s.runner.registry.available))
    _arrive(s, tmp_path)
    (small_outputs / "big").write_bytes(b"\1" * 1_500_000)
    s.pool.check_resources()
    [job] = s.jobs.jobs()
    assert (job.state, job.hold_reason, job.attempts) == (JobState.HELD, "disk_full", 0)
    assert "min_free_bytes" in (job.error or "")
    assert not s.pool._claimable()
    (small_outputs / "big").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_outputs)], check=True)
    s.pool.check_resources()
    condition = s.disks.condition
    assert condition is not None and condition[0] is ResourceCondition.READ_ONLY
    assert s.jobs.held_counts() == {"disk_full": 1}  # held already; still held
    subprocess.run(["mount", "-o", "remount,rw", str(small_outputs)], check=True)
    s.pool.check_resources()
    assert s.disks.condition is None and s.pool._claimable()
    assert _run_one(s) is JobState.DONE


def test_resource_errors_are_recognised_through_their_cause() -> None:
    wrapped = RuntimeError("writing the SEG failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert resource_condition(wrapped) is ResourceCondition.DISK_FULL
    assert resource_condition(OSError(errno.EROFS, "Read-only file system")) is ResourceCondition.READ_ONLY
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert resource_condition(full) is ResourceCondition.DISK_FULL
    assert resource_condition(OSError(errno.EACCES, "Permission denied")) is None
    assert resource_condition(ValueError("bad pixel data")) is None
    assert is_gpu_oom(OutOfMemoryError("CUDA out of memory"))
    assert is_gpu_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not is_gpu_oom(MemoryError("numpy could not allocate"))


def test_gpu_out_of_memory_is_retried_with_a_smaller_batch(tmp_path: Path) -> None:
    s = _setup(tmp_path, tmp_path / "outputs", {"oom_above_scale": 0.3}, gpu_oom_retries=2)
    _arrive(s, tmp_path)
    before = _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "smaller_batch"})
    assert _run_one(s) is JobState.DONE
    [stats] = (tmp_path / "outputs").rglob("stats.json")
    assert json.loads(stats.read_text())["batch_scale"] == 0.25  # 1 → 0.5 → 0.25
    after = _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "smaller_batch"})
    assert after == before + 2
    assert s.jobs.jobs()[0].attempts == 0


def test_gpu_out_of_memory_at_the_smallest_batch_runs_on_the_cpu_when_allowed(tmp_path: Path) -> None:
    s = _setup(tmp_path, tmp_path / "outputs", {"oom_on_gpu": True}, device="cuda",
               gpu_oom_retries=1, gpu_oom_cpu_fallback=True)
    _arrive(s, tmp_path)
    before = _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "cpu"})
    assert _run_one(s) is JobState.DONE
    [stats] = (tmp_path / "outputs").rglob("stats.json")
    assert json.loads(stats.read_text())["device"] == "cpu"
    assert _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "cpu"}) == before + 1
    assert s.runner.registry.get("test-image").device == "cuda"  # type: ignore[attr-defined]


def test_gpu_out_of_memory_without_the_cpu_fallback_is_a_failed_run(tmp_path: Path) -> None:
    s = _setup(tmp_path, tmp_path / "outputs", {"oom_on_gpu": True}, device="cuda", gpu_oom_retries=1)
    _arrive(s, tmp_path)
    before = _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "failed"})
    assert _run_one(s) is JobState.DEAD  # max_attempts 1
    [job] = s.jobs.jobs()
    assert job.attempts == 1 and "GPU memory" in (job.error or "")
    assert _sample("acqflow_gpu_oom_total", {"pipeline": "test-image", "action": "failed"}) == before + 1
    assert not os.path.exists(tmp_path / "outputs" / "test-image")


def test_a_full_state_disk_keeps_the_job_and_it_runs_once_space_returns(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _mount_tmpfs(state, "2m")
    try:
        s = _setup(tmp_path, tmp_path / "outputs", {})
        s.runner = JobRunner(**{**s.runner.__dict__, "settings": WorkerSettings(poll_seconds=0.05)})
        s.pool = WorkerPool(s.runner, Router([RouteRule(name="all", pipelines=("test-image",))],
                                             s.runner.registry.available))
        _arrive(s, tmp_path)
        filler = _fill(state)
        s.pool.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and s.disks.condition is None:
            time.sleep(0.05)
        condition = s.disks.condition  # the claim could not be written: work paused
        assert condition is not None and condition[0] is ResourceCondition.DISK_FULL
        time.sleep(0.5)
        s.pool.check_resources()  # no space came back
        assert s.disks.condition is not None
        assert s.jobs.counts() == {("test-image", "pending"): 1}
        assert not (tmp_path / "quarantine").exists()
        filler.unlink()
        s.pool.check_resources()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and s.jobs.counts() != {("test-image", "done"): 1}:
            time.sleep(0.05)
        s.pool.stop()
        [job] = s.jobs.jobs()
        assert (job.state, job.attempts) == (JobState.DONE, 0)
        assert not (tmp_path / "quarantine").exists()
        s.journal.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


def test_a_job_whose_state_cannot_be_written_goes_back_to_the_queue_once_space_returns(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    _mount_tmpfs(state, "2m")
    try:
        s = _setup(tmp_path, tmp_path / "outputs", {})
        s.runner = JobRunner(**{**s.runner.__dict__, "settings": WorkerSettings(poll_seconds=0.05)})
        s.pool = WorkerPool(s.runner, Router([RouteRule(name="all", pipelines=("test-image",))],
                                             s.runner.registry.available))
        _arrive(s, tmp_path)
        [job] = s.jobs.claim(["test-image"], 1)  # claimed for a worker, then the disk fills
        filler = _fill(state)
        s.pool._queue.put(job)
        s.pool.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not s.pool._unrecorded:
            time.sleep(0.05)
        assert s.pool._unrecorded == [job.id]  # neither start nor hold could be written
        assert s.jobs.counts() == {("test-image", "queued"): 1}
        filler.unlink()
        s.pool.check_resources()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and s.jobs.counts() != {("test-image", "done"): 1}:
            time.sleep(0.05)
        s.pool.stop()
        [done] = s.jobs.jobs()
        assert (done.state, done.attempts) == (JobState.DONE, 0) and not s.pool._unrecorded
        s.journal.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)
