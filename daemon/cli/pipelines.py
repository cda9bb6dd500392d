"""``acqflow train …`` and ``acqflow evaluate …``: the commands pipelines contribute."""

from __future__ import annotations

import importlib

import typer

from acqflow.daemon.cli.base import (
    handles_errors,
)

train_app = typer.Typer(help="Train a pipeline's model.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate a pipeline's model on held-out data.", no_args_is_help=True)

PIPELINE_COMMANDS = (
    ("virtual-staining", "virtual-staining", "acqflow.plugins.virtual_staining.commands"),
    ("efficiency-forecast", "efficiency-forecast", "acqflow.plugins.virtual_staining.forecast_commands"),
    ("ct-muscle", "ct-muscle", "acqflow.plugins.ct_muscle.commands"),
    ("mr-to-ct", "mr-muscle", "acqflow.plugins.mr_muscle.commands"),
)


def register_pipeline_commands() -> None:
    """Add the pipelines' train/evaluate commands; imported only when those groups run,
    because the pipelines' modules pull in numerical libraries the other commands do not need."""
    for train_name, evaluate_name, module_name in PIPELINE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "train"):
            train_app.command(train_name)(handles_errors(module.train))
        if hasattr(module, "evaluate"):
            evaluate_app.command(evaluate_name)(handles_errors(module.evaluate))

