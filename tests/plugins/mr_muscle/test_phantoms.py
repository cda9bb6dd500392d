from __future__ import annotations

import numpy as np
import pytest

from acqflow.plugins.ct_muscle.phantoms import generate_phantom
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.mr_muscle.data import synthetic_ct_slices, synthetic_mr_slices
from acqflow.plugins.mr_muscle.phantoms import (
    MR_ANATOMY_SEED_OFFSET,
    MrPhantomOptions,
    Tissue,
    generate_mr_phantom,
    tissue_map,
)
from acqflow.plugins.mr_muscle.translation import IntensityScale

SMALL = MrPhantomOptions(shape=(6, 64, 64))


def test_same_seed_same_phantom_and_other_seed_differs() -> None:
    a, b = generate_mr_phantom(3, SMALL), generate_mr_phantom(3, SMALL)
    c = generate_mr_phantom(4, SMALL)
    assert np.array_equal(a.signal, b.signal) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    assert a.anatomy_seed == MR_ANATOMY_SEED_OFFSET + 3


def test_t1_contrast_fat_bright_muscle_intermediate_cortex_dark() -> None:
    table = default_label_table()
    opts = MrPhantomOptions(shape=(8, 96, 96), bias_strength=0.0, noise=0.0)
    phantom = generate_mr_phantom(5, opts)
    bones = np.isin(phantom.labels, [table.by_key(k).label for k in ("pelvis", "femur", "sacrum")])
    muscle = float(np.median(phantom.signal[(phantom.labels > 0) & ~bones]))
    background = phantom.signal[phantom.labels == 0]
    fat = float(np.median(background[background > 0]))
    assert fat > 2.0 * muscle > 0
    femur = phantom.signal[phantom.labels == table.by_key("femur").label]
    assert femur.min() < 0.3 * muscle  # cortical rim is dark
    assert femur.max() > 1.5 * muscle  # fatty marrow is bright


def test_bias_field_and_rician_noise() -> None:
    clean = generate_mr_phantom(2, MrPhantomOptions(shape=(6, 64, 64), bias_strength=0.0, noise=0.0))
    noisy = generate_mr_phantom(2, MrPhantomOptions(shape=(6, 64, 64), bias_strength=0.4, noise=0.03))
    assert np.array_equal(clean.labels, noisy.labels)
    air = clean.signal == 0
    assert noisy.signal.min() >= 0  # magnitude image: Rician, never negative
    assert noisy.signal[air].mean() > 0  # the Rician noise floor of air is positive
    ratio = noisy.signal[~air] / clean.signal[~air]
    assert ratio.std() > 0.05  # smooth multiplicative inhomogeneity


def test_anatomy_not_paired_with_ct_training_phantoms() -> None:
    """An MR phantom's labels differ from the CT phantom with the same index, and from its own CT seed
    drawing after the MR warp."""
    mr = generate_mr_phantom(0, MrPhantomOptions(shape=(6, 64, 64)))
    from acqflow.plugins.ct_muscle.phantoms import PhantomOptions

    ct_same_index = generate_phantom(0, PhantomOptions(shape=(6, 64, 64)))
    assert (mr.labels != ct_same_index.labels).mean() > 0.01


def test_tissue_map_classes() -> None:
    table = default_label_table()
    from acqflow.plugins.ct_muscle.phantoms import PhantomOptions

    ct = generate_phantom(1, PhantomOptions(shape=(10, 64, 64), noise_hu=0.0))
    tissue = tissue_map(ct.hu, ct.labels, table)
    assert set(np.unique(tissue)) >= {Tissue.AIR, Tissue.FAT, Tissue.MUSCLE, Tissue.CORTEX, Tissue.MARROW}
    assert np.all(tissue[ct.hu < -500] == Tissue.AIR)


def test_synthetic_slices_are_normalised() -> None:
    scale = IntensityScale()
    mr = synthetic_mr_slices(1, 0, scale)
    ct = synthetic_ct_slices(1, 0, scale)
    for part in (mr, ct):
        assert part.slices.min() >= -1.0 and part.slices.max() <= 1.0
        assert part.slices.shape[1:] == (128, 128)


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError):
        MrPhantomOptions(shape=(4, 16, 16))
    with pytest.raises(ValueError):
        generate_mr_phantom(-1)
    with pytest.raises(ValueError):
        synthetic_mr_slices(1, MR_ANATOMY_SEED_OFFSET, IntensityScale())
