"""Error and log text without patient identifiers, names or birth dates.

Exceptions from pydicom and highdicom quote the value they fail on (``Unable to convert
'1972-03-04' to 'DA' object``, ``'male' is not a valid PatientSexValues``), and such text
reaches the journal, ``reason.json``, the logs and ``acqflow jobs``. :func:`scrub` is
applied wherever exception text is stored or logged:

* every quoted span is replaced by ``'…'`` unless it is plainly not a value of a patient
  (a DICOM keyword or VR, a UID, a file-system path, a number of up to 4 digits);
* the identifying values of the item a worker thread is processing (:func:`remember`:
  names and their components, IDs, birth dates in either form) are replaced by
  ``<redacted>`` wherever they appear, quoted or not.

:func:`install` makes every log record go through this, whichever handler or format
writes it, and routes Python warnings (pydicom's value warnings) into logging: the
remembered values leave every record; quoted values leave records at WARNING and above,
tracebacks, and everything the libraries that handle DICOM values log
(:data:`VALUE_LOGGERS`), while DEBUG and INFO chatter of the scheduler and the daemon
itself keeps its quoted names (job ids, plugin names) for whoever debugs.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["REDACTED", "VALUE_LOGGERS", "identifying_values", "install", "redact_known", "remember", "scrub"]

REDACTED = "<redacted>"
QUOTED_VALUE = "'…'"

# Attributes whose values never appear in a log line, an error or CLI output.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "IssuerOfPatientID", "AccessionNumber", "MedicalRecordLocator",
    "ReferringPhysicianName", "PatientComments",
)
_MIN_LENGTH = 3  # shorter fragments ("M", "JO") would blank out ordinary words
VALUE_LOGGERS = frozenset({"pydicom", "highdicom", "pynetdicom", "py.warnings", "acqflow.plugins"})
_QUOTED = re.compile(r"""'([^'\n]*)'|"([^"\n]*)\"""")
# Numbers of up to 4 digits, UIDs, absolute paths, VR names, dotted module names.
_HARMLESS = re.compile(
    r"^(?:\d{1,4}|\d+(?:\.\d+){2,}|/[^\s]*|[A-Z]{2}|[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)$")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")

_known: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "acqflow_identifying_values", default=frozenset()
)


@lru_cache(maxsize=1)
def _keywords() -> frozenset[str]:
    from pydicom.datadict import keyword_dict

    return frozenset(keyword_dict)


def _harmless(text: str) -> bool:
    return not text or bool(_HARMLESS.match(text)) or text in _keywords()


def redact_known(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with the identifying values :func:`remember` set for this thread (and
    ``known``) replaced by :data:`REDACTED`."""
    for value in sorted({*_known.get(), *known}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with quoted values and identifying values replaced (module docstring);
    ``known`` adds values to those :func:`remember` set for this thread."""
    text = redact_known(text, known)

    def quoted(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if inner == REDACTED or _harmless(inner) else QUOTED_VALUE

    return _QUOTED.sub(quoted, text)


def identifying_values(datasets: Iterable[Any]) -> frozenset[str]:
    """The identifying values (:data:`IDENTIFYING_KEYWORDS`) of ``datasets`` as they may be
    written in text: as received, person-name components, a birth date also as
    ``YYYY-MM-DD``. Never raises for a malformed value."""
    found: set[str] = set()
    for ds in datasets:
        for keyword in IDENTIFYING_KEYWORDS:
            found.update(_forms(_received_text(ds, keyword)))
    return frozenset(v for v in found if len(v) >= _MIN_LENGTH)


def _received_text(ds: Any, keyword: str) -> str:
    """The element's text without VR conversion (raw bytes decoded leniently)."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    try:
        element = ds.get_item(tag) if tag is not None and tag in ds else None
    except (AttributeError, KeyError, TypeError):
        return ""
    value = getattr(element, "value", None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\0 ")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _forms(text: str) -> set[str]:
    if not text:
        return set()
    forms = {text.strip()}
    for value in re.split(r"\\", text):
        value = value.strip()
        forms.add(value)
        forms.update(part.strip() for part in re.split(r"[\^=]", value))
        forms.add(" ".join(part for part in re.split(r"[\^=]", value) if part).strip())
        date = _DATE.match(value)
        if date:
            forms.add("-".join(date.groups()))
    return forms


def remember(datasets: Iterable[Any] | None) -> None:
    """Scrub the identifying values of ``datasets`` from everything this thread logs or
    stores from now on (None: forget the previous item's)."""
    _known.set(identifying_values(datasets) if datasets is not None else frozenset())


class _ScrubbedRecordFactory:
    """Wraps the log record factory: message and traceback text are scrubbed when the
    record is made, so every handler and format (text, JSON) sees only scrubbed text."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        strict = (record.levelno >= logging.WARNING or bool(record.exc_info)
                  or any(record.name == n or record.name.startswith(f"{n}.") for n in VALUE_LOGGERS))
        try:
            message = record.getMessage()
            record.msg, record.args = scrub(message) if strict else redact_known(message), None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        except (TypeError, ValueError, KeyError):  # %-arguments that do not fit the message
            record.msg, record.args = "log message withheld: it could not be scrubbed", None
        return record


def install() -> None:
    """Scrub every log record from now on (idempotent); Python warnings are logged."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _ScrubbedRecordFactory):
        logging.setLogRecordFactory(_ScrubbedRecordFactory(factory))
    logging.captureWarnings(True)
