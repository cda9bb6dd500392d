"""MR phantoms on the randomised anatomy: seeded, T1 contrast per phantom, held-out tails,
and the CycleGAN's randomised training domains and MR crop augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from acqflow.plugins.ct_muscle.anatomy import randomised_anatomy, randomised_phantom
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.mr_muscle.data import Generator, synthetic_ct_slices, synthetic_mr_slices
from acqflow.plugins.mr_muscle.phantoms import Tissue
from acqflow.plugins.mr_muscle.randomised import (
    MR_HELD_OUT_VARIETY,
    MR_TRAINING_VARIETY,
    MrVariety,
    randomised_mr_phantom,
    randomised_tissue,
)
from acqflow.plugins.mr_muscle.translation import IntensityScale

SHAPE = (4, 96, 96)


def test_anatomy_is_that_of_the_ct_phantom_of_the_same_seed() -> None:
    labels, tissue = randomised_anatomy(31, SHAPE, 5.0)
    ct = randomised_phantom(31, SHAPE, 5.0)
    assert np.array_equal(labels, ct.labels)
    assert set(np.unique(tissue)) <= {0, 1, 2, 3, 4}
    # cortex is brighter than marrow, marrow brighter than muscle in the CT of that anatomy
    assert ct.hu[tissue == 3].mean() > ct.hu[tissue == 4].mean() > ct.hu[tissue == 2].mean()


def test_same_seed_same_phantom_and_t1_order() -> None:
    one = randomised_mr_phantom(10_000_007, shape=SHAPE, pixel_spacing_mm=5.0)
    two = randomised_mr_phantom(10_000_007, shape=SHAPE, pixel_spacing_mm=5.0)
    assert np.array_equal(one.signal, two.signal) and np.array_equal(one.labels, two.labels)
    table = default_label_table()
    labels, drawing = randomised_anatomy(10_000_007, SHAPE, 5.0)
    tissue = randomised_tissue(labels, drawing, table)
    mean = {t: float(one.signal[tissue == t].mean()) for t in Tissue if (tissue == t).any()}
    # T1: fat brightest, then fatty marrow, muscle darker, cortex and air darkest
    assert mean[Tissue.FAT] > mean[Tissue.MARROW] > mean[Tissue.MUSCLE] > mean[Tissue.CORTEX]
    assert mean[Tissue.AIR] < 0.1 * mean[Tissue.FAT]
    assert 800 < mean[Tissue.FAT] < 1200  # fat stored near the full scale, bias included


def test_contrast_is_drawn_per_phantom_and_held_out_tails_leave_the_training_range() -> None:
    rng = np.random.default_rng(0)
    muscle = [MR_HELD_OUT_VARIETY.draw("muscle", rng) for _ in range(400)]
    low, high = MR_TRAINING_VARIETY.muscle
    assert all(v < low or v > high for v in muscle)
    assert min(muscle) >= low - 0.25 * (high - low) and max(muscle) <= high + 0.25 * (high - low)
    table = default_label_table()
    ratios = []
    for seed in (10_000_001, 10_000_002, 10_000_003):
        phantom = randomised_mr_phantom(seed, shape=SHAPE, pixel_spacing_mm=5.0)
        labels, drawing = randomised_anatomy(seed, SHAPE, 5.0)
        tissue = randomised_tissue(labels, drawing, table)
        signal = phantom.signal
        ratios.append(signal[tissue == Tissue.MUSCLE].mean() / signal[tissue == Tissue.FAT].mean())
    assert max(ratios) - min(ratios) > 0.02
    with pytest.raises(ValueError):
        MrVariety(muscle=(0.5, 0.2))
    with pytest.raises(ValueError):
        MrVariety(tails=("not_a_range",))
    with pytest.raises(ValueError):
        randomised_mr_phantom(-1)


def test_randomised_training_domains() -> None:
    scale = IntensityScale()
    mr = synthetic_mr_slices(2, 3, scale, Generator.RANDOMISED)
    ct = synthetic_ct_slices(2, 3, scale, generator=Generator.RANDOMISED)
    assert mr.slices.shape == ct.slices.shape == (48, 160, 160)
    assert "randomised" in mr.source and "randomised" in ct.source
    assert mr.slices.min() >= -1.0 and mr.slices.max() <= 1.0
    # the CT domain is noise-free: air is exactly the lowest value
    assert np.isclose(np.median(ct.slices[:, :4, :4]), -1.0)
    fixed = synthetic_mr_slices(2, 3, scale)
    assert fixed.slices.shape[1:] == (128, 128)


def test_mr_crop_augmentation_changes_intensities_not_geometry() -> None:
    from acqflow.plugins.mr_muscle.training import _Crops

    slices = np.linspace(-1, 1, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    plain = _Crops(slices, 32, np.random.default_rng(1)).batch(6).numpy()
    recoloured = _Crops(slices, 32, np.random.default_rng(1), intensity=True).batch(6).numpy()
    again = _Crops(slices, 32, np.random.default_rng(1), intensity=True).batch(6).numpy()
    assert np.array_equal(recoloured, again)
    assert not np.allclose(plain, recoloured)
    assert recoloured.min() >= -1.0 and recoloured.max() <= 1.0
    # order along each row is kept (gain is smooth and positive, gamma monotonic)
    assert (np.diff(recoloured[:, 0, 16, :], axis=1) >= -0.05).all()
