"""The daemon's exception hierarchy, translated only at boundaries.

At the SCP an error becomes a DICOM failure status, in a worker a failed job and a
counter, in the CLI a one-line message and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "AcqflowError",
    "ConfigError",
    "ExportError",
    "InputRejected",
    "JournalError",
    "PipelineLoadError",
    "StartupError",
    "TransientError",
]


class AcqflowError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(AcqflowError):
    """The configuration is invalid; the message names the key."""


class JournalError(AcqflowError):
    """The journal cannot be opened or is inconsistent."""


class InputRejected(AcqflowError):
    """An input can never be processed (corrupt, truncated, wrong kind): quarantine it."""


class StartupError(AcqflowError):
    """The daemon could not start; whatever had started is stopped again."""


class TransientError(AcqflowError):
    """A failure that may pass (device busy, peer down): retry with backoff."""


class PipelineLoadError(AcqflowError):
    """A pipeline could not be discovered, imported or loaded; it disables itself."""


class ExportError(TransientError):
    """A DICOM export to a destination failed; the outbox retries it."""
