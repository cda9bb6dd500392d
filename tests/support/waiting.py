"""Polling until a condition holds, for tests that wait on threads or processes."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["poll_until"]


def poll_until(condition: Callable[[], bool], timeout: float = 5.0, poll: float = 0.01,
               what: str = "a condition") -> None:
    """Return once ``condition()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
