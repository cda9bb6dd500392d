"""The Dask executor against real clusters: a ``distributed.LocalCluster`` with worker
processes, and ``dask scheduler`` / ``dask worker`` processes stopped by PID.

A real ``acqflow serve`` receives synthetic CT series (from dcmtk's ``storescu``, or imported
with ``acqflow import`` from an unsorted folder) and runs
the test pipeline on the cluster; the journal and the output folder are the judges.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_proc import REPO, TEST_PIPELINES, DaemonProcess, journal_rows, wait_until
from tests.support.peers import LOOPBACK, PeerSet, free_port, storescu, wait_for_port, write_synthetic_ct

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.integration


def _settings(root: Path, workers: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, "retry_initial_seconds": 0.5, **workers},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "series_quiet_seconds": 0.5, "allowed_calling_aes": ["STORESCU"]},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES, "options": {"test-series": options or {}}},
    }


def _jobs(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [dict(r) for r in journal_rows(daemon, "SELECT * FROM jobs ORDER BY id")]


def _all_done(daemon: DaemonProcess, count: int) -> bool:
    jobs = _jobs(daemon)
    return len(jobs) == count and all(j["state"] == "done" for j in jobs)


def _outputs(root: Path) -> dict[str, bytes]:
    base = root / "outputs"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def _send(daemon: DaemonProcess, root: Path, count: int, slices: int = 6) -> list[Path]:
    folders = []
    for index in range(count):
        series = write_synthetic_ct(root / "in" / f"s{index}", n_slices=slices, seed=f"dask-{index}",
                                    rows=32, cols=32)
        storescu(daemon.settings["dicom"]["port"], series.paths)
        folders.append(root / "in" / f"s{index}")
    return folders


@pytest.fixture
def local_cluster() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host=LOOPBACK, scheduler_port=free_port(),
        dashboard_address=f"{LOOPBACK}:0", worker_dashboard_address=f"{LOOPBACK}:0",
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _worker_pids(cluster: Any) -> dict[str, int]:
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        return dict(client.run(os.getpid))


def test_results_on_two_dask_workers_match_local_threads(tmp_path: Path, local_cluster: Any) -> None:
    """The same series through local threads and through a 2-worker LocalCluster: the
    same output files, byte for byte; status names the executor and its workers."""
    local = DaemonProcess(tmp_path / "local", _settings(tmp_path / "local", {}))
    local.start()
    try:
        _send(local, tmp_path / "local", 3)
        wait_until(lambda: _all_done(local, 3), 60, "local jobs", local)
    finally:
        assert local.terminate() == 0
    root = tmp_path / "dask"
    daemon = DaemonProcess(root, _settings(root, {
        "executor": "dask", "dask": {"scheduler": local_cluster.scheduler_address}}))
    daemon.start()
    try:
        _send(daemon, root, 3)
        wait_until(lambda: _all_done(daemon, 3), 120, "jobs on the cluster", daemon)
        status = daemon.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        executor = json.loads(status.stdout)["daemon"]["executor"]
        assert executor["kind"] == "dask" and executor["connected"] is True
        assert executor["address"] == local_cluster.scheduler_address
        assert len(executor["workers"]) == 2
        text = daemon.cli("status").stdout
        assert f"executor: dask at {local_cluster.scheduler_address}, connected" in text
    finally:
        assert daemon.terminate() == 0
    assert _outputs(root) == _outputs(tmp_path / "local")
    assert len(_outputs(root)) == 6  # a summary and a DICOM result per series
    assert all(j["attempts"] == 0 for j in _jobs(daemon))


def _archive(root: Path, count: int) -> Path:
    """``count`` CT series in one unsorted folder tree, with a file that is no DICOM."""
    archive = root / "archive"
    for index in range(count):
        write_synthetic_ct(archive / f"batch{index % 2}", n_slices=4 + index, seed=f"import-{index}",
                           rows=32, cols=32)
        for path in sorted((archive / f"batch{index % 2}").glob("CT*.dcm")):
            path.rename(path.with_name(f"s{index}-{path.name}"))
    (archive / "README.txt").write_text("scanned 2019")
    return archive


def test_an_imported_archive_on_two_dask_workers_matches_local_threads(
    tmp_path: Path, local_cluster: Any
) -> None:
    """``acqflow import`` of an unsorted folder of CT series into a running daemon, once
    with local threads and once on a 2-worker LocalCluster: every series done once, the
    same output files byte for byte; a second import registers nothing."""
    outputs = {}
    for name, workers in (("local", {}), ("dask", {
            "executor": "dask", "dask": {"scheduler": local_cluster.scheduler_address}})):
        root = tmp_path / name
        archive = _archive(root, 4)
        daemon = DaemonProcess(root, _settings(root, workers))
        daemon.start()
        try:
            done = daemon.cli("import", str(archive), "--json")
            assert done.returncode == 0, done.stderr
            summary = json.loads(done.stdout)
            assert (summary["series_new"], summary["instances"], summary["daemon_running"]) == (4, 22, True)
            assert summary["skipped"] == {"not DICOM": 1}
            wait_until(lambda d=daemon: _all_done(d, 4), 120, f"imported series on {name}", daemon)
            again = json.loads(daemon.cli("import", str(archive), "--json").stdout)
            assert (again["instances"], again["unchanged"]) == (0, again["files"])
            sources = {r["source"] for r in journal_rows(daemon, "SELECT source FROM arrivals")}
            assert sources == {"import"}
            assert all(j["attempts"] == 0 for j in _jobs(daemon))
        finally:
            assert daemon.terminate() == 0
        assert len(_jobs(daemon)) == 4
        outputs[name] = _outputs(root)
        assert all(p.is_file() for p in archive.rglob("*.dcm"))  # by reference: never moved
    assert len(outputs["local"]) == 8  # a summary and a DICOM result per series
    assert outputs["dask"] == outputs["local"]


def test_a_worker_killed_mid_job_runs_it_again_and_writes_once(tmp_path: Path, local_cluster: Any) -> None:
    """SIGKILL of the worker process inside the job: Dask runs it on the other worker, the
    journal records it done once, one set of outputs."""
    daemon = DaemonProcess(tmp_path, _settings(
        tmp_path, {"executor": "dask", "dask": {"scheduler": local_cluster.scheduler_address}},
        options={"delay_seconds": 4},
    ))
    daemon.start()
    try:
        assert daemon.cli("import", str(_archive(tmp_path, 1))).returncode == 0
        with distributed.Client(local_cluster.scheduler_address, set_as_default=False) as client:
            def busy_worker() -> str | None:
                running = [w for w, keys in client.processing().items()
                           if any(str(k).startswith("acqflow-job-") for k in keys)]
                return running[0] if running else None

            wait_until(lambda: busy_worker() is not None, 60, "the job on a worker", daemon, poll=0.05)
            time.sleep(1.0)  # inside the pipeline's delay
            victim = busy_worker()
            assert victim is not None
            os.kill(_worker_pids(local_cluster)[victim], signal.SIGKILL)
        wait_until(lambda: _all_done(daemon, 1), 120, "the job after the kill", daemon)
        [job] = _jobs(daemon)
        assert job["attempts"] == 0 and job["error"] is None
        outputs = journal_rows(daemon, "SELECT path FROM outputs")
        assert len(outputs) == 2 and len({r["path"] for r in outputs}) == 2
    finally:
        assert daemon.terminate() == 0
    assert len(_outputs(tmp_path)) == 2


class _CliCluster:
    """``dask scheduler`` and ``dask worker`` processes on loopback, stopped by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.scheduler: subprocess.Popen[bytes] | None = None

    def _spawn(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        log = (self.root / f"{module.rsplit('.', 1)[-1]}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path},
                                   cwd=self.root)
        self.processes.append(process)
        return process

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("distributed.cli.dask_scheduler", "--host", LOOPBACK, "--port",
                                     str(self.port), "--dashboard-address", f"{LOOPBACK}:0")
        wait_for_port(self.port, timeout=30)

    def start_worker(self) -> None:
        self._spawn("distributed.cli.dask_worker", self.address, "--nthreads", "1", "--host", LOOPBACK,
                    "--dashboard-address", f"{LOOPBACK}:0", "--nanny-port", "0",
                    "--local-directory", str(self.root / "worker"))

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()
        self.scheduler.wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def cli_cluster(tmp_path: Path) -> Iterator[_CliCluster]:
    (tmp_path / "cluster").mkdir()
    cluster = _CliCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_scheduler_lost_mid_run_resubmits_every_job_once(
    tmp_path: Path, cli_cluster: _CliCluster, peers: PeerSet
) -> None:
    """The scheduler killed while imported series run: the jobs go back to the journal
    without counting an attempt; once a new scheduler (and its workers) is up, every job
    is done once and every result exported once to a real storescp."""
    received = tmp_path / "received"
    _, scp_port = peers.storescp(received, extra=["--unique-filenames"])
    cli_cluster.start_scheduler()
    cli_cluster.start_worker()
    settings = _settings(
        tmp_path, {"executor": "dask", "dask": {"scheduler": cli_cluster.address, "in_flight": 4}},
        options={"delay_seconds": 3},
    )
    settings["export"] = {"poll_seconds": 0.5, "destinations": [
        {"name": "pacs", "ae_title": "STORESCP", "host": LOOPBACK, "port": scp_port}]}
    settings["routes"][0]["export"] = ["pacs"]
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        assert daemon.cli("import", str(_archive(tmp_path, 3))).returncode == 0
        wait_until(lambda: any(j["state"] == "running" for j in _jobs(daemon)), 60, "a running job", daemon)
        cli_cluster.kill_scheduler()
        wait_until(lambda: "given back" in daemon.log_tail(20000), 30, "jobs given back", daemon)
        assert not any(j["state"] == "done" for j in _jobs(daemon))
        cli_cluster.start_scheduler()  # as systemd restarts the units
        cli_cluster.start_worker()
        wait_until(lambda: _all_done(daemon, 3), 180, "every job after the restart", daemon)
        jobs = _jobs(daemon)
        assert [j["attempts"] for j in jobs] == [0, 0, 0]
        outputs = journal_rows(daemon, "SELECT path FROM outputs")
        assert len(outputs) == 6 and len({r["path"] for r in outputs}) == 6
        executor = json.loads(daemon.cli("status", "--json").stdout)["daemon"]["executor"]
        assert executor["connected"] is True
        exported = lambda: journal_rows(daemon, "SELECT state, attempts FROM exports")  # noqa: E731
        wait_until(lambda: [r["state"] for r in exported()] == ["done"] * 3, 60, "three exports", daemon)
    finally:
        assert daemon.terminate() == 0
    assert len(_outputs(tmp_path)) == 6
    assert len([p for p in received.iterdir() if p.is_file()]) == 3  # each result sent once


def test_unreachable_scheduler_refuses_the_start_or_falls_back(tmp_path: Path) -> None:
    address = f"tcp://{LOOPBACK}:{free_port()}"
    dask = {"scheduler": address, "connect_seconds": 2}
    refused = DaemonProcess(tmp_path / "a", _settings(tmp_path / "a", {"executor": "dask", "dask": dask}))
    with pytest.raises(RuntimeError) as excinfo:
        refused.start()
    assert f"workers.dask.scheduler: cannot reach the Dask scheduler at {address}" in str(excinfo.value)
    fallback = DaemonProcess(tmp_path / "b", _settings(
        tmp_path / "b", {"executor": "dask", "dask": {**dask, "fallback_local": True}}))
    fallback.start()
    try:
        assert fallback.state["executor"]["kind"] == "local"
        _send(fallback, tmp_path / "b", 1)
        wait_until(lambda: _all_done(fallback, 1), 60, "the job on local threads", fallback)
    finally:
        assert fallback.terminate() == 0


@pytest.mark.parametrize("inputs", ["shared", "ship"])
def test_inputs_reach_workers_through_a_path_map_or_as_bytes(
    tmp_path: Path, local_cluster: Any, inputs: str
) -> None:
    """Workers see the spool under another name (a path map onto a link to it), or get
    the files' bytes. A map onto a folder that does not exist fails in shared mode and is
    ignored when the bytes are shipped: the files really travel the way configured."""
    state = tmp_path / "state"
    (tmp_path / "worker-view").symlink_to(state, target_is_directory=True)
    good = [{"daemon": str(state), "worker": str(tmp_path / "worker-view")}]
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, {"executor": "dask", "max_attempts": 1, "dask": {
        "scheduler": local_cluster.scheduler_address, "inputs": inputs, "path_map": good}}))
    daemon.start()
    try:
        _send(daemon, tmp_path, 1)
        wait_until(lambda: _all_done(daemon, 1), 120, "the mapped job", daemon)
    finally:
        assert daemon.terminate() == 0
    daemon.settings["workers"]["dask"]["path_map"] = [{"daemon": str(state), "worker": "/nonexistent/spool"}]
    daemon.start()
    try:
        write_synthetic_ct(tmp_path / "in2", n_slices=4, seed="dask-other", rows=32, cols=32)
        storescu(daemon.settings["dicom"]["port"], sorted((tmp_path / "in2").glob("*.dcm")))
        wait_until(lambda: len(_jobs(daemon)) == 2 and _jobs(daemon)[1]["state"] in ("done", "dead"), 120,
                   "the second job", daemon)
        second = _jobs(daemon)[1]
        if inputs == "ship":
            assert second["state"] == "done", second["error"]
        else:
            assert second["state"] == "dead" and "/nonexistent/spool" in second["error"]
    finally:
        assert daemon.terminate() == 0


def test_local_workers_start_a_cluster_the_daemon_owns(tmp_path: Path) -> None:
    """``local_workers``: the daemon starts worker processes itself and stops them at exit."""
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, {"executor": "dask", "dask": {"local_workers": 1}}))
    daemon.start()
    try:
        executor = daemon.state["executor"]
        assert executor["kind"] == "dask" and executor["connected"] and len(executor["workers"]) == 1
        workers = _worker_processes(daemon.pid)
        assert workers, "no worker process under the daemon"
        _send(daemon, tmp_path, 1)
        wait_until(lambda: _all_done(daemon, 1), 120, "the job on the daemon's own cluster", daemon)
    finally:
        assert daemon.terminate() == 0
    import psutil

    def left() -> list[int]:  # multiprocessing's resource tracker ends just after the daemon
        return [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]

    deadline = time.monotonic() + 15
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left(), [" ".join(psutil.Process(p).cmdline()) for p in left()]


def _worker_processes(pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(pid).children(recursive=True)
            if "distributed" in " ".join(child.cmdline()) or "multiprocessing" in " ".join(child.cmdline())]
