"""How good early forecasts are: the forecaster against two baselines, per observed fraction.

For each observed fraction ``f`` every course is cut to its points up to ``f`` and its
final efficiency forecast three ways:

- ``forecaster``: :class:`~acqflow.plugins.virtual_staining.forecast.EfficiencyForecaster`;
- ``last_value``: the last measured efficiency carried forward;
- ``logistic``: ``a / (1 + exp(-k (t - t0)))`` fitted to the points so far
  (``scipy.optimize.curve_fit``, bounded: ``a`` in 0-1, ``k`` in 1-60 per course,
  ``t0`` in 0-1.5) and read at the final day; with fewer than four points, or when the
  fit fails, it falls back to the last value.

Reported per fraction and method: call accuracy (forecast >= threshold against final >=
threshold) and mean absolute error of the final efficiency; for the forecaster also the
interval's coverage and mean width. Wells without a point up to ``f`` are left out of
that fraction (counted).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from acqflow.plugins.virtual_staining.forecast import EfficiencyForecaster, WellCourse

__all__ = [
    "BASELINES",
    "FractionResult",
    "MethodScore",
    "evaluate_forecasts",
    "last_value",
    "logistic_fit",
]


def last_value(course: WellCourse) -> float:
    """The last measured efficiency, carried forward to the final day."""
    return float(course.efficiency[-1])


def _logistic(t: np.ndarray, a: float, k: float, t0: float) -> np.ndarray:
    return np.asarray(a / (1.0 + np.exp(-k * (t - t0))))


def logistic_fit(course: WellCourse) -> float:
    """A logistic curve fitted to the points so far, read at the final day (see module)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    t, y = course.fraction, course.efficiency
    if len(t) < 4 or np.ptp(t) <= 0:
        return last_value(course)
    start = (float(np.clip(2 * y.max(), 0.05, 1.0)), 10.0, float(np.clip(t[-1], 0.0, 1.5)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(
                _logistic, t, y, p0=start, bounds=([0.0, 1.0, 0.0], [1.0, 60.0, 1.5]), maxfev=2000
            )
    except (RuntimeError, ValueError, OptimizeWarning):
        return last_value(course)
    value = float(_logistic(np.array([1.0]), *params)[0])
    return float(np.clip(value, 0.0, 1.0)) if np.isfinite(value) else last_value(course)


BASELINES: dict[str, Callable[[WellCourse], float]] = {"last_value": last_value, "logistic": logistic_fit}


@dataclass(frozen=True)
class MethodScore:
    accuracy: float
    mae: float


@dataclass(frozen=True)
class FractionResult:
    """Scores at one observed fraction; ``skipped`` wells had no point up to it."""

    fraction: float
    wells: int
    skipped: int
    sufficient_share: float
    scores: dict[str, MethodScore]
    coverage: float
    mean_width: float

    def to_json(self) -> dict[str, object]:
        return {
            "fraction": self.fraction,
            "wells": self.wells,
            "skipped": self.skipped,
            "sufficient_share": self.sufficient_share,
            "coverage": self.coverage,
            "mean_width": self.mean_width,
            **{f"{name}_accuracy": s.accuracy for name, s in self.scores.items()},
            **{f"{name}_mae": s.mae for name, s in self.scores.items()},
        }


def _score(forecasts: np.ndarray, finals: np.ndarray, threshold: float) -> MethodScore:
    calls = (forecasts >= threshold) == (finals >= threshold)
    return MethodScore(float(calls.mean()), float(np.abs(forecasts - finals).mean()))


def _at_fraction(
    forecaster: EfficiencyForecaster, courses: Sequence[WellCourse], fraction: float, threshold: float
) -> FractionResult:
    cut = [(c.until(fraction), c.final) for c in courses]
    seen = [(c, final) for c, final in cut if c is not None and final is not None]
    if not seen:
        raise ValueError(f"no course has a point up to {fraction:.0%} of the course")
    finals = np.array([final for _, final in seen])
    forecasts = [forecaster.predict(c) for c, _ in seen]
    values = {"forecaster": np.array([f.value for f in forecasts])}
    for name, baseline in BASELINES.items():
        values[name] = np.array([baseline(c) for c, _ in seen])
    low = np.array([f.low for f in forecasts])
    high = np.array([f.high for f in forecasts])
    return FractionResult(
        fraction=fraction,
        wells=len(seen),
        skipped=len(courses) - len(seen),
        sufficient_share=float((finals >= threshold).mean()),
        scores={name: _score(v, finals, threshold) for name, v in values.items()},
        coverage=float(((finals >= low) & (finals <= high)).mean()),
        mean_width=float((high - low).mean()),
    )


def evaluate_forecasts(
    forecaster: EfficiencyForecaster,
    courses: Sequence[WellCourse],
    fractions: Sequence[float],
    threshold: float,
    progress: Callable[[], None] | None = None,
) -> list[FractionResult]:
    """Scores of the forecaster and the baselines at each fraction (see module).

    Raises ValueError when a fraction is outside (0, 1] or no course reaches it.
    """
    results = []
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"observed fractions must be in (0, 1], got {fraction}")
        results.append(_at_fraction(forecaster, courses, fraction, threshold))
        if progress is not None:
            progress()
    return results
