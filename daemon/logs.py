"""Logging set-up for ``acqflow serve``: text or JSON lines, journald-friendly.

- ``log_format = "json"``: one JSON object per line with ``timestamp``, ``level``,
  ``logger``, ``message`` and, where known, ``job_id``, ``arrival_id``, ``pipeline``,
  ``source``, ``sop_class`` and ``outcome``.
- Context fields come from :func:`log_context` (the worker wraps each job in it, so every
  line logged during a job, the pipeline's own included, names the job) and from
  ``extra=`` at a call site; ``source`` is also derived from the logger of a source.
- Under systemd (``JOURNAL_STREAM`` names our stderr) text lines carry a ``<N>``
  syslog priority prefix and no timestamp of their own: journald adds both.
- Third-party INFO chatter (highdicom, pynetdicom, APScheduler, watchdog, PIL) is
  raised to WARNING unless ``log_level`` is DEBUG.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "configure_logging", "log_context"]

CONTEXT_FIELDS = ("job_id", "arrival_id", "pipeline", "source", "sop_class", "outcome")
NOISY_LOGGERS = ("highdicom", "pynetdicom", "apscheduler", "watchdog", "PIL", "urllib3")
# Loggers of the sources: the ``source`` of their lines when none was given.
_SOURCE_LOGGERS = (("acqflow.daemon.folders", "folder"), ("acqflow.daemon.dicom", "dicom"))
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "acqflow_log_context", default=_NO_CONTEXT
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every record logged inside (in this thread) carries ``fields``."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    """Puts the context fields on each record (explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "source"):
            for prefix, source in _SOURCE_LOGGERS:
                if record.name.startswith(prefix):
                    record.source = source
                    break
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; no colour, no multi-line output (tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_text:  # already scrubbed of patient values (acqflow.daemon.redaction)
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _JournaldFormatter(logging.Formatter):
    """``<priority>logger: message``: journald reads the priority and stamps the time."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _journald_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``JOURNAL_STREAM``)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stat.st_dev == int(device) and stat.st_ino == int(inode)


def configure_logging(
    level: str, log_format: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Set up the root logger for the daemon (replaces any handler set before)."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif _journald_stream(stream, environ):
        formatter = _JournaldFormatter("%(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.NOTSET if level == "DEBUG" else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
