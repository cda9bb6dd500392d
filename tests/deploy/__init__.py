"""Tests of the operations layer: Prometheus config and alerts, Grafana, compose, systemd.

Shared here: where the deployment files are, which metric series the daemon can expose
(derived from the collectors in ``acqflow.daemon.metrics``, so a renamed metric breaks the
dashboard and alert tests at once), and how to start a real ``acqflow serve``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from acqflow.daemon import metrics
from tests.support.daemon_proc import TEST_PIPELINES, toml_dumps
from tests.support.peers import PeerProcess, PeerSet

__all__ = [
    "ACQFLOW",
    "COMPOSE",
    "DOCS",
    "GRAFANA",
    "PROMETHEUS_DIR",
    "REPO",
    "SYSTEMD",
    "MetricFamily",
    "daemon_settings",
    "dashboard",
    "exported_families",
    "exposed_samples",
    "expressions",
    "panels",
    "referenced_metrics",
    "start_daemon",
    "substitute",
]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
COMPOSE = REPO / "deploy" / "compose"
SYSTEMD = REPO / "systemd"
DOCS = REPO / "docs"
# The console script of this environment: what a package install puts on PATH.
ACQFLOW = Path(sys.executable).with_name("acqflow")

METRIC_NAME = re.compile(r"\bacqflow_[a-z_]+\b")
DASHBOARD = GRAFANA / "dashboards" / "acqflow.json"
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$instance": ".*",
    "$pipeline": ".*",
    "$experiment": ".*",
}


@dataclass(frozen=True)
class MetricFamily:
    """One metric of ``acqflow.daemon.metrics`` as Prometheus sees it."""

    name: str  # as documented: counters with _total, others as defined
    type: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    samples: frozenset[str]  # every series name it can expose


def _samples(family: str, kind: str) -> dict[str, str]:
    """Series name → the type that series behaves as (counter or gauge)."""
    if kind == "counter":
        return {f"{family}_total": "counter", f"{family}_created": "gauge"}
    if kind == "histogram":
        return {
            f"{family}_bucket": "counter",
            f"{family}_count": "counter",
            f"{family}_sum": "counter",
            f"{family}_created": "gauge",
        }
    if kind == "summary":
        return {
            family: "gauge",
            f"{family}_count": "counter",
            f"{family}_sum": "counter",
            f"{family}_created": "gauge",
        }
    return {family: "gauge"}


def exported_families() -> list[MetricFamily]:
    """Every collector defined in ``acqflow.daemon.metrics``."""
    families: list[MetricFamily] = []
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = tuple(value._labelnames)  # the declared label names; no public accessor
        for described in value.describe():
            samples = _samples(described.name, described.type)
            shown = f"{described.name}_total" if described.type == "counter" else described.name
            families.append(MetricFamily(shown, described.type, labels, frozenset(samples)))
    return sorted(families, key=lambda f: f.name)


def exposed_samples() -> dict[str, str]:
    """Every series name the daemon can expose → counter or gauge behaviour."""
    exposed: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for described in value.describe():
                exposed.update(_samples(described.name, described.type))
    return exposed


def referenced_metrics(expr: str) -> set[str]:
    """The acqflow series names a PromQL expression selects."""
    return set(METRIC_NAME.findall(expr))


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels without the row headers."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query and template variable of the dashboard."""
    for panel in panels():
        for target in panel["targets"]:
            yield f"panel '{panel['title']}' {target['refId']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query}"
        yield f"variable {variable['name']}", match.group(1)


def substitute(expr: str) -> str:
    """The query as Grafana sends it, with every variable replaced."""
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def daemon_settings(root: Path, metrics_port: int, **sections: Any) -> dict[str, Any]:
    """Settings for a test daemon: state under ``root``, metrics on ``metrics_port``,
    no DICOM, one watched folder, the in-memory test pipelines, images → test-image."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "dicom": {"enabled": False},
        "folders": [{"path": str(inbox), "stable_seconds": 0.5, "rescan_seconds": 30.0}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    settings.update(sections)
    return settings


def start_daemon(
    peers: PeerSet,
    root: Path,
    settings: dict[str, Any],
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[PeerProcess, dict[str, Any]]:
    """Run ``acqflow serve --config <root>/acqflow.toml``; returns once it wrote its state
    file (daemon.json with its own pid). Raises RuntimeError/TimeoutError with its log."""
    config = root / "acqflow.toml"
    config.write_text(toml_dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_") and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    state_file = Path(settings["paths"]["state_dir"]) / "daemon.json"
    process = peers.spawn("acqflow", [str(ACQFLOW), "serve", "--config", str(config)], env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"acqflow exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        if state.get("pid") == process.pid:
            return process, state
        time.sleep(0.1)
    raise TimeoutError(f"acqflow not ready after {timeout:.0f} s:\n{process.log_tail()}")
