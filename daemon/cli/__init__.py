"""The ``acqflow`` command line.

One module per command group, all on :mod:`acqflow.daemon.cli.base` (consoles, the
``--config`` option, one-line errors); this module assembles them and is the only one
that imports the others. Errors of the daemon's own kind become a one-line message on
stderr and exit code 2; nothing here imports torch at module level, so the CLI starts
fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from acqflow.daemon import __version__
from acqflow.daemon.cli import config, demo, fetch, importing, jobs, models, pipelines, report, service
from acqflow.daemon.cli.base import console

__all__ = ["app", "main"]

app = typer.Typer(
    name="acqflow",
    help="Acquisition-time AI for microscopy and CT/MR.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Help in click's plain layout: rich's panels squeeze the help column at 80 columns
    # and cut option names and words with an ellipsis; click wraps whole words.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"acqflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Acquisition-time AI for microscopy and CT/MR."""


app.command()(service.serve)
app.command()(service.status)
app.command()(jobs.jobs)
app.command()(jobs.exports)
app.command()(jobs.retry)
app.command()(jobs.reprocess)
app.command("import")(importing.import_files)
app.command()(fetch.fetch)
app.command()(models.models)
app.command()(service.echo)
app.add_typer(config.app, name="config")
app.add_typer(pipelines.train_app, name="train")
app.add_typer(pipelines.evaluate_app, name="evaluate")
app.add_typer(report.app, name="report")
app.add_typer(demo.app, name="demo")


def main() -> None:
    # What plugins contribute is loaded only for the groups that show it, so that the
    # other commands never import a plugin.
    group = sys.argv[1] if len(sys.argv) > 1 else None
    if group in ("train", "evaluate"):
        pipelines.register_pipeline_commands()
    elif group == "demo":
        demo.register_demo_commands()
    app()
