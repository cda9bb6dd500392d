"""Executor pieces without a cluster: path mapping, the outcome of a remote run, settings."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from acqflow.daemon.config import DaskSettings, WorkerSettings, load_settings
from acqflow.daemon.errors import ConfigError, InputRejected, PipelineLoadError, TransientError
from acqflow.daemon.resources import ResourceCondition, resource_condition

distributed = pytest.importorskip("distributed")

from acqflow.daemon.execution.dask_cluster import RemoteJobError, map_path  # noqa: E402
from acqflow.daemon.execution.task import OutcomeStatus, TaskOutcome, _outcome  # noqa: E402


def test_the_longest_mapped_prefix_wins_and_unmapped_paths_become_absolute(tmp_path: Path) -> None:
    settings = DaskSettings(scheduler="tcp://127.0.0.1:1", path_map=(
        {"daemon": tmp_path, "worker": "/mnt/all"},
        {"daemon": tmp_path / "spool", "worker": "/mnt/spool"},
    ))
    assert map_path(tmp_path / "spool" / "a" / "b.dcm", settings) == "/mnt/spool/a/b.dcm"
    assert map_path(tmp_path / "other" / "c.tif", settings) == "/mnt/all/other/c.tif"
    assert map_path(tmp_path / "spool", settings) == "/mnt/spool"
    assert map_path(Path("relative/x.dcm"), DaskSettings(scheduler="tcp://h:1")) == str(
        Path("relative/x.dcm").absolute()
    )
    # a sibling whose name only starts like a mapped folder is not under it
    assert map_path(Path(f"{tmp_path}-other/x"), settings) == f"{tmp_path}-other/x"


def test_settings_refuse_dask_without_a_cluster_and_both_kinds_at_once() -> None:
    with pytest.raises(ValueError, match=r"workers\.dask\.scheduler or workers\.dask\.local_workers"):
        WorkerSettings(executor="dask")
    with pytest.raises(ValueError, match="either scheduler"):
        DaskSettings(scheduler="tcp://h:8786", local_workers=2)
    with pytest.raises(ValueError, match="tcp://host:8786"):
        DaskSettings(scheduler="h:8786")
    with pytest.raises(ValueError, match="absolute"):
        DaskSettings(scheduler="tcp://h:1", path_map=({"daemon": "/a", "worker": "b"},))


def test_executor_settings_load_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "acqflow.toml"
    config.write_text('[workers]\nexecutor = "dask"\n[workers.dask]\nscheduler = "tcp://10.0.0.5:8786"\n'
                      'inputs = "ship"\ngpu_resources = true\n')
    workers = load_settings(config).workers
    assert workers.executor.value == "dask" and workers.dask.inputs.value == "ship"
    assert workers.dask.gpu_resources and workers.dask.scheduler == "tcp://10.0.0.5:8786"
    config.write_text('[workers]\nexecutor = "slurm"\n')
    with pytest.raises(ConfigError, match=r"workers\.executor"):
        load_settings(config)


def test_a_full_disk_on_the_worker_comes_back_as_a_disk_condition() -> None:
    outcome = _outcome(OutcomeStatus.RESOURCE, "tcp://w:1", OSError(errno.ENOSPC, "No space left"))
    assert outcome.errno == errno.ENOSPC
    assert resource_condition(OSError(outcome.errno, outcome.error)) is ResourceCondition.DISK_FULL
    read_only = _outcome(OutcomeStatus.RESOURCE, "tcp://w:1", OSError(errno.EROFS, "Read-only"))
    assert resource_condition(OSError(read_only.errno, read_only.error)) is ResourceCondition.READ_ONLY


@pytest.mark.parametrize(("status", "raised"), [
    (OutcomeStatus.REJECTED, InputRejected),
    (OutcomeStatus.LOAD_FAILED, PipelineLoadError),
    (OutcomeStatus.TRANSIENT, TransientError),
    (OutcomeStatus.RESOURCE, OSError),
    (OutcomeStatus.FAILED, RemoteJobError),
])
def test_each_remote_outcome_becomes_the_error_the_job_runner_expects(
    status: OutcomeStatus, raised: type[Exception]
) -> None:
    from acqflow.daemon.execution.dask_cluster import DaskExecutor
    from acqflow.daemon.jobqueue import Job
    from acqflow.daemon.journal import JobState

    job = Job(1, 1, 0, "p", JobState.RUNNING, 0, 0, None, (), "r", None, 0.0, None, None)
    outcome = TaskOutcome(status, "tcp://w:1", error="what happened", errno=errno.ENOSPC)
    executor = DaskExecutor.__new__(DaskExecutor)
    with pytest.raises(raised, match="what happened") as info:
        executor._computed(job, outcome, summarizes=False)
    if status is not OutcomeStatus.REJECTED:  # a refused input is about the input, not the worker
        assert "tcp://w:1" in str(info.value)
