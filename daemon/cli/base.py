"""What every command group shares: the consoles, the ``--config`` option, one-line
errors with their exit codes, settings and the journal. The bottom of the CLI package:
it imports no other module of it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from acqflow.daemon.config import Settings, load_settings
from acqflow.daemon.errors import AcqflowError, ConfigError
from acqflow.daemon.journal import Journal

__all__ = ["ConfigOption", "JsonOption", "console", "err", "fail", "handles_errors", "iso_time",
           "load_settings_for", "open_journal", "print_json", "progress_bar", "running_state", "warn"]

console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (default: $ACQFLOW_CONFIG or built-in defaults)."
    ),
]


JsonOption = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (JSON on stdout, stable keys).")
]


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as one error line on stderr; raise the returned exit."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print ``message`` as one warning line on stderr (never inside a live progress bar)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, markup=True)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, verbatim (no wrapping, no markup, no colour)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as local ISO 8601 with its offset (seconds), None for None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def handles_errors(func: F) -> F:
    """Translate the daemon's errors into a one-line message and a non-zero exit."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AcqflowError as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def load_settings_for(config: Path | None, **overrides: Any) -> Settings:
    """The settings of ``config`` (and ACQFLOW_*), with the overrides that are not None."""
    return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})


def open_journal(settings: Settings) -> Journal:
    """The journal of ``settings``; ConfigError when the daemon never ran with them."""
    if not settings.paths.journal.exists():
        raise ConfigError(
            f"no journal at {settings.paths.journal}: the daemon has not run with these settings"
        )
    return Journal(settings.paths.journal)


def running_state(settings: Settings) -> dict[str, Any] | None:
    """The running daemon's ``daemon.json``, None when no daemon runs with these settings."""
    state_file = settings.paths.state_dir / "daemon.json"
    try:
        state = json.loads(state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (FileNotFoundError, ProcessLookupError, ValueError, KeyError, TypeError):
        return None
    except PermissionError:  # running as another user (systemd's acqflow)
        pass
    return dict(state)


def progress_bar(disable: bool = False) -> Progress:
    """A progress bar on the console (never print errors or warnings inside one: leave its
    ``with`` block first; an exception leaving the block stops it before it is printed)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,  # --json: stdout holds the JSON alone
    )

