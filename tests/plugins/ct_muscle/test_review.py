"""Review thresholds: fitting them on held-out structures, and the pipelines' defaults."""

from __future__ import annotations

import pytest

from acqflow.plugins.ct_muscle.evaluation import fit_review_threshold, review_threshold_at
from acqflow.plugins.ct_muscle.inference import UncertaintyMeasure
from acqflow.plugins.ct_muscle.pipeline import DEFAULT_REVIEW_THRESHOLDS, CtMuscleOptions
from acqflow.plugins.mr_muscle.pipeline import MR_REVIEW_THRESHOLDS, MrMuscleOptions


def test_separable_structures_get_a_threshold_between_the_two_groups() -> None:
    uncertainty = [0.1, 0.2, 0.3, 0.8, 0.9]
    dice = [0.95, 0.9, 0.92, 0.4, 0.6]
    fit = fit_review_threshold(uncertainty, dice, dice_below=0.7)
    assert 0.3 < fit.threshold < 0.8
    assert (fit.sensitivity, fit.precision, fit.specificity, fit.f1) == (1.0, 1.0, 1.0, 1.0)
    assert (fit.poor, fit.flagged, fit.structures) == (2, 2, 5)


def test_overlapping_structures_get_the_threshold_with_the_best_f1() -> None:
    # poor (Dice < 0.7) at 0.5, 0.7, 0.9; good at 0.1, 0.3, 0.6, 0.8.
    uncertainty = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    dice = [0.9, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5]
    fit = fit_review_threshold(uncertainty, dice, dice_below=0.7)
    # Above 0.4: 5 flagged, all 3 poor (F1 2*1*0.6/1.6 = 0.75); above 0.65: 3 flagged, 2
    # poor (F1 0.667); above 0.85: 1 flagged, 1 poor (F1 0.5); above 0.2: 6 flagged, 3 poor
    # (F1 0.667). Nothing beats 0.4.
    assert fit.threshold == pytest.approx(0.4)
    assert (fit.sensitivity, fit.precision, fit.specificity) == (1.0, 0.6, 0.5)
    assert fit.f1 == pytest.approx(0.75) and fit.flagged == 5
    at = review_threshold_at(uncertainty, dice, 0.65, dice_below=0.7)
    assert at.sensitivity == at.precision == pytest.approx(2 / 3) and at.specificity == 0.75


def test_precision_counts_where_youden_would_flag_many_good_structures() -> None:
    # Ten certain good structures, then poor 0.5, good 0.6, 0.65, 0.7, poor 0.9.
    uncertainty = [0.01 * k for k in range(1, 11)] + [0.5, 0.6, 0.65, 0.7, 0.9]
    dice = [0.95] * 10 + [0.5, 0.95, 0.95, 0.95, 0.5]
    fit = fit_review_threshold(uncertainty, dice, dice_below=0.9)
    # Above 0.8: 1 flag, poor (F1 2/3). Above 0.3 (Youden's choice: J 1 + 10/13 - 1 =
    # 0.77 against 0.5): both poor but 3 good flagged too (F1 4/7).
    assert fit.threshold == pytest.approx(0.8) and fit.flagged == 1
    assert fit.f1 == pytest.approx(2 / 3) and fit.specificity == 1.0
    youden = review_threshold_at(uncertainty, dice, 0.3, dice_below=0.9)
    assert youden.sensitivity + youden.specificity > fit.sensitivity + fit.specificity
    assert youden.f1 == pytest.approx(4 / 7) and youden.flagged == 5


def test_a_tie_takes_the_higher_threshold() -> None:
    # Above 0.15: 2 poor and 2 good flagged (F1 4/6); above 0.45: 1 poor flagged, 1 missed
    # (F1 2/3 too). The higher one flags fewer.
    fit = fit_review_threshold([0.1, 0.2, 0.3, 0.4, 0.5], [0.9, 0.5, 0.9, 0.9, 0.5], dice_below=0.7)
    assert fit.threshold == pytest.approx(0.45) and fit.flagged == 1
    assert fit.f1 == pytest.approx(review_threshold_at([0.1, 0.2, 0.3, 0.4, 0.5], [0.9, 0.5, 0.9, 0.9, 0.5],
                                                       0.15, dice_below=0.7).f1)


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
    from acqflow.plugins.ct_muscle.pipeline import DEFAULT_DISAGREEMENT_THRESHOLD
    from acqflow.plugins.mr_muscle.pipeline import CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS

    # ct-muscle flags by the samples' disagreement unless told to use the mean uncertainty
    assert CtMuscleOptions(measure=measure).threshold == DEFAULT_DISAGREEMENT_THRESHOLD
    by_uncertainty = CtMuscleOptions(measure=measure, review_score="uncertainty")  # type: ignore[arg-type]
    assert by_uncertainty.threshold == DEFAULT_REVIEW_THRESHOLDS[measure]
    assert MrMuscleOptions.from_mapping({"measure": measure.value}).threshold == MR_REVIEW_THRESHOLDS[measure]
    agnostic = MrMuscleOptions.from_mapping({"measure": measure.value, "route": "contrast-agnostic"})
    assert agnostic.threshold == CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS[measure]
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


def test_failure_auroc_ranks_failures_above_successes() -> None:
    import math

    from acqflow.plugins.ct_muscle.evaluation import failure_auroc

    dice = [0.9, 0.95, 0.5, 0.3]
    assert failure_auroc([0.1, 0.2, 0.8, 0.9], dice, 0.8) == 1.0
    assert failure_auroc([0.9, 0.8, 0.2, 0.1], dice, 0.8) == 0.0
    assert failure_auroc([0.5, 0.5, 0.5, 0.5], dice, 0.8) == 0.5
    assert failure_auroc([0.1, 0.3, 0.2, 0.9], dice, 0.8) == 0.75
    assert math.isnan(failure_auroc([0.1, 0.2], [0.9, 0.95], 0.8))
