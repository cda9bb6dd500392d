"""The daemon's exception hierarchy, translated only at boundaries.

At the SCP an error becomes a DICOM failure status, in a worker a failed job and a
counter, in the CLI a one-line message and a non-zero exit.
"""

from __future__ import annotations

import errno

__all__ = [
    "AcqflowError",
    "BindError",
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


class BindError(StartupError):
    """A listening socket could not be bound; the message names the setting and address.

    ``section`` is the settings section (``dicom``, ``metrics``) whose ``host``/``port``
    the socket was bound to; ``cause`` is the OSError of ``bind``.
    """

    def __init__(self, section: str, host: str, port: int, cause: OSError) -> None:
        self.section, self.host, self.port, self.cause = section, host, port, cause
        setting = f"{section}.host" if cause.errno == errno.EADDRNOTAVAIL else f"{section}.port"
        reason = (cause.strerror or str(cause)).lower()
        if cause.errno == errno.EADDRINUSE:
            reason += f": another program (another acqflow?) listens there; stop it or change {setting}"
        elif cause.errno == errno.EACCES:
            reason += f": ports below 1024 need privileges; choose another {setting}"
        super().__init__(f"{setting}: cannot listen on {host}:{port}: {reason}")


class TransientError(AcqflowError):
    """A failure that may pass (device busy, peer down): retry with backoff."""


class PipelineLoadError(AcqflowError):
    """A pipeline could not be discovered, imported or loaded; it disables itself."""


class ExportError(TransientError):
    """A DICOM export to a destination failed; the outbox retries it."""
