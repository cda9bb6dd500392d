"""Review thresholds: fitting them on held-out structures, and the pipelines' defaults."""

from __future__ import annotations

import pytest

from plugins.ct_muscle.evaluation import fit_review_threshold, review_threshold_at
from plugins.ct_muscle.inference import UncertaintyMeasure
from plugins.ct_muscle.pipeline import DEFAULT_REVIEW_THRESHOLDS, CtMuscleOptions
from plugins.mr_muscle.pipeline import MR_REVIEW_THRESHOLDS, MrMuscleOptions


def test_separable_structures_get_a_threshold_between_the_two_groups() -> None:
    uncertainty = [0.1, 0.2, 0.3, 0.8, 0.9]
    dice = [0.95, 0.9, 0.92, 0.4, 0.6]
    fit = fit_review_threshold(uncertainty, dice, dice_below=0.7)
    assert 0.3 < fit.threshold < 0.8
    assert (fit.sensitivity, fit.specificity, fit.poor, fit.structures) == (1.0, 1.0, 2, 5)


def test_overlapping_structures_get_the_threshold_with_the_best_youden_index() -> None:
    # poor (Dice < 0.7) at 0.5, 0.7, 0.9; good at 0.1, 0.3, 0.6, 0.8.
    uncertainty = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    dice = [0.9, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5]
    fit = fit_review_threshold(uncertainty, dice, dice_below=0.7)
    # Above 0.4: all 3 poor, 2 of 4 good flagged (J 0.5); above 0.65: 2/3 poor, 3/4 good
    # unflagged (J 0.4167); above 0.85: 1/3, 4/4 (J 0.333). Nothing beats 0.4.
    assert fit.threshold == pytest.approx(0.4)
    assert (fit.sensitivity, fit.specificity) == (1.0, 0.5)
    at = review_threshold_at(uncertainty, dice, 0.65, dice_below=0.7)
    assert (at.sensitivity, at.specificity) == (pytest.approx(2 / 3), 0.75)


def test_a_tie_takes_the_higher_threshold() -> None:
    # Above 0.15 and above 0.35 both give J = 0.5; the higher one flags fewer.
    fit = fit_review_threshold([0.1, 0.2, 0.3, 0.4], [0.9, 0.5, 0.9, 0.5], dice_below=0.7)
    assert fit.threshold == pytest.approx(0.35)
    assert (fit.sensitivity, fit.specificity) == (0.5, 1.0)


@pytest.mark.parametrize("dice", [[0.9, 0.95], [0.1, 0.2]])
def test_one_group_alone_cannot_be_fitted(dice: list[float]) -> None:
    with pytest.raises(ValueError, match="need poor and good structures"):
        fit_review_threshold([0.1, 0.2], dice, dice_below=0.7)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="equally long"):
        review_threshold_at([0.1, 0.2], [0.9], 0.5, dice_below=0.7)


@pytest.mark.parametrize("measure", list(UncertaintyMeasure))
def test_each_pipeline_defaults_to_its_own_calibrated_threshold_per_measure(
    measure: UncertaintyMeasure,
) -> None:
    assert CtMuscleOptions(measure=measure).threshold == DEFAULT_REVIEW_THRESHOLDS[measure]
    assert MrMuscleOptions.from_mapping({"measure": measure.value}).threshold == MR_REVIEW_THRESHOLDS[measure]
    assert MrMuscleOptions(measure=measure, review_threshold=0.05).threshold == 0.05


def test_option_errors_name_the_pipeline() -> None:
    with pytest.raises(ValueError, match="unknown ct-muscle options: translation_batch"):
        CtMuscleOptions.from_mapping({"translation_batch": 4})
    with pytest.raises(ValueError, match="unknown mr-muscle options: window_width"):
        MrMuscleOptions.from_mapping({"window_width": 400})
    with pytest.raises(ValueError, match="translation_batch must be >= 1"):
        MrMuscleOptions(translation_batch=0)
    with pytest.raises(ValueError, match="review_threshold must be >= 0"):
        MrMuscleOptions(review_threshold=-1.0)
