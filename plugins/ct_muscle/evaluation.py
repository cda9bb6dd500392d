"""Held-out evaluation: Dice and average symmetric surface distance per structure, and
how well the Monte-Carlo uncertainty predicts errors.

Uncertainty statistics are taken inside the body region (voxels that the truth or the
prediction labels as a structure), so that the large, trivially certain air and fat
background does not inflate the ratio of wrong to correct voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from acqflow.plugins.ct_muscle.inference import InputGeometry, McOptions, predict_volume
from acqflow.plugins.ct_muscle.structures import LabelTable
from acqflow.plugins.ct_muscle.training import LabelledVolume, dice_per_class

if TYPE_CHECKING:
    from acqflow.models.unet import BayesianUNet

__all__ = [
    "EvaluationReport",
    "ReviewThreshold",
    "average_surface_distance",
    "evaluate_model",
    "failure_auroc",
    "fit_review_threshold",
    "review_threshold_at",
]


@dataclass
class EvaluationReport:
    """Per-structure means over volumes plus the uncertainty/error statistics."""

    dice: dict[str, float] = field(default_factory=dict)
    assd_mm: dict[str, float] = field(default_factory=dict)
    mean_dice: float = float("nan")
    uncertainty_wrong: float = float("nan")
    uncertainty_correct: float = float("nan")
    uncertainty_ratio: float = float("nan")
    uncertainty_dice_correlation: float = float("nan")
    volumes: int = 0
    failure_dice: float = 0.8  # a structure below this Dice is a failure to detect
    failure_auroc: float = float("nan")  # structure uncertainty vs failure, over predicted ones
    failures: int = 0  # predicted structures with a Dice below failure_dice
    missed: int = 0  # structures in the truth that the prediction lacks (no uncertainty)
    review_fitted: ReviewThreshold | None = None  # best threshold on these volumes
    review_in_use: ReviewThreshold | None = None  # the pipeline's threshold on these volumes
    # The same with the samples' disagreement (1 - mean MC-sample Dice) as the structure score
    failure_auroc_disagreement: float = float("nan")
    disagreement_fitted: ReviewThreshold | None = None
    disagreement_in_use: ReviewThreshold | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "review_threshold_fitted": self.review_fitted.as_dict() if self.review_fitted else None,
            "review_threshold_in_use": self.review_in_use.as_dict() if self.review_in_use else None,
            "volumes": self.volumes,
            "failure_detection": {"dice_below": self.failure_dice, "auroc": self.failure_auroc,
                                  "auroc_disagreement": self.failure_auroc_disagreement,
                                  "failures": self.failures, "missed": self.missed},
            "disagreement_threshold_fitted": (self.disagreement_fitted.as_dict()
                                              if self.disagreement_fitted else None),
            "disagreement_threshold_in_use": (self.disagreement_in_use.as_dict()
                                              if self.disagreement_in_use else None),
            "mean_dice": self.mean_dice,
            "dice": self.dice,
            "assd_mm": self.assd_mm,
            "uncertainty_wrong": self.uncertainty_wrong,
            "uncertainty_correct": self.uncertainty_correct,
            "uncertainty_ratio_wrong_to_correct": self.uncertainty_ratio,
            "pearson_structure_uncertainty_vs_dice": self.uncertainty_dice_correlation,
        }


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))
    surface: np.ndarray = mask & ~eroded
    return surface


def average_surface_distance(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]
) -> float:
    """Average symmetric surface distance (mm) of two boolean masks; inf if one is empty."""
    if not pred.any() or not truth.any():
        return float("inf")
    sp, st = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([to_truth[sp], to_pred[st]])
    return float(distances.mean())


def _pearson(a: list[float], b: list[float]) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def failure_auroc(uncertainty: Sequence[float], dice: Sequence[float], dice_below: float) -> float:
    """Area under the ROC curve of structure uncertainty as a detector of structures with a
    Dice below ``dice_below`` (the Mann-Whitney U statistic, ties counted half); NaN when
    there are no failures or no successes."""
    from scipy.stats import rankdata

    u = np.asarray(uncertainty, dtype=np.float64)
    failed = np.asarray(dice, dtype=np.float64) < dice_below
    n_failed, n_good = int(failed.sum()), int((~failed).sum())
    if n_failed == 0 or n_good == 0:
        return float("nan")
    ranks = rankdata(u)
    return float((ranks[failed].sum() - n_failed * (n_failed + 1) / 2) / (n_failed * n_good))


def evaluate_model(
    model: BayesianUNet,
    geo: InputGeometry,
    volumes: Sequence[LabelledVolume],
    table: LabelTable,
    options: McOptions | None = None,
    slice_spacing_mm: float = 1.0,
    review_threshold: float | None = None,
    dice_below: float = 0.9,
    failure_dice: float = 0.8,
    slice_spacings_mm: Sequence[float] | None = None,
    disagreement_threshold: float | None = None,
) -> EvaluationReport:
    """MC-dropout predictions on ``volumes`` compared with their label maps.

    ``slice_spacings_mm`` gives each volume its own slice spacing for the surface
    distances (else all have ``slice_spacing_mm``).

    Each predicted structure is also a (mean uncertainty, Dice) pair for the review
    threshold: the best one for flagging structures with a Dice below ``dice_below``
    (:func:`fit_review_threshold`) and how ``review_threshold`` (the pipeline's) does;
    both stay None when all structures fall on one side of ``dice_below``. Raises
    ValueError when ``volumes`` is empty.
    """
    if not volumes:
        raise ValueError("no volumes to evaluate")
    if slice_spacings_mm is not None and len(slice_spacings_mm) != len(volumes):
        raise ValueError(f"{len(slice_spacings_mm)} slice spacings for {len(volumes)} volumes")
    slices_mm = (list(slice_spacings_mm) if slice_spacings_mm is not None
                 else [slice_spacing_mm] * len(volumes))
    dice: dict[str, list[float]] = {}
    assd: dict[str, list[float]] = {}
    wrong_sum = wrong_n = correct_sum = correct_n = 0.0
    pairs_u: list[float] = []
    pairs_g: list[float] = []  # disagreement
    pairs_d: list[float] = []
    missed = 0
    for volume, slice_mm in zip(volumes, slices_mm, strict=True):
        pred = predict_volume(model, volume.hu, volume.spacing, geo, options)
        region = (volume.labels > 0) | (pred.labels > 0)
        wrong = region & (pred.labels != volume.labels)
        correct = region & ~wrong
        wrong_sum += float(pred.uncertainty[wrong].sum())
        wrong_n += float(wrong.sum())
        correct_sum += float(pred.uncertainty[correct].sum())
        correct_n += float(correct.sum())
        spacing = (slice_mm, *volume.spacing)
        for label, value in dice_per_class(pred.labels, volume.labels, table.num_classes).items():
            key = table.by_label(label).key
            dice.setdefault(key, []).append(value)
            assd.setdefault(key, []).append(average_surface_distance(
                pred.labels == label, volume.labels == label, spacing))
            inside = pred.labels == label
            if inside.any():
                pairs_u.append(float(pred.uncertainty[inside].mean()))
                pairs_g.append(1.0 - pred.agreement.get(label, 0.0))
                pairs_d.append(value)
            else:
                missed += 1
    report = EvaluationReport(volumes=len(volumes), failure_dice=failure_dice, missed=missed)
    report.failures = int(sum(d < failure_dice for d in pairs_d))
    report.failure_auroc = failure_auroc(pairs_u, pairs_d, failure_dice)
    report.failure_auroc_disagreement = failure_auroc(pairs_g, pairs_d, failure_dice)
    report.dice = {k: float(np.mean(v)) for k, v in dice.items()}
    report.assd_mm = {k: float(np.mean(v)) for k, v in assd.items()}
    report.mean_dice = float(np.mean(list(report.dice.values())))
    report.uncertainty_wrong = wrong_sum / max(wrong_n, 1.0)
    report.uncertainty_correct = correct_sum / max(correct_n, 1.0)
    report.uncertainty_ratio = report.uncertainty_wrong / max(report.uncertainty_correct, 1e-12)
    report.uncertainty_dice_correlation = _pearson(pairs_u, pairs_d)
    try:
        report.review_fitted = fit_review_threshold(pairs_u, pairs_d, dice_below)
        if review_threshold is not None:
            report.review_in_use = review_threshold_at(pairs_u, pairs_d, review_threshold, dice_below)
        report.disagreement_fitted = fit_review_threshold(pairs_g, pairs_d, dice_below)
        if disagreement_threshold is not None:
            report.disagreement_in_use = review_threshold_at(pairs_g, pairs_d, disagreement_threshold,
                                                             dice_below)
    except ValueError:  # no poor or no good structure: nothing to separate
        pass
    return report


@dataclass(frozen=True)
class ReviewThreshold:
    """A review threshold scored on held-out structures: how well it flags the poor ones."""

    threshold: float
    dice_below: float  # a structure with a Dice below this counts as poorly segmented
    structures: int  # (structure, volume) pairs scored
    poor: int  # of which poorly segmented
    flagged: int  # of which flagged (mean uncertainty above the threshold)
    sensitivity: float  # share of the poor structures that are flagged
    precision: float  # share of the flagged structures that are poor (0 when none is flagged)
    specificity: float  # share of the good structures not flagged

    @property
    def f1(self) -> float:
        """Harmonic mean of sensitivity and precision (0 when either is 0)."""
        total = self.sensitivity + self.precision
        return 2.0 * self.sensitivity * self.precision / total if total else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "threshold": round(self.threshold, 4),
            "dice_below": self.dice_below,
            "structures": self.structures,
            "poor": self.poor,
            "flagged": self.flagged,
            "sensitivity": round(self.sensitivity, 4),
            "precision": round(self.precision, 4),
            "specificity": round(self.specificity, 4),
            "f1": round(self.f1, 4),
        }


def fit_review_threshold(
    uncertainty: Sequence[float], dice: Sequence[float], dice_below: float
) -> ReviewThreshold:
    """The mean-uncertainty threshold that best flags poorly segmented structures.

    Each pair is one predicted structure in one held-out volume: the mean uncertainty
    inside it and its Dice. A structure is flagged when its mean uncertainty exceeds the
    threshold. The threshold maximises F1 (of sensitivity and precision) for flagging the
    structures with a Dice below ``dice_below``: the flags go to people, and where poor
    structures are rare (the CT network: about 1 in 25), a criterion that ignores
    precision, such as Youden's J, picks thresholds that flag mostly good ones.
    Candidates are the midpoints between consecutive distinct uncertainties (and just
    below the lowest); on a tie the higher threshold wins (fewer flags). Raises
    ValueError when the lengths differ or when there are no poor or no good structures.
    """
    u, poor = _pairs(uncertainty, dice, dice_below)
    levels = np.unique(u)
    candidates = np.concatenate([[levels[0] - 1e-6], (levels[:-1] + levels[1:]) / 2.0])
    scored = [_score(u, poor, float(t), dice_below) for t in candidates]
    f1 = np.array([r.f1 for r in scored])
    return scored[int(np.flatnonzero(f1 == f1.max())[-1])]


def review_threshold_at(
    uncertainty: Sequence[float], dice: Sequence[float], threshold: float, dice_below: float
) -> ReviewThreshold:
    """How a given threshold flags the poorly segmented structures among the pairs.

    Raises ValueError as :func:`fit_review_threshold` does.
    """
    u, poor = _pairs(uncertainty, dice, dice_below)
    return _score(u, poor, threshold, dice_below)


def _score(u: np.ndarray, poor: np.ndarray, threshold: float, dice_below: float) -> ReviewThreshold:
    flagged = u > threshold
    true_flags = int((flagged & poor).sum())
    n_flagged = int(flagged.sum())
    return ReviewThreshold(
        threshold=float(threshold),
        dice_below=dice_below,
        structures=int(u.size),
        poor=int(poor.sum()),
        flagged=n_flagged,
        sensitivity=true_flags / int(poor.sum()),
        precision=true_flags / n_flagged if n_flagged else 0.0,
        specificity=float((~flagged & ~poor).sum() / (~poor).sum()),
    )


def _pairs(
    uncertainty: Sequence[float], dice: Sequence[float], dice_below: float
) -> tuple[np.ndarray, np.ndarray]:
    """(uncertainties, poor mask); raises ValueError unless both classes are present."""
    u = np.asarray(uncertainty, dtype=np.float64)
    d = np.asarray(dice, dtype=np.float64)
    if u.shape != d.shape or u.ndim != 1:
        raise ValueError(f"uncertainty and dice must be 1-D and equally long: {u.shape} vs {d.shape}")
    poor = d < dice_below
    n_poor, n_good = int(poor.sum()), int((~poor).sum())
    if n_poor == 0 or n_good == 0:
        raise ValueError(
            f"need poor and good structures to separate: {n_poor} with Dice < {dice_below}, {n_good} above"
        )
    return u, poor
