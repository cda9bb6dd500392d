"""Stand-alone CLI: ``python -m acqflow.plugins.mr_muscle train|evaluate``."""

from __future__ import annotations

import typer

from acqflow.plugins.mr_muscle.commands import evaluate, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MR-to-CT CycleGAN tools.")
app.command("train")(train)
app.command("evaluate")(evaluate)

if __name__ == "__main__":
    app()
