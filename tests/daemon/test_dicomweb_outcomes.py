"""What a STOW-RS answer means for an export, and the DICOMweb destination settings."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import Dataset

from acqflow.daemon.config import DicomWebDestination, ExportDestination, Settings
from acqflow.daemon.errors import ConfigError
from acqflow.daemon.sinks.dicomweb import _answer_outcome, _http_failure

SOP = "1.2.3.4"


def _answer(failed: int | None = None, referenced: bool = True) -> Dataset:
    answer = Dataset()
    if failed is not None:
        item = Dataset()
        item.ReferencedSOPInstanceUID, item.FailureReason = SOP, failed
        answer.FailedSOPSequence = [item]
    if referenced and failed is None:
        item = Dataset()
        item.ReferencedSOPInstanceUID = SOP
        answer.ReferencedSOPSequence = [item]
    return answer


def _response(status: int, body: Any = "", content_type: str = "text/plain") -> SimpleNamespace:
    text = json.dumps(body) if not isinstance(body, str) else body
    return SimpleNamespace(status_code=status, text=text, headers={"Content-Type": content_type},
                           json=lambda: json.loads(text))


def test_a_stored_instance_is_done_and_a_failed_one_permanent_with_the_reason() -> None:
    assert _answer_outcome(_answer(), SOP, "pacs").error is None
    refused = _answer_outcome(_answer(failed=0xA700), SOP, "pacs")
    assert refused.permanent and refused.error == "pacs refused the instance (STOW-RS Failure Reason 0xA700)"
    missing = _answer_outcome(_other_referenced(), SOP, "pacs")
    assert missing.permanent and "did not list the instance" in (missing.error or "")


def _other_referenced() -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = "9.9"
    answer = Dataset()
    answer.ReferencedSOPSequence = [item]
    return answer


@pytest.mark.parametrize(("status", "permanent"), [
    (429, False), (503, False), (500, False), (504, False), (408, False), (401, False), (403, False),
    (413, True), (415, True), (400, True),
])
def test_http_errors_are_retried_or_permanent_by_status(status: int, permanent: bool) -> None:
    outcome = _http_failure(_response(status, "busy"), SOP, "pacs")
    assert outcome.permanent is permanent and f"HTTP {status} busy" in (outcome.error or "")


def test_a_409_with_a_failed_sop_sequence_names_the_reason() -> None:
    body = _answer(failed=0x0110).to_json_dict()
    outcome = _http_failure(_response(409, body, "application/dicom+json"), SOP, "pacs")
    assert outcome.permanent and outcome.error == (
        "pacs refused the instance (STOW-RS Failure Reason 0x0110), HTTP 409")


def test_destinations_of_both_kinds_and_their_credentials() -> None:
    settings = Settings.model_validate({"export": {"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104},
        {"name": "web", "kind": "dicomweb", "url": "https://vna.example.org/dicom-web", "auth": "bearer",
         "token_env": "VNA_TOKEN"},
    ]}})
    pacs, web = settings.export.destinations
    assert isinstance(pacs, ExportDestination) and isinstance(web, DicomWebDestination)
    assert web.verify_tls is True
    for wrong, message in (
        ({"auth": "basic", "username": "u"}, "auth = basic needs username and one of"),
        ({"auth": "bearer"}, "auth = bearer needs one of token_file, token_env"),
        ({"token_env": "X"}, "credentials given but auth is none"),
        ({"url": "ftp://x"}, "url"),
    ):
        with pytest.raises(ConfigError, match=message):
            from acqflow.daemon.config import load_settings

            load_settings(None, overrides={"export": {"destinations": [
                {"name": "web", "kind": "dicomweb", "url": "http://x/dicom-web", **wrong}]}})
