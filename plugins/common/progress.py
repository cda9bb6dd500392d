"""Training progress that reads well on a terminal and in a log file.

On a terminal it is a rich progress bar; otherwise (a background run writing to a log,
``nohup``, systemd) it prints plain lines: one every ``every`` seconds or at least
every tenth of the work, with the step count, the elapsed time and an estimate of the
time left, so ``tail -f`` shows that a long run is alive and when it will end.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO

__all__ = ["TrainingProgress"]


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class TrainingProgress:
    """Counts ``total`` steps (``completed`` already done, e.g. when resuming)."""

    def __init__(self, description: str, total: int, completed: int = 0,
                 stream: IO[str] | None = None, every: float = 60.0) -> None:
        if total < 0 or not 0 <= completed <= max(total, 0):
            raise ValueError(f"progress {completed} of {total} steps")
        self.description = description
        self.total = total
        self.completed = completed
        self._stream = stream or sys.stderr
        self._every = every
        self._terminal = bool(getattr(self._stream, "isatty", lambda: False)())
        self._started = time.monotonic()
        self._first = completed
        self._last_line = self._started
        self._tenth = max(1, -(-total // 10))  # a line at least every tenth of the steps
        self._next_mark = completed + self._tenth
        self._bar: object | None = None
        self._task: object | None = None

    def __enter__(self) -> TrainingProgress:
        if self._terminal:
            from rich.console import Console
            from rich.progress import Progress

            bar = Progress(console=Console(file=self._stream))
            bar.start()
            self._task = bar.add_task(self.description, total=self.total, completed=self.completed)
            self._bar = bar
        else:
            self._print(f"{self.description}: {self.completed}/{self.total} steps done, starting")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]
        elif kind is None:
            self._print(f"{self.description}: done, {self.completed}/{self.total} steps in "
                        f"{_duration(time.monotonic() - self._started)}")

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more; on a log, print a line when one is due."""
        self.completed += steps
        if self._bar is not None:
            self._bar.advance(self._task, steps)  # type: ignore[attr-defined]
            return
        now = time.monotonic()
        fraction = self.completed / self.total if self.total else 1.0
        if now - self._last_line >= self._every or self.completed >= self._next_mark:
            done = self.completed - self._first
            rate = done / max(now - self._started, 1e-9)
            left = (self.total - self.completed) / rate if rate > 0 else float("nan")
            self._print(f"{self.description}: {self.completed}/{self.total} steps "
                        f"({100 * fraction:.0f} %), elapsed "
                        f"{_duration(now - self._started)}, about {_duration(left)} left")
            self._last_line = now
            self._next_mark = self.completed + self._tenth

    def line(self, text: str) -> None:
        """A message of its own (an epoch's result), above the bar or as a log line."""
        if self._bar is not None:
            self._bar.console.print(text)  # type: ignore[attr-defined]
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=self._stream, flush=True)
