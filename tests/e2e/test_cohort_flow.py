"""An archive of CT studies imported with ``acqflow import``, segmented by the real
ct-muscle pipeline in a running daemon, and summarised by ``acqflow report cohort``: one
row per series and structure, pseudonymous unless asked, CSV and Parquet alike."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmwrite

from tests.support.daemon_proc import DaemonProcess, journal_rows, wait_until
from tests.support.peers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _archive(root: Path, seeds: tuple[int, ...]) -> dict[str, str]:
    """Demo CT series written as files in an unsorted tree; returns series -> study UID."""
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    studies = {}
    for seed in seeds:
        series = demo_ct_series(seed=seed)
        for index, dataset in enumerate(series):
            folder = root / "archive" / f"disk{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            dcmwrite(folder / f"{seed}-{index:04d}", dataset, enforce_file_format=True)
        studies[str(series[0].SeriesInstanceUID)] = str(series[0].StudyInstanceUID)
    return studies


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_an_imported_cohort_is_reported_per_series_and_structure(tmp_path: Path) -> None:
    studies = _archive(tmp_path, (11, 12))
    daemon = DaemonProcess(tmp_path, {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port()},
        "routes": [{"name": "ct", "modality": ["CT"], "pipelines": ["ct-muscle"]}],
        "pipelines": {"options": {"ct-muscle": {"samples": 2}}},
    })
    daemon.start()
    try:
        imported = daemon.cli("import", str(tmp_path / "archive"), "--json")
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["series_new"] == 2
        states = lambda: [r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs")]  # noqa: E731
        wait_until(lambda: states() == ["done"] * 2, 600, "both series segmented", daemon)
        records = journal_rows(daemon, "SELECT fields FROM records WHERE kind='ct-structure' ORDER BY id")
        pseudonymous = daemon.cli("report", "cohort")
        again = daemon.cli("report", "cohort", "--pipeline", "ct-muscle")
        named = daemon.cli("report", "cohort", "--identifiers")
        parquet = daemon.cli("report", "cohort", "--format", "parquet", "--output",
                             str(tmp_path / "c.parquet"))
        unknown = daemon.cli("report", "cohort", "--pipeline", "mr-muscle")
    finally:
        assert daemon.terminate() == 0
    for done in (pseudonymous, again, named, parquet):
        assert done.returncode == 0, done.stderr
    rows = _rows(pseudonymous.stdout)
    assert len(rows) == len(records) and len(rows) >= 2 * 3
    assert f"cohort: {len(rows)} rows, 2 series from ct-muscle -> stdout" in pseudonymous.stderr
    expected: list[dict[str, Any]] = [json.loads(r["fields"]) for r in records]
    for row, fields in zip(rows, expected, strict=True):
        assert row["structure"] == fields["structure"] and row["pipeline"] == "ct-muscle"
        assert _number(row["volume_ml"]) == pytest.approx(fields["volume_ml"])
        assert _number(row["mean_hu"]) == pytest.approx(fields["mean_hu"])
        assert _number(row["mean_uncertainty"]) == pytest.approx(fields["mean_uncertainty"])
        assert row["review_required"] == str(fields["review_required"])
        assert row["model_version"] == fields["model_version"] and row["modality"] == "CT"
    # Pseudonyms: stable from one report to the next, never the UIDs, one per series.
    assert again.stdout == pseudonymous.stdout
    assert {r["series"] for r in rows}.isdisjoint(studies) and len({r["series"] for r in rows}) == 2
    assert not any(uid in pseudonymous.stdout for uid in (*studies, *studies.values()))
    named_rows = _rows(named.stdout)
    assert {(r["series"], r["study"]) for r in named_rows} == set(studies.items())
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "c.parquet").to_pylist()
    assert [(t["series"], t["structure"]) for t in table] == [(r["series"], r["structure"]) for r in rows]
    assert [t["volume_ml"] for t in table] == pytest.approx([float(r["volume_ml"]) for r in rows])
    assert unknown.returncode == 2 and "no structure results from pipeline mr-muscle" in unknown.stderr
