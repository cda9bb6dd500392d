"""The efficiency forecaster: deterministic, better than both baselines and about nominal
intervals on wells generated with kinetics it never saw; the shipped model meets the
acceptance bar (>= 90 % right calls at half of the course) on fresh held-out plates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acqflow.models.store import bundled_weights_dir
from acqflow.plugins.virtual_staining.experiments import (
    HELD_OUT_KINETICS,
    TRAINING_KINETICS,
    generate_experiments,
)
from acqflow.plugins.virtual_staining.forecast import (
    EfficiencyForecaster,
    FitSettings,
    WellCourse,
    course_features,
    fit_forecaster,
)
from acqflow.plugins.virtual_staining.forecast_data import courses_from_experiments
from acqflow.plugins.virtual_staining.forecast_eval import evaluate_forecasts, last_value, logistic_fit
from acqflow.plugins.virtual_staining.forecast_options import ForecastOptions
from acqflow.plugins.virtual_staining.forecast_summary import load_forecaster

THRESHOLD = 0.3


@pytest.fixture(scope="module")
def training() -> list[WellCourse]:
    return courses_from_experiments(generate_experiments(12, TRAINING_KINETICS, seed=101))


@pytest.fixture(scope="module")
def model(training: list[WellCourse]) -> EfficiencyForecaster:
    return fit_forecaster(training, FitSettings(seed=101))


@pytest.fixture(scope="module")
def held_out() -> list[WellCourse]:
    """Held-out kinetics, a seed no model of the project was fitted or evaluated with."""
    return courses_from_experiments(generate_experiments(8, HELD_OUT_KINETICS, seed=60_606))


def test_fitting_is_deterministic_and_the_model_round_trips(
    training: list[WellCourse], model: EfficiencyForecaster
) -> None:
    again = fit_forecaster(training, FitSettings(seed=101))
    assert again.to_arguments() == model.to_arguments()
    rebuilt = EfficiencyForecaster(**json.loads(json.dumps(model.to_arguments())))
    course = training[3].until(0.5)
    assert course is not None
    assert rebuilt.predict(course) == model.predict(course)
    other_split = fit_forecaster(training, FitSettings(seed=102))
    assert other_split.to_arguments() != model.to_arguments()


def test_beats_last_value_and_logistic_fit_on_held_out_wells(
    model: EfficiencyForecaster, held_out: list[WellCourse]
) -> None:
    results = {r.fraction: r for r in evaluate_forecasts(model, held_out, [0.3, 0.5, 0.7], THRESHOLD)}
    for fraction, result in results.items():
        scores = result.scores
        assert result.wells == len(held_out) == 192
        for baseline in ("last_value", "logistic"):
            assert scores["forecaster"].accuracy > scores[baseline].accuracy, (fraction, scores)
            assert scores["forecaster"].mae < scores[baseline].mae, (fraction, scores)
    assert results[0.5].scores["forecaster"].accuracy >= 0.85  # a tiny training set


def test_interval_coverage_is_about_nominal(model: EfficiencyForecaster, held_out: list[WellCourse]) -> None:
    # Calibrated on training kinetics; the held-out plates are noisier (fewer positions,
    # more image noise), so coverage falls somewhat below the nominal 90 %, not far.
    for result in evaluate_forecasts(model, held_out, [0.3, 0.5], THRESHOLD):
        assert 0.75 <= result.coverage <= 0.97, result
        assert 0.1 < result.mean_width < 0.6
    # intervals narrow as the course goes on
    widths = [r.mean_width for r in evaluate_forecasts(model, held_out, [0.2, 0.5, 0.9], THRESHOLD)]
    assert widths[0] > widths[1] > widths[2]


def test_forecasts_are_fractions_inside_their_interval(
    model: EfficiencyForecaster, held_out: list[WellCourse]
) -> None:
    for course in held_out[:40]:
        for fraction in (0.0, 0.25, 0.5, 1.0):
            seen = course.until(fraction)
            assert seen is not None
            forecast = model.predict(seen)
            assert 0.0 <= forecast.low <= forecast.value <= forecast.high <= 1.0
            assert forecast.fraction == pytest.approx(seen.fraction[-1])


def test_without_probabilities_image_features_count_as_their_training_mean(
    model: EfficiencyForecaster, held_out: list[WellCourse]
) -> None:
    course = held_out[0].until(0.5)
    assert course is not None
    blind = WellCourse(course.experiment, course.well, course.fraction, course.efficiency,
                       np.full(len(course), np.nan))
    assert np.isnan(course_features(blind, model.features)).any()
    forecast = model.predict(blind)
    assert 0.0 <= forecast.value <= 1.0


def test_baselines() -> None:
    t = np.linspace(0, 0.6, 7)
    y = 0.8 / (1 + np.exp(-12 * (t - 0.45)))
    course = WellCourse("E", "A01", t, y, np.full(7, np.nan), 0.8)
    assert last_value(course) == pytest.approx(y[-1])
    assert logistic_fit(course) == pytest.approx(0.8 / (1 + np.exp(-12 * 0.55)), abs=0.01)
    short = course.prefix(3)
    assert logistic_fit(short) == last_value(short)  # too few points: carried forward
    flat = WellCourse("E", "A02", t, np.zeros(7), np.full(7, np.nan), 0.0)
    assert 0.0 <= logistic_fit(flat) <= 0.05


def test_fit_needs_enough_wells(training: list[WellCourse]) -> None:
    with pytest.raises(ValueError, match="at least 8 wells"):
        fit_forecaster(training[:5])


def test_shipped_model_meets_the_acceptance_bar_on_fresh_held_out_plates() -> None:
    loaded = load_forecaster(bundled_weights_dir(), ForecastOptions())
    assert loaded is not None and loaded.threshold == THRESHOLD
    # 40 plates of the held-out kinetics with a seed neither training nor the documented
    # evaluation used (training: 2026, its card: 2027, docs: 5,000,000)
    plates = generate_experiments(40, HELD_OUT_KINETICS, seed=31_337_000)
    (result,) = evaluate_forecasts(loaded.model, courses_from_experiments(plates), [0.5], loaded.threshold)
    scores = result.scores
    assert result.wells == 960
    assert scores["forecaster"].accuracy >= 0.90, scores
    assert scores["forecaster"].accuracy > max(scores["last_value"].accuracy, scores["logistic"].accuracy)
    assert scores["forecaster"].mae < min(scores["last_value"].mae, scores["logistic"].mae)
