"""Grafana: the dashboard is valid JSON whose queries select only metrics the daemon
exports and parse as PromQL, its data source is the provisioned one, and the compose
stack mounts the provisioning where the provider files expect it.

Grafana itself is not installed in the test environment, so the dashboard is checked by
structure; its queries are parsed by promtool (and run against a real Prometheus in
test_prometheus)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from acqflow.daemon.config import load_settings
from tests.deploy import (
    COMPOSE,
    GRAFANA,
    REPO,
    dashboard,
    exported_families,
    exposed_samples,
    expressions,
    panels,
    referenced_metrics,
    substitute,
)

DASHBOARD = GRAFANA / "dashboards" / "acqflow.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "acqflow.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "acqflow.yml"
PROMTOOL = shutil.which("promtool")


def provisioned_uid() -> str:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    return str(source["uid"])


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((COMPOSE / "compose.yaml").read_text()))


# --- the dashboard ----------------------------------------------------------------------


def test_dashboard_is_valid_json_with_unique_ids_and_a_tidy_grid() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "acqflow" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel '{panel['title']}' overlaps another"
        occupied |= cells
    for panel in panels():
        assert panel["title"] and panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_every_query_uses_the_provisioned_datasource() -> None:
    uid = provisioned_uid()
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in dashboard()["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid, variable["name"]


def test_series_names_follow_the_exposition_suffix_rules() -> None:
    exposed = exposed_samples()
    # counters: only name_total; histograms: _bucket/_sum/_count; gauges: the bare name.
    assert exposed["acqflow_jobs_total"] == "counter" and "acqflow_jobs" not in exposed
    assert exposed["acqflow_job_duration_seconds_bucket"] == "counter"
    assert {"acqflow_job_duration_seconds_sum", "acqflow_job_duration_seconds_count"} <= set(exposed)
    assert "acqflow_job_duration_seconds" not in exposed
    assert exposed["acqflow_queue_depth_jobs"] == "gauge"
    for wrong in (
        "acqflow_pipeline_up_total",
        "acqflow_queue_depth_jobs_bucket",
        "acqflow_jobs_total_total",
        "acqflow_export_pending_objects_count",
    ):
        assert wrong not in exposed, wrong


def test_queries_select_only_exported_metrics() -> None:
    exposed = exposed_samples()
    for where, expr in expressions():
        unknown = referenced_metrics(expr) - set(exposed)
        assert not unknown, f"{where} selects metrics acqflow.daemon.metrics does not export: {unknown}"
        for name in re.findall(r"(?:rate|irate|increase)\(\s*(acqflow_[a-z_]+)", expr):
            assert exposed[name] == "counter", f"{where}: rate/increase of the gauge {name}"
        if "histogram_quantile" in expr:
            assert re.search(r"acqflow_[a-z_]+_bucket\b", expr), f"{where}: quantile without _bucket"
            assert re.search(r"by \([^)]*\ble\b", expr), f"{where}: quantile must keep the le label"


def test_every_metric_is_on_the_dashboard_and_every_panel_metric_exists() -> None:
    # Both directions, from the collectors of acqflow.daemon.metrics: a metric without a panel,
    # and a panel selecting a series no collector exposes (a typo, a renamed metric).
    shown = set().union(*(referenced_metrics(expr) for _, expr in expressions()))
    missing = [f.name for f in exported_families() if not f.samples & shown]
    assert not missing, f"metrics without a panel: {missing}"
    exposed = set().union(*(f.samples for f in exported_families()))
    unknown = sorted(shown - exposed)
    assert not unknown, f"dashboard series that acqflow.daemon.metrics does not define: {unknown}"


def test_the_dashboard_covers_the_operational_views() -> None:
    shown = " ".join(expr for _, expr in expressions())
    for needed in (
        "acqflow_arrivals_total",
        "acqflow_jobs_total",
        "acqflow_queue_depth_jobs",
        "acqflow_job_duration_seconds_bucket",
        "acqflow_arrival_to_result_seconds_bucket",
        "acqflow_exports_total",
        "acqflow_export_pending_objects",
        "acqflow_input_errors_total",
        "acqflow_quarantined_total",
        "acqflow_dicom_instances_total",
        "acqflow_dicom_received_bytes_total",
        "acqflow_differentiation_efficiency",
        "acqflow_pipeline_up",
        "acqflow_disk_free_bytes",
        "acqflow_jobs_held",
        "acqflow_gpu_oom_total",
        "acqflow_dicom_connections_refused_total",
        "acqflow_gpu_memory_used_bytes",
        "acqflow_gpu_utilization_ratio",
        "acqflow_job_gpu_memory_peak_bytes",
        "acqflow_pipeline_device_info",
    ):
        assert needed in shown, needed
    efficiency = [e for _, e in expressions() if "acqflow_differentiation_efficiency" in e]
    assert any("$experiment" in e for e in efficiency)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt: prometheus)")
def test_queries_parse_as_promql(tmp_path: Path) -> None:
    # promtool parses the expression of every recording rule: one rule per query.
    rules = [
        {"record": f"dashboard:query_{index}", "expr": substitute(expr)}
        for index, (_, expr) in enumerate(expressions())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


# --- provisioning and the compose stack -------------------------------------------------


def _bind_mounts(service: str) -> dict[str, Path]:
    """Container path → host path of the service's bind mounts (relative to compose/)."""
    mounts: dict[str, Path] = {}
    for volume in compose()["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE / source).resolve()
    return mounts


def test_provider_and_datasource_provisioning_are_mounted_where_grafana_reads_them() -> None:
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    mounts = _bind_mounts("grafana")
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning/datasources"] == DATASOURCES.parent
    assert mounts["/etc/grafana/provisioning/dashboards"] == PROVIDERS.parent
    grafana_env = compose()["services"]["grafana"]["environment"]
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    variable = re.fullmatch(r"\$\{(\w+)\}", source["url"])
    assert variable, "the data source URL comes from Grafana's environment"
    assert grafana_env[variable.group(1)] == "http://prometheus:9090"
    home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_compose_mounts_existing_files_and_scrapes_the_daemon_it_runs() -> None:
    services = compose()["services"]
    assert {"acqflow", "prometheus", "grafana"} <= set(services)
    for name in services:
        for target, source in _bind_mounts(name).items():  # the inbox is a ${variable}
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    prometheus_mounts = _bind_mounts("prometheus")
    assert prometheus_mounts["/etc/prometheus/alerts.yml"] == (REPO / "deploy/prometheus/alerts.yml")
    build = services["acqflow"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"

    settings = load_settings(COMPOSE / "acqflow.toml", environ={})
    assert settings.metrics.host == "0.0.0.0"
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "acqflow"]
    assert job["static_configs"][0]["targets"] == [f"acqflow:{settings.metrics.port}"]
    acqflow = services["acqflow"]
    assert acqflow["stop_signal"] == "SIGTERM"
    assert "/etc/acqflow/acqflow.toml" in {t for t in _bind_mounts("acqflow")}
    assert any(str(port).endswith(f":{settings.dicom.port}") for port in acqflow["ports"])


def test_dockerfile_installs_the_cpu_torch_wheel_of_the_makefile_by_default() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    [pinned] = re.findall(r"^TORCH_VERSION \?= (\S+)$", makefile, re.MULTILINE)
    assert f"ARG TORCH_VERSION={pinned}" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    torch_line = dockerfile.index('"torch==${TORCH_VERSION}"')
    assert torch_line < dockerfile.index("pip install ."), "torch must be installed before acqflow"
    assert 'ENTRYPOINT ["acqflow"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    gpu = yaml.safe_load((COMPOSE / "compose.gpu.yaml").read_text())["services"]["acqflow"]
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
