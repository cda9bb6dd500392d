"""Block labels from fluorescence: binarise the GFP image, then score square blocks.

A block is positive when the GFP-positive fraction of its area reaches
``LabelOptions.positive_fraction``. Blocks sit at the same positions as the phase-image
blocks the classifier sees: top-left corners at multiples of the stride, starting at 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "BinarizeMethod",
    "LabelOptions",
    "binarize",
    "block_fractions",
    "block_labels",
]


class BinarizeMethod(str, Enum):
    """How the fluorescence image becomes a positive/negative mask."""

    OTSU = "otsu"
    LI = "li"
    TRIANGLE = "triangle"
    YEN = "yen"
    FIXED = "fixed"  # an absolute intensity threshold in the image's own units


@dataclass(frozen=True)
class LabelOptions:
    """How labels are made; validates itself (raises ValueError).

    ``threshold`` is required with ``BinarizeMethod.FIXED`` and ignored otherwise;
    ``smooth_sigma`` (pixels) denoises the fluorescence before thresholding.
    """

    method: BinarizeMethod = BinarizeMethod.OTSU
    threshold: float | None = None
    smooth_sigma: float = 1.0
    positive_fraction: float = 0.5
    block_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", BinarizeMethod(self.method))
        if self.method is BinarizeMethod.FIXED and self.threshold is None:
            raise ValueError("a fixed binarisation needs a threshold")
        if not 0.0 < self.positive_fraction <= 1.0:
            raise ValueError(f"positive fraction must be in (0, 1], got {self.positive_fraction}")
        if self.block_size < 2:
            raise ValueError(f"block size must be >= 2, got {self.block_size}")
        if self.smooth_sigma < 0:
            raise ValueError("smooth_sigma must be >= 0")


def binarize(fluorescence: np.ndarray, options: LabelOptions) -> np.ndarray:
    """Boolean mask of GFP-positive pixels of a 2-D fluorescence image.

    Raises ValueError for a non-2-D or constant image (no threshold can be found).
    """
    from scipy import ndimage  # imported here: the CLI imports this module and must start fast
    from skimage import filters

    if fluorescence.ndim != 2:
        raise ValueError(f"fluorescence must be 2-D, got shape {fluorescence.shape}")
    image = fluorescence.astype(np.float32)
    if options.smooth_sigma > 0:
        image = ndimage.gaussian_filter(image, options.smooth_sigma)
    if options.method is BinarizeMethod.FIXED:
        assert options.threshold is not None  # checked by LabelOptions
        return image >= options.threshold
    if float(image.max()) <= float(image.min()):
        raise ValueError("fluorescence image is constant; cannot binarise it")
    functions: dict[BinarizeMethod, Callable[[np.ndarray], float]] = {
        BinarizeMethod.OTSU: filters.threshold_otsu,
        BinarizeMethod.LI: filters.threshold_li,
        BinarizeMethod.TRIANGLE: filters.threshold_triangle,
        BinarizeMethod.YEN: filters.threshold_yen,
    }
    threshold = float(functions[options.method](image))
    return image > threshold


def block_fractions(mask: np.ndarray, block_size: int, stride: int | None = None) -> np.ndarray:
    """Positive-area fraction of every whole block; shape ``(gh, gw)``.

    Blocks start at multiples of ``stride`` (default: ``block_size``, non-overlapping) and
    lie entirely inside the image; raises ValueError when not even one block fits.
    """
    step = stride or block_size
    height, width = mask.shape
    if height < block_size or width < block_size:
        raise ValueError(f"image {mask.shape} is smaller than one {block_size}px block")
    # Summed-area table: every block sum in O(1) without a loop over blocks.
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    ys = np.arange(0, height - block_size + 1, step)
    xs = np.arange(0, width - block_size + 1, step)
    y0, x0 = ys[:, None], xs[None, :]
    y1, x1 = y0 + block_size, x0 + block_size
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    fractions: np.ndarray = (sums / float(block_size * block_size)).astype(np.float32)
    return fractions


def block_labels(
    fluorescence: np.ndarray, options: LabelOptions, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Binary block labels and the pixel mask of one fluorescence image.

    Returns ``(labels, mask)`` where ``labels`` is a ``(gh, gw)`` uint8 grid (1 when the
    block's positive fraction >= ``options.positive_fraction``). Raises ValueError as
    :func:`binarize` and :func:`block_fractions` do.
    """
    mask = binarize(fluorescence, options)
    fractions = block_fractions(mask, options.block_size, stride)
    # A small tolerance so that a fraction of exactly the threshold counts as positive.
    labels = (fractions >= options.positive_fraction - 1e-6).astype(np.uint8)
    return labels, mask
