"""The train/evaluate commands that pipelines contribute are registered on the daemon CLI."""

from __future__ import annotations

from typer.testing import CliRunner

from acqflow.daemon.cli import app
from acqflow.daemon.cli.pipelines import (
    PIPELINE_COMMANDS,
    evaluate_app,
    register_pipeline_commands,
    train_app,
)


def _names(group: object) -> set[str | None]:
    return {command.name for command in getattr(group, "registered_commands", [])}


def test_the_efficiency_forecast_commands_are_registered() -> None:
    module = "acqflow.plugins.virtual_staining.forecast_commands"
    entry = ("efficiency-forecast", "efficiency-forecast", module)
    assert entry in PIPELINE_COMMANDS
    if "efficiency-forecast" not in _names(train_app):  # main() registers them for train/evaluate
        register_pipeline_commands()
    assert "efficiency-forecast" in _names(train_app) and "efficiency-forecast" in _names(evaluate_app)
    shown = CliRunner().invoke(app, ["evaluate", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--morphology-noise" in shown.output
    shown = CliRunner().invoke(app, ["train", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--courses" in shown.output
