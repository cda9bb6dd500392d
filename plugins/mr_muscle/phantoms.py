"""Synthetic T1-weighted MR phantoms of the hip and thigh, unpaired with the CT phantoms.

The anatomy comes from the CT phantom generator (:mod:`acqflow.plugins.ct_muscle.phantoms`) but
from a disjoint seed range (:data:`MR_ANATOMY_SEED_OFFSET`), and every MR phantom is
further warped by its own random in-plane scaling and shift, so no MR phantom shares an
anatomy with any CT phantom used for training. From the noise-free CT drawing the tissue
classes (air, fat, muscle, cortical bone, fatty marrow, flat bone) are read and given a
T1-like contrast: fat bright, fatty marrow bright, muscle intermediate, flat bone
intermediate-bright, cortical bone and air dark. A smooth multiplicative bias field
(coil inhomogeneity) and Rician noise (magnitude of complex Gaussian noise) follow. The
label map is ground truth for evaluation only; training never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, generate_phantom
from acqflow.plugins.ct_muscle.structures import LabelTable, default_label_table

__all__ = [
    "HELD_OUT_SEED_OFFSET",
    "MR_ANATOMY_SEED_OFFSET",
    "MrContrast",
    "MrPhantom",
    "MrPhantomOptions",
    "Tissue",
    "generate_mr_phantom",
    "tissue_map",
]

# CT phantoms for training use seeds below this; MR anatomy is drawn at or above it.
MR_ANATOMY_SEED_OFFSET = 10_000_000
# Held-out evaluation phantoms sit in a third range, apart from both training sets.
HELD_OUT_SEED_OFFSET = 20_000_000
_BONES = ("pelvis", "femur", "sacrum")


class Tissue(IntEnum):
    """Tissue classes read from the noise-free CT drawing."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CORTEX = 3
    MARROW = 4  # fatty (yellow) marrow of the femur
    FLAT_BONE = 5  # pelvis and sacrum: mixed red/yellow marrow


@dataclass(frozen=True)
class MrContrast:
    """Mean T1-weighted signal per tissue (fat = 1) and how much it varies per phantom."""

    fat: float = 1.0
    muscle: float = 0.36
    cortex: float = 0.05
    marrow: float = 0.82
    flat_bone: float = 0.6
    spread: float = 0.08  # relative per-phantom variation of each tissue's signal

    def __post_init__(self) -> None:
        values = (self.fat, self.muscle, self.cortex, self.marrow, self.flat_bone)
        if any(v < 0 for v in values) or not 0 <= self.spread < 0.5:
            raise ValueError("tissue signals must be >= 0 and spread in [0, 0.5)")


@dataclass(frozen=True)
class MrPhantomOptions:
    """Size and appearance of an MR phantom; ``shape`` is (slices, rows, columns)."""

    shape: tuple[int, int, int] = (24, 128, 128)
    pixel_spacing_mm: float = 3.0
    slice_spacing_mm: float = 6.0
    contrast: MrContrast = MrContrast()
    bias_strength: float = 0.3  # log-amplitude of the multiplicative bias field
    noise: float = 0.03  # Rician noise sigma relative to the fat signal
    max_scale_change: float = 0.08  # in-plane anatomy warp, fraction per axis
    max_shift_px: float = 4.0
    full_scale: float = 1000.0  # stored value of fat signal without bias

    def __post_init__(self) -> None:
        if min(self.shape) < 1 or self.shape[1] < 32 or self.shape[2] < 32:
            raise ValueError(f"phantom shape too small: {self.shape}")
        if self.pixel_spacing_mm <= 0 or self.slice_spacing_mm <= 0 or self.full_scale <= 0:
            raise ValueError("spacings and full scale must be positive")
        if self.bias_strength < 0 or self.noise < 0 or not 0 <= self.max_scale_change < 0.5:
            raise ValueError("bias, noise must be >= 0 and scale change in [0, 0.5)")


@dataclass(frozen=True)
class MrPhantom:
    """MR signal (float32, >= 0) and label map, (slices, rows, columns), cranial first."""

    signal: np.ndarray
    labels: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    anatomy_seed: int


def tissue_map(hu: np.ndarray, labels: np.ndarray, table: LabelTable) -> np.ndarray:
    """Tissue class per voxel of a noise-free CT phantom drawing (uint8 of :class:`Tissue`)."""
    bone_labels = [table.by_key(key).label for key in _BONES]
    femur = table.by_key("femur").label
    is_bone = np.isin(labels, bone_labels)
    tissue = np.full(hu.shape, Tissue.AIR, dtype=np.uint8)
    tissue[(labels == 0) & (hu > -500.0)] = Tissue.FAT
    tissue[(labels > 0) & ~is_bone] = Tissue.MUSCLE
    tissue[is_bone & (labels != femur)] = Tissue.FLAT_BONE
    tissue[(labels == femur) & (hu < 1000.0)] = Tissue.MARROW
    tissue[is_bone & (hu >= 1000.0)] = Tissue.CORTEX
    return tissue


def _warp(
    volumes: tuple[np.ndarray, ...], rng: np.random.Generator, opts: MrPhantomOptions
) -> tuple[np.ndarray, ...]:
    """One nearest-neighbour in-plane scaling and shift, applied to every volume and slice."""
    change = opts.max_scale_change
    scale = rng.uniform(1.0 - change, 1.0 + change, size=2)
    shift = rng.uniform(-opts.max_shift_px, opts.max_shift_px, size=2)
    centre = (np.array(volumes[0].shape[1:], dtype=np.float64) - 1.0) / 2.0
    matrix = np.diag([1.0, 1.0 / scale[0], 1.0 / scale[1]])
    # output voxel o samples input matrix @ o + offset: centre + shift maps back to centre
    offset = np.concatenate([[0.0], centre - (centre + shift) / scale])
    return tuple(
        ndimage.affine_transform(v, matrix, offset=offset, order=0, mode="constant", cval=0) for v in volumes
    )


def _signal(
    tissue: np.ndarray, labels: np.ndarray, contrast: MrContrast, rng: np.random.Generator
) -> np.ndarray:
    """Noise-free T1 signal: per-tissue level drawn per phantom, small per-muscle offsets."""
    jitter = 1.0 + contrast.spread * rng.uniform(-1.0, 1.0, size=6)
    levels = (
        np.array([0.0, contrast.fat, contrast.muscle, contrast.cortex, contrast.marrow, contrast.flat_bone])
        * jitter
    )
    signal = levels[tissue].astype(np.float32)
    per_muscle = 1.0 + 0.04 * rng.uniform(-1.0, 1.0, size=256)
    muscle = tissue == Tissue.MUSCLE
    signal[muscle] *= per_muscle[labels[muscle]].astype(np.float32)
    out: np.ndarray = signal
    return out


def _bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial in z, y, x), mean about 1."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    basis = (x, y, z, x * y, x * x - 1 / 3, y * y - 1 / 3, y * z)
    weights = rng.normal(0.0, 1.0, size=len(basis))
    weights /= max(float(np.abs(weights).sum()), 1e-6)
    log_field = sum(w * b for w, b in zip(weights, basis, strict=True))
    field: np.ndarray = np.exp(strength * np.asarray(log_field)).astype(np.float32)
    return field


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of ``sigma`` per channel."""
    real = signal + rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    out: np.ndarray = np.hypot(real, imag).astype(np.float32)
    return out


def generate_mr_phantom(
    seed: int, options: MrPhantomOptions | None = None, table: LabelTable | None = None
) -> MrPhantom:
    """An MR phantom drawn from ``seed``; the same seed always gives the same phantom.

    The anatomy seed is ``MR_ANATOMY_SEED_OFFSET + seed`` for ``seed`` >= 0; held-out
    sets pass seeds from ``HELD_OUT_SEED_OFFSET - MR_ANATOMY_SEED_OFFSET`` on. Raises
    ValueError for a negative seed and KeyError when ``table`` lacks a drawn structure.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    opts = options or MrPhantomOptions()
    tbl = table or default_label_table()
    anatomy_seed = MR_ANATOMY_SEED_OFFSET + seed
    ct = generate_phantom(
        anatomy_seed,
        PhantomOptions(
            shape=opts.shape,
            pixel_spacing_mm=opts.pixel_spacing_mm,
            slice_spacing_mm=opts.slice_spacing_mm,
            noise_hu=0.0,
        ),
        tbl,
    )
    rng = np.random.default_rng([anatomy_seed, 7])
    tissue, labels = _warp((tissue_map(ct.hu, ct.labels, tbl), ct.labels), rng, opts)
    clean = _signal(tissue, labels, opts.contrast, rng)
    biased = clean * _bias_field(opts.shape, opts.bias_strength, rng)
    signal = _rician(biased, opts.noise * opts.contrast.fat, rng) * np.float32(opts.full_scale)
    return MrPhantom(
        signal=signal,
        labels=labels.astype(np.uint8),
        pixel_spacing_mm=opts.pixel_spacing_mm,
        slice_spacing_mm=opts.slice_spacing_mm,
        anatomy_seed=anatomy_seed,
    )
