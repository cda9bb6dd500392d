"""Well courses for the efficiency forecast: from time points, generated plates or CSV files.

Where a point lies in the course (:class:`CourseHorizon`): with acquisition times, its
elapsed time since the experiment's first image divided by ``course_days`` (the days
from the first image to the final-day readout); without them, its time point divided
by ``final_timepoint`` (the index of the final day's time point).

Your own past experiments come as two kinds of CSV (``train efficiency-forecast
--courses ... --finals ...``):

- time courses, as acqflow writes them (``efficiency.csv`` of each experiment's
  summary): columns ``experiment``, ``well``, ``efficiency`` (0-1), ``elapsed_h`` (or
  ``elapsed_s``, or ``timepoint`` with ``--final-timepoint``) and optionally
  ``mean_probability``; other columns are ignored;
- final efficiencies: ``experiment``, ``well``, ``final_efficiency`` (0-1), the
  fraction of cardiomyocytes measured on the final day (e.g. NKX2.5-GFP+ by flow
  cytometry, or the GFP area of the final fluorescence images).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acqflow.plugins.virtual_staining.experiments import DAY_S, GeneratedExperiment
from acqflow.plugins.virtual_staining.forecast import WellCourse
from acqflow.plugins.virtual_staining.summary import TimePoint, efficiency_time_course

__all__ = [
    "CourseHorizon",
    "courses_from_experiments",
    "courses_from_points",
    "read_courses",
]

TIME_COLUMNS = ("elapsed_h", "elapsed_s", "timepoint")


@dataclass(frozen=True)
class CourseHorizon:
    """Where the final day is; validates itself (raises ValueError)."""

    course_days: float | None = 10.0
    final_timepoint: int | None = None

    def __post_init__(self) -> None:
        if self.course_days is not None and not (math.isfinite(self.course_days) and self.course_days > 0):
            raise ValueError(f"course_days must be positive, got {self.course_days}")
        if self.final_timepoint is not None and (
            isinstance(self.final_timepoint, bool) or self.final_timepoint < 1
        ):
            raise ValueError(f"final_timepoint must be a time point index >= 1, got {self.final_timepoint}")

    def fraction(self, elapsed_s: float | None, timepoint: int | None) -> float | None:
        """Course fraction of a point, or None when neither its time nor its index places it."""
        if elapsed_s is not None and self.course_days is not None:
            return elapsed_s / (self.course_days * DAY_S)
        if timepoint is not None and self.final_timepoint is not None:
            return timepoint / self.final_timepoint
        return None


def _course(experiment: str, well: str, rows: Sequence[tuple[float, float, float]],
            final: float | None) -> WellCourse:
    ordered = sorted(rows, key=lambda row: row[0])
    t, y, p = (np.array(column, dtype=np.float64) for column in zip(*ordered, strict=True))
    return WellCourse(experiment, well, t, y, p, final)


def courses_from_points(
    experiment: str,
    points: Iterable[TimePoint],
    horizon: CourseHorizon,
    finals: Mapping[str, float] | None = None,
) -> dict[str, WellCourse]:
    """Well → course from :func:`~acqflow.plugins.virtual_staining.summary.efficiency_time_course`.

    Points the horizon cannot place (no acquisition time and no ``final_timepoint``) are
    left out; a well without placed points has no course.
    """
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for point in points:
        where = horizon.fraction(point.elapsed_s, point.timepoint)
        if where is None:
            continue
        probability = point.mean_probability
        rows[point.well].append((where, point.efficiency, math.nan if probability is None else probability))
    return {
        well: _course(experiment, well, mine, None if finals is None else finals.get(well))
        for well, mine in sorted(rows.items())
    }


def courses_from_experiments(experiments: Iterable[GeneratedExperiment]) -> list[WellCourse]:
    """The courses of generated plates, each well with its true final efficiency."""
    courses: list[WellCourse] = []
    for experiment in experiments:
        horizon = CourseHorizon(course_days=experiment.course_days)
        points = efficiency_time_course(experiment.records)
        courses += courses_from_points(experiment.name, points, horizon, experiment.finals).values()
    return courses


def _float(row: Mapping[str, str], column: str, where: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {column} must be finite, got {text!r}")
    return value


def _rows(path: Path, required: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """(``file:line``, row) of a CSV; raises ValueError when a required column is missing."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
            return [
                (f"{path}:{number}", {k.strip(): (v or "") for k, v in row.items() if k is not None})
                for number, row in enumerate(reader, start=2)
            ]
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _fraction(row: Mapping[str, str], horizon: CourseHorizon, where: str) -> float:
    hours, seconds = _float(row, "elapsed_h", where), _float(row, "elapsed_s", where)
    elapsed = seconds if seconds is not None else None if hours is None else hours * 3600.0
    timepoint = _float(row, "timepoint", where)
    index = None if timepoint is None else int(timepoint)
    place = horizon.fraction(elapsed, index)
    if place is None:
        raise ValueError(
            f"{where}: no elapsed_h/elapsed_s, and no timepoint with --final-timepoint,"
            " to place it in the course"
        )
    return place


def _unit(value: float | None, column: str, where: str) -> float:
    if value is None:
        raise ValueError(f"{where}: {column} is empty")
    if not 0.0 <= value <= 1.0:
        hint = " (percentages? give fractions 0-1)" if 1.0 < value <= 100.0 else ""
        raise ValueError(f"{where}: {column} {value} is outside 0-1{hint}")
    return value


def read_finals(path: Path) -> dict[tuple[str, str], float]:
    """(experiment, well) → final efficiency; raises ValueError on bad or duplicate rows."""
    finals: dict[tuple[str, str], float] = {}
    for where, row in _rows(path, ("experiment", "well", "final_efficiency")):
        key = (row["experiment"].strip(), row["well"].strip())
        if key in finals:
            raise ValueError(f"{where}: a second final efficiency for {key[0]}/{key[1]}")
        finals[key] = _unit(_float(row, "final_efficiency", where), "final_efficiency", where)
    if not finals:
        raise ValueError(f"{path}: no rows")
    return finals


def read_courses(
    course_files: Sequence[Path], finals_file: Path, horizon: CourseHorizon
) -> tuple[list[WellCourse], list[str]]:
    """Courses with their final efficiency, and the wells left out (no final) as ``exp/well``.

    Raises ValueError on a missing column, a value that is not a number in 0-1, a row
    the horizon cannot place, or when no course has a final efficiency.
    """
    finals = read_finals(finals_file)
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for path in course_files:
        for where, row in _rows(path, ("experiment", "well", "efficiency")):
            if not any((row.get(name) or "").strip() for name in TIME_COLUMNS):
                raise ValueError(f"{where}: needs one of the columns {list(TIME_COLUMNS)} filled")
            key = (row["experiment"].strip(), row["well"].strip())
            probability = _float(row, "mean_probability", where)
            rows[key].append((
                _fraction(row, horizon, where),
                _unit(_float(row, "efficiency", where), "efficiency", where),
                math.nan if probability is None else _unit(probability, "mean_probability", where),
            ))
    courses = [_course(e, w, rows[(e, w)], finals[(e, w)]) for e, w in sorted(rows) if (e, w) in finals]
    left_out = [f"{e}/{w}" for e, w in sorted(rows) if (e, w) not in finals]
    if not courses:
        raise ValueError(f"no well of {', '.join(map(str, course_files))} has a row in {finals_file}")
    return courses, left_out
