"""Heartbeats, the watchdog's keep-alive rule, and the readiness checks."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from acqflow.daemon.config import load_settings
from acqflow.daemon.health import Heartbeat, Readiness, Watchdog, WatchdogRules, watchdog_interval
from acqflow.daemon.journal import Journal
from acqflow.daemon.metrics import serve_metrics
from acqflow.daemon.service import Daemon

RULES = WatchdogRules(loop_allowance=0.2, busy_allowance=0.6)


def _watchdog(sent: list[str], *beats: Heartbeat) -> Watchdog:
    watchdog = Watchdog(sent.append, 60.0, RULES, lambda: "ready: 1 pipelines, 0 queued, 0 running")
    watchdog.watch(beats)
    return watchdog


def test_a_loop_past_its_allowance_stops_the_keep_alives_until_it_beats_again() -> None:
    sent: list[str] = []
    loop = Heartbeat("acqflow-dispatch")
    watchdog = _watchdog(sent, loop)
    watchdog.tick()
    assert sent == ["WATCHDOG=1", "STATUS=ready: 1 pipelines, 0 queued, 0 running"]
    time.sleep(0.3)
    sent.clear()
    watchdog.tick()
    assert len(sent) == 1 and sent[0].startswith("STATUS=stuck: acqflow-dispatch stuck for"), sent
    sent.clear()
    watchdog.tick()
    assert sent == []  # still stuck: no keep-alive, no repeated status
    loop.beat()
    watchdog.tick()
    assert sent == ["WATCHDOG=1", "STATUS=ready: 1 pipelines, 0 queued, 0 running"]


def test_an_idle_worker_is_alive_however_long_and_a_busy_one_gets_the_longer_allowance() -> None:
    sent: list[str] = []
    worker = Heartbeat("acqflow-worker-0")
    worker.idle()
    watchdog = _watchdog(sent, worker)
    time.sleep(0.7)  # past both allowances
    assert watchdog.problems() == []
    worker.busy()
    time.sleep(0.3)  # past the loop allowance, within the busy one
    assert watchdog.problems() == []
    time.sleep(0.4)
    assert [p.split(" stuck")[0] for p in watchdog.problems()] == ["acqflow-worker-0"]


def test_a_failing_probe_stops_the_keep_alives() -> None:
    sent: list[str] = []
    watchdog = _watchdog(sent)
    listening = [True]
    watchdog.probe("dicom", lambda: None if listening[0] else "not listening")
    watchdog.tick()
    listening[0] = False
    sent.clear()
    watchdog.tick()
    assert sent == ["STATUS=stuck: dicom: not listening"]


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process() -> None:
    import os

    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None


def test_readiness_names_every_check_that_fails(tmp_path: Path) -> None:
    readiness = Readiness(min_free_bytes=1 << 60)
    readiness.add("fine", lambda: None)
    readiness.add("broken", lambda: 1 / 0)  # type: ignore[func-returns-value]
    readiness.add_disk("state", tmp_path)
    readiness.add_disk("gone", tmp_path / "missing")
    failures = readiness.failures()
    assert set(failures) == {"broken", "disk state", "disk gone"}
    assert failures["broken"] == "ZeroDivisionError: division by zero"
    assert "bytes free, below" in failures["disk state"]
    assert "No such file or directory" in failures["disk gone"]


def test_metrics_endpoint_serves_healthz_readyz_and_the_exposition() -> None:
    registry = CollectorRegistry()
    Counter("acqflow_example_total", "example", registry=registry).inc()
    problems: dict[str, str] = {}
    port = serve_metrics("127.0.0.1", 0, registry, readiness=lambda: dict(problems))

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    assert get("/healthz") == (200, b'{"status": "ok"}')
    assert get("/readyz") == (200, b'{"status": "ok"}')
    problems["journal"] = "not writable: attempt to write a readonly database"
    status, body = get("/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "not ready", "not_ready": dict(problems)}
    assert get("/healthz")[0] == 200  # alive even when not ready
    status, body = get("/metrics")
    assert status == 200 and b"acqflow_example_total 1.0" in body


def test_the_journal_check_makes_a_real_write(tmp_path: Path) -> None:
    settings = load_settings(environ={"ACQFLOW_PATHS__STATE_DIR": str(tmp_path)})
    daemon = Daemon(settings)
    assert daemon._journal_problem() == "not open"
    daemon.journal = journal = Journal(tmp_path / "journal.sqlite3")
    try:
        assert daemon._journal_problem() is None
        assert journal.meta_value("ready_checked_at") is not None
        journal._db.execute("PRAGMA query_only=1")  # what a read-only file system does to writes
        problem = daemon._journal_problem()
        assert problem is not None and problem.startswith("not writable:"), problem
    finally:
        journal.close()
