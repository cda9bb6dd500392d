"""STOW-RS to DICOMweb destinations (``kind = "dicomweb"``), through dicomweb-client.

One instance per request (one object in memory at a time, like C-STORE), posted to
``<url>/studies``. The outbox owns retries: dicomweb-client's own retrying is off, so a
failure comes back at once and is rescheduled with the outbox's backoff. What the
answer means:

- 200 with the instance in the Referenced SOP Sequence: stored.
- The instance in the Failed SOP Sequence (200, 202, 400 or 409 with a DICOM JSON body):
  the service refused it; a permanent failure with the service's Failure Reason.
- 408, 429, 5xx, 401/403 (credentials may be fixed meanwhile), a connection or TLS
  error, a timeout: retried.
- Any other 4xx (413 too large, 415 media type): permanent, with the status and body.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acqflow.daemon.config import DicomWebDestination, WebAuth
from acqflow.daemon.dicom.part10 import read_part10
from acqflow.daemon.errors import ExportError, InputRejected

__all__ = ["StowClient", "StowOutcome", "web_client"]

LOG = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({401, 403, 408, 429})
_BODY_CHARS = 300  # of an error body kept in the export's error


@dataclass(frozen=True)
class StowOutcome:
    """None error: stored. Otherwise why not, and whether trying again can help."""

    error: str | None = None
    permanent: bool = False


class StowClient:
    """A session to one DICOMweb destination."""

    def __init__(self, destination: DicomWebDestination, timeout: float) -> None:
        """Raises ExportError when a secret cannot be read."""
        self.destination = destination
        self._session, self._client = web_client(destination, timeout)
        self._timeout = timeout

    def store(self, path: Path) -> StowOutcome:
        """STOW-RS the Part-10 file at ``path``; never raises."""
        import requests

        try:
            dataset = read_part10(path)
        except InputRejected as exc:
            return StowOutcome(str(exc), permanent=True)
        sop_uid = str(dataset.get("SOPInstanceUID", ""))
        try:
            answer = self._client.store_instances([dataset])
        except requests.HTTPError as exc:
            return _http_failure(exc.response, sop_uid, self.destination.name)
        except (requests.RequestException, OSError) as exc:
            return StowOutcome(f"{self.destination.name} ({self.destination.url}) unreachable: {_short(exc)}")
        except ValueError as exc:  # a body that is not DICOM JSON or XML
            return StowOutcome(f"{self.destination.name}: unreadable STOW-RS answer: {exc}")
        return _answer_outcome(answer, sop_uid, self.destination.name)

    def echo(self) -> int:
        """A QIDO-RS search for one study; returns the HTTP status (200, or 204 for an
        empty archive). Raises ExportError when the service cannot be reached or
        answers with an error."""
        import requests

        url = f"{self.destination.url.rstrip('/')}/studies"
        try:
            response = self._session.get(url, params={"limit": "1"}, timeout=self._timeout,
                                         headers={"Accept": "application/dicom+json"})
        except requests.RequestException as exc:
            raise ExportError(f"{self.destination.name}: {self.destination.url} unreachable: {_short(exc)}") \
                from None
        if response.status_code not in (200, 204):
            raise ExportError(f"{self.destination.name}: QIDO-RS answered HTTP {response.status_code}"
                              f" {_body(response)}")
        return int(response.status_code)


def web_client(destination: DicomWebDestination, timeout: float) -> tuple[Any, Any]:
    """(requests session, dicomweb-client) for ``destination``: its auth, TLS checks and
    ``timeout``, dicomweb-client's own retrying off. Raises ExportError when a secret
    cannot be read."""
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    ca_file = destination.ca_file
    session.verify = str(ca_file) if ca_file is not None else destination.verify_tls
    if destination.auth is WebAuth.BASIC:
        assert destination.username is not None
        session.auth = (destination.username, _secret(destination, "password"))
    elif destination.auth is WebAuth.BEARER:
        session.headers["Authorization"] = f"Bearer {_secret(destination, 'token')}"
    client = DICOMwebClient(destination.url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return session, client


def _secret(destination: DicomWebDestination, kind: str) -> str:
    path: Path | None = getattr(destination, f"{kind}_file")
    variable: str | None = getattr(destination, f"{kind}_env")
    try:
        if path is not None:
            return path.read_text().strip()
        value = os.environ.get(variable or "")
        if not value:
            raise ExportError(f"export.destinations {destination.name}: environment variable {variable}"
                              " is not set")
        return value
    except OSError as exc:
        raise ExportError(f"export.destinations {destination.name}: cannot read {kind}_file {path}: "
                          f"{exc.strerror or exc}") from None


def _answer_outcome(answer: Any, sop_uid: str, name: str) -> StowOutcome:
    """From the STOW-RS response data set: stored, or refused with the service's reason."""
    for item in answer.get("FailedSOPSequence", []) or []:
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_uid:
            reason = item.get("FailureReason")
            code = f"0x{int(reason):04X}" if reason is not None else "no reason given"
            return StowOutcome(f"{name} refused the instance (STOW-RS Failure Reason {code})", permanent=True)
    referenced = {str(item.get("ReferencedSOPInstanceUID", ""))
                  for item in answer.get("ReferencedSOPSequence", []) or []}
    if referenced and sop_uid not in referenced:
        return StowOutcome(f"{name} did not list the instance as stored", permanent=True)
    return StowOutcome()


def _http_failure(response: Any, sop_uid: str, name: str) -> StowOutcome:
    status = int(response.status_code) if response is not None else 0
    if response is not None and "json" in str(response.headers.get("Content-Type", "json")):
        try:
            import pydicom

            answer = pydicom.Dataset.from_json(response.json())
        except (ValueError, TypeError, KeyError):
            answer = None
        if answer is not None and "FailedSOPSequence" in answer:
            refused = _answer_outcome(answer, sop_uid, name)
            if refused.error is not None:
                return StowOutcome(f"{refused.error}, HTTP {status}", permanent=True)
    text = f"{name}: STOW-RS answered HTTP {status} {_body(response)}".rstrip()
    retried = status in RETRIED_STATUSES or status >= 500 or status == 0
    return StowOutcome(text, permanent=not retried)


def _body(response: Any) -> str:
    if response is None:
        return ""
    text = " ".join(str(response.text or "").split())
    return text[:_BODY_CHARS]


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:_BODY_CHARS] or type(exc).__name__
