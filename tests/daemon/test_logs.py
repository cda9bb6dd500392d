"""Logging set-up: JSON lines with context fields, journald text, third-party noise."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from acqflow.daemon.logs import configure_logging, log_context


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("highdicom", "pynetdicom", "apscheduler")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_job_context_and_call_site_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, environ={})
    with log_context(job_id=7, arrival_id=3, pipeline="ct-muscle"):
        logging.getLogger("acqflow.daemon.workers").info("job %d done", 7, extra={"outcome": "done"})
        logging.getLogger("acqflow.plugins.ct_muscle").warning("a pipeline's own line")
    logging.getLogger("acqflow.daemon.workers").info("after the job")
    first, second, third = (json.loads(line) for line in _lines(stream))
    assert (
        first["message"] == "job 7 done" and first["level"] == "INFO"
        and first["logger"] == "acqflow.daemon.workers"
    )
    assert (first["job_id"], first["arrival_id"], first["pipeline"], first["outcome"]) == (
        7,
        3,
        "ct-muscle",
        "done",
    )
    assert first["timestamp"].endswith("+00:00")
    assert second["job_id"] == 7 and second["logger"] == "acqflow.plugins.ct_muscle"
    assert "job_id" not in third and "pipeline" not in third


def test_json_source_comes_from_the_source_loggers_and_tracebacks_stay_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, environ={})
    logging.getLogger("acqflow.daemon.folders.watcher").info("arrival 1", extra={"arrival_id": 1})
    logging.getLogger("acqflow.daemon.dicom.store").warning(
        "refused", extra={"sop_class": "1.2.840.10008.5.1.4.1.1.2"}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("acqflow.daemon.service").exception("failed")
    lines = _lines(stream)
    assert len(lines) == 3
    folder, store, failed = (json.loads(line) for line in lines)
    assert folder["source"] == "folder" and folder["arrival_id"] == 1
    assert store["source"] == "dicom" and store["sop_class"] == "1.2.840.10008.5.1.4.1.1.2"
    assert "source" not in failed and "ValueError: boom" in failed["exception"]


def test_third_party_info_is_quiet_unless_debugging() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream, environ={})
    logging.getLogger("highdicom.seg.sop").info("highdicom chatter")
    logging.getLogger("pynetdicom.acse").info("pynetdicom chatter")
    logging.getLogger("highdicom.seg.sop").warning("highdicom warning")
    assert [line.split(": ", 1)[1] for line in _lines(stream)] == ["highdicom warning"]
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream, environ={})
    logging.getLogger("highdicom.seg.sop").info("highdicom chatter")
    assert any("highdicom chatter" in line for line in _lines(stream))


def test_text_under_journald_has_priorities_and_no_timestamps(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w+") as stream:
        info = os.fstat(stream.fileno())
        configure_logging(
            "INFO", "text", stream=stream, environ={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        )
        logging.getLogger("acqflow.daemon.service").info("ready")
        logging.getLogger("acqflow.daemon.service").error("broken")
        stream.flush()
        assert (tmp_path / "stream").read_text().splitlines() == [
            "<6>acqflow.daemon.service: ready",
            "<3>acqflow.daemon.service: broken",
        ]


def test_text_elsewhere_keeps_timestamps_and_levels(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w+") as stream:
        # JOURNAL_STREAM names another file: stderr was redirected, journald is not reading it.
        configure_logging("INFO", "text", stream=stream, environ={"JOURNAL_STREAM": "1:2"})
        logging.getLogger("acqflow.daemon.service").info("ready")
        stream.flush()
        (line,) = (tmp_path / "stream").read_text().splitlines()
    assert line.endswith(" INFO acqflow.daemon.service: ready") and line[:4].isdigit(), line
    assert "\x1b[" not in line  # no colour
