"""acqflow daemon: sources, journal, router, workers, sinks, scheduler, metrics, CLI."""

from __future__ import annotations

__version__ = "0.1.0"
