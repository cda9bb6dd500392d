"""Stand-alone CLI: ``python -m acqflow.plugins.virtual_staining train|evaluate|demo-data``."""

from __future__ import annotations

import typer

from acqflow.plugins.virtual_staining.commands import demo_data, evaluate, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Virtual-staining model tools.")
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("demo-data")(demo_data)

if __name__ == "__main__":
    app()
