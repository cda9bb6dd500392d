"""Synthetic differentiation experiments: the efficiency records of whole courses.

Not images: what the virtual-staining pipeline records per image (positive blocks, mean
block probability, well, position, time point, acquisition time), for plates of wells
followed over a differentiation course, together with each well's true final-day
efficiency. The efficiency forecaster is trained and evaluated on these.

Per well, the true efficiency follows logistic kinetics in course time ``t`` (0 at the
first image, 1 on the final day)::

    s(t) = 1 / (1 + exp(-rate * (t - onset)))
    e(t) = final * (s(t) - s(0)) / (s(1) - s(0))        # 0 at the start, ``final`` at the end

with the final efficiency bimodal-ish (good wells 0.4-0.9, medium 0.25-0.4, failing
0-0.25) and ``onset`` and ``rate`` drawn per well. Measurement like the staining model's:
each position (field) deviates from its well by a fixed relative offset, each image has
noise and a false-positive floor at the low end (``low_bias * (1 - e)``), and a well
misses a time point now and then. The mean block probability carries an early image
feature: before cells turn positive, precursor morphology raises the sub-threshold
probability of blocks in proportion to the well's "competence", a noisy copy of its
outcome (the assumption behind using image features for an early forecast).

Two varieties: :data:`TRAINING_KINETICS` (what ``train efficiency-forecast`` generates)
and :data:`HELD_OUT_KINETICS` (different onset, rate, noise, bias, background, missing
share, positions, outcome mix and a different number of time points: evaluation sees
settings training never saw). Same seed, same experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from acqflow.plugins.api import RecordValue

__all__ = [
    "HELD_OUT_KINETICS",
    "KINETICS",
    "TRAINING_KINETICS",
    "GeneratedExperiment",
    "Kinetics",
    "generate_experiments",
    "well_name",
]

DAY_S = 86400.0
START_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BLOCKS_PER_IMAGE = 1764  # a 42 x 42 block grid
POSITIVE_PROBABILITY = 0.86  # mean block probability inside positive blocks
PRECURSOR_GAIN = 0.15  # sub-threshold probability added at full competence
PRECURSOR_RISE = 0.3  # course fraction by which precursor morphology is fully visible
_ROWS = "ABCDEFGH"

Range = tuple[float, float]


def well_name(index: int) -> str:
    """``A01`` .. ``H12`` for 0 .. 95 (row-major, 12 columns)."""
    if not 0 <= index < 96:
        raise ValueError(f"well index {index} outside a 96-well plate")
    return f"{_ROWS[index // 12]}{index % 12 + 1:02d}"


@dataclass(frozen=True)
class Kinetics:
    """Ranges one variety of experiments is drawn from; validates itself (raises ValueError).

    Times are course fractions (0 first image, 1 final day). ``outcomes`` are the shares
    of good (0.4-0.9), medium (0.25-0.4) and failing (0-0.25) wells; ``timepoints`` and
    ``positions`` are inclusive integer ranges drawn per experiment; ``noise`` (sd of an
    image's positive fraction), ``low_bias`` and ``background`` (sub-threshold block
    probability) are drawn per experiment, ``onset`` and ``rate`` per well.
    ``morphology_noise`` is the sd of a well's competence around its outcome.
    """

    name: str
    timepoints: tuple[int, int]
    onset: Range
    rate: Range
    noise: Range
    low_bias: Range
    background: Range
    outcomes: tuple[float, float, float] = (0.55, 0.15, 0.30)
    positions: tuple[int, int] = (2, 4)
    position_spread: float = 0.08
    missing: float = 0.05
    morphology_noise: float = 0.08
    jitter_hours: float = 2.0
    course_days: float = 10.0

    def __post_init__(self) -> None:
        for label in ("onset", "rate", "noise", "low_bias", "background"):
            low, high = getattr(self, label)
            if not 0 <= low <= high:
                raise ValueError(f"{label} range must be 0 <= low <= high, got {(low, high)}")
        if not 2 <= self.timepoints[0] <= self.timepoints[1]:
            raise ValueError(f"timepoints must be an increasing range from 2, got {self.timepoints}")
        if not 1 <= self.positions[0] <= self.positions[1]:
            raise ValueError(f"positions must be an increasing range from 1, got {self.positions}")
        if len(self.outcomes) != 3 or min(self.outcomes) < 0 or abs(sum(self.outcomes) - 1) > 1e-9:
            raise ValueError(f"outcome shares must be three numbers >= 0 summing to 1: {self.outcomes}")
        if not 0 <= self.missing < 1 or self.course_days <= 0:
            raise ValueError("missing must be in [0, 1) and course_days positive")
        if min(self.position_spread, self.morphology_noise, self.jitter_hours) < 0:
            raise ValueError("spreads and jitter must be >= 0")

    def describe(self) -> dict[str, object]:
        """The settings as plain JSON values (for model cards and reports)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.__dict__.items()
        }


TRAINING_KINETICS = Kinetics(
    name="training",
    timepoints=(9, 13),
    onset=(0.35, 0.60),
    rate=(8.0, 16.0),
    noise=(0.015, 0.035),
    low_bias=(0.01, 0.04),
    background=(0.06, 0.10),
)
HELD_OUT_KINETICS = Kinetics(
    name="held-out",
    timepoints=(6, 8),
    onset=(0.30, 0.68),
    rate=(6.0, 20.0),
    noise=(0.02, 0.05),
    low_bias=(0.02, 0.06),
    background=(0.04, 0.12),
    outcomes=(0.50, 0.15, 0.35),
    positions=(1, 3),
    position_spread=0.12,
    missing=0.10,
    jitter_hours=4.0,
)
KINETICS: Mapping[str, Kinetics] = {k.name: k for k in (TRAINING_KINETICS, HELD_OUT_KINETICS)}


@dataclass(frozen=True)
class GeneratedExperiment:
    """One plate: its efficiency records (one per image) and each well's true final efficiency."""

    name: str
    course_days: float
    records: tuple[Mapping[str, RecordValue], ...]
    finals: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Well:
    name: str
    final: float
    onset: float
    rate: float
    competence: float

    def efficiency(self, t: np.ndarray) -> np.ndarray:
        def s(x: np.ndarray | float) -> np.ndarray:
            return np.asarray(1.0 / (1.0 + np.exp(-self.rate * (np.asarray(x) - self.onset))))

        return np.asarray(self.final * (s(t) - s(0.0)) / (s(1.0) - s(0.0)))


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _draw_well(rng: np.random.Generator, kinetics: Kinetics, index: int) -> _Well:
    kind = int(rng.choice(3, p=kinetics.outcomes))
    final = _uniform(rng, ((0.4, 0.9), (0.25, 0.4), (0.0, 0.25))[kind])
    onset, rate = _uniform(rng, kinetics.onset), _uniform(rng, kinetics.rate)
    competence = float(np.clip(final / 0.9 + rng.normal(0, kinetics.morphology_noise), 0, 1))
    return _Well(well_name(index), final, onset, rate, competence)


def _experiment(seed: int, index: int, kinetics: Kinetics, wells: int) -> GeneratedExperiment:
    rng = np.random.default_rng([seed, index])
    name = f"SYN{seed}-{kinetics.name}-{index:03d}"
    count = int(rng.integers(kinetics.timepoints[0], kinetics.timepoints[1] + 1))
    positions = int(rng.integers(kinetics.positions[0], kinetics.positions[1] + 1))
    noise, bias = _uniform(rng, kinetics.noise), _uniform(rng, kinetics.low_bias)
    background = _uniform(rng, kinetics.background)
    plate = [_draw_well(rng, kinetics, w) for w in range(wells)]
    times = np.linspace(0.0, 1.0, count)
    jitter = rng.normal(0.0, kinetics.jitter_hours * 3600.0, size=count)
    jitter[0] = 0.0  # day 0 is the first image
    records: list[Mapping[str, RecordValue]] = []
    for well in plate:
        offsets = rng.normal(0.0, kinetics.position_spread, size=positions)
        truth = well.efficiency(times)
        seen = rng.random(count) >= kinetics.missing
        seen[0] = True
        for k in np.flatnonzero(seen):
            precursor = well.competence * min(1.0, times[k] / PRECURSOR_RISE)
            for p, offset in enumerate(offsets):
                true = float(np.clip(truth[k] * (1 + offset), 0, 1))
                measured = float(np.clip(true + bias * (1 - true) + rng.normal(0, noise), 0, 1))
                positive = round(measured * BLOCKS_PER_IMAGE)
                fraction = positive / BLOCKS_PER_IMAGE
                probability = fraction * POSITIVE_PROBABILITY + (1 - fraction) * (
                    background + PRECURSOR_GAIN * precursor
                )
                acquired = START_TIME + times[k] * kinetics.course_days * DAY_S + jitter[k] + 60.0 * p
                records.append(
                    {
                        "identity": f"{name}/{well.name}/pos{p + 1}/t{k:03d}",
                        "experiment": name,
                        "well": well.name,
                        "position": f"pos{p + 1}",
                        "timepoint": int(k),
                        "acquired_at": float(acquired),
                        "positive_fraction": fraction,
                        "blocks_total": BLOCKS_PER_IMAGE,
                        "blocks_positive": positive,
                        "mean_probability": float(np.clip(probability + rng.normal(0, 0.01), 0, 1)),
                    }
                )
    finals = {well.name: well.final for well in plate}
    return GeneratedExperiment(name, kinetics.course_days, tuple(records), finals)


def generate_experiments(
    count: int,
    kinetics: Kinetics = TRAINING_KINETICS,
    seed: int = 0,
    wells: int = 24,
    progress: Callable[[], None] | None = None,
) -> list[GeneratedExperiment]:
    """``count`` plates of ``wells`` wells; experiment ``i`` depends only on (seed, i).

    ``progress`` is called after each experiment. Raises ValueError for a count below 1
    or more than 96 wells.
    """
    if count < 1 or not 1 <= wells <= 96:
        raise ValueError(f"need at least one experiment and 1-96 wells, got {count} and {wells}")
    plates = []
    for index in range(count):
        plates.append(_experiment(seed, index, kinetics, wells))
        if progress is not None:
            progress()
    return plates
