"""Whole-image block classification and blending into a probability map.

The image is normalised and mirror-padded, the :class:`~acqflow.models.tile_cnn.TileCNN` (in its
fused inference form) runs fully convolutionally over it (in a few large tiles that stay
in the CPU caches, never one block at a time) and yields the logit of every block on a
regular grid. Blocks at
the configured stride are blended into a smooth full-resolution probability map with a
sine window via one transposed convolution; blocks of the non-overlapping grid from the
image origin are counted for the efficiency (edge blocks see mirror-padded pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from acqflow.models.tile_cnn import TileCNN
from acqflow.plugins.virtual_staining.imaging import normalize

__all__ = ["BlockPredictor", "InferenceOptions", "Prediction", "loop_block_probabilities"]


@dataclass(frozen=True)
class InferenceOptions:
    """Inference settings; validates itself (raises ValueError).

    ``stride`` (pixels between overlapping blocks of the probability map) defaults to half
    a block rounded to the network step; ``threshold`` is the block probability from which
    a block counts as positive; ``tile_size`` is the side of one fully convolutional pass:
    it does not change the result, but tiles that stay in the CPU caches run faster.
    """

    stride: int | None = None
    threshold: float = 0.5
    tile_size: int = 512

    def __post_init__(self) -> None:
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.tile_size < 64:
            raise ValueError(f"tile_size must be >= 64, got {self.tile_size}")


@dataclass(frozen=True)
class Prediction:
    """Result for one image: probability map and the non-overlapping block grid."""

    probability: np.ndarray  # (H, W) float32 in [0, 1]
    block_probability: np.ndarray  # (ceil(H / B), ceil(W / B)) float32
    block_size: int
    threshold: float

    @property
    def blocks_total(self) -> int:
        return int(self.block_probability.size)

    @property
    def blocks_positive(self) -> int:
        return int((self.block_probability >= self.threshold).sum())

    @property
    def positive_fraction(self) -> float:
        return self.blocks_positive / self.blocks_total

    def full_blocks(self) -> np.ndarray:
        """Probabilities of the blocks lying entirely inside the image (label positions)."""
        height, width = self.probability.shape
        return self.block_probability[: height // self.block_size, : width // self.block_size]


def _padded_side(side: int, block: int, stride: int, margin: int) -> int:
    """Padded length covering margins, the ceil block grid and a whole number of strides."""
    need = max(margin + math.ceil(side / block) * block, 2 * margin + side, block)
    return block + math.ceil((need - block) / stride) * stride


def _ramp(block: int) -> torch.Tensor:
    """One axis of the separable sine window: blocks weigh most at their centre, never zero."""
    return torch.sin(math.pi * (torch.arange(block, dtype=torch.float32) + 0.5) / block)


def _spread(values: torch.Tensor, ramp: torch.Tensor, stride: int) -> torch.Tensor:
    """Transposed convolution of every row of ``values`` (n, m) with ``ramp`` at ``stride``."""
    return F.conv_transpose1d(values[:, None, :], ramp[None, None], stride=stride)[:, 0, :]


class BlockPredictor:
    """Runs a TileCNN over whole images; the model is put in eval mode on ``device``."""

    def __init__(self, model: TileCNN, device: str = "cpu", options: InferenceOptions | None = None):
        self.options = options or InferenceOptions()
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        block, step = model.block_size, model.step
        stride = self.options.stride or max(step, (block // 2) // step * step)
        if stride % step or stride > block:
            raise ValueError(f"stride {stride} must be a multiple of {step} and at most {block}")
        self.stride = stride
        self.margin = (block // 2) // step * step
        # Blocks are needed at multiples of the stride (blending) and at the margin plus
        # multiples of the block (counting): the head runs on the grid of their gcd only.
        self.unit = math.gcd(stride, self.margin, block)
        self.network = model.fused().to(self.device)
        self._ramp = _ramp(block).to(self.device)

    @torch.inference_mode()
    def block_grid(self, padded: np.ndarray) -> torch.Tensor:
        """Logits of the blocks at multiples of ``self.unit`` of a padded, normalised image."""
        block, unit = self.model.block_size, self.unit
        image = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).to(self.device)
        gh = (image.shape[0] - block) // unit + 1
        gw = (image.shape[1] - block) // unit + 1
        per_tile = max(1, (self.options.tile_size - block) // unit + 1)
        grid = torch.empty((gh, gw), dtype=torch.float32, device=self.device)
        every = unit // self.model.step
        for r0 in range(0, gh, per_tile):
            r1 = min(gh, r0 + per_tile)
            for c0 in range(0, gw, per_tile):
                c1 = min(gw, c0 + per_tile)
                tile = image[r0 * unit : (r1 - 1) * unit + block, c0 * unit : (c1 - 1) * unit + block]
                grid[r0:r1, c0:c1] = self.network.block_logits(tile[None, None], every)[0]
        return grid

    def pad(self, plane: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised, mirror-padded image and the margin added at top and left."""
        block, margin = self.model.block_size, self.margin
        height, width = plane.shape
        ph = _padded_side(height, block, self.stride, margin)
        pw = _padded_side(width, block, self.stride, margin)
        widths = ((margin, ph - height - margin), (margin, pw - width - margin))
        return np.pad(normalize(plane), widths, mode="reflect"), margin

    @torch.inference_mode()
    def predict(self, plane: np.ndarray) -> Prediction:
        """Probability map and block grid of one 2-D image of any size and bit depth."""
        block, unit = self.model.block_size, self.unit
        height, width = plane.shape
        padded, margin = self.pad(plane)
        probs = torch.sigmoid(self.block_grid(padded))
        every = self.stride // unit
        sparse = probs[::every, ::every]
        # The window is separable, so blending is a 1-D transposed convolution along each
        # axis (a 2-D one with the full window costs ten times as much), and so is its
        # normaliser: the summed window weights are an outer product.
        ramp, stride = self._ramp, self.stride
        total = _spread(_spread(sparse, ramp, stride).T.contiguous(), ramp, stride).T
        weight_y, weight_x = (
            _spread(torch.ones((1, count), device=sparse.device), ramp, stride)[0] for count in sparse.shape
        )
        blended = (total / torch.outer(weight_y, weight_x))[margin : margin + height, margin : margin + width]
        first, jump = margin // unit, block // unit
        rows, cols = math.ceil(height / block), math.ceil(width / block)
        counted = probs[first::jump, first::jump][:rows, :cols]
        return Prediction(
            probability=blended.clamp(0.0, 1.0).cpu().numpy().astype(np.float32),
            block_probability=counted.cpu().numpy().astype(np.float32),
            block_size=block,
            threshold=self.options.threshold,
        )


@torch.inference_mode()
def loop_block_probabilities(model: TileCNN, padded: np.ndarray, stride: int) -> np.ndarray:
    """The straightforward research implementation: one forward pass per block.

    Kept as the reference for tests and the benchmark; returns the probability grid of
    blocks at multiples of ``stride`` of an already normalised, padded image.
    """
    model.eval()
    block = model.block_size
    image = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    ys = range(0, image.shape[0] - block + 1, stride)
    xs = range(0, image.shape[1] - block + 1, stride)
    out = np.empty((len(ys), len(xs)), dtype=np.float32)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            patch = image[y : y + block, x : x + block][None, None]
            out[i, j] = float(torch.sigmoid(model(patch))[0])
    return out
