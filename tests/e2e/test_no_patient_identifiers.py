"""No patient name, ID or birth date in anything a run writes, except DICOM objects.

The daemon receives two CT series over DICOM (dcmtk storescu) whose patient carries
distinctive values: a name, an ID, and a birth date that is non-conformant
(``1972-03-04``) in one series and conformant (``19720304``) in the other. Each series
goes to ct-muscle (whose SEG, map and SR must be built despite the bad date) and to a
pipeline that logs, quotes and names those values in its errors until it is dead and the
input quarantined. Then every file under the run's folders is searched byte for byte —
daemon log, journal (and its WAL), quarantine notes, result files, the spool's
bookkeeping — except DICOM objects, which legitimately carry the patient; and the output
of ``acqflow jobs``, ``acqflow jobs --json``, ``acqflow status``. At the default log
level and at DEBUG, where the libraries say the most.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series
from tests.support.daemon_proc import DaemonProcess, journal_rows, wait_until
from tests.support.peers import free_port, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME, PATIENT_ID = b"ZZTOPSECRET^NAME", b"PIDXYZ123"
SECRETS = (b"ZZTOPSECRET", PATIENT_ID, b"19720304", b"1972-03-04")
SMALL = PhantomOptions(shape=(6, 64, 64), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)
DICOM_MAGIC = b"DICM"


def _write_series(folder: Path, seed: int, birth_date: bytes) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index, ds in enumerate(demo_ct_series(seed, SMALL)):
        for tag, vr, value in ((0x00100010, "PN", NAME), (0x00100020, "LO", PATIENT_ID),
                               (0x00100030, "DA", birth_date)):
            padded = value + b" " * (len(value) % 2)
            ds.add(RawDataElement(tag, vr, len(padded), padded, 0, False, True))  # type: ignore[arg-type]
        path = folder / f"CT{index:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == DICOM_MAGIC


def _files_written(root: Path, inputs: set[Path]) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path not in inputs and not _is_dicom(path):
            yield path


@pytest.fixture(params=["INFO", "DEBUG"])
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    settings: dict[str, Any] = {
        "log_level": request.param,
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, "max_attempts": 2,
                    "retry_initial_seconds": 0.5, "retry_max_seconds": 1.0},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "ae_title": "ACQFLOW", "series_quiet_seconds": 1.0,
                  "allowed_calling_aes": ["STORESCU"]},
        "folders": [{"path": str(tmp_path / "inbox")}],
        "routes": [{"name": "ct", "modality": ["CT"],
                    "pipelines": ["ct-muscle", "test-prior-lookup"]}],
        "pipelines": {"modules": ["tests.support.identifying_pipelines:PriorLookup"],
                      "options": {"ct-muscle": {"samples": 2}}},
    }
    process = DaemonProcess(tmp_path, settings)
    process.start()
    try:
        yield process
    finally:
        if process.alive():
            assert process.terminate() == 0


def test_no_patient_value_in_anything_a_run_writes(tmp_path: Path, daemon: DaemonProcess) -> None:
    inputs = [*_write_series(tmp_path / "send" / "bad-date", 11, b"1972-03-04"),
              *_write_series(tmp_path / "send" / "good-date", 12, b"19720304")]
    sent = storescu(daemon.state["dicom_port"], inputs)
    assert sent.returncode == 0, sent.stderr

    def finished() -> bool:
        states = [(r["pipeline"], r["state"]) for r in journal_rows(daemon, "SELECT * FROM jobs")]
        return sorted(states) == [("ct-muscle", "done")] * 2 + [("test-prior-lookup", "dead")] * 2

    wait_until(finished, 300, "ct-muscle done and the prior lookup dead for both series", daemon)
    outputs = {p.name for p in (tmp_path / "outputs").rglob("*.dcm")}
    assert {"ct-muscle-seg.dcm", "ct-muscle-sr.dcm", "ct-muscle-uncertainty.dcm"} <= outputs
    reasons = list((daemon.state_dir).rglob("reason.json"))
    assert len(reasons) == 2
    errors = [r["error"] for r in journal_rows(daemon, "SELECT error FROM jobs WHERE state='dead'")]
    assert all("LookupError" in e or "ValueError" in e for e in errors), errors

    cli = [daemon.cli("jobs"), daemon.cli("jobs", "--json"), daemon.cli("status")]
    assert all(c.returncode == 0 for c in cli), [c.stderr for c in cli]
    assert daemon.terminate() == 0
    log = daemon.log_path.read_bytes()
    assert b"looking up priors of" in log and b"dead after 2 attempts" in log

    found: list[str] = []
    for text, where in [(c.stdout + c.stderr, f"acqflow {c.args[3:-2]}") for c in cli]:
        found += [f"{where}: {s.decode()}" for s in SECRETS if s in text.encode()]
    searched = list(_files_written(tmp_path, set(inputs)))
    assert daemon.log_path in searched and any(p.name == "journal.sqlite3" for p in searched)
    for path in searched:
        data = path.read_bytes()
        found += [f"{path.relative_to(tmp_path)}: {s.decode()}" for s in SECRETS if s in data]
    assert found == [], found
