"""CycleGAN losses and the image pool.

Least-squares adversarial loss (Mao et al. 2017), L1 cycle-consistency and identity
losses (Zhu et al. 2017), and the gradient-consistency loss of the cross-modality
hip MR/CT work (Hiasa et al. 2018): one minus the normalised cross-correlation (NCC) of
the image gradients of an input and its translation, which keeps the edges of the
anatomy where they were.

Two forms: SIGNED is the published one, the mean NCC of the x and y derivatives. It
rewards keeping each edge's polarity, but T1-weighted MR and CT have opposite
polarities at the fat/muscle and the bone edges (fat is bright in T1, dark against
muscle in CT; cortex is dark in MR, bright in CT), so SIGNED pulls the translation
towards MR contrast; in our runs it inverted fat and muscle. MAGNITUDE, the default,
correlates the gradient magnitudes instead: edges must stay where they are, their
polarity is left to the adversarial loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

import torch

__all__ = ["GradientMode", "ImagePool", "LossWeights", "gradient_consistency", "least_squares"]


class GradientMode(str, Enum):
    """Which gradients the gradient-consistency loss correlates."""

    SIGNED = "signed"  # x and y derivatives (Hiasa et al.)
    MAGNITUDE = "magnitude"  # gradient magnitude: polarity-invariant


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms; 0 switches a term off."""

    adversarial: float = 1.0
    cycle: float = 10.0
    identity: float = 1.0
    gradient: float = 1.0
    gradient_mode: GradientMode = GradientMode.MAGNITUDE

    def __post_init__(self) -> None:
        if min(self.adversarial, self.cycle, self.identity, self.gradient) < 0:
            raise ValueError(f"loss weights must be >= 0: {self}")
        object.__setattr__(self, "gradient_mode", GradientMode(self.gradient_mode))


def least_squares(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean squared distance of patch scores from 1 (real) or 0 (fake)."""
    target = 1.0 if real else 0.0
    return ((logits - target) ** 2).mean()


def _ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised cross-correlation per image of ``(N, C, H, W)`` tensors; returns (N,)."""
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    out: torch.Tensor = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return out


def _magnitude(image: torch.Tensor) -> torch.Tensor:
    dx = image[..., :-1, 1:] - image[..., :-1, :-1]
    dy = image[..., 1:, :-1] - image[..., :-1, :-1]
    return torch.sqrt(dx * dx + dy * dy + 1e-8)


def gradient_consistency(
    source: torch.Tensor, translated: torch.Tensor, mode: GradientMode = GradientMode.MAGNITUDE
) -> torch.Tensor:
    """``1 - GC`` averaged over the batch, for ``(N, C, H, W)`` images.

    SIGNED: GC = mean of NCC(d/dx) and NCC(d/dy); MAGNITUDE: GC = NCC(|gradient|).
    """
    if GradientMode(mode) is GradientMode.MAGNITUDE:
        return 1.0 - _ncc(_magnitude(source), _magnitude(translated)).mean()
    gx = _ncc(source[..., :, 1:] - source[..., :, :-1], translated[..., :, 1:] - translated[..., :, :-1])
    gy = _ncc(source[..., 1:, :] - source[..., :-1, :], translated[..., 1:, :] - translated[..., :-1, :])
    return 1.0 - 0.5 * (gx + gy).mean()


class ImagePool:
    """History of generated images for the discriminators (Shrivastava et al. 2017).

    Once full, each new image is returned as is or, with probability one half, swapped
    for a stored one. ``size`` 0 disables the pool. Raises ValueError for a negative size.
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self._rng = rng

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images for the discriminator, one per input image (detached)."""
        if self.size == 0:
            return images.detach()
        out: list[torch.Tensor] = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self._rng.random() < 0.5:
                index = self._rng.randrange(self.size)
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)
