"""Prometheus: the shipped config and alert rules pass promtool, the alert unit tests
pass, rules select only metrics the daemon exports, every metric is documented, and a
real Prometheus scrapes a real daemon and evaluates the rules against it."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tifffile
import yaml

from acqflow.daemon.config import MetricsSettings
from tests.deploy import (
    COMPOSE,
    DOCS,
    PROMETHEUS_DIR,
    daemon_settings,
    exported_families,
    exposed_samples,
    expressions,
    panels,
    referenced_metrics,
    start_daemon,
    substitute,
)
from tests.support.daemon_proc import TEST_PIPELINES
from tests.support.peers import LOOPBACK, PeerProcess, PeerSet, free_port

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt: prometheus)")
RULES = PROMETHEUS_DIR / "alerts.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- promtool ---------------------------------------------------------------------------


@needs_promtool
def test_config_passes_promtool() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_compose_config_passes_promtool_with_the_same_rules(tmp_path: Path) -> None:
    # compose.yaml mounts both files side by side in /etc/prometheus/.
    shutil.copy(COMPOSE / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "alerts.yml")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_promtool() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_rule_has_unit_tests_that_pass_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    rules = {rule["alert"] for rule in alert_rules()}
    assert rules - firing == set(), f"alerts without a test in which they fire: {sorted(rules - firing)}"
    assert rules - quiet == set(), f"alerts without a test in which they stay quiet: {sorted(rules - quiet)}"
    assert firing | quiet <= rules, f"tests of alerts that do not exist: {sorted((firing | quiet) - rules)}"
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_export_backlog_waits_20_minutes_also_after_a_prometheus_restart() -> None:
    # The alert text promises 20 minutes; the timing comes from `for:`, so it cannot be
    # shortened by a range that starts where Prometheus' data starts (tested in
    # alerts.test.yml with a series that starts backed up and one with a gap).
    [rule] = [rule for rule in alert_rules() if rule["alert"] == "AcqflowExportBacklog"]
    assert rule["for"] == "20m"
    assert "20 minutes" in rule["annotations"]["description"]
    ranges = re.findall(r"\[(\d+)m\]", rule["expr"])
    assert all(int(minutes) <= 1 for minutes in ranges), rule["expr"]
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    names = {
        test["name"]
        for test in tests
        if any(case["alertname"] == rule["alert"] for case in test["alert_rule_test"])
    }
    assert {
        "export backlog after a Prometheus restart without history",
        "export backlog across a scrape gap and a failed scrape",
    } <= names


# --- static checks ----------------------------------------------------------------------


def test_scrape_target_is_the_daemons_default_metrics_endpoint() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "acqflow"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    defaults = MetricsSettings()
    assert targets == [f"{defaults.host}:{defaults.port}"] == ["127.0.0.1:9464"]
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_select_only_exported_metrics() -> None:
    exposed = exposed_samples()
    for rule in alert_rules():
        names = referenced_metrics(rule["expr"])
        unknown = names - set(exposed)
        assert not unknown, f"{rule['alert']} selects metrics the daemon does not export: {unknown}"
        for name in re.findall(r"(?:rate|increase)\(\s*(acqflow_[a-z_]+)", rule["expr"]):
            assert exposed[name] == "counter", f"{rule['alert']}: rate/increase of non-counter {name}"


def test_alerts_have_severity_summary_and_a_runbook_entry() -> None:
    operations = (DOCS / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/operations.md" and anchor == rule["alert"].lower()
        assert anchor in headings, f"docs/operations.md has no section '{rule['alert']}'"
    required = {
        "AcqflowDown",
        "AcqflowJobsDead",
        "AcqflowExportBacklog",
        "AcqflowExportsDead",
        "AcqflowInputErrors",
        "AcqflowInputsQuarantined",
        "AcqflowQueueBacklog",
        "AcqflowPipelineDown",
        "AcqflowSlowResults",
        "AcqflowReviewFlags",
    }
    assert required <= set(names)


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in (DOCS / "operations.md").read_text().splitlines():
        match = re.match(r"\|\s*`(acqflow_[a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if match:
            labels = tuple(re.findall(r"`([a-z_]+)`", match.group(3)))
            rows[match.group(1)] = (match.group(2), labels)
    for family in exported_families():
        assert family.name in rows, f"{family.name} is missing from the metrics table of docs/operations.md"
        assert rows[family.name] == (family.type, family.labels), family.name
    assert set(rows) == {f.name for f in exported_families()}, "the table lists metrics that do not exist"


# --- a real Prometheus scraping a real daemon -------------------------------------------


def _api(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/api/v1/{path}{query}", timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def _wait_for(what: str, check: Callable[[], bool], deadline: float, logs: Callable[[], str]) -> None:
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, json.JSONDecodeError):
            pass  # Prometheus still starting
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def _prometheus_config(tmp_path: Path, metrics_port: int) -> Path:
    shutil.copy(RULES, tmp_path / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": "acqflow", "static_configs": [{"targets": [f"{LOOPBACK}:{metrics_port}"]}]}
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_prometheus(peers: PeerSet, tmp_path: Path, metrics_port: int, port: int) -> PeerProcess:
    config = _prometheus_config(tmp_path, metrics_port)
    return peers.spawn(
        "prometheus",
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=warn",
        ],
    )


def _phase_tiff(seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 4096, size=(64, 64), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, photometric="minisblack")
    return buffer.getvalue()


def _series(port: int, query: str) -> list[dict[str, Any]]:
    return list(_api(port, "query", query=query)["result"])


@pytest.mark.integration
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt: prometheus)")
def test_prometheus_scrapes_the_daemon_and_evaluates_the_alerts(tmp_path: Path, peers: PeerSet) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    metrics_port, prometheus_port = free_port(), free_port()
    fail_marker = tmp_path / "fail-while-present"
    fail_marker.touch()
    settings = daemon_settings(
        tmp_path / "acqflow",
        metrics_port,
        workers={"device": "cpu", "poll_seconds": 0.2, "max_attempts": 1},
        pipelines={
            "modules": TEST_PIPELINES,
            "options": {"test-image": {"fail_marker": str(fail_marker)}},
        },
    )
    daemon, state = start_daemon(peers, tmp_path / "acqflow", settings)
    assert state["metrics_port"] == metrics_port
    # One input whose job fails on its only attempt: a dead job and a quarantined input.
    (tmp_path / "acqflow" / "inbox" / "EXP1_B03_pos1_t000_phase.tif").write_bytes(_phase_tiff(1))

    prometheus = _start_prometheus(peers, tmp_path, metrics_port, prometheus_port)

    def logs() -> str:
        return f"--- prometheus ---\n{prometheus.log_tail()}\n--- acqflow ---\n{daemon.log_tail()}"

    deadline = time.monotonic() + 90  # Prometheus scrapes a new target ~5 s after start
    _wait_for(
        "the acqflow target to be up",
        lambda: any(
            t["labels"]["job"] == "acqflow" and t["health"] == "up"
            for t in _api(prometheus_port, "targets")["activeTargets"]
        ),
        deadline,
        logs,
    )
    _wait_for(
        "acqflow_pipeline_up",
        lambda: any(
            s["metric"].get("pipeline") == "test-image" and s["value"][1] == "1"
            for s in _series(prometheus_port, "acqflow_pipeline_up")
        ),
        deadline,
        logs,
    )
    _wait_for(
        "a dead job in acqflow_queue_depth_jobs",
        lambda: any(
            s["metric"].get("pipeline") == "test-image" and s["value"][1] == "1"
            for s in _series(prometheus_port, 'acqflow_queue_depth_jobs{state="dead"}')
        ),
        deadline,
        logs,
    )

    def alert_states() -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in _api(prometheus_port, "alerts")["alerts"]}

    # AcqflowJobsDead waits 5 minutes before firing: pending here. The quarantine alert
    # has no delay and fires at once.
    _wait_for(
        "AcqflowJobsDead pending and AcqflowInputsQuarantined firing",
        lambda: (
            alert_states().get("AcqflowJobsDead") == "pending"
            and alert_states().get("AcqflowInputsQuarantined") == "firing"
        ),
        deadline,
        logs,
    )
    assert "AcqflowDown" not in alert_states()
    rules = [r for g in _api(prometheus_port, "rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, f"rules that fail to evaluate: {broken}"
    # Every dashboard query runs on real data as Grafana would send it.
    for where, expr in expressions():
        try:
            _api(prometheus_port, "query", query=substitute(expr))
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{where}: {error.read().decode()}") from None

    assert prometheus.stop(timeout=30) == 0, logs()
    assert daemon.stop(timeout=30) == 0, f"acqflow did not stop cleanly on SIGTERM\n{logs()}"
    assert "acqflow stopped" in daemon.log_tail()
    assert not (Path(settings["paths"]["state_dir"]) / "daemon.json").exists()
    leaked = [f"{p.pid} {p.name()}" for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not leaked, f"processes left running: {leaked}"
    assert not psutil.pid_exists(daemon.pid) and not psutil.pid_exists(prometheus.pid)


# Panels that show a measured value (a latency, a figure, a GPU reading): before their
# first result, or on a host without a GPU, they have nothing to show and say so with
# Grafana's noValue text; a 0 there would be a false reading. Every other panel counts
# events or shows a state and must show a number on a healthy daemon from the start.
VALUE_PANELS = {
    "Job duration (pipeline run time)",
    "Arrival to result",
    "C-STORE handling time",
    "Differentiation efficiency per well",
    "Latest efficiency per well",
    "Forecast final efficiency per well",
    # Empty is the healthy state here, but only once forecasts exist: says so in words.
    "Wells forecast insufficient",
    "Pipeline figures",
    "GPU memory used",
    "GPU utilisation",
    "GPU memory peak per job",
    "Pipeline devices",
}


def test_only_value_panels_may_have_no_data_and_they_say_why() -> None:
    with_text = {p["title"] for p in panels() if p["fieldConfig"]["defaults"].get("noValue")}
    assert with_text == VALUE_PANELS
    for panel in panels():
        if panel["title"] in VALUE_PANELS:
            for target in panel["targets"]:
                assert "vector(0)" not in target["expr"], f"{panel['title']}: 0 is not a reading"


@pytest.mark.integration
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt: prometheus)")
def test_every_panel_shows_a_value_on_a_healthy_daemon(tmp_path: Path, peers: PeerSet) -> None:
    # A fresh daemon with its DICOM receiver and a watched folder, nothing received and
    # nothing failed: the labelled counters do not exist yet, and the panels must show 0.
    metrics_port, prometheus_port = free_port(), free_port()
    settings = daemon_settings(
        tmp_path / "acqflow",
        metrics_port,
        dicom={"enabled": True, "port": free_port(), "spool_slots": 2, "spool_slot_bytes": 65536},
    )
    daemon, _state = start_daemon(peers, tmp_path / "acqflow", settings)
    prometheus = _start_prometheus(peers, tmp_path, metrics_port, prometheus_port)

    def logs() -> str:
        return f"--- prometheus ---\n{prometheus.log_tail()}\n--- acqflow ---\n{daemon.log_tail()}"

    # rate() needs two samples in its range; the queue gauges refresh every 5 s.
    _wait_for(
        "10 scrapes of the daemon",
        lambda: any(
            float(s["value"][1]) >= 10
            for s in _series(prometheus_port, 'count_over_time(up{job="acqflow"}[1m]) and up == 1')
        ),
        time.monotonic() + 90,
        logs,
    )
    empty: list[str] = []
    for panel in panels():
        for target in panel["targets"]:
            where = f"panel '{panel['title']}' {target['refId']}: {target['expr']}"
            result = _series(prometheus_port, substitute(target["expr"]))
            values = [float(s["value"][1]) for s in result]
            if panel["title"] in VALUE_PANELS:
                continue  # queried for errors only
            if not values or any(v != v for v in values):  # no series, or NaN
                empty.append(f"{where} -> {result}")
    assert not empty, "panels without a value on a healthy daemon:\n" + "\n".join(empty) + f"\n{logs()}"
    assert prometheus.stop(timeout=30) == 0, logs()
    assert daemon.stop(timeout=30) == 0, logs()
