"""The train/evaluate commands that pipelines contribute are registered on the daemon CLI."""

from __future__ import annotations

from typer.testing import CliRunner

from daemon.cli import app, evaluate_app, train_app
from daemon.cli_commands import PIPELINE_COMMANDS, register_pipeline_commands


def _names(group: object) -> set[str | None]:
    return {command.name for command in getattr(group, "registered_commands", [])}


def test_the_efficiency_forecast_commands_are_registered() -> None:
    entry = ("efficiency-forecast", "efficiency-forecast", "plugins.virtual_staining.forecast_commands")
    assert entry in PIPELINE_COMMANDS
    if "efficiency-forecast" not in _names(train_app):  # main() registers them for train/evaluate
        register_pipeline_commands()
    assert "efficiency-forecast" in _names(train_app) and "efficiency-forecast" in _names(evaluate_app)
    shown = CliRunner().invoke(app, ["evaluate", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--morphology-noise" in shown.output
    shown = CliRunner().invoke(app, ["train", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--courses" in shown.output
