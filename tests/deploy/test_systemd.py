"""The systemd unit: systemd-analyze accepts it, its hardening scores well, its essential
settings match what the daemon does (Type=notify with a watchdog, graceful SIGTERM, a
stop timeout longer than the drain, state where the settings put it), and the daemon
really sends READY=1, STATUS=, WATCHDOG=1 keep-alives (only while its threads make
progress) and STOPPING=1 over NOTIFY_SOCKET."""

from __future__ import annotations

import configparser
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acqflow.daemon.config import ExportSettings, WorkerSettings, load_settings
from tests.deploy import ACQFLOW, REPO, SYSTEMD, daemon_settings, start_daemon
from tests.support.daemon_proc import TEST_PIPELINES
from tests.support.peers import LOOPBACK, PeerSet, free_port

UNIT = SYSTEMD / "acqflow.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt: systemd)"
)
INSTALLED_ACQFLOW = "/opt/acqflow/venv/bin/acqflow"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False,
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        empty_lines_in_values=False,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def all_values(section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    values, current = [], ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def seconds(value: str) -> float:
    """A systemd time span (``180``, ``3min``, ``2min 30s``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit_name in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit_name]
    return total


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's acqflow: systemd-analyze
    checks that the program exists, and /opt/acqflow is not installed here."""
    text = UNIT.read_text()
    assert INSTALLED_ACQFLOW in text
    path = tmp_path / "acqflow.service"
    path.write_text(text.replace(INSTALLED_ACQFLOW, str(ACQFLOW)))
    return path


# --- systemd-analyze --------------------------------------------------------------------


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(testable_unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings for systemd: any line about our unit fails.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "acqflow" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@needs_systemd_analyze
def test_hardening_exposure_is_low(testable_unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for acqflow\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


# --- the unit's settings ----------------------------------------------------------------


def test_unit_runs_acqflow_serve_as_a_notify_service() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    program, *arguments = service["ExecStart"].split()
    assert Path(program).name == "acqflow" and arguments == ["serve"]
    assert "ACQFLOW_CONFIG=/etc/acqflow/acqflow.toml" in all_values("Service", "Environment")
    assert service["User"] == "acqflow" and service["Group"] == "acqflow"
    assert service["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_has_a_watchdog_the_daemon_feeds() -> None:
    service = unit()["Service"]
    watchdog = seconds(service["WatchdogSec"])
    assert 10 <= watchdog <= 300, watchdog
    assert service["NotifyAccess"] == "main"  # keep-alives come from the daemon's own pid
    assert service["Restart"] == "on-failure"  # a watchdog kill is a failure: restarted


def test_stop_is_sigterm_with_time_to_drain_jobs_and_finish_an_export() -> None:
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the daemon only, SIGKILL to all at the end
    drain = WorkerSettings().drain_seconds
    export = ExportSettings().timeout_seconds
    assert seconds(service["TimeoutStopSec"]) >= drain + export + 30


def test_hardening_keeps_watched_folders_readable_and_state_writable() -> None:
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "read-only"  # "yes" or "tmpfs" would hide /home shares
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service.get("PrivateDevices", "no") == "no"  # the GPU needs /dev/nvidia*
    for hiding in ("InaccessiblePaths", "TemporaryFileSystem", "ReadOnlyPaths", "RootDirectory"):
        assert hiding not in service, hiding
    assert service["StateDirectory"] == "acqflow"


def test_example_settings_keep_state_and_outputs_in_the_state_directory() -> None:
    settings = load_settings(REPO / "deploy" / "acqflow.example.toml", environ={})
    state_dir = Path("/var/lib") / unit()["Service"]["StateDirectory"]
    assert settings.paths.state_dir == state_dir
    assert settings.paths.outputs_dir.is_relative_to(state_dir)
    assert unit()["Service"]["WorkingDirectory"] == str(state_dir)


# --- the daemon speaks the notify protocol ----------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket like systemd's /run/systemd/notify (short path: AF_UNIX limit)."""
    folder = Path(tempfile.mkdtemp(prefix="acqflow-notify-", dir="/tmp"))
    path = folder / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, str(path)
    finally:
        sock.close()
        shutil.rmtree(folder)


def _receive(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    """Every notify line received within ``seconds``."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            lines.extend(_receive(sock, left).splitlines())
        except TimeoutError:
            break
    return lines


def _until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Notify lines up to and including the first that starts with ``wanted``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(line.startswith(wanted) for line in lines):
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted} within {timeout} s; got {lines}"
        lines.extend(_receive(sock, left).splitlines())
    return lines


@pytest.mark.integration
def test_daemon_notifies_ready_then_stopping_and_exits_0_on_sigterm(
    tmp_path: Path, peers: PeerSet, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    metrics_port = free_port()
    daemon, _state = start_daemon(
        peers, tmp_path, daemon_settings(tmp_path, metrics_port), extra_env={"NOTIFY_SOCKET": address}
    )
    lines = _until(sock, "READY=1", 30)
    # Preloading the routed model extends the start timeout first, then READY=1 with a status.
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in lines[: lines.index("READY=1")]), lines
    assert "STATUS=ready: 1 pipelines, 0 queued, 0 running" in lines, lines
    assert not any(line.startswith("WATCHDOG=") for line in lines)  # no WATCHDOG_USEC: no keep-alives
    # Ready means ready: the metrics endpoint answers.
    with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=5) as answer:
        assert b"acqflow_pipeline_up" in answer.read()
    assert daemon.stop(timeout=30) == 0, daemon.log_tail()  # SIGTERM, bounded wait
    assert "STOPPING=1" in _until(sock, "STOPPING=1", 5)
    assert not daemon.alive()


@pytest.mark.integration
def test_keep_alives_flow_while_idle_and_stop_when_a_worker_is_stuck(
    tmp_path: Path, peers: PeerSet, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    settings = daemon_settings(
        tmp_path,
        free_port(),
        health={"stall_seconds": 2.0, "busy_seconds": 2.0},
        # The job never ends by itself: a worker thread frozen inside a pipeline.
        pipelines={"modules": TEST_PIPELINES, "options": {"test-image": {"delay_seconds": 3600}}},
    )
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "600000"}  # a keep-alive every 0.3 s
    daemon, _state = start_daemon(peers, tmp_path, settings, extra_env=env)
    try:
        _until(sock, "READY=1", 30)
        # Idle for longer than every allowance: idle workers are alive, keep-alives go on.
        idle = _messages(sock, 4.0)
        assert idle.count("WATCHDOG=1") >= 6, idle
        assert not any(line.startswith("STATUS=stuck") for line in idle), idle
        image = np.zeros((32, 32), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "inbox" / "frozen_A01_t000.tif", image)
        stuck = _until(sock, "STATUS=stuck", 60)
        assert "acqflow-worker-0 stuck for" in stuck[-1], stuck
        # From now on silence: systemd's WatchdogSec would kill and restart the daemon.
        after = _messages(sock, 2.0)
        assert "WATCHDOG=1" not in after, after
    finally:
        daemon.popen.kill()  # the frozen job would hold a graceful stop for the whole drain
        daemon.popen.wait(10)
    assert "keep-alives stopped" in daemon.log_tail()
