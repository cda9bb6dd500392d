"""Start-up failures and ``config check``: a daemon that cannot start exits non-zero with
one line and leaves nothing listening; ``config check`` catches missing TLS files; the
files the daemon creates are 0640/0750 whatever the caller's umask."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from tests.support.daemon_proc import REPO, TEST_PIPELINES, DaemonProcess, toml_dumps, wait_until
from tests.support.peers import LOOPBACK, free_port

pytestmark = pytest.mark.integration


def _settings(root: Path, **sections: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"host": LOOPBACK, "port": free_port()},
        "dicom": {"enabled": True, "host": LOOPBACK, "port": free_port(), "spool_slots": 4},
        "folders": [{"path": str(root / "inbox"), "stable_seconds": 0.3}],
        "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    settings.update(sections)
    return settings


def _acqflow(
    root: Path, settings: dict[str, Any], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    config = root / "acqflow.toml"
    config.write_text(toml_dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_") and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "acqflow.daemon", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
        check=False,
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled to the last block: the state file system full."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def test_state_file_system_full_at_start_exits_non_zero_with_one_line(
    tmp_path: Path, full_tmpfs: Path
) -> None:
    settings = _settings(
        tmp_path, paths={"state_dir": str(full_tmpfs / "state"), "outputs_dir": str(tmp_path / "outputs")}
    )
    result = _acqflow(tmp_path, settings, "serve")
    assert result.returncode != 0
    line = _one_error_line(result)
    assert line.startswith("error: start-up failed while opening the journal"), line
    assert "disk is full" in line or "No space left" in line, line
    assert not _listening(settings["dicom"]["port"])


def test_a_source_failing_after_the_dicom_listener_started_stops_it_and_exits(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = _settings(tmp_path, folders=[{"path": str(blocker / "inbox")}])
    result = _acqflow(tmp_path, settings, "serve")  # before: the DICOM accept thread kept it alive
    assert result.returncode != 0
    line = _one_error_line(result)
    assert f"while watching {blocker / 'inbox'}" in line, line
    assert not _listening(settings["dicom"]["port"])
    assert not (tmp_path / "state" / "daemon.json").exists()


def test_an_unwritable_state_file_stops_the_start_before_any_listener(tmp_path: Path) -> None:
    (tmp_path / "state" / "daemon.json").mkdir(parents=True)  # the state file cannot be replaced
    settings = _settings(tmp_path)
    result = _acqflow(tmp_path, settings, "serve")
    assert result.returncode != 0
    assert "while writing the state file" in _one_error_line(result)
    assert not _listening(settings["dicom"]["port"])
    assert not _listening(settings["metrics"]["port"])


def _tls(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_config_check_catches_a_missing_tls_key_and_serve_prints_the_same_line(tmp_path: Path) -> None:
    cert, key = _tls(tmp_path)
    good = _settings(tmp_path)
    good["dicom"]["tls"] = {"certificate": str(cert), "private_key": str(key)}
    assert _acqflow(tmp_path, good, "config", "check").returncode == 0
    missing = tmp_path / "missing-key.pem"
    good["dicom"]["tls"]["private_key"] = str(missing)
    checked = _acqflow(tmp_path, good, "config", "check")
    assert checked.returncode == 2
    line = _one_error_line(checked)
    assert line == f"error: dicom.tls.private_key: file not found: {missing}", line
    served = _acqflow(tmp_path, good, "serve")
    assert served.returncode == 2 and _one_error_line(served) == line
    assert not _listening(good["dicom"]["port"])


def test_config_check_catches_a_key_that_does_not_match_and_a_missing_ca(tmp_path: Path) -> None:
    cert, _key = _tls(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _other_cert, other_key = _tls(other)
    settings = _settings(tmp_path)
    settings["dicom"]["tls"] = {"certificate": str(cert), "private_key": str(other_key)}
    line = _one_error_line(_acqflow(tmp_path, settings, "config", "check"))
    assert line.startswith("error: dicom.tls: certificate") and "do not load" in line, line
    settings["dicom"]["tls"] = {
        "certificate": str(cert),
        "private_key": str(_key),
        "ca_certificates": str(tmp_path / "ca.pem"),
    }
    line = _one_error_line(_acqflow(tmp_path, settings, "config", "check"))
    assert line == f"error: dicom.tls.ca_certificates: file not found: {tmp_path / 'ca.pem'}"


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_files_the_daemon_creates_are_not_world_readable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dicom={"enabled": False})
    (tmp_path / "inbox").mkdir()
    daemon = DaemonProcess(tmp_path, settings)
    old = os.umask(0o022)  # what make serve or a container gives: 0644 / 0755
    try:
        daemon.start()
    finally:
        os.umask(old)
    try:
        image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        tifffile.imwrite(tmp_path / "inbox" / "plate_A01_t000.tif", image)
        wait_until(lambda: any((tmp_path / "outputs").rglob("stats.json")), 60, "a result", daemon)
    finally:
        assert daemon.terminate() == 0, daemon.log_tail()
    outputs = _modes(tmp_path / "outputs")
    created = {**_modes(tmp_path / "state"), **{f"outputs/{k}": v for k, v in outputs.items()}}
    assert any(k.endswith("journal.sqlite3") for k in created), created
    assert any(k.endswith("stats.json") for k in created), created
    for name, mode in created.items():
        assert mode & 0o007 == 0, f"{name} is {mode:04o}"
        assert mode & 0o020 == 0, f"{name} is {mode:04o}"
