"""Held-out evaluation: Dice of MR segmentations via synthetic CT, against a direct baseline.

For each held-out MR phantom (seeds from HELD_OUT_SEED_OFFSET on: no anatomy the
CycleGAN or the CT network trained on), the MR volume is segmented two ways by the same
CT Bayesian U-net: after translation to synthetic CT by the generator, and directly,
with the intensity-normalised MR stretched over the network's HU window (the baseline).
Dice is computed per structure present in the ground truth. Given the contrast-agnostic
network (the second MR route), the normalised MR goes through it as well. The phantoms
come from the fixed MR generator or, with ``generator="randomised"``, from the randomised
anatomy with the held-out T1 contrast variety (:data:`MR_HELD_OUT_VARIETY`), which
neither the generator nor the networks trained on. Per phantom the mean synthetic-CT HU
inside bone, muscle and fat are reported: bone has to come out as bone.

:func:`calibrate_review_thresholds` fits the pipeline's review thresholds: per
uncertainty measure, the mean uncertainty inside a predicted structure above which it is
likely to be poorly segmented (``acqflow.plugins.ct_muscle.evaluation.fit_review_threshold``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.ct_muscle.evaluation import ReviewThreshold, fit_review_threshold, review_threshold_at
from acqflow.plugins.ct_muscle.inference import UncertaintyMeasure
from acqflow.plugins.ct_muscle.structures import LabelTable
from acqflow.plugins.mr_muscle.phantoms import (
    HELD_OUT_SEED_OFFSET,
    MR_ANATOMY_SEED_OFFSET,
    MrPhantom,
    MrPhantomOptions,
)
from acqflow.plugins.mr_muscle.translation import IntensityScale, normalise_mr

if TYPE_CHECKING:
    from acqflow.models.cyclegan import ResnetGenerator
    from acqflow.models.unet import BayesianUNet
    from acqflow.plugins.ct_muscle.inference import HuWindow, InputGeometry

__all__ = [
    "EvaluationOptions",
    "EvaluationReport",
    "ReviewCalibration",
    "baseline_hu",
    "calibrate_review_thresholds",
    "dice_scores",
    "evaluate_held_out",
    "review_performance",
]


@dataclass(frozen=True)
class EvaluationOptions:
    """How many held-out phantoms, their size, and the MC-dropout samples per volume."""

    phantoms: int = 4
    first: int = 0  # index of the first held-out phantom
    shape: tuple[int, int, int] = (24, 128, 128)
    samples: int = 4
    generator: str = "fixed"  # or "randomised": randomised anatomy, held-out T1 variety

    def __post_init__(self) -> None:
        if self.phantoms < 1 or self.first < 0 or self.samples < 1:
            raise ValueError("phantoms and samples must be >= 1, first >= 0")
        if self.generator not in ("fixed", "randomised"):
            raise ValueError(f"generator must be fixed or randomised, got {self.generator!r}")

    def seeds(self) -> list[int]:
        """Seeds for generate_mr_phantom in the held-out anatomy range."""
        base = HELD_OUT_SEED_OFFSET - MR_ANATOMY_SEED_OFFSET + self.first
        return [base + i for i in range(self.phantoms)]

    def phantom(self, seed: int, table: LabelTable) -> MrPhantom:
        """The held-out phantom of a :meth:`seeds` entry."""
        from acqflow.plugins.mr_muscle.phantoms import generate_mr_phantom
        from acqflow.plugins.mr_muscle.randomised import MR_HELD_OUT_VARIETY, randomised_mr_phantom

        if self.generator == "fixed":
            return generate_mr_phantom(seed, MrPhantomOptions(shape=self.shape), table)
        return randomised_mr_phantom(MR_ANATOMY_SEED_OFFSET + seed, MR_HELD_OUT_VARIETY, self.shape,
                                     table=table)


@dataclass
class EvaluationReport:
    """Mean Dice (mean over phantoms of the mean over structures) and per structure."""

    translated_mean: float
    baseline_mean: float
    translated: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    phantoms: list[dict[str, Any]] = field(default_factory=list)
    contrast_agnostic_mean: float | None = None
    contrast_agnostic: dict[str, float] = field(default_factory=dict)
    synthetic_hu: dict[str, float] = field(default_factory=dict)  # mean over phantoms

    @property
    def improvement(self) -> float:
        return self.translated_mean - self.baseline_mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_dice_translated": round(self.translated_mean, 4),
            "mean_dice_baseline": round(self.baseline_mean, 4),
            "improvement": round(self.improvement, 4),
            "dice_translated": {k: round(v, 4) for k, v in self.translated.items()},
            "dice_baseline": {k: round(v, 4) for k, v in self.baseline.items()},
            "phantoms": self.phantoms,
            **({"mean_dice_contrast_agnostic": round(self.contrast_agnostic_mean, 4),
                "dice_contrast_agnostic": {k: round(v, 4) for k, v in self.contrast_agnostic.items()}}
               if self.contrast_agnostic_mean is not None else {}),
            "synthetic_ct_hu": {k: round(v, 1) for k, v in self.synthetic_hu.items()},
        }


def dice_scores(predicted: np.ndarray, truth: np.ndarray, table: LabelTable) -> dict[str, float]:
    """Dice per structure of ``table`` present in ``truth`` (an absent prediction scores 0).

    Raises ValueError when the shapes differ.
    """
    if predicted.shape != truth.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {truth.shape}")
    scores: dict[str, float] = {}
    for structure in table:
        t = truth == structure.label
        n_truth = int(t.sum())
        if n_truth == 0:
            continue
        p = predicted == structure.label
        scores[structure.key] = 2.0 * float((p & t).sum()) / (n_truth + int(p.sum()))
    return scores


def baseline_hu(mr: np.ndarray, window: HuWindow, scale: IntensityScale) -> np.ndarray:
    """Normalised MR (0 to the high percentile) stretched over the CT network's HU window."""
    unit = (normalise_mr(mr, scale) + 1.0) / 2.0
    out: np.ndarray = (window.lower + unit * window.width).astype(np.float32)
    return out


def synthetic_hu_by_tissue(hu: np.ndarray, phantom: MrPhantom, table: LabelTable,
                           scale: IntensityScale) -> dict[str, float]:
    """Mean HU of a synthetic CT inside the phantom's bones, muscles and fat (background
    that is bright in the T1 image: above half the normalised range)."""
    bones = [table.by_key(key).label for key in ("pelvis", "femur", "sacrum")]
    is_bone = np.isin(phantom.labels, bones)
    muscle = (phantom.labels > 0) & ~is_bone
    fat = (phantom.labels == 0) & (normalise_mr(phantom.signal, scale) > 0.0)
    return {name: float(hu[mask].mean()) for name, mask in
            (("bone", is_bone), ("muscle", muscle), ("fat", fat)) if mask.any()}


def _translated_phantoms(
    generator: ResnetGenerator | None, scale: IntensityScale, table: LabelTable,
    options: EvaluationOptions, window: HuWindow | None = None,
) -> Iterator[tuple[MrPhantom, tuple[float, float], np.ndarray]]:
    """Each held-out phantom of ``options`` with its in-plane spacing and its synthetic CT
    (without a generator: the normalised MR over ``window``, the contrast-agnostic input)."""
    from acqflow.plugins.mr_muscle.translation import translate_volume

    for seed in options.seeds():
        phantom = options.phantom(seed, table)
        spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
        if generator is not None:
            yield phantom, spacing, translate_volume(generator, phantom.signal, spacing, scale)
        elif window is not None:
            yield phantom, spacing, baseline_hu(phantom.signal, window, scale)
        else:
            raise ValueError("need a generator or the network's HU window")


def _mean_per_key(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for row in rows for k in row})
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}


def evaluate_held_out(
    generator: ResnetGenerator,
    scale: IntensityScale,
    ct_model: BayesianUNet,
    geo: InputGeometry,
    table: LabelTable,
    options: EvaluationOptions | None = None,
    on_phantom: Callable[[int, dict[str, Any]], None] | None = None,
    contrast_agnostic: tuple[BayesianUNet, InputGeometry] | None = None,
) -> EvaluationReport:
    """Dice with translation, with the direct baseline and (given its network and input
    geometry) the contrast-agnostic route on freshly generated held-out phantoms."""
    from acqflow.plugins.ct_muscle.inference import McOptions, predict_volume

    opts = options or EvaluationOptions()
    mc = McOptions(samples=opts.samples)
    rows: dict[str, list[dict[str, float]]] = {"translated": [], "baseline": [], "contrast_agnostic": []}
    tissue_hu: list[dict[str, float]] = []
    per_phantom: list[dict[str, Any]] = []
    phantoms = _translated_phantoms(generator, scale, table, opts)
    for index, (phantom, spacing, synthetic) in enumerate(phantoms):
        via_ct = predict_volume(ct_model, synthetic, spacing, geo, mc).labels
        direct = predict_volume(
            ct_model, baseline_hu(phantom.signal, geo.window, scale), spacing, geo, mc
        ).labels
        rows["translated"].append(dice_scores(via_ct, phantom.labels, table))
        rows["baseline"].append(dice_scores(direct, phantom.labels, table))
        tissue_hu.append(synthetic_hu_by_tissue(synthetic, phantom, table, scale))
        row: dict[str, Any] = {
            "anatomy_seed": phantom.anatomy_seed,
            "mean_dice_translated": round(float(np.mean(list(rows["translated"][-1].values()))), 4),
            "mean_dice_baseline": round(float(np.mean(list(rows["baseline"][-1].values()))), 4),
            "synthetic_ct_hu": {k: round(v, 1) for k, v in tissue_hu[-1].items()},
        }
        if contrast_agnostic is not None:
            model, agnostic_geo = contrast_agnostic
            agnostic = predict_volume(
                model, baseline_hu(phantom.signal, agnostic_geo.window, scale), spacing, agnostic_geo, mc
            ).labels
            rows["contrast_agnostic"].append(dice_scores(agnostic, phantom.labels, table))
            row["mean_dice_contrast_agnostic"] = round(
                float(np.mean(list(rows["contrast_agnostic"][-1].values()))), 4)
        per_phantom.append(row)
        if on_phantom is not None:
            on_phantom(index, row)

    def mean(name: str) -> float:
        return float(np.mean([np.mean(list(r.values())) for r in rows[name]]))

    return EvaluationReport(
        translated_mean=mean("translated"),
        baseline_mean=mean("baseline"),
        translated=_mean_per_key(rows["translated"]),
        baseline=_mean_per_key(rows["baseline"]),
        phantoms=per_phantom,
        contrast_agnostic_mean=mean("contrast_agnostic") if rows["contrast_agnostic"] else None,
        contrast_agnostic=_mean_per_key(rows["contrast_agnostic"]),
        synthetic_hu=_mean_per_key(tissue_hu),
    )


@dataclass
class ReviewCalibration:
    """Review thresholds per measure, and the (structure, phantom) pairs they were fitted on."""

    fits: dict[str, ReviewThreshold]
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"review_thresholds": {m: f.as_dict() for m, f in self.fits.items()}, "pairs": self.pairs}


def calibrate_review_thresholds(
    generator: ResnetGenerator | None,
    scale: IntensityScale,
    ct_model: BayesianUNet,
    geo: InputGeometry,
    table: LabelTable,
    options: EvaluationOptions | None = None,
    dice_below: float = 0.7,
    mc_seed: int = 0,
    on_phantom: Callable[[int, int], None] | None = None,
) -> ReviewCalibration:
    """Fit a review threshold per uncertainty measure on held-out MR phantoms.

    Each phantom is translated once and segmented once per measure with the same
    dropout masks (the sampling is re-seeded from ``mc_seed`` and the phantom's index),
    exactly as the pipeline does it (without a generator: the contrast-agnostic route, the
    normalised MR into ``ct_model``). A pair is a structure both predicted and present in
    the truth: its mean uncertainty inside the prediction (what the pipeline compares
    with the threshold) and its Dice. Raises ValueError when the phantoms give no poor or
    no good structures to separate.
    """
    import torch

    from acqflow.plugins.ct_muscle.inference import McOptions, measure_structures, predict_volume

    opts = options or EvaluationOptions()
    pairs: list[dict[str, Any]] = []
    phantoms = _translated_phantoms(generator, scale, table, opts, geo.window)
    for index, (phantom, spacing, synthetic) in enumerate(phantoms):
        labels: np.ndarray | None = None
        rows: dict[str, dict[str, Any]] = {}
        for measure in UncertaintyMeasure:
            torch.manual_seed(mc_seed * 1_000_003 + index)
            mc = McOptions(samples=opts.samples, measure=measure)
            prediction = predict_volume(ct_model, synthetic, spacing, geo, mc)
            if labels is None:
                labels = prediction.labels
                dice = dice_scores(labels, phantom.labels, table)
                rows = {
                    key: {"anatomy_seed": phantom.anatomy_seed, "structure": key, "dice": round(value, 4)}
                    for key, value in dice.items()
                }
            elif not np.array_equal(labels, prediction.labels):
                raise RuntimeError("the same dropout masks gave different labels: not reproducible")
            for measured in measure_structures(prediction, table, 1.0, float("inf")):
                if measured.key in rows:
                    rows[measured.key][measure.value] = round(measured.mean_uncertainty, 5)
        predicted = [row for row in rows.values() if UncertaintyMeasure.ENTROPY.value in row]
        pairs.extend(predicted)
        if on_phantom is not None:
            on_phantom(index, len(predicted))
    fits = {
        m.value: fit_review_threshold([p[m.value] for p in pairs], [p["dice"] for p in pairs], dice_below)
        for m in UncertaintyMeasure
    }
    return ReviewCalibration(fits, pairs)


def review_performance(
    pairs: list[dict[str, Any]], thresholds: Mapping[UncertaintyMeasure, float], dice_below: float
) -> dict[str, ReviewThreshold]:
    """How given thresholds flag the pairs of :func:`calibrate_review_thresholds`, per measure."""
    return {
        m.value: review_threshold_at(
            [p[m.value] for p in pairs], [p["dice"] for p in pairs], thresholds[m], dice_below
        )
        for m in UncertaintyMeasure
    }
