"""Early forecast of each well's final-day differentiation efficiency, with an interval.

A well's course so far is a :class:`WellCourse`: its measured efficiencies (and, where
recorded, mean block probabilities) at course fractions ``t`` (0 at the experiment's
first image, 1 on the final day). From the course up to its last point ``f`` the
:class:`EfficiencyForecaster` computes a few features (:data:`KINETIC_FEATURES`: the
recent level, peak, mean, recent slope and rise; :data:`IMAGE_FEATURES`: the mean block
probability, whose sub-threshold part shows precursor morphology before cells turn
positive) and predicts the final efficiency with a ridge regression fitted for the
observed fraction: one model per bin of ``f`` (centres 0, 0.1, ..., 1), fitted on every
training prefix whose ``f`` lies within :data:`WINDOW` of the centre. The interval comes
from split-conformal residual quantiles of each bin on calibration wells that the
regression never saw (two-sided, ``coverage`` nominal). Between two centres value and
interval are interpolated linearly. Pure numpy: same data and seed, same model.

The fitted model is plain numbers (:meth:`EfficiencyForecaster.to_arguments`), stored
as the ``arguments`` of a model card (``models/weights/efficiency_forecast.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np

from acqflow.plugins.virtual_staining.forecast_options import FORECAST_MODEL

__all__ = [
    "ARCHITECTURE",
    "IMAGE_FEATURES",
    "KINETIC_FEATURES",
    "MODEL_NAME",
    "EfficiencyForecaster",
    "FitSettings",
    "Forecast",
    "ForecastCall",
    "WellCourse",
    "arguments_digest",
    "course_features",
    "fit_forecaster",
]

MODEL_NAME = FORECAST_MODEL
ARCHITECTURE = "acqflow.plugins.virtual_staining.forecast.EfficiencyForecaster"
FORMAT_VERSION = 1
KINETIC_FEATURES = ("fraction", "last", "peak", "mean", "slope", "rise", "sqrt_last")
IMAGE_FEATURES = ("probability_mean", "probability_last", "probability_excess", "probability_rise")
BIN_CENTRES = tuple(round(0.1 * i, 1) for i in range(11))
WINDOW = 0.15  # a bin learns from prefixes whose observed fraction is this close
RECENT = 0.1  # "last" averages the points of the last tenth of the course (noise)
SLOPE_SPAN = 0.3  # the slope is fitted over the last 30 % of the course
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class ForecastCall(str, Enum):
    """Whether a well is forecast to reach the efficiency threshold on the final day."""

    SUFFICIENT = "sufficient"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class WellCourse:
    """A well's measured course: ascending course fractions, efficiencies, probabilities.

    ``probability`` holds NaN where no mean block probability is known; ``final`` is the
    measured final-day efficiency (training and evaluation only). Raises ValueError on
    empty or mismatched arrays or fractions that decrease.
    """

    experiment: str
    well: str
    fraction: np.ndarray
    efficiency: np.ndarray
    probability: np.ndarray
    final: float | None = None

    def __post_init__(self) -> None:
        n = len(self.fraction)
        if n == 0 or len(self.efficiency) != n or len(self.probability) != n:
            raise ValueError(f"{self.experiment}/{self.well}: empty or mismatched course arrays")
        if np.any(np.diff(self.fraction) < 0) or not np.all(np.isfinite(self.fraction)):
            raise ValueError(f"{self.experiment}/{self.well}: course fractions must be finite and ascending")
        if self.final is not None and not 0.0 <= self.final <= 1.0:
            raise ValueError(f"{self.experiment}/{self.well}: final efficiency {self.final} outside [0, 1]")

    def __len__(self) -> int:
        return len(self.fraction)

    def prefix(self, points: int) -> WellCourse:
        """The first ``points`` points (at least one)."""
        n = max(1, points)
        t, y, p = self.fraction[:n], self.efficiency[:n], self.probability[:n]
        return WellCourse(self.experiment, self.well, t, y, p, self.final)

    def until(self, fraction: float) -> WellCourse | None:
        """The points observed up to ``fraction`` of the course, or None before the first."""
        points = int(np.searchsorted(self.fraction, fraction + 1e-9, side="right"))
        return self.prefix(points) if points else None


@dataclass(frozen=True)
class Forecast:
    """A forecast of the final-day efficiency made at course fraction ``fraction``."""

    value: float
    low: float
    high: float
    fraction: float

    def call(self, threshold: float) -> ForecastCall:
        return ForecastCall.SUFFICIENT if self.value >= threshold else ForecastCall.INSUFFICIENT


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def course_features(course: WellCourse, names: Sequence[str]) -> np.ndarray:
    """The named features of ``course`` (NaN for an image feature without probabilities)."""
    t, y, p = course.fraction, course.efficiency, course.probability
    f = float(t[-1])
    recent = t >= f - RECENT
    last = float(y[recent].mean())
    span = t >= f - SLOPE_SPAN
    slope = float(np.polyfit(t[span], y[span], 1)[0]) if np.ptp(t[span]) > 1e-6 else 0.0
    known = np.isfinite(p)
    p_mean = float(p[known].mean()) if known.any() else math.nan
    p_recent = known & recent
    p_last = float(p[p_recent].mean()) if p_recent.any() else p_mean
    values = {
        "fraction": f,
        "last": last,
        "peak": float(y.max()),
        "mean": float(y.mean()),
        "slope": slope,
        "rise": last - float(y[0]),
        "sqrt_last": math.sqrt(max(last, 0.0)),
        "probability_mean": p_mean,
        # what the probability shows beyond the positive blocks: precursor morphology
        "probability_excess": p_last - last,
        "probability_last": p_last,
        # against the well's own first image: imaging and background differ between plates
        "probability_rise": p_last - float(p[known][0]) if known.any() else math.nan,
    }
    return np.array([values[name] for name in names], dtype=np.float64)


def _design(x: np.ndarray, pairs: bool) -> np.ndarray:
    """The regression's inputs: the features and, with ``pairs``, all their pairwise products."""
    if not pairs:
        return x
    i, j = np.triu_indices(x.shape[-1])
    return np.concatenate([x, x[..., i] * x[..., j]], axis=-1)


def design_width(features: int, pairs: bool) -> int:
    return features + (features * (features + 1) // 2 if pairs else 0)


@dataclass(frozen=True)
class _Bin:
    """One observed-fraction bin: standardisation, ridge coefficients, conformal offsets."""

    centre: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    alpha: float
    low: float
    high: float
    fitted: int
    calibrated: int

    def predict(self, x: np.ndarray) -> float:
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        z = np.where(np.isfinite(z), z, 0.0)  # an unknown feature counts as the training mean
        return float(self.intercept + z @ np.asarray(self.coef))


def _bin(values: Mapping[str, Any]) -> _Bin:
    """A bin from its JSON form (lists for the vectors); raises ValueError on missing fields."""
    vectors = {"mean", "scale", "coef"}
    fields_: dict[str, Any] = {k: tuple(map(float, v)) if k in vectors else v for k, v in values.items()}
    try:
        return _Bin(**fields_)
    except TypeError as exc:
        raise ValueError(f"invalid forecast bin: {exc}") from None


class EfficiencyForecaster:
    """Forecasts of the final efficiency from a course so far; see the module docstring.

    Raises ValueError when the arguments are inconsistent (wrong lengths, unknown
    features, unordered bins).
    """

    def __init__(self, features: Sequence[str], bins: Sequence[Mapping[str, Any]], coverage: float,
                 pairs: bool = True, format_version: int = FORMAT_VERSION) -> None:
        if format_version != FORMAT_VERSION:
            raise ValueError(f"forecast model format {format_version}, this code reads {FORMAT_VERSION}")
        unknown = set(features) - set(KINETIC_FEATURES) - set(IMAGE_FEATURES)
        if unknown or not features:
            raise ValueError(f"unknown or no forecast features: {sorted(unknown)}")
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {coverage}")
        self.features = tuple(features)
        self.coverage = float(coverage)
        self.pairs = bool(pairs)
        self.bins = tuple(_bin(b) for b in bins)
        if not self.bins or any(a.centre >= b.centre for a, b in zip(self.bins, self.bins[1:], strict=False)):
            raise ValueError("forecast bins must be non-empty with increasing centres")
        width = design_width(len(self.features), self.pairs)
        for b in self.bins:
            if not len(b.mean) == len(b.scale) == len(b.coef) == width:
                raise ValueError(f"bin {b.centre}: coefficients do not match {len(self.features)} features")

    @property
    def uses_image_features(self) -> bool:
        return any(name in IMAGE_FEATURES for name in self.features)

    def predict(self, course: WellCourse) -> Forecast:
        """The forecast of ``course``'s final efficiency from all its points."""
        x = _design(course_features(course, self.features), self.pairs)
        f = float(np.clip(course.fraction[-1], 0.0, 1.0))
        centres = np.array([b.centre for b in self.bins])
        upper = int(np.clip(np.searchsorted(centres, f), 0, len(centres) - 1))
        lower = max(upper - 1, 0)
        a, b = self.bins[lower], self.bins[upper]
        weight = 0.0 if upper == lower else float(np.clip((f - a.centre) / (b.centre - a.centre), 0, 1))

        def mix(left: float, right: float) -> float:
            return (1 - weight) * left + weight * right

        value = mix(a.predict(x), b.predict(x))
        low, high = value + mix(a.low, b.low), value + mix(a.high, b.high)
        fraction = float(course.fraction[-1])
        return Forecast(_unit(value), _unit(min(low, value)), _unit(max(high, value)), fraction)

    def to_arguments(self) -> dict[str, Any]:
        """Plain JSON values that rebuild this model: ``EfficiencyForecaster(**arguments)``."""
        return {
            "features": list(self.features),
            "coverage": self.coverage,
            "pairs": self.pairs,
            "format_version": FORMAT_VERSION,
            "bins": [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(b).items()}
                     for b in self.bins],
        }


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a model's arguments (the card's checksum)."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit_forecaster` fits; validates itself (raises ValueError).

    ``calibration_share`` of the wells (whole experiments when there are at least four)
    is kept for the conformal quantiles; ``image_features`` adds :data:`IMAGE_FEATURES`.
    """

    coverage: float = 0.9
    calibration_share: float = 0.25
    image_features: bool = True
    pairs: bool = True
    seed: int = 0
    alphas: tuple[float, ...] = ALPHAS

    def __post_init__(self) -> None:
        if not 0 < self.coverage < 1 or not 0 < self.calibration_share < 1:
            raise ValueError("coverage and calibration_share must be in (0, 1)")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError("ridge alphas must be positive")


@dataclass(frozen=True)
class _Samples:
    x: np.ndarray
    y: np.ndarray
    fraction: np.ndarray
    group: np.ndarray  # well index: folds never split a well


def _samples(courses: Sequence[WellCourse], names: Sequence[str], pairs: bool) -> _Samples:
    rows, targets, fractions, groups = [], [], [], []
    for index, course in enumerate(courses):
        if course.final is None:
            raise ValueError(f"{course.experiment}/{course.well}: no final efficiency to learn from")
        for points in range(1, len(course) + 1):
            rows.append(course_features(course.prefix(points), names))
            targets.append(course.final)
            fractions.append(course.fraction[points - 1])
            groups.append(index)
    x = _design(np.array(rows), pairs)
    return _Samples(x, np.array(targets), np.array(fractions), np.array(groups))


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, scale, coefficients and intercept of a ridge fit on standardised features."""
    known = np.isfinite(x)
    counts = known.sum(axis=0)
    column_mean = np.where(known, x, 0.0).sum(axis=0) / np.maximum(counts, 1)
    filled = np.where(known, x, column_mean)
    mean, scale = filled.mean(axis=0), filled.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (filled - mean) / scale
    coef = np.linalg.solve(z.T @ z + alpha * len(y) * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mean, scale, coef, float(y.mean())


def _predict(x: np.ndarray, fit: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> np.ndarray:
    mean, scale, coef, intercept = fit
    z = np.nan_to_num((x - mean) / scale)
    return np.asarray(intercept + z @ coef)


def _choose_alpha(data: _Samples, alphas: Sequence[float]) -> float:
    """The alpha with the least mean absolute error over three folds of whole wells."""
    folds = data.group % 3
    errors = []
    for alpha in alphas:
        total = 0.0
        for fold in range(3):
            train, test = folds != fold, folds == fold
            if train.sum() < 3 or not test.any():
                continue
            fit = _ridge(data.x[train], data.y[train], alpha)
            total += float(np.abs(_predict(data.x[test], fit) - data.y[test]).sum())
        errors.append(total)
    return float(alphas[int(np.argmin(errors))])


def _conformal(residuals: np.ndarray, coverage: float) -> tuple[float, float]:
    """Lower and upper residual quantiles with the finite-sample correction."""
    n = len(residuals)
    tail = (1 - coverage) / 2
    level = min(1.0, math.ceil((n + 1) * (1 - tail)) / n)
    return float(np.quantile(residuals, 1 - level)), float(np.quantile(residuals, level))


def _split(courses: Sequence[WellCourse], share: float, seed: int) -> np.ndarray:
    """True for the calibration wells: whole experiments when there are four or more."""
    experiments = sorted({c.experiment for c in courses})
    keys = experiments if len(experiments) >= 4 else sorted({(c.experiment, c.well) for c in courses})
    order = np.random.default_rng(seed).permutation(len(keys))
    chosen = {keys[i] for i in order[: max(1, round(share * len(keys)))]}
    by_experiment = len(experiments) >= 4
    return np.array([(c.experiment if by_experiment else (c.experiment, c.well)) in chosen for c in courses])


def _subset(data: _Samples, mask: np.ndarray) -> _Samples:
    return _Samples(data.x[mask], data.y[mask], data.fraction[mask], data.group[mask])


def fit_forecaster(
    courses: Iterable[WellCourse],
    settings: FitSettings = FitSettings(),
    progress: Callable[[], None] | None = None,
) -> EfficiencyForecaster:
    """Fit the per-bin ridge models and conformal intervals on courses with a ``final``.

    ``progress`` is called after each of the :data:`BIN_CENTRES`.

    Raises ValueError with fewer than 8 courses, a course without ``final``, or a bin
    without fitting or calibration data (the courses cover too little of the course).
    """
    wells = list(courses)
    if len(wells) < 8:
        raise ValueError(f"need at least 8 wells with a final efficiency to fit a forecast, got {len(wells)}")
    names = KINETIC_FEATURES + (IMAGE_FEATURES if settings.image_features else ())
    calibration = _split(wells, settings.calibration_share, settings.seed)
    data = _samples(wells, names, settings.pairs)
    held = calibration[data.group]
    fitting, checking = _subset(data, ~held), _subset(data, held)
    bins = []
    for centre in BIN_CENTRES:
        near_fit = np.abs(fitting.fraction - centre) <= WINDOW + 1e-9
        near_cal = np.abs(checking.fraction - centre) <= WINDOW + 1e-9
        if near_fit.sum() < 8 or near_cal.sum() < 4:
            raise ValueError(f"too few course points near {centre:.0%} of the course to fit a forecast there")
        part = _subset(fitting, near_fit)
        alpha = _choose_alpha(part, settings.alphas)
        fit = _ridge(part.x, part.y, alpha)
        predicted = np.clip(_predict(checking.x[near_cal], fit), 0.0, 1.0)
        low, high = _conformal(checking.y[near_cal] - predicted, settings.coverage)
        mean, scale, coef, intercept = fit
        bins.append({
            "centre": centre, "mean": tuple(mean.tolist()), "scale": tuple(scale.tolist()),
            "coef": tuple(coef.tolist()), "intercept": intercept, "alpha": alpha,
            "low": low, "high": high, "fitted": int(near_fit.sum()), "calibrated": int(near_cal.sum()),
        })
        if progress is not None:
            progress()
    return EfficiencyForecaster(names, bins, settings.coverage, settings.pairs)
