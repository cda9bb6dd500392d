"""Cohort results: one row per series and structure, from the journal's records.

The segmentation pipelines record one row per structure of every series they processed
(kinds ``ct-structure`` and ``mr-structure``). A cohort table holds, for each series, the
rows of its latest finished job only, so a series processed again counts once, with its
newest results. Study and series UIDs are pseudonymised by default: a keyed hash
(HMAC-SHA256) with a random key kept in the journal, so the same series has the same
pseudonym in every report from this installation and cannot be traced back without the
journal; ``identifiers`` puts the UIDs themselves in the table.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

from acqflow.daemon.errors import ConfigError
from acqflow.daemon.journal import Journal

__all__ = ["COLUMNS", "CohortFormat", "CohortTable", "write_cohort"]

STRUCTURE_KINDS = ("ct-structure", "mr-structure")
_KEY = "pseudonym_key"
_PAGE = 5000  # records read per query: memory stays flat however large the cohort

# (column, type) in table order; the type is the Parquet column's.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("study", "string"),
    ("series", "string"),
    ("modality", "string"),
    ("pipeline", "string"),
    ("structure", "string"),
    ("label", "int"),
    ("volume_ml", "float"),
    ("mean_hu", "float"),
    ("low_attenuation_fraction", "float"),
    ("mean_uncertainty", "float"),
    ("disagreement", "float"),
    ("uncertainty_measure", "string"),
    ("review_required", "bool"),
    ("model_version", "string"),
    ("translation_model_version", "string"),
    ("pipeline_version", "string"),
    ("processed_at", "float"),  # epoch seconds the job finished
)


class CohortFormat(str, Enum):
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True)
class CohortTable:
    """What :func:`write_cohort` wrote."""

    rows: int
    series: int
    pipelines: tuple[str, ...]


class _Pseudonyms:
    """UID -> pseudonym with this journal's key (created at first use)."""

    def __init__(self, journal: Journal) -> None:
        key = journal.meta_value(_KEY)
        if key is None:
            key = secrets.token_hex(32)
            journal.set_meta(_KEY, key)
        self._key = bytes.fromhex(key)

    def __call__(self, prefix: str, uid: str) -> str:
        digest = hmac.new(self._key, uid.encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[:20]}"


def pipelines_with_results(journal: Journal) -> list[str]:
    rows = journal.query(
        f"SELECT DISTINCT pipeline FROM records WHERE kind IN ({','.join('?' * len(STRUCTURE_KINDS))})"
        " ORDER BY pipeline", STRUCTURE_KINDS)
    return [str(r["pipeline"]) for r in rows]


def cohort_rows(journal: Journal, pipelines: Sequence[str], identifiers: bool) -> Iterator[dict[str, Any]]:
    """The table's rows (dicts keyed by :data:`COLUMNS`), by series then structure."""
    name = (lambda prefix, uid: uid) if identifiers else _Pseudonyms(journal)
    marks = ",".join("?" * len(pipelines))
    last = 0
    while True:
        page = journal.query(
            "SELECT r.id, r.pipeline, r.fields, a.attrs, a.id arrival_id, j.finished_at FROM records r"
            " JOIN jobs j ON j.id = r.job_id JOIN arrivals a ON a.id = j.arrival_id"
            f" WHERE r.id > ? AND r.pipeline IN ({marks})"
            f" AND r.kind IN ({','.join('?' * len(STRUCTURE_KINDS))})"
            " AND j.id = (SELECT MAX(l.id) FROM jobs l WHERE l.arrival_id = j.arrival_id"
            " AND l.pipeline = r.pipeline AND l.state = 'done')"
            " ORDER BY r.id LIMIT ?",
            (last, *pipelines, *STRUCTURE_KINDS, _PAGE),
        )
        if not page:
            return
        for row in page:
            last = int(row["id"])
            fields, attrs = json.loads(row["fields"]), json.loads(row["attrs"])
            yield {
                **{column: fields.get(column) for column, _ in COLUMNS},
                "study": name("study", str(attrs.get("study_uid", ""))),
                "series": name("series", str(attrs.get("series_uid", ""))),
                "modality": attrs.get("modality"),
                "pipeline": row["pipeline"],
                "processed_at": row["finished_at"],
                "_arrival": row["arrival_id"],  # the journal's own id (the web console's actions)
            }


def write_cohort(journal: Journal, target: IO[str] | Path, fmt: CohortFormat,
                 pipelines: Sequence[str] | None = None, identifiers: bool = False) -> CohortTable:
    """Write the cohort table of ``pipelines`` (default: every pipeline with structure
    results) as CSV (to a text stream or file) or Parquet (to a file).

    Raises ConfigError for a pipeline without results, and for Parquet without pyarrow
    (the ``parquet`` extra) or to a stream.
    """
    known = pipelines_with_results(journal)
    chosen = list(pipelines) if pipelines else known
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise ConfigError(f"no structure results from pipeline {', '.join(unknown)} in the journal"
                          f" (results from: {', '.join(known) or 'none yet'})")
    rows = cohort_rows(journal, chosen, identifiers)
    if not isinstance(target, Path):
        if fmt is CohortFormat.PARQUET:
            raise ConfigError("Parquet is written to a file: give --output")
        count, series = _write_csv(rows, target)
        return CohortTable(count, series, tuple(chosen))
    partial = target.with_name(f".{target.name}.partial")  # a reader never sees half a table
    try:
        if fmt is CohortFormat.PARQUET:
            count, series = _write_parquet(rows, partial)
        else:
            with partial.open("w", newline="") as handle:
                count, series = _write_csv(rows, handle)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return CohortTable(count, series, tuple(chosen))


def _write_csv(rows: Iterator[dict[str, Any]], handle: IO[str]) -> tuple[int, int]:
    writer = csv.DictWriter(handle, fieldnames=[c for c, _ in COLUMNS], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    count, series = 0, set()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        count += 1
        series.add((row["pipeline"], row["series"]))
    return count, len(series)


def _write_parquet(rows: Iterator[dict[str, Any]], target: Path) -> tuple[int, int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("Parquet needs pyarrow: pip install 'acqflow[parquet]'") from exc
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([(column, types[kind]) for column, kind in COLUMNS])
    count, series = 0, set()
    with pq.ParquetWriter(target, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append({column: row.get(column) for column, _ in COLUMNS})
            series.add((row["pipeline"], row["series"]))
            if len(batch) >= _PAGE:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or not count:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count, len(series)
