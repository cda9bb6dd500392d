"""Robust augmentation: seeded, labels move with the image, intensities stay in range."""

from __future__ import annotations

import pytest
import torch

from acqflow.plugins.ct_muscle.augmentation import RobustAugmentation, robust_augment


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


def _tissue_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Air, fat (both label 0), and a bone (label 1) of cortex around marrow, in window units
    of the 200 / 1200 HU window: air -1000, fat -100, cortex 1200, marrow 300 HU. Regions
    are sampled 8 px inside their borders: the warp always shifts by up to 6.4 px."""
    def unit(hu: float) -> float:
        return (hu + 400.0) / 1200.0

    y = torch.zeros(6, 128, 128, dtype=torch.long)
    x = torch.full((6, 1, 128, 128), unit(-1000.0))
    x[:, :, 16:112, 16:112] = unit(-100.0)
    y[:, 40:100, 40:100] = 1
    x[:, :, 40:100, 40:100] = unit(1200.0)
    x[:, :, 60:80, 60:80] = unit(300.0)
    return x.clamp(0, 1), y


AIR, FAT = (slice(0, 8), slice(0, 8)), (slice(24, 32), slice(24, 32))
CORTEX, MARROW = (slice(48, 52), slice(48, 92)), (slice(68, 72), slice(68, 72))
STILL = dict(rotation_deg=0, elastic=0, scale=(1, 1), anisotropy=0, mirror=False, bias_hu=0,
             gamma=(1, 1), noise_hu_max=0, blur_probability=0, low_resolution_probability=0,
             structure_offset_hu=0)


def _means(out: torch.Tensor, region: tuple[slice, slice]) -> torch.Tensor:
    return out[:, 0, region[0], region[1]].mean(dim=(1, 2))


def test_tissue_classes_give_air_fat_cortex_and_marrow_their_own_intensities() -> None:
    x, y = _tissue_batch()
    aug = RobustAugmentation(synth_probability=1.0, tissue_classes=True, **STILL)  # type: ignore[arg-type]
    out, _ = robust_augment(x, y, torch.Generator().manual_seed(5), aug, 1200.0, 200.0)
    air, fat, cortex, marrow = (_means(out, r) for r in (AIR, FAT, CORTEX, MARROW))
    assert float(air.max()) <= 0.12 + 0.05  # air stays dark (its spread adds a little noise)
    # fat and marrow draw values of their own, not the air's or the cortex's
    assert float(fat.std()) > 0.1 and float((fat - air).abs().min()) > 1e-3
    assert float((marrow - cortex).abs().max()) > 0.1
    # without tissue classes, the background keeps its value and the bone is one class
    plain = RobustAugmentation(synth_probability=1.0, **STILL)  # type: ignore[arg-type]
    out2, _ = robust_augment(x, y, torch.Generator().manual_seed(5), plain, 1200.0, 200.0)
    torch.testing.assert_close(_means(out2, FAT), _means(x, FAT))
    assert float((_means(out2, CORTEX) - _means(out2, MARROW)).abs().max()) < 0.05


def test_shared_muscle_mean_and_gain_field() -> None:
    y = torch.zeros(8, 64, 64, dtype=torch.long)
    y[:, 10:30, 10:30] = 5
    y[:, 34:54, 34:54] = 9
    x = torch.full((8, 1, 64, 64), 0.375)
    x[:, 0][y == 0] = 0.25
    shared = RobustAugmentation(synth_probability=1.0, tissue_classes=True,
                                shared_muscle_probability=1.0, **STILL)  # type: ignore[arg-type]
    out, _ = robust_augment(x, y, torch.Generator().manual_seed(3), shared, 1200.0, 200.0)
    gaps = [abs(float(out[i, 0, 12:28, 12:28].mean() - out[i, 0, 36:52, 36:52].mean())) for i in range(8)]
    assert max(gaps) < 0.15  # one mean, jitter 0.03 per muscle
    gained = RobustAugmentation(multiplicative_bias=0.35, synth_probability=0.0,
                                **STILL)  # type: ignore[arg-type]
    out, _ = robust_augment(x, y, torch.Generator().manual_seed(3), gained, 1200.0, 200.0)
    inside = out[:, 0, 12:28, 12:28]
    assert float((inside.amax(dim=(1, 2)) / inside.amin(dim=(1, 2))).max()) > 1.02  # a smooth gain
    with pytest.raises(ValueError):
        RobustAugmentation(air_intensity=(0.5, 0.2))
    with pytest.raises(ValueError):
        RobustAugmentation(multiplicative_bias=-1)


def test_default_robust_draws_do_not_depend_on_the_window_centre() -> None:
    """The contrast-agnostic options draw nothing when off: the default augmentation is
    what it was (the shipped weights' card records it)."""
    x, y = _batch()
    one = robust_augment(x, y, torch.Generator().manual_seed(9), RobustAugmentation(), 1200.0, 200.0)
    two = robust_augment(x, y, torch.Generator().manual_seed(9), RobustAugmentation(), 1200.0, -50.0)
    assert torch.equal(one[0], two[0])
