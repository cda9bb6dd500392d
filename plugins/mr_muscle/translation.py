"""MR-to-CT translation of a volume with the CycleGAN generator, and the intensity scales.

Both domains are mapped to [-1, 1] for the networks: MR by dividing by a high
percentile of the volume (robust to the few hot voxels of Rician noise), CT by a fixed
piecewise-linear map of HU that gives soft tissue (-200 to 200 HU) half of the range.
With a plain linear map of -1000..1500 HU, fat and muscle differ by only 0.11, too
little for the discriminators to insist on their (MR-inverted) order in a short run;
the companded map makes that difference 0.35 and stays exactly invertible.

Slices are resampled to the generator's pixel spacing, padded with the value of air to
its size divisor, translated in batches and resampled back, so any field of view and
matrix size works. The synthetic CT comes back in HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.ct_muscle.inference import model_grid

if TYPE_CHECKING:
    import torch

    from acqflow.models.cyclegan import ResnetGenerator
    from acqflow.models.store import ModelCard

__all__ = [
    "MODEL_NAME",
    "IntensityScale",
    "ct_to_unit",
    "load_generator",
    "normalise_mr",
    "translate_volume",
    "unit_to_ct",
]

MODEL_NAME = "mr_to_ct"


@dataclass(frozen=True)
class IntensityScale:
    """How images are scaled for the generator and on which pixel grid it works."""

    pixel_spacing_mm: float = 3.0
    mr_percentile: float = 99.5
    ct_knots_hu: tuple[float, ...] = (-1000.0, -200.0, 200.0, 1500.0)
    ct_knots_unit: tuple[float, ...] = (-1.0, -0.5, 0.5, 1.0)
    divisor: int = 4

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm <= 0 or self.divisor < 1:
            raise ValueError("pixel spacing must be positive and divisor >= 1")
        if not 50.0 <= self.mr_percentile <= 100.0:
            raise ValueError("MR percentile must be in [50, 100]")
        hu, unit = np.asarray(self.ct_knots_hu), np.asarray(self.ct_knots_unit)
        if hu.shape != unit.shape or hu.size < 2 or np.any(np.diff(hu) <= 0) or np.any(np.diff(unit) <= 0):
            raise ValueError("CT knots must be two increasing sequences of the same length >= 2")
        if unit[0] != -1.0 or unit[-1] != 1.0:
            raise ValueError("CT unit knots must run from -1 to 1")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "mr_percentile": self.mr_percentile,
            "ct_knots_hu": list(self.ct_knots_hu),
            "ct_knots_unit": list(self.ct_knots_unit),
            "divisor": self.divisor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityScale:
        return cls(
            pixel_spacing_mm=float(data["pixel_spacing_mm"]),
            mr_percentile=float(data["mr_percentile"]),
            ct_knots_hu=tuple(float(v) for v in data["ct_knots_hu"]),
            ct_knots_unit=tuple(float(v) for v in data["ct_knots_unit"]),
            divisor=int(data["divisor"]),
        )


def normalise_mr(volume: np.ndarray, scale: IntensityScale) -> np.ndarray:
    """MR signal to [-1, 1]: 0 stays -1, the ``mr_percentile`` of the volume becomes 1.

    Raises ValueError for an empty or all-zero volume.
    """
    if volume.size == 0:
        raise ValueError("empty MR volume")
    top = float(np.percentile(volume, scale.mr_percentile))
    if not math.isfinite(top) or top <= 0:
        raise ValueError("MR volume has no positive signal to normalise")
    unit = np.clip(volume.astype(np.float32) / np.float32(top), 0.0, 1.0)
    out: np.ndarray = unit * 2.0 - 1.0
    return out


def ct_to_unit(hu: np.ndarray, scale: IntensityScale) -> np.ndarray:
    """HU to [-1, 1] through the scale's knots (values outside the knots are clipped)."""
    out: np.ndarray = np.interp(hu, scale.ct_knots_hu, scale.ct_knots_unit).astype(np.float32)
    return out


def unit_to_ct(unit: np.ndarray, scale: IntensityScale) -> np.ndarray:
    """[-1, 1] back to HU (inverse of :func:`ct_to_unit` inside the knots)."""
    out: np.ndarray = np.interp(unit, scale.ct_knots_unit, scale.ct_knots_hu).astype(np.float32)
    return out


def _translate_chunk(
    generator: ResnetGenerator, unit: torch.Tensor, spacing: tuple[float, float], scale: IntensityScale
) -> torch.Tensor:
    """``(n, rows, cols)`` normalised MR to ``(n, rows, cols)`` CT in [-1, 1]."""
    import torch
    from torch.nn import functional as F

    rows, cols = unit.shape[-2:]
    size, padded = model_grid(rows, cols, spacing, scale.pixel_spacing_mm, scale.divisor)
    x = unit.unsqueeze(1)
    if size != (rows, cols):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    batch = torch.full((x.shape[0], 1, *padded), -1.0, dtype=x.dtype, device=x.device)
    batch[:, :, : size[0], : size[1]] = x
    y = generator(batch)[:, :, : size[0], : size[1]]
    if size != (rows, cols):
        y = F.interpolate(y, size=(rows, cols), mode="bilinear", align_corners=False)
    out: torch.Tensor = y[:, 0]
    return out


def translate_volume(
    generator: ResnetGenerator,
    mr: np.ndarray,
    spacing: tuple[float, float],
    scale: IntensityScale,
    batch_slices: int = 8,
) -> np.ndarray:
    """Synthetic CT in HU (float32) of a ``(slices, rows, cols)`` MR volume.

    ``spacing`` is the in-plane (row, column) spacing in mm. Raises ValueError for a
    volume that is not 3-D or has no signal.
    """
    import torch

    if mr.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {mr.shape}")
    if batch_slices < 1:
        raise ValueError("batch_slices must be >= 1")
    unit = normalise_mr(mr, scale)
    device = next(generator.parameters()).device
    generator.eval()
    out = np.empty(mr.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, mr.shape[0], batch_slices):
            chunk = torch.from_numpy(np.ascontiguousarray(unit[start : start + batch_slices])).to(device)
            out[start : start + batch_slices] = (
                _translate_chunk(generator, chunk, spacing, scale).cpu().numpy()
            )
    return unit_to_ct(out, scale)


def load_generator(
    weights_dir: Path, device: str = "cpu"
) -> tuple[ResnetGenerator, ModelCard, IntensityScale]:
    """Build the MR-to-CT generator from its card and load its verified weights.

    Raises acqflow.models.store.WeightsError when the weights are missing, corrupt, of another
    architecture or lack the intensity scale they were trained with.
    """
    from acqflow.models.cyclegan import ResnetGenerator
    from acqflow.models.store import WeightsError, load_weights, read_card

    card = read_card(weights_dir, MODEL_NAME)
    if card.architecture != "ResnetGenerator":
        raise WeightsError(f"{MODEL_NAME} card names architecture {card.architecture!r}")
    try:
        scale = IntensityScale.from_dict(card.training["input"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"card of {MODEL_NAME} lacks a valid training.input: {exc}") from exc
    generator = ResnetGenerator(**card.arguments)
    load_weights(generator, weights_dir, MODEL_NAME, device=device)
    return generator.to(device).eval(), card, scale
