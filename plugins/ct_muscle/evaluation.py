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

from plugins.ct_muscle.inference import InputGeometry, McOptions, predict_volume
from plugins.ct_muscle.structures import LabelTable
from plugins.ct_muscle.training import LabelledVolume, dice_per_class

if TYPE_CHECKING:
    from models.unet import BayesianUNet

__all__ = ["EvaluationReport", "average_surface_distance", "evaluate_model"]


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

    def as_dict(self) -> dict[str, object]:
        return {
            "volumes": self.volumes,
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


def evaluate_model(
    model: BayesianUNet,
    geo: InputGeometry,
    volumes: Sequence[LabelledVolume],
    table: LabelTable,
    options: McOptions | None = None,
    slice_spacing_mm: float = 1.0,
) -> EvaluationReport:
    """MC-dropout predictions on ``volumes`` compared with their label maps.

    Raises ValueError when ``volumes`` is empty.
    """
    if not volumes:
        raise ValueError("no volumes to evaluate")
    dice: dict[str, list[float]] = {}
    assd: dict[str, list[float]] = {}
    wrong_sum = wrong_n = correct_sum = correct_n = 0.0
    pairs_u: list[float] = []
    pairs_d: list[float] = []
    for volume in volumes:
        pred = predict_volume(model, volume.hu, volume.spacing, geo, options)
        region = (volume.labels > 0) | (pred.labels > 0)
        wrong = region & (pred.labels != volume.labels)
        correct = region & ~wrong
        wrong_sum += float(pred.uncertainty[wrong].sum())
        wrong_n += float(wrong.sum())
        correct_sum += float(pred.uncertainty[correct].sum())
        correct_n += float(correct.sum())
        spacing = (slice_spacing_mm, *volume.spacing)
        for label, value in dice_per_class(pred.labels, volume.labels, table.num_classes).items():
            key = table.by_label(label).key
            dice.setdefault(key, []).append(value)
            assd.setdefault(key, []).append(average_surface_distance(
                pred.labels == label, volume.labels == label, spacing))
            inside = pred.labels == label
            if inside.any():
                pairs_u.append(float(pred.uncertainty[inside].mean()))
                pairs_d.append(value)
    report = EvaluationReport(volumes=len(volumes))
    report.dice = {k: float(np.mean(v)) for k, v in dice.items()}
    report.assd_mm = {k: float(np.mean(v)) for k, v in assd.items()}
    report.mean_dice = float(np.mean(list(report.dice.values())))
    report.uncertainty_wrong = wrong_sum / max(wrong_n, 1.0)
    report.uncertainty_correct = correct_sum / max(correct_n, 1.0)
    report.uncertainty_ratio = report.uncertainty_wrong / max(report.uncertainty_correct, 1e-12)
    report.uncertainty_dice_correlation = _pearson(pairs_u, pairs_d)
    return report
