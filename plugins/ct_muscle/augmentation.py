"""Augmentation for a CT muscle network that has to hold on data it was not generated from.

After nnU-Net's default augmentation (spatial: scaling, rotation, elastic deformation,
mirroring; intensity: noise, blur, brightness, contrast, gamma, simulated low resolution)
and SynthSeg's domain randomisation (Billot et al., Medical Image Analysis 2023: each
label gets a random intensity, plus a bias field and a random resolution, so the network
learns shapes instead of one generator's grey values). Here the random per-label
intensities are applied to a fraction of the slices only, because CT numbers mean
something: on the other slices each structure gets a small HU offset (muscles differ by
a few HU between subjects, scanners and reconstructions) and the whole slice a smooth
additive bias.

The contrast-agnostic variant (:data:`CONTRAST_AGNOSTIC`) turns the random intensities
on for most slices and draws them per *tissue*, not only per label: the background is split
into air and fat, each bone into cortex and marrow (by the slice's HU before augmentation),
so a fat plane or a marrow cavity keeps an edge of its own whatever the contrast. With a
multiplicative bias field on top (an MR receive-coil profile), a network trained this way
segments the intensity-normalised MR directly (the second MR route, docs/models/mr-muscle.md).

All operations run on windowed slices (0..1 over the model's HU window) in batches, with
one ``torch.Generator`` for every draw, so an epoch is reproducible from its seed. The
contrast-agnostic draws are made only when their options are on, so the default robust
augmentation draws exactly what it drew before they existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["CONTRAST_AGNOSTIC", "RobustAugmentation", "add_noise", "affine_theta", "blur_some",
           "gaussian_blur", "robust_augment"]

Range = tuple[float, float]


@dataclass(frozen=True)
class RobustAugmentation:
    """Strengths of :func:`robust_augment`; HU values are converted with the window width."""

    scale: Range = (0.7, 1.4)  # zoom (the phantoms vary body size 0.6-1.4 on top)
    anisotropy: float = 0.15  # the two axes scaled independently by up to this much
    rotation_deg: float = 15.0
    elastic: float = 0.025  # displacement SD as a fraction of the field of view
    elastic_cells: int = 5
    structure_offset_hu: float = 12.0  # per-structure HU offset SD
    synth_probability: float = 0.2  # slices with random per-structure intensities
    bias_hu: float = 40.0
    gamma: Range = (0.8, 1.25)
    noise_hu_max: float = 40.0
    blur_sigma_max: float = 1.2
    blur_probability: float = 0.4
    low_resolution_probability: float = 0.25  # down- and up-sampled by 1-2.5x
    mirror: bool = True
    # Contrast-agnostic options (all off by default):
    tissue_classes: bool = False  # random intensities per tissue (air/fat, cortex/marrow) too
    air_intensity: Range = (0.0, 0.12)  # window units; air stays dark in CT and MR
    shared_muscle_probability: float = 0.0  # synthetic slices whose muscles share one mean
    first_muscle_label: int = 4  # the structure table's muscles are labels 4 and up
    multiplicative_bias: float = 0.0  # log-amplitude of a smooth gain field (MR coil profile)
    air_below_hu: float = -300.0  # tissue bands of the slice before augmentation
    cortex_above_hu: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range {self.scale} is not 0 < low <= high")
        for name in ("synth_probability", "blur_probability", "low_resolution_probability",
                     "shared_muscle_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if min(self.elastic, self.structure_offset_hu, self.bias_hu, self.noise_hu_max,
               self.blur_sigma_max, self.anisotropy, self.rotation_deg,
               self.multiplicative_bias) < 0:
            raise ValueError("augmentation strengths must be non-negative")
        if self.elastic_cells < 2:
            raise ValueError("elastic_cells must be at least 2")
        if not 0 <= self.air_intensity[0] <= self.air_intensity[1] <= 1:
            raise ValueError(f"air intensity range {self.air_intensity} is not within 0..1")
        if self.air_below_hu >= self.cortex_above_hu:
            raise ValueError("air_below_hu must be below cortex_above_hu")


# Weights for the MR route without translation: random per-tissue intensities on 85 % of
# the slices (muscles sharing one mean on half of those, as they do in CT and T1 MR), an
# MR-like gain field, wider gamma; geometry and degradation as in the robust default.
CONTRAST_AGNOSTIC = RobustAugmentation(
    synth_probability=0.85, tissue_classes=True, shared_muscle_probability=0.5,
    multiplicative_bias=0.35, gamma=(0.7, 1.4))


def _uniform(n: int, bounds: Range, generator: torch.Generator) -> torch.Tensor:
    import torch

    return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=generator)


def affine_theta(angle: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, flip: torch.Tensor,
                 shift: torch.Tensor) -> torch.Tensor:
    """``(n, 2, 3)`` matrices for ``F.affine_grid``: rotation by ``angle``, scale ``sx`` /
    ``sy`` of the two axes, mirror (``flip`` -1) and ``shift`` (grid units)."""
    import torch

    theta = torch.zeros(angle.shape[0], 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * sx * flip
    theta[:, 0, 1] = -torch.sin(angle) * sy
    theta[:, 1, 0] = torch.sin(angle) * sx * flip
    theta[:, 1, 1] = torch.cos(angle) * sy
    theta[:, :, 2] = shift
    return theta


def _warp(x: torch.Tensor, y: torch.Tensor, aug: RobustAugmentation,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One affine-plus-elastic warp per slice, bilinear for images, nearest for labels."""
    import torch
    from torch.nn import functional as F

    n, _, height, width = x.shape
    zoom = _uniform(n, aug.scale, generator)
    stretch = 1.0 + (torch.rand(n, 2, generator=generator) * 2 - 1) * aug.anisotropy
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(aug.rotation_deg)
    flip = torch.where(torch.rand(n, generator=generator) < (0.5 if aug.mirror else 0.0),
                       -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    # The grid maps output to input coordinates: a zoom z shows the anatomy z times larger.
    sx, sy = stretch[:, 0] / zoom, stretch[:, 1] / zoom
    grid = F.affine_grid(affine_theta(angle, sx, sy, flip, shift), [n, 1, height, width],
                         align_corners=False)
    if aug.elastic > 0:
        cells = aug.elastic_cells
        coarse = torch.randn(n, 2, cells, cells, generator=generator) * aug.elastic * 2
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0]
    return x, y.long()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each ``(1, H, W)`` image of ``x`` blurred with its own sigma (pixels; ~0 keeps it)."""
    import torch
    from torch.nn import functional as F

    out = x.clone()
    for i, s in enumerate(sigma.tolist()):
        if s <= 0.05:
            continue
        radius = max(1, math.ceil(3 * s))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t / s) ** 2)
        kernel = kernel / kernel.sum()
        image = F.pad(x[i: i + 1], (radius, radius, radius, radius), mode="replicate")
        image = F.conv2d(image, kernel.view(1, 1, 1, -1))
        out[i: i + 1] = F.conv2d(image, kernel.view(1, 1, -1, 1))
    return out


def _smooth(n: int, height: int, width: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    import torch
    from torch.nn import functional as F

    coarse = torch.rand(n, 1, cells, cells, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)


def _tissue_classes(x: torch.Tensor, y: torch.Tensor, aug: RobustAugmentation,
                    hu: float, low_hu: float) -> tuple[torch.Tensor, int]:
    """Generation classes ``label * 3 + band`` (band 0 below ``air_below_hu``, 2 above
    ``cortex_above_hu``, else 1) and their count; plain labels without ``tissue_classes``."""

    classes = int(y.max()) + 1
    if not aug.tissue_classes:
        return y.flatten(1), classes
    value = x[:, 0].flatten(1)
    band = ((value >= (aug.air_below_hu - low_hu) * hu).long()
            + (value > (aug.cortex_above_hu - low_hu) * hu).long())
    return y.flatten(1) * 3 + band, classes * 3


def _synthetic_means(n: int, count: int, aug: RobustAugmentation,
                     generator: torch.Generator) -> torch.Tensor:
    """``(n, count)`` random class means in 0..1; with ``tissue_classes`` air is dark and,
    on ``shared_muscle_probability`` of the slices, every muscle tissue shares one mean."""
    import torch

    means = torch.rand(n, count, generator=generator)
    if not aug.tissue_classes:
        return means
    means[:, 0] = _uniform(n, aug.air_intensity, generator)
    shared = torch.rand(n, generator=generator) < aug.shared_muscle_probability
    first = aug.first_muscle_label * 3
    if first < count:
        common = torch.rand(n, 1, generator=generator)
        jitter = torch.randn(n, count - first, generator=generator) * 0.03
        grouped = (common + jitter).clamp(0, 1)
        means[:, first:] = torch.where(shared.view(n, 1), grouped, means[:, first:])
    return means


def _intensity(x: torch.Tensor, y: torch.Tensor, aug: RobustAugmentation, hu: float,
               low_hu: float, generator: torch.Generator) -> torch.Tensor:
    """Per-structure offsets or random intensities, bias, gamma (``hu``: 1 HU in window
    units; ``low_hu``: the HU at window value 0)."""
    import torch

    n, _, height, width = x.shape
    classes = int(y.max()) + 1
    offsets = torch.randn(n, classes, generator=generator) * aug.structure_offset_hu * hu
    offsets[:, 0] = 0.0  # background (air and fat) keeps its HU
    generation, count = _tissue_classes(x, y, aug, hu, low_hu)
    x = x + torch.gather(offsets, 1, y.flatten(1)).view(n, 1, height, width)
    synth = torch.rand(n, generator=generator) < aug.synth_probability
    if bool(synth.any()):
        means = _synthetic_means(n, count, aug, generator)
        spread = torch.rand(n, count, generator=generator) * 0.05
        drawn = (torch.gather(means, 1, generation)
                 + torch.gather(spread, 1, generation) * torch.randn(n, height * width,
                                                                      generator=generator))
        drawn = drawn.view(n, 1, height, width)
        replaced = y[:, None] > 0 if not aug.tissue_classes else torch.ones_like(x, dtype=torch.bool)
        x = torch.where(synth.view(n, 1, 1, 1) & replaced, drawn, x)
    body = (x > 0.02).float()
    x = x + body * _smooth(n, height, width, 4, generator) * aug.bias_hu * hu
    if aug.multiplicative_bias > 0:
        amplitude = torch.rand(n, 1, 1, 1, generator=generator) * aug.multiplicative_bias
        x = x * torch.exp(_smooth(n, height, width, 3, generator) * amplitude)
    gamma = _uniform(n, aug.gamma, generator).view(n, 1, 1, 1)
    return x.clamp(0, 1) ** gamma


def _degrade(x: torch.Tensor, aug: RobustAugmentation, hu: float,
             generator: torch.Generator) -> torch.Tensor:
    """Blur, simulated low resolution and (half of the time spatially correlated) noise."""
    import torch
    from torch.nn import functional as F

    n, _, height, width = x.shape
    x = blur_some(x, aug.blur_probability, aug.blur_sigma_max, generator)
    low = (torch.rand(n, generator=generator) < aug.low_resolution_probability).tolist()
    factor = _uniform(n, (1.0, 2.5), generator).tolist()
    for i in [i for i, chosen in enumerate(low) if chosen]:
        size = (max(8, round(height / factor[i])), max(8, round(width / factor[i])))
        small = F.interpolate(x[i: i + 1], size=size, mode="area")
        x[i: i + 1] = F.interpolate(small, size=(height, width), mode="bilinear",
                                    align_corners=False)
    level = torch.rand(n, 1, 1, 1, generator=generator) * aug.noise_hu_max * hu
    return add_noise(x, level, generator)


def blur_some(x: torch.Tensor, probability: float, sigma_max: float,
              generator: torch.Generator) -> torch.Tensor:
    """A Gaussian blur with sigma drawn from [0, ``sigma_max``] on each image with
    ``probability``."""
    import torch

    n = x.shape[0]
    blurred = torch.rand(n, generator=generator) < probability
    sigma = torch.rand(n, generator=generator) * sigma_max
    return gaussian_blur(x, torch.where(blurred, sigma, torch.zeros_like(sigma)))


def add_noise(x: torch.Tensor, level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``level`` ``(n, 1, 1, 1)``, spatially
    correlated (blurred, then rescaled to that SD) on half of the images."""
    import torch

    n = x.shape[0]
    noise = torch.randn(x.shape, generator=generator)
    correlated = torch.rand(n, generator=generator) < 0.5
    sigma = torch.where(correlated, 0.6 + 0.6 * torch.rand(n, generator=generator), torch.zeros(n))
    smooth = gaussian_blur(noise, sigma)
    spread = smooth.flatten(1).std(dim=1).clamp_min(1e-6).view(n, 1, 1, 1)
    return x + level * smooth / spread


def robust_augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, aug: RobustAugmentation,
    window_width: float, window_center: float = 200.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warped, re-coloured and degraded copies of windowed slices ``x`` ``(n, 1, H, W)``
    and their labels ``y`` ``(n, H, W)``; returns images clamped to 0..1 and int64 labels.
    ``window_center`` places the tissue bands of the contrast-agnostic options.

    Raises ValueError for a window width that is not positive.
    """
    if window_width <= 0:
        raise ValueError(f"window width must be positive, got {window_width}")
    hu = 1.0 / window_width
    x, y = _warp(x, y, aug, generator)
    x = _intensity(x, y, aug, hu, window_center - window_width / 2, generator)
    x = _degrade(x, aug, hu, generator)
    return x.clamp(0, 1), y
