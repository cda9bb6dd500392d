"""Efficiency calibration: from the fraction of positive blocks to the GFP-positive area.

The positive-block fraction is biased in a way that depends on the weights: false
positives lift wells with few cardiomyocytes, blocks half covered at the edges of
regions are counted whole or not at all. A straight line fitted on the validation images
(never the test images) maps the block fraction to the measured GFP area fraction; it is
stored in the model card (``training.inference.efficiency_calibration``) and applied to
every image's efficiency. The line is fitted to minimise absolute error (the figure the
lab reads), which keeps a few badly predicted images from tilting it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EfficiencyCalibration"]


@dataclass(frozen=True)
class EfficiencyCalibration:
    """``efficiency = clip(intercept + slope * positive_fraction, 0, 1)``; validates itself."""

    intercept: float = 0.0
    slope: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.intercept) and np.isfinite(self.slope)) or self.slope <= 0:
            raise ValueError(f"invalid efficiency calibration {self}")

    def apply(self, positive_fraction: float) -> float:
        """The calibrated efficiency of one image."""
        return float(np.clip(self.intercept + self.slope * positive_fraction, 0.0, 1.0))

    def to_dict(self) -> dict[str, float]:
        return {"intercept": self.intercept, "slope": self.slope}

    @classmethod
    def from_card(cls, inference: Mapping[str, Any]) -> EfficiencyCalibration:
        """The card's calibration, identity for weights trained without one.

        Raises ValueError for a malformed entry.
        """
        entry = inference.get("efficiency_calibration")
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping):
            raise ValueError(f"efficiency_calibration must be a table, got {entry!r}")
        return cls(float(entry["intercept"]), float(entry["slope"]))

    @classmethod
    def fit(cls, predicted: Sequence[float], measured: Sequence[float]) -> EfficiencyCalibration:
        """Least-absolute-deviation line through (predicted, measured).

        Falls back to the identity with fewer than 3 images or no spread in ``predicted``.
        """
        from scipy.optimize import minimize

        x, y = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
        if x.size < 3 or float(np.ptp(x)) < 1e-6:
            return cls()
        slope, intercept = np.polyfit(x, y, 1)  # least squares: the start of the search

        def loss(params: np.ndarray) -> float:
            return float(np.abs(np.clip(params[0] + params[1] * x, 0, 1) - y).mean())

        found = minimize(loss, np.array([intercept, slope]), method="Nelder-Mead")
        best_intercept, best_slope = (float(v) for v in found.x)
        if best_slope <= 0 or loss(found.x) > loss(np.array([0.0, 1.0])):
            return cls()
        return cls(best_intercept, best_slope)
