"""Each CLI error is one line naming the setting or input, with a non-zero exit; and
what is not an error (nothing dead to retry) exits 0."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from acqflow.daemon.cli import app
from acqflow.models.store import ModelCard, bundled_weights_dir, save_weights
from tests.support.cli_terminal import CliState, cli_env, prepared_state


def _acqflow(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "acqflow.daemon", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env())


def _error_line(stderr: str) -> str:
    """The one error line (the daemon's own log lines before it are allowed)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def state(tmp_path: Path) -> CliState:
    return prepared_state(tmp_path)


def test_retry_all_dead_with_nothing_dead_exits_0(tmp_path: Path, state: CliState) -> None:
    assert _acqflow("retry", "--all-dead", "--config", str(state.config)).returncode == 0  # the dead job
    again = _acqflow("retry", "--all-dead", "--config", str(state.config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "nothing dead to retry"
    fresh = tmp_path / "fresh.toml"  # the daemon never ran: no journal, nothing dead either
    fresh.write_text(f'[paths]\nstate_dir = "{tmp_path / "never"}"\n')
    never = _acqflow("retry", "--all-dead", "--json", "--config", str(fresh))
    assert never.returncode == 0, never.stderr
    assert json.loads(never.stdout)["jobs"] == [] and "nothing dead to retry" in never.stdout
    named = _acqflow("retry", "7", "--config", str(fresh))  # a named id needs the journal
    assert named.returncode == 2 and "no journal at" in _error_line(named.stderr)


def test_retry_json_names_what_went_back(state: CliState) -> None:
    result = _acqflow("retry", "--all-dead", "--json", "--config", str(state.config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "jobs": [state.dead_job], "exports": [], "skipped_jobs": [], "skipped_exports": [],
        "message": "1 job(s) and 0 export(s) queued again",
    }


def test_reprocess_wait_without_a_daemon_fails_at_once(state: CliState) -> None:
    started = time.monotonic()
    result = _acqflow("reprocess", f"job:{state.done_job}", "--wait", "--json", "--config", str(state.config))
    assert time.monotonic() - started < 30  # not the 3600 s timeout
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert "no daemon runs with these settings" in line and "stay queued" in line
    assert json.loads(result.stdout)["jobs"]  # queued all the same, for the next start


def test_reprocess_errors_are_lines_of_their_own(state: CliState, tmp_path: Path) -> None:
    missing = _acqflow("reprocess", str(tmp_path / "nowhere.tif"), "--config", str(state.config))
    assert missing.returncode == 2
    line = _error_line(missing.stderr)
    assert line.endswith("is not a file, folder, series UID or job id")
    assert "queueing" not in missing.stdout + missing.stderr  # no progress bar was started
    unknown = _acqflow("reprocess", "job:99", "--config", str(state.config))
    assert unknown.returncode == 2 and _error_line(unknown.stderr) == "error: no job job:99"


@pytest.mark.parametrize("section", ["dicom", "metrics"])
def test_serve_on_a_busy_port_names_the_setting(tmp_path: Path, section: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "metrics" if section == "dicom" else "dicom"
        config = tmp_path / "acqflow.toml"
        config.write_text(
            f'[paths]\nstate_dir = "{tmp_path / "state"}"\noutputs_dir = "{tmp_path / "out"}"\n'
            f'[{section}]\nhost = "127.0.0.1"\nport = {port}\n[{other}]\nport = 0\n'
            '[pipelines]\npreload = false\n'
        )
        result = _acqflow("serve", "--config", str(config), timeout=120)
    assert result.returncode == 2
    line = _error_line(result.stderr)
    expected = f"error: {section}.port: cannot listen on 127.0.0.1:{port}: address already in use"
    assert line.startswith(expected), line


def test_train_refuses_the_bundled_weights_folder_and_needs_output() -> None:
    from acqflow.daemon.cli.pipelines import register_pipeline_commands

    register_pipeline_commands()
    runner = CliRunner()
    for command in ("virtual-staining", "ct-muscle", "mr-to-ct", "efficiency-forecast"):
        refused = runner.invoke(app, ["train", command, "--output", str(bundled_weights_dir())])
        assert refused.exit_code == 2, (command, refused.output)
        assert "is the bundled weights folder" in refused.output
        assert len(refused.output.strip().splitlines()) == 1, refused.output
        missing = runner.invoke(app, ["train", command])
        assert missing.exit_code == 2 and "--output" in missing.output


def test_save_weights_follows_the_umask(tmp_path: Path) -> None:
    card = ModelCard(name="tiny", version="1.0.0", architecture="Linear", arguments={}, metrics={})
    old = os.umask(0o022)
    try:
        card_path = save_weights(torch.nn.Linear(2, 1), card, tmp_path / "a")
        os.umask(0o027)
        strict = save_weights(torch.nn.Linear(2, 1), card, tmp_path / "b")
    finally:
        os.umask(old)
    for path in (card_path, card_path.with_suffix(".safetensors")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(strict.with_suffix(".safetensors").stat().st_mode) == 0o640
