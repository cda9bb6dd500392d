"""The Dask scheduler and worker units of docs/scale.md: systemd-analyze accepts them, and
they run the commands the docs name, restarted whenever they exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
DASK = Path(sys.executable).parent / "dask"
INSTALLED = "/opt/acqflow/venv/bin/dask"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt: systemd)")
@pytest.mark.skipif(not DASK.exists(), reason="the dask extra is not installed")
@pytest.mark.parametrize(("unit", "name"), [
    ("acqflow-dask-scheduler.service", "acqflow-dask-scheduler.service"),
    ("acqflow-dask-worker@.service", "acqflow-dask-worker@0.service"),
])
def test_systemd_analyze_verify_accepts_the_dask_units(tmp_path: Path, unit: str, name: str) -> None:
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, str(DASK)))
    if name != unit:  # an instance of the template
        (tmp_path / name).symlink_to(tmp_path / unit)
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / name)], capture_output=True,
                            text=True, timeout=60, check=False)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "acqflow" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_workers_restart_always_and_one_gpu_each() -> None:
    worker = (SYSTEMD / "acqflow-dask-worker@.service").read_text()
    scheduler = (SYSTEMD / "acqflow-dask-scheduler.service").read_text()
    assert "Restart=always" in worker and "Restart=always" in scheduler
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in worker and "--resources GPU=1" in worker
    assert "--nthreads 1" in worker
    assert f"{INSTALLED} scheduler --host 0.0.0.0 --port 8786" in scheduler
