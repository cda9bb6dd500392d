"""The cohort table's rules on a real journal: a series counts once, with the records of
its latest finished job; pipelines filter; pseudonyms are keyed per journal."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from acqflow.daemon.cohort import CohortFormat, write_cohort
from acqflow.daemon.errors import ConfigError
from acqflow.daemon.jobqueue import JobQueue, RecordRow, RouteDecision
from acqflow.daemon.journal import Instance, Journal


def _series(journal: Journal, uid: str, modality: str) -> int:
    attrs = {"modality": modality, "study_uid": f"{uid}.9", "series_uid": uid}
    instance = Instance(f"{uid}.1", 0, Path("/x"), 1, "AE", "assoc", time.time(), 1)
    arrival_id, _ = journal.record_instance(f"series:{uid}", Path("/spool") / uid, attrs, instance)
    return arrival_id


def _run(queue: JobQueue, arrival_id: int, pipeline: str, structures: dict[str, float]) -> None:
    queue.add_job(arrival_id, RouteDecision(pipeline, "r"))
    [job] = queue.claim([pipeline], 10)
    started = queue.start(job)
    assert started is not None
    kind = "mr-structure" if pipeline == "mr-muscle" else "ct-structure"
    records = [RecordRow(kind, "g", f"series-{arrival_id}#{index}", {
                   "structure": name, "label": index + 1, "volume_ml": volume, "review_required": False})
               for index, (name, volume) in enumerate(structures.items())]
    assert queue.complete(started, [], records) is not None


def _table(journal: Journal, **kwargs: object) -> list[dict[str, str]]:
    out = io.StringIO()
    write_cohort(journal, out, CohortFormat.CSV, **kwargs)  # type: ignore[arg-type]
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_a_series_processed_again_counts_once_with_its_newest_results(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    queue = JobQueue(journal)
    ct, mr = _series(journal, "1.2.3", "CT"), _series(journal, "1.2.4", "MR")
    _run(queue, ct, "ct-muscle", {"psoas": 10.0, "gluteus": 20.0, "iliacus": 5.0})
    _run(queue, ct, "ct-muscle", {"psoas": 11.0, "gluteus": 21.0})  # re-run: one structure fewer
    _run(queue, mr, "mr-muscle", {"psoas": 9.0})
    rows = _table(journal, identifiers=True)
    assert [(r["series"], r["pipeline"], r["structure"], r["volume_ml"]) for r in rows] == [
        ("1.2.3", "ct-muscle", "psoas", "11.0"), ("1.2.3", "ct-muscle", "gluteus", "21.0"),
        ("1.2.4", "mr-muscle", "psoas", "9.0")]
    assert rows[0]["study"] == "1.2.3.9" and rows[2]["modality"] == "MR" and rows[2]["mean_hu"] == ""
    assert [r["structure"] for r in _table(journal, pipelines=["mr-muscle"])] == ["psoas"]
    with pytest.raises(ConfigError, match="no structure results from pipeline virtual-staining"):
        _table(journal, pipelines=["virtual-staining"])
    with pytest.raises(ConfigError, match="give --output"):
        write_cohort(journal, io.StringIO(), CohortFormat.PARQUET)
    journal.close()


def test_pseudonyms_are_stable_in_a_journal_and_differ_between_journals(tmp_path: Path) -> None:
    tables = []
    for name in ("a", "b"):
        journal = Journal(tmp_path / f"{name}.sqlite3")
        _run(JobQueue(journal), _series(journal, "1.2.3", "CT"), "ct-muscle", {"psoas": 1.0})
        tables.append((_table(journal), _table(journal)))
        journal.close()
    (first, again), (other, _) = tables
    assert first == again
    assert first[0]["series"].startswith("series-") and "1.2.3" not in first[0]["series"]
    assert first[0]["series"] != other[0]["series"]  # another site's key: not linkable
