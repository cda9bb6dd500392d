from __future__ import annotations

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.labels import (
    BinarizeMethod,
    LabelOptions,
    binarize,
    block_fractions,
    block_labels,
)


def _hand_labelled_fixture() -> np.ndarray:
    """64x64 GFP image, four 32 px blocks whose positive fractions are known by construction.

    top-left: 17 of 32 rows bright = 0.53125 (just above 0.5) -> 1
    top-right: 15 of 32 rows bright = 0.46875 (just below 0.5) -> 0
    bottom-left: exactly 16 rows = 0.5 (on the threshold) -> 1
    bottom-right: nothing bright -> 0
    """
    rng = np.random.default_rng(0)
    image = (100 + rng.integers(0, 5, size=(64, 64))).astype(np.uint16)
    image[0:17, 0:32] += 900
    image[0:15, 32:64] += 900
    image[32:48, 0:32] += 900
    return image


def test_hand_labelled_blocks_get_expected_labels() -> None:
    labels, mask = block_labels(_hand_labelled_fixture(), LabelOptions(smooth_sigma=0))
    np.testing.assert_allclose(block_fractions(mask, 32), [[17 / 32, 15 / 32], [0.5, 0.0]])
    np.testing.assert_array_equal(labels, [[1, 0], [1, 0]])


def test_hand_labelled_blocks_with_default_denoising() -> None:
    """Smoothing moves edges by at most a pixel: blocks 1/32 off the threshold keep their label."""
    labels, _ = block_labels(_hand_labelled_fixture(), LabelOptions())
    np.testing.assert_array_equal(labels[0], [1, 0])
    assert labels[1, 1] == 0


def test_positive_fraction_threshold_is_configurable() -> None:
    image = _hand_labelled_fixture()
    low, _ = block_labels(image, LabelOptions(smooth_sigma=0, positive_fraction=0.4))
    high, _ = block_labels(image, LabelOptions(smooth_sigma=0, positive_fraction=0.52))
    np.testing.assert_array_equal(low, [[1, 1], [1, 0]])
    np.testing.assert_array_equal(high, [[1, 0], [0, 0]])


def test_block_size_and_stride_are_configurable() -> None:
    mask = binarize(_hand_labelled_fixture(), LabelOptions(smooth_sigma=0))
    assert block_fractions(mask, 16).shape == (4, 4)
    overlapping = block_fractions(mask, 32, stride=16)
    assert overlapping.shape == (3, 3)
    assert overlapping[1, 0] == pytest.approx(mask[16:48, 0:32].mean())


@pytest.mark.parametrize("method", ["otsu", "li", "triangle"])
def test_automatic_methods_separate_bright_from_dark(method: str) -> None:
    mask = binarize(_hand_labelled_fixture(), LabelOptions(method=BinarizeMethod(method), smooth_sigma=0))
    assert mask[:15, :].all() and not mask[48:, :].any()


def test_yen_gives_a_mask() -> None:
    mask = binarize(_hand_labelled_fixture(), LabelOptions(method=BinarizeMethod.YEN))
    assert mask.shape == (64, 64) and mask[:15, :].all()


def test_fixed_threshold_uses_image_units() -> None:
    image = _hand_labelled_fixture()
    mask = binarize(image, LabelOptions(method=BinarizeMethod.FIXED, threshold=104, smooth_sigma=0))
    np.testing.assert_array_equal(mask, image >= 104)


def test_invalid_label_options_and_inputs() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LabelOptions(method=BinarizeMethod.FIXED)
    with pytest.raises(ValueError, match="positive fraction"):
        LabelOptions(positive_fraction=0.0)
    with pytest.raises(ValueError, match="constant"):
        binarize(np.full((40, 40), 7, dtype=np.uint8), LabelOptions())
    with pytest.raises(ValueError, match="2-D"):
        binarize(np.zeros((2, 40, 40)), LabelOptions())
    with pytest.raises(ValueError, match="smaller"):
        block_fractions(np.zeros((20, 40), dtype=bool), 32)
