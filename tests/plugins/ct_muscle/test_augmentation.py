"""Robust augmentation: seeded, labels move with the image, intensities stay in range."""

from __future__ import annotations

import pytest
import torch

from plugins.ct_muscle.augmentation import RobustAugmentation, robust_augment


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.zeros(4, 64, 64, dtype=torch.long)
    y[:, 20:44, 10:30] = 3
    y[:, 10:30, 36:56] = 7
    x = y[:, None].float() / 10.0  # each label its own grey value
    return x, y


QUIET = RobustAugmentation(structure_offset_hu=0, synth_probability=0, bias_hu=0, gamma=(1, 1),
                           noise_hu_max=0, blur_probability=0, low_resolution_probability=0)


def test_same_generator_seed_same_result() -> None:
    x, y = _batch()
    one = robust_augment(x, y, torch.Generator().manual_seed(4), RobustAugmentation(), 1200.0)
    two = robust_augment(x, y, torch.Generator().manual_seed(4), RobustAugmentation(), 1200.0)
    torch.testing.assert_close(one[0], two[0])
    assert torch.equal(one[1], two[1])


def test_labels_follow_the_image_through_the_warp() -> None:
    x, y = _batch()
    out, labels = robust_augment(x, y, torch.Generator().manual_seed(1), QUIET, 1200.0)
    assert not torch.equal(labels, y)  # it did warp
    # Away from borders (bilinear vs nearest), every pixel's grey value names its label.
    interior = torch.nn.functional.max_pool2d(labels[:, None].float(), 5, 1, 2)[:, 0] == (
        -torch.nn.functional.max_pool2d(-labels[:, None].float(), 5, 1, 2)[:, 0])
    torch.testing.assert_close(out[:, 0][interior], labels[interior].float() / 10.0,
                               atol=1e-4, rtol=0)


def test_random_intensities_replace_structure_values_and_stay_in_range() -> None:
    x, y = _batch()
    synth = RobustAugmentation(synth_probability=1.0, rotation_deg=0, elastic=0, scale=(1, 1),
                               anisotropy=0, mirror=False)
    out, labels = robust_augment(x, y, torch.Generator().manual_seed(2), synth, 1200.0)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    means = [float(out[i, 0][labels[i] == 3].mean()) for i in range(4)]
    assert max(means) - min(means) > 0.05  # each slice drew its own grey value


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RobustAugmentation(scale=(1.2, 0.8))
    with pytest.raises(ValueError):
        RobustAugmentation(synth_probability=1.5)
    x, y = _batch()
    with pytest.raises(ValueError, match="window width"):
        robust_augment(x, y, torch.Generator(), QUIET, 0.0)
