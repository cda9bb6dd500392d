"""The DICOM cases of the bad-input corpus, sent by C-STORE to one real ``acqflow serve``.

Each case is judged against its row in ``corpus.CASES``: the outcome (refused at
receive, rejected with a journal error, processed, stored under distinct names), a
counter that must move, the quarantine rule, and a good series processed right after.
The last test greps everything the run wrote for the corpus' distinctive patient.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.corpus import Case, Channel, cases_of, params_of
from tests.reliability.dicom_inputs import BUILDERS, PATIENT_ID, PATIENT_NAME
from tests.reliability.dicom_run import CALLING_AE, run_dicom_case
from tests.reliability.harness import base_settings, record
from tests.support.daemon_proc import DaemonProcess
from tests.support.peers import free_port

pytestmark = pytest.mark.integration

CASES = cases_of(Channel.DICOM)
# Patient data no log line, journal error, quarantine note or CLI output may ever hold.
PHI = (PATIENT_NAME, PATIENT_ID, "1972-03-04", "19720304", "19721304")


def dicom_settings(root: Path) -> dict[str, Any]:
    settings = base_settings(root)
    settings.update(
        {
            "dicom": {
                "port": free_port(),
                "ae_title": "ACQFLOW",
                "series_quiet_seconds": 1.0,
                "allowed_calling_aes": ["STORESCU", CALLING_AE],
                "max_associations": 4,
                "network_timeout_seconds": 10.0,
            },
            "folders": [],
            "routes": [{"name": "series", "kind": ["dicom-series"], "pipelines": ["test-volume-seg"]}],
        }
    )
    return settings


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicom-corpus")


@pytest.fixture(scope="module")
def daemon(corpus_root: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(corpus_root, dicom_settings(corpus_root))
    process.start()
    yield process
    if process.alive():
        assert process.terminate() == 0


def test_every_dicom_case_has_a_builder() -> None:
    assert {c.id for c in CASES} == set(BUILDERS)


@pytest.mark.parametrize("case", params_of(Channel.DICOM))
def test_dicom_case(case: Case, daemon: DaemonProcess, corpus_root: Path) -> None:
    observation = run_dicom_case(daemon, corpus_root, case, BUILDERS[case.id](case.id))
    record(observation)
    assert daemon.alive(), daemon.log_tail()
    assert not observation.failures, f"{case.id}: {observation.failures}\nnotes: {observation.notes}"


def _written_text(daemon: DaemonProcess) -> dict[str, str]:
    """Everything the run wrote that an operator reads: log, journal errors, notes, CLI."""
    texts = {"daemon log": daemon.log_path.read_text(errors="replace")}
    db = sqlite3.connect(daemon.state_dir / "journal.sqlite3")
    try:
        for table in ("arrivals", "jobs", "exports", "associations"):
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            texts[f"journal {table}"] = "\n".join(" ".join(map(str, row)) for row in rows)
    finally:
        db.close()
    for note in (daemon.state_dir / "quarantine").rglob("reason.json"):
        texts[f"quarantine {note.parent.name}"] = note.read_text()
    for command in (("jobs",), ("status",)):
        done = daemon.cli(*command)
        texts[f"acqflow {' '.join(command)}"] = done.stdout + done.stderr
    return texts


def test_no_patient_data_in_anything_the_run_wrote(daemon: DaemonProcess) -> None:
    """Runs after the cases: their inputs all carry the distinctive patient."""
    leaks = [
        f"{value!r} in {where}"
        for where, text in _written_text(daemon).items()
        for value in PHI
        if value in text
    ]
    assert not leaks, leaks
