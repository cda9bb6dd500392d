"""The train/evaluate commands that pipelines contribute through the entry-point groups
``acqflow.train`` and ``acqflow.evaluate`` are registered on the daemon CLI."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from acqflow.daemon.cli import app, contributions
from acqflow.daemon.cli.pipelines import (
    discover_commands,
    evaluate_app,
    register_pipeline_commands,
    train_app,
)
from acqflow.plugins.api import EVALUATE_ENTRY_POINT_GROUP, TRAIN_ENTRY_POINT_GROUP


@pytest.fixture(autouse=True)
def installed_commands() -> Iterator[None]:
    """What ``main()`` registers for ``train``/``evaluate``; again afterwards, so that a
    test's broken entry points do not leak into the next."""
    register_pipeline_commands()
    yield
    register_pipeline_commands()


def _names(group: object) -> list[str | None]:
    return sorted(command.name for command in getattr(group, "registered_commands", []))


def test_the_built_in_pipelines_contribute_their_commands() -> None:
    assert _names(train_app) == ["ct-muscle", "efficiency-forecast", "mr-to-ct", "virtual-staining"]
    assert _names(evaluate_app) == ["ct-muscle", "efficiency-forecast", "mr-muscle", "virtual-staining"]
    assert not discover_commands(TRAIN_ENTRY_POINT_GROUP).unavailable
    assert not discover_commands(EVALUATE_ENTRY_POINT_GROUP).unavailable


def test_registering_again_does_not_duplicate() -> None:
    register_pipeline_commands()
    assert len(_names(train_app)) == len(set(_names(train_app))) == 4


def test_the_efficiency_forecast_commands_are_registered() -> None:
    shown = CliRunner().invoke(app, ["evaluate", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--morphology-noise" in shown.output
    shown = CliRunner().invoke(app, ["train", "efficiency-forecast", "--help"])
    assert shown.exit_code == 0 and "--courses" in shown.output


def test_a_command_that_fails_to_load_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = contributions.entry_points

    def with_broken(*, group: str) -> list[EntryPoint]:
        broken = EntryPoint(name="spectra", value="acqflow_no_such_plugin.commands:train", group=group)
        return [*installed(group=group), broken]

    monkeypatch.setattr(contributions, "entry_points", with_broken)
    register_pipeline_commands()
    assert "spectra" in _names(train_app) and "virtual-staining" in _names(train_app)
    listed = CliRunner().invoke(app, ["train", "--help"])
    assert listed.exit_code == 0 and "spectra" in listed.output and "Unavailable" in listed.output
    run = CliRunner().invoke(app, ["train", "spectra", "--epochs", "3"])
    assert run.exit_code == 2
    assert run.stderr.strip().count("\n") == 0
    assert "train command 'spectra' (acqflow_no_such_plugin.commands:train) is unavailable" in run.stderr
