"""``acqflow train …`` and ``acqflow evaluate …``: the commands pipelines contribute.

A plugin names its command functions in the entry-point groups ``acqflow.train`` and
``acqflow.evaluate`` (name → a function whose parameters carry typer annotations); the
CLI imports them only when one of these groups runs, because the pipelines' modules pull
in numerical libraries the other commands do not need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from acqflow.daemon.cli.base import handles_errors
from acqflow.daemon.cli.contributions import (
    PERMISSIVE,
    Contributions,
    load_contributions,
    unavailable_command,
)
from acqflow.plugins.api import EVALUATE_ENTRY_POINT_GROUP, TRAIN_ENTRY_POINT_GROUP

__all__ = ["discover_commands", "evaluate_app", "register_pipeline_commands", "train_app"]

train_app = typer.Typer(rich_markup_mode=None, help="Train a pipeline's model.", no_args_is_help=True)
evaluate_app = typer.Typer(rich_markup_mode=None, help="Evaluate a pipeline's model on held-out data.",
                           no_args_is_help=True)

Command = Callable[..., Any]


def _as_command(name: str, obj: object) -> Command:
    if isinstance(obj, type) or not callable(obj):
        raise TypeError(f"the entry point names a {type(obj).__name__}, not a command function")
    return obj


def discover_commands(group: str) -> Contributions[Command]:
    """The command functions of entry-point ``group`` (``acqflow.train`` or ``acqflow.evaluate``)."""
    return load_contributions(group, _as_command)


def _register(app: typer.Typer, found: Contributions[Command], what: str) -> None:
    app.registered_commands.clear()  # registering again replaces, never duplicates
    for name, function in found.loaded.items():
        app.command(name)(handles_errors(function))
    for item in found.unavailable:
        if item.name not in found.loaded:  # a second contribution of a name keeps the first one's command
            app.command(item.name, context_settings=PERMISSIVE)(unavailable_command(item, what))


def register_pipeline_commands() -> None:
    """Add the train/evaluate commands installed plugins contribute (again: replaces them)."""
    _register(train_app, discover_commands(TRAIN_ENTRY_POINT_GROUP), "train command")
    _register(evaluate_app, discover_commands(EVALUATE_ENTRY_POINT_GROUP), "evaluate command")
