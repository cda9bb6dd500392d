"""The efficiency forecast inside the virtual-staining summaries: model, forecasts, figures.

Options: :class:`~acqflow.plugins.virtual_staining.forecast_options.ForecastOptions`. The
forecast of a point is made from its well's points up to it, so the time course
shows how the forecast changed with every new time point; the latest one per well
goes to the plot, the report and the figures (``forecast_final_efficiency`` with
``estimate`` = ``forecast`` / ``low`` / ``high``, ``forecast_insufficient`` 0/1 and
``forecast_course_fraction``, each labelled with experiment and well).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acqflow.plugins.api import Figure
from acqflow.plugins.virtual_staining.forecast import (
    ARCHITECTURE,
    EfficiencyForecaster,
    Forecast,
    ForecastCall,
    arguments_digest,
)
from acqflow.plugins.virtual_staining.forecast_data import CourseHorizon, courses_from_points
from acqflow.plugins.virtual_staining.forecast_options import (
    DEFAULT_COURSE_DAYS,
    DEFAULT_THRESHOLD,
    ForecastOptions,
)
from acqflow.plugins.virtual_staining.summary import TimePoint

__all__ = ["ForecastSummary", "LoadedForecaster", "forecast_figures", "load_forecaster"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedForecaster:
    """A forecaster with the settings the pipeline uses it with."""

    model: EfficiencyForecaster
    version: str
    threshold: float
    horizon: CourseHorizon


def load_forecaster(directory: Path, options: ForecastOptions) -> LoadedForecaster | None:
    """The forecaster of ``directory`` with the options applied, or None (logged) without one.

    A missing card disables the forecast with a warning, so the staining keeps working.
    Raises acqflow.models.store.WeightsError when the card exists but is not a valid forecaster.
    """
    from acqflow.models.store import WeightsError, read_card

    if not options.enabled:
        return None
    if not (directory / f"{options.model}.json").is_file():
        log.warning(
            "no efficiency forecast model %s.json in %s: forecasts are off (train one with "
            "`acqflow train efficiency-forecast --output %s`)", options.model, directory, directory,
        )
        return None
    card = read_card(directory, options.model)
    if card.architecture != ARCHITECTURE:
        raise WeightsError(f"{options.model} is a {card.architecture}, not an efficiency forecaster")
    if card.sha256 and card.sha256 != arguments_digest(card.arguments):
        raise WeightsError(f"{options.model}: sha256 of the model's arguments does not match its card")
    try:
        model = EfficiencyForecaster(**card.arguments)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"invalid efficiency forecast model {options.model}: {exc}") from exc
    threshold = options.threshold or float(card.training.get("threshold", DEFAULT_THRESHOLD))
    days = options.course_days or float(card.training.get("course_days", DEFAULT_COURSE_DAYS))
    return LoadedForecaster(model, card.version, threshold, CourseHorizon(days, options.final_timepoint))


@dataclass(frozen=True)
class ForecastSummary:
    """Forecasts aligned with a time course's points (None where a point has none)."""

    by_point: Sequence[Forecast | None]
    threshold: float
    horizon: CourseHorizon
    version: str = ""
    note: str = ""
    coverage: float = 0.9

    @classmethod
    def of(
        cls, forecaster: LoadedForecaster, experiment: str, points: Sequence[TimePoint]
    ) -> ForecastSummary:
        """Each point's forecast from its well's points up to it."""
        courses = courses_from_points(experiment, points, forecaster.horizon)
        by_point: list[Forecast | None] = []
        for point in points:
            where = forecaster.horizon.fraction(point.elapsed_s, point.timepoint)
            course = courses.get(point.well)
            seen = None if where is None or course is None else course.until(where)
            by_point.append(None if seen is None else forecaster.model.predict(seen))
        note = "" if any(by_point) else (
            "No forecast: the images carry no acquisition times; set the forecast option final_timepoint."
        )
        coverage = forecaster.model.coverage
        return cls(by_point, forecaster.threshold, forecaster.horizon, forecaster.version, note, coverage)

    def latest(self, points: Sequence[TimePoint]) -> dict[str, Forecast]:
        """Well → its latest forecast (``points`` in time-course order)."""
        latest: dict[str, Forecast] = {}
        for point, forecast in zip(points, self.by_point, strict=True):
            known = latest.get(point.well)
            if forecast is not None and (known is None or forecast.fraction >= known.fraction):
                latest[point.well] = forecast
        return latest

    def call(self, forecast: Forecast) -> ForecastCall:
        return forecast.call(self.threshold)


def forecast_figures(group: str, summary: ForecastSummary, points: Sequence[TimePoint]) -> list[Figure]:
    """The gauges of every well's latest forecast (see the module docstring)."""
    figures: list[Figure] = []
    for well, forecast in sorted(summary.latest(points).items()):
        labels = {"experiment": group, "well": well}
        for estimate, value in (("forecast", forecast.value), ("low", forecast.low), ("high", forecast.high)):
            figures.append(Figure("forecast_final_efficiency", value, {**labels, "estimate": estimate}))
        insufficient = summary.call(forecast) is ForecastCall.INSUFFICIENT
        figures.append(Figure("forecast_insufficient", float(insufficient), labels))
        figures.append(Figure("forecast_course_fraction", forecast.fraction, labels))
    return figures
