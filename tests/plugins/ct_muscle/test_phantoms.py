from __future__ import annotations

import numpy as np

from acqflow.plugins.common.volume import series_to_volume
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series, generate_phantom

SMALL = PhantomOptions(shape=(12, 96, 96), pixel_spacing_mm=4.0, slice_spacing_mm=8.0)


def test_same_seed_same_phantom_other_seed_other_anatomy() -> None:
    a, b, c = (generate_phantom(s, SMALL) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.hu, b.hu)
    assert (a.labels != c.labels).mean() > 0.01


def test_all_structures_appear_and_hu_are_realistic() -> None:
    phantom = generate_phantom(5, PhantomOptions(noise_hu=0.0))
    assert set(np.unique(phantom.labels)) == set(range(23))
    hu, labels = phantom.hu, phantom.labels
    assert np.median(hu[labels == 0]) in (-1000.0, -100.0)
    assert (hu == -1000.0).any() and (hu == -100.0).any()
    muscle = hu[labels >= 4]
    assert 30 <= np.median(muscle) <= 60
    bone = hu[np.isin(labels, [1, 3])]
    assert np.median(bone) >= 700
    femur = hu[labels == 2]
    assert femur.max() >= 1000 and np.median(femur) >= 300


def test_noise_is_added() -> None:
    noisy = generate_phantom(5, SMALL)
    clean = generate_phantom(5, PhantomOptions(SMALL.shape, 4.0, 8.0, noise_hu=0.0))
    assert 5 < float(np.std(noisy.hu - clean.hu)) < 30


def test_demo_series_converts_to_the_phantom_volume() -> None:
    datasets = demo_ct_series(7, SMALL)
    assert all(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" for ds in datasets)
    volume = series_to_volume(datasets)
    phantom = generate_phantom(7, SMALL)
    # Slices step towards the feet, so the volume (ascending z) is the phantom reversed.
    expected = np.clip(np.rint(phantom.hu[::-1] + 1024), 0, 65535) - 1024
    np.testing.assert_allclose(volume.array, expected)
    assert volume.geometry.spacing == (8.0, 4.0, 4.0)
    assert demo_ct_series(7, SMALL)[0].SOPInstanceUID == datasets[0].SOPInstanceUID
