"""What the web console shows, read from the journal and the pipelines' summaries (the
read path of the CLI's reports: :mod:`acqflow.daemon.summaries`, :mod:`acqflow.daemon.cohort`).

Nothing here takes a path from a request: experiments and wells are looked up among the
records, files by their journal output id, and a file is served only from inside the
outputs folder.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acqflow.daemon.cohort import cohort_rows, pipelines_with_results
from acqflow.daemon.config import Settings
from acqflow.daemon.journal import Journal
from acqflow.daemon.summaries import efficiency_summary, read_efficiency_csv

__all__ = ["Plate", "WellDetail", "experiments", "operations", "output_file", "plate", "studies", "well"]

_WELL = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")
# (rows, columns) of the standard plates, smallest first: a plate is the smallest that fits.
PLATE_FORMATS = ((2, 3), (3, 4), (4, 6), (6, 8), (8, 12), (16, 24), (32, 48))


@dataclass
class WellState:
    name: str
    efficiency: float | None = None  # mean over positions at the latest time point
    timepoint: int | None = None
    images: int = 0
    forecast: float | None = None
    forecast_low: float | None = None
    forecast_high: float | None = None
    call: str | None = None


@dataclass
class Plate:
    experiment: str
    rows: int
    columns: int
    wells: dict[tuple[int, int], WellState] = field(default_factory=dict)
    other_wells: list[WellState] = field(default_factory=list)  # names that are no plate position
    model_versions: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    updated_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        wells = [*self.wells.values(), *self.other_wells]
        return {"experiment": self.experiment, "rows": self.rows, "columns": self.columns,
                "updated_at": self.updated_at,
                "wells": {w.name: {"efficiency": w.efficiency, "timepoint": w.timepoint, "images": w.images,
                                   "forecast": w.forecast, "forecast_low": w.forecast_low,
                                   "forecast_high": w.forecast_high, "call": w.call} for w in wells}}


@dataclass
class WellImage:
    position: str
    timepoint: int | None
    acquired_at: str | None
    efficiency: float | None
    overlay: int | None  # output ids
    stack: int | None


@dataclass
class WellDetail:
    experiment: str
    well: str
    points: list[dict[str, Any]]  # time point, elapsed hours, efficiency, forecast columns
    images: list[WellImage]


def _records(journal: Journal, experiment: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT r.job_id, r.grp, r.fields, r.recorded_at FROM records r"
           " WHERE r.pipeline='virtual-staining' AND r.kind='efficiency'")
    rows = journal.query(sql + (" AND r.grp=?" if experiment is not None else "") + " ORDER BY r.id",
                         (experiment,) if experiment is not None else ())
    return [{**json.loads(r["fields"]), "_job": r["job_id"], "_group": r["grp"], "_at": r["recorded_at"]}
            for r in rows]


def experiments(journal: Journal) -> list[dict[str, Any]]:
    rows = journal.query(
        "SELECT grp, COUNT(*) n, MAX(recorded_at) at FROM records WHERE pipeline='virtual-staining'"
        " AND kind='efficiency' GROUP BY grp ORDER BY grp")
    return [{"name": r["grp"], "images": r["n"], "updated_at": r["at"]} for r in rows]


def plate(journal: Journal, settings: Settings, experiment: str) -> Plate | None:
    """The plate of ``experiment``; None when it has no results."""
    records = _records(journal, experiment)
    if not records:
        return None
    states: dict[str, WellState] = {}
    by_point: dict[tuple[str, int | None], list[float]] = defaultdict(list)
    for record in records:
        name = str(record.get("well") or "?")
        states.setdefault(name, WellState(name)).images += 1
        if isinstance(record.get("efficiency"), int | float):
            by_point[(name, record.get("timepoint"))].append(float(record["efficiency"]))
    for (name, timepoint), values in by_point.items():
        state = states[name]
        if state.timepoint is None or (timepoint is not None and timepoint >= state.timepoint):
            state.timepoint, state.efficiency = timepoint, sum(values) / len(values)
    _add_forecasts(journal, settings, experiment, states)
    return _layout(experiment, states, records)


def _add_forecasts(journal: Journal, settings: Settings, experiment: str,
                   states: dict[str, WellState]) -> None:
    folder = efficiency_summary(journal, settings, experiment)
    rows = read_efficiency_csv(folder) if folder is not None else None
    for row in rows or []:
        state = states.get(row.get("well") or "")
        if state is not None and row.get("forecast_final"):
            state.forecast = _number(row.get("forecast_final"))
            state.forecast_low = _number(row.get("forecast_low"))
            state.forecast_high = _number(row.get("forecast_high"))
            state.call = row.get("forecast_call") or None


def _layout(experiment: str, states: dict[str, WellState], records: list[dict[str, Any]]) -> Plate:
    placed: dict[tuple[int, int], WellState] = {}
    other: list[WellState] = []
    for name, state in sorted(states.items()):
        match = _WELL.match(name)
        if match is None:
            other.append(state)
            continue
        letters, column = match.group(1).upper(), int(match.group(2))
        row = ord(letters[-1]) - 64 + (26 * (ord(letters[0]) - 64) if len(letters) == 2 else 0)
        placed[(row, column)] = state
    need_rows = max((r for r, _ in placed), default=1)
    need_columns = max((c for _, c in placed), default=1)
    rows, columns = next(((r, c) for r, c in PLATE_FORMATS if r >= need_rows and c >= need_columns),
                         (need_rows, need_columns))
    plate_ = Plate(experiment, rows, columns, placed, other)
    plate_.model_versions = sorted({str(r["model_version"]) for r in records if r.get("model_version")})
    plate_.thresholds = sorted({float(r["threshold"]) for r in records
                                if isinstance(r.get("threshold"), int | float)})
    plate_.folders = sorted({str(r["relative_path"]).rsplit("/", 1)[0] for r in records
                             if "/" in str(r.get("relative_path") or "")})
    plate_.updated_at = max(float(r["_at"]) for r in records)
    return plate_


def well(journal: Journal, settings: Settings, experiment: str, name: str) -> WellDetail | None:
    """One well's time course and images; None when the well has no results."""
    records = [r for r in _records(journal, experiment) if str(r.get("well") or "?") == name]
    if not records:
        return None
    folder = efficiency_summary(journal, settings, experiment)
    table = (read_efficiency_csv(folder) if folder is not None else None) or []
    rows = [r for r in table if r.get("well") == name]
    points = [{k: v if k in ("forecast_call", "well") else _number(v) for k, v in row.items()}
              for row in rows]
    outputs = _outputs_by_job(journal, [int(r["_job"]) for r in records])
    images = [WellImage(str(r.get("position") or "-"), r.get("timepoint"), r.get("acquired_at"),
                        r.get("efficiency"), outputs.get((int(r["_job"]), "overlay.png")),
                        outputs.get((int(r["_job"]), "virtual_stain.tif")))
              for r in records]
    images.sort(key=lambda i: (i.timepoint if i.timepoint is not None else -1, i.position))
    return WellDetail(experiment, name, points, images)


def _outputs_by_job(journal: Journal, job_ids: list[int]) -> dict[tuple[int, str], int]:
    found: dict[tuple[int, str], int] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for row in journal.query(f"SELECT id, job_id, path FROM outputs WHERE job_id IN ({marks})", chunk):
            found[(int(row["job_id"]), Path(row["path"]).name)] = int(row["id"])
    return found


def output_file(journal: Journal, settings: Settings, output_id: int) -> Path | None:
    """The file of output ``output_id`` when it lies inside the outputs folder."""
    rows = journal.query("SELECT path FROM outputs WHERE id=?", (output_id,))
    if not rows:
        return None
    path = Path(rows[0]["path"]).resolve()
    root = settings.paths.outputs_dir.resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def studies(journal: Journal) -> list[dict[str, Any]]:
    """Processed CT/MR series (pseudonymised), their structures and where their DICOM
    results were exported."""
    pipelines = pipelines_with_results(journal)
    if not pipelines:
        return []
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for row in cohort_rows(journal, pipelines, identifiers=False):
        entry = series.setdefault((row["pipeline"], row["series"]), {
            "study": row["study"], "series": row["series"], "pipeline": row["pipeline"],
            "modality": row["modality"], "model_version": row["model_version"],
            "pipeline_version": row["pipeline_version"], "processed_at": row["processed_at"],
            "arrival": row["_arrival"], "structures": []})
        entry["structures"].append(row)
    exports = _exports_by_series(journal)
    for (pipeline, _pseudonym), entry in series.items():
        entry["flagged"] = [s["structure"] for s in entry["structures"] if s.get("review_required")]
        entry["exports"] = exports.get((pipeline, entry["processed_at"]), [])
    return sorted(series.values(), key=lambda e: -(e["processed_at"] or 0))


def _exports_by_series(journal: Journal) -> dict[tuple[str, float], list[dict[str, Any]]]:
    rows = journal.query(
        "SELECT j.pipeline, j.finished_at, e.destination, e.state, COUNT(*) n FROM exports e"
        " JOIN outputs o ON o.id = e.output_id JOIN jobs j ON j.id = o.job_id"
        " GROUP BY j.id, e.destination, e.state")
    found: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        found[(row["pipeline"], row["finished_at"])].append(
            {"destination": row["destination"], "state": row["state"], "objects": row["n"]})
    return found


def operations(journal: Journal, settings: Settings) -> dict[str, Any]:
    """Pipelines (from the daemon's state file), jobs by state, dead jobs, the outbox."""
    try:
        state = json.loads((settings.paths.state_dir / "daemon.json").read_text())
    except (OSError, ValueError):
        state = {}
    counts = journal.query("SELECT pipeline, state, COUNT(*) n FROM jobs GROUP BY pipeline, state"
                           " ORDER BY pipeline, state")
    dead = journal.query("SELECT id, pipeline, error, finished_at FROM jobs WHERE state='dead'"
                         " ORDER BY id DESC LIMIT 50")
    outbox = journal.query("SELECT destination, state, COUNT(*) n FROM exports GROUP BY destination, state"
                           " ORDER BY destination, state")
    failed = journal.query("SELECT id, destination, attempts, error FROM exports WHERE state='dead'"
                           " ORDER BY id DESC LIMIT 50")
    return {"pipelines": state.get("pipelines", {}), "pid": state.get("pid"),
            "jobs": [dict(r) for r in counts], "dead_jobs": [dict(r) for r in dead],
            "exports": [dict(r) for r in outbox], "dead_exports": [dict(r) for r in failed]}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
