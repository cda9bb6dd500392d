"""T1-weighted MR phantoms on the randomised anatomy, with T1 contrast variety.

The fixed MR phantoms (:mod:`acqflow.plugins.mr_muscle.phantoms`) share one anatomy model and one
contrast. These are drawn from :func:`acqflow.plugins.ct_muscle.anatomy.randomised_anatomy`
(three anatomy models, body sizes, fat thickness, coverage, ...) and each phantom draws
its own T1 contrast: the signal of muscle, cortex, femoral and flat-bone marrow relative
to fat (fat = 1: the brightest tissue of a T1 image, what the p99.5 normalisation of
the networks' input lands on), the per-muscle spread, the strength of the coil bias field
and the noise. As for CT (:data:`acqflow.plugins.ct_muscle.anatomy.HELD_OUT_VARIETY`), the
held-out variety draws from settings training never uses: the ellipse anatomy, body size
and fat tails, and contrast tails (muscle darker or brighter, flat bone darker or
brighter, a stronger or weaker bias field).

Seeds: training anatomy ``MR_ANATOMY_SEED_OFFSET + seed`` (apart from every CT training
seed), held-out ``HELD_OUT_SEED_OFFSET + seed``; :func:`randomised_mr_phantom` takes the
anatomy seed itself, so each caller states the range it draws from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from acqflow.plugins.ct_muscle.anatomy import (
    HELD_OUT_VARIETY,
    TRAINING_VARIETY,
    Variety,
    draw_range,
    randomised_anatomy,
)
from acqflow.plugins.ct_muscle.structures import LabelTable, default_label_table
from acqflow.plugins.mr_muscle.phantoms import MrPhantom, Tissue, _bias_field, _rician

__all__ = [
    "MR_HELD_OUT_VARIETY",
    "MR_TRAINING_VARIETY",
    "MR_VARIETIES",
    "MrVariety",
    "randomised_mr_phantom",
    "randomised_tissue",
]

Range = tuple[float, float]

# randomised_anatomy's tissue codes (acqflow.plugins.ct_muscle.anatomy.TISSUES)
_AIR, _FAT, _MUSCLE, _CORTEX, _MARROW = range(5)


@dataclass(frozen=True)
class MrVariety:
    """Anatomy variety and T1 signal ranges relative to fat, drawn per phantom.

    ``tails`` names contrast ranges that are drawn from the two bands just outside them
    (a quarter of the range wide), as :class:`acqflow.plugins.ct_muscle.anatomy.Variety` does.
    """

    anatomy: Variety = TRAINING_VARIETY
    muscle: Range = (0.25, 0.5)
    cortex: Range = (0.0, 0.1)
    marrow: Range = (0.65, 0.95)  # fatty femoral marrow
    flat_bone: Range = (0.45, 0.75)  # pelvis and sacrum: mixed red / yellow marrow
    muscle_spread: float = 0.04  # relative per-muscle variation
    bias_strength: Range = (0.1, 0.45)  # log-amplitude of the multiplicative bias field
    noise: Range = (0.01, 0.05)  # Rician sigma relative to fat
    tails: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("muscle", "cortex", "marrow", "flat_bone", "bias_strength", "noise"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} range {(low, high)} is not 0 <= low <= high")
        unknown = set(self.tails) - {"muscle", "cortex", "marrow", "flat_bone", "bias_strength", "noise"}
        if unknown:
            raise ValueError(f"unknown tail ranges: {sorted(unknown)}")

    def draw(self, name: str, rng: np.random.Generator) -> float:
        """A value of range ``name`` (:func:`draw_range`), never below 0."""
        return max(0.0, draw_range(getattr(self, name), name in self.tails, rng))


MR_TRAINING_VARIETY = MrVariety()
# Never used in training: the CT held-out anatomy (ellipse model, size / fat / aspect
# tails), muscle signal 0.19-0.25 or 0.50-0.56, flat bone 0.38-0.45 or 0.75-0.83, bias
# field log-amplitude 0.01-0.1 or 0.45-0.54.
MR_HELD_OUT_VARIETY = MrVariety(anatomy=HELD_OUT_VARIETY, tails=("muscle", "flat_bone", "bias_strength"))
MR_VARIETIES = {"training": MR_TRAINING_VARIETY, "held-out": MR_HELD_OUT_VARIETY}


def randomised_tissue(labels: np.ndarray, tissue: np.ndarray, table: LabelTable) -> np.ndarray:
    """:class:`acqflow.plugins.mr_muscle.phantoms.Tissue` classes from a randomised drawing: its
    marrow is fatty marrow in the femur and flat-bone marrow in the pelvis and sacrum."""
    femur = labels == table.by_key("femur").label
    out = np.full(tissue.shape, Tissue.AIR, dtype=np.uint8)
    out[tissue == _FAT] = Tissue.FAT
    out[tissue == _MUSCLE] = Tissue.MUSCLE
    out[tissue == _CORTEX] = Tissue.CORTEX
    out[(tissue == _MARROW) & femur] = Tissue.MARROW
    out[(tissue == _MARROW) & ~femur] = Tissue.FLAT_BONE
    return out


def randomised_mr_phantom(
    anatomy_seed: int, variety: MrVariety = MR_TRAINING_VARIETY,
    shape: tuple[int, int, int] = (24, 160, 160), pixel_spacing_mm: float = 3.0,
    slice_spacing_mm: float = 6.0, full_scale: float = 1000.0, table: LabelTable | None = None,
) -> MrPhantom:
    """An MR phantom of the randomised anatomy drawn from ``anatomy_seed`` with its own T1
    contrast, bias field and Rician noise; stored values with fat at ``full_scale``.

    The same arguments give the same phantom. Raises ValueError for a negative seed, a
    shape too small to draw or a non-positive spacing or scale.
    """
    if anatomy_seed < 0:
        raise ValueError(f"seed must be >= 0, got {anatomy_seed}")
    if slice_spacing_mm <= 0 or full_scale <= 0:
        raise ValueError("slice spacing and full scale must be positive")
    tbl = table or default_label_table()
    labels, drawing = randomised_anatomy(anatomy_seed, shape, pixel_spacing_mm, variety.anatomy, tbl)
    tissue = randomised_tissue(labels, drawing, tbl)
    rng = np.random.default_rng([anatomy_seed, 11])
    levels = np.array([0.0, 1.0, variety.draw("muscle", rng), variety.draw("cortex", rng),
                       variety.draw("marrow", rng), variety.draw("flat_bone", rng)])
    signal = levels[tissue].astype(np.float32)
    per_muscle = 1.0 + variety.muscle_spread * rng.uniform(-1.0, 1.0, size=256)
    muscle = tissue == Tissue.MUSCLE
    signal[muscle] *= per_muscle[labels[muscle]].astype(np.float32)
    biased = signal * _bias_field(shape, variety.draw("bias_strength", rng), rng)
    noisy = _rician(biased, variety.draw("noise", rng), rng) * np.float32(full_scale)
    return MrPhantom(signal=noisy, labels=labels, pixel_spacing_mm=pixel_spacing_mm,
                     slice_spacing_mm=slice_spacing_mm, anatomy_seed=anatomy_seed)
