"""Scrubbing patient values out of error and log text (acqflow.daemon.redaction)."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.valuerep import DA

from acqflow.daemon import redaction
from acqflow.daemon.redaction import identifying_values, remember, scrub

NAME, PID, DATE, BAD_DATE = "ZZTOPSECRET^NAME", "PIDXYZ123", "19720304", "1972-03-04"
SECRETS = ("ZZTOPSECRET", PID, DATE, BAD_DATE)


def _exception_text(action: object) -> str:
    try:
        action()  # type: ignore[operator]
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("expected a ValueError")


def _patient() -> Dataset:
    ds = Dataset()
    ds.add(RawDataElement(0x00100010, "PN", 16, NAME.encode(), 0, False, True))  # type: ignore[arg-type]
    ds.add(RawDataElement(0x00100020, "LO", 10, PID.encode() + b" ", 0, False, True))  # type: ignore[arg-type]
    ds.add(RawDataElement(0x00100030, "DA", 8, DATE.encode(), 0, False, True))  # type: ignore[arg-type]
    return ds


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    remember(None)
    yield
    remember(None)


@pytest.mark.parametrize("action", [
    lambda: DA(BAD_DATE),
    lambda: DA("19721304"),
    lambda: __import__("highdicom").PatientSexValues("male"),
    lambda: __import__("datetime").datetime.strptime(BAD_DATE, "%Y%m%d"),
    lambda: int(PID),
], ids=["dashed-date", "month-13", "sex-word", "strptime", "int"])
def test_library_exception_text_loses_its_values(action: object) -> None:
    text = _exception_text(action)
    scrubbed = scrub(text)
    for secret in (*SECRETS, "male", "19721304"):
        assert secret not in scrubbed, (text, scrubbed)


def test_harmless_quoted_text_is_kept() -> None:
    text = ("Unable to convert '1972-03-04' to 'DA' object; 'PatientBirthDate' of "
            "'1.2.826.0.1.3680043.8.498.1' in '/var/spool/x.dcm', attempt '3'")
    assert scrub(text) == ("Unable to convert '…' to 'DA' object; 'PatientBirthDate' of "
                           "'1.2.826.0.1.3680043.8.498.1' in '/var/spool/x.dcm', attempt '3'")


def test_remembered_values_are_redacted_unquoted_and_in_every_form() -> None:
    remember([_patient()])
    text = (f"no prior for {NAME} / ZZTOPSECRET NAME / {PID} born {DATE} = {BAD_DATE}: "
            "ZZTOPSECRET")
    scrubbed = scrub(text)
    for secret in SECRETS:
        assert secret not in scrubbed
    assert scrubbed.count(redaction.REDACTED) >= 5


def test_identifying_values_never_raise_for_malformed_elements() -> None:
    ds = _patient()
    ds.add(RawDataElement(0x00100030, "DA", 4, b"\xff\xfe\x00\x01", 0, False, True))  # type: ignore[arg-type]
    assert PID in identifying_values([ds])


def test_remembered_values_belong_to_their_thread() -> None:
    remember([_patient()])
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(scrub(f"id {PID}")))
    thread.start()
    thread.join()
    assert seen == [f"id {PID}"]  # another worker's item is not this thread's business
    assert scrub(f"id {PID}") == f"id {redaction.REDACTED}"


@pytest.fixture
def installed() -> Iterator[io.StringIO]:
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    redaction.install()
    try:
        yield stream
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        logging.setLogRecordFactory(factory)
        logging.captureWarnings(False)


def test_installed_log_records_are_scrubbed_message_and_traceback(installed: io.StringIO) -> None:
    log = logging.getLogger("acqflow.test.redaction")
    remember([_patient()])
    log.error("job 1 for %s failed", NAME)
    try:
        DA(BAD_DATE)
    except ValueError:
        log.exception("job 2 failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"Invalid value for VR DA: '{BAD_DATE}'", UserWarning, stacklevel=1)
    written = installed.getvalue()
    assert "job 1 for" in written and "job 2 failed" in written and "Invalid value for VR DA" in written
    assert "Traceback" in written
    for secret in SECRETS:
        assert secret not in written, written


def test_install_is_idempotent(installed: io.StringIO) -> None:
    redaction.install()
    logging.getLogger("acqflow.test.redaction").warning("'%s'", "value")
    assert installed.getvalue().count("'…'") == 1


def test_debug_chatter_keeps_quoted_names_but_never_remembered_values(installed: io.StringIO) -> None:
    remember([_patient()])
    logging.getLogger("apscheduler.scheduler").info("Added job '%s' for %s", "tick", PID)
    logging.getLogger("pydicom").info("Invalid value for VR LO: '%s'", "SOMEVALUE")
    logging.getLogger("acqflow.plugins.ct_muscle").info("value '%s'", "OTHERVALUE")
    written = installed.getvalue()
    assert "Added job 'tick' for <redacted>" in written
    assert "SOMEVALUE" not in written and "OTHERVALUE" not in written
