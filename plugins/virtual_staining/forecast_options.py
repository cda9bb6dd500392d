"""The ``forecast`` table of the virtual-staining pipeline's options (no numerical imports).

::

    [pipelines.options.virtual-staining.forecast]
    threshold = 0.3        # final-day efficiency that counts as sufficient (default: the card's)
    course_days = 10       # days from an experiment's first image to the final day (default: the card's)
    final_timepoint = 20   # images without acquisition times: the final day's time point index
    enabled = true         # false: no forecast
    model = "efficiency_forecast"   # model card name in the weights folder

The forecast's target is the efficiency on the final day. Where a point lies in the
course: with acquisition times, its time since the experiment's first image over
``course_days``; without them, its time point over ``final_timepoint`` (no forecast
when neither places it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DEFAULT_COURSE_DAYS", "DEFAULT_THRESHOLD", "FORECAST_MODEL", "ForecastOptions"]

FORECAST_MODEL = "efficiency_forecast"
DEFAULT_THRESHOLD = 0.3  # when the card names none
DEFAULT_COURSE_DAYS = 10.0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class ForecastOptions:
    """The ``forecast`` options of the pipeline; validates itself (raises ValueError)."""

    enabled: bool = True
    threshold: float | None = None
    course_days: float | None = None
    final_timepoint: int | None = None
    model: str = FORECAST_MODEL

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"forecast.enabled must be true or false, got {self.enabled!r}")
        if self.threshold is not None and not (_number(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"forecast.threshold must be in (0, 1), got {self.threshold}")
        days, index = self.course_days, self.final_timepoint
        if days is not None and not (_number(days) and math.isfinite(days) and days > 0):
            raise ValueError(f"forecast.course_days must be a positive number, got {days!r}")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 1):
            raise ValueError(f"forecast.final_timepoint must be an integer >= 1, got {index!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> ForecastOptions:
        """Options from a plain mapping; raises ValueError on unknown keys."""
        if not isinstance(options, Mapping):
            raise ValueError(f"forecast options must be a table, got {options!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown forecast options {unknown}; known: {sorted(known)}")
        return cls(**dict(options))
