from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from acqflow.models.store import WeightsError
from acqflow.plugins.mr_muscle.translation import (
    IntensityScale,
    ct_to_unit,
    load_generator,
    normalise_mr,
    translate_volume,
    unit_to_ct,
)


def test_ct_scale_round_trips_and_spreads_soft_tissue() -> None:
    scale = IntensityScale()
    hu = np.array([-1000.0, -100.0, 40.0, 350.0, 1200.0, 1500.0])
    unit = ct_to_unit(hu, scale)
    assert unit.min() == -1.0 and unit.max() == 1.0
    assert np.allclose(unit_to_ct(unit, scale), hu, atol=1e-3)
    fat, muscle = unit[1], unit[2]
    assert muscle - fat > 0.3  # soft tissue gets most of the range
    assert ct_to_unit(np.array([-3000.0, 4000.0]), scale).tolist() == [-1.0, 1.0]


def test_mr_normalisation_and_its_errors() -> None:
    volume = np.random.default_rng(0).uniform(0, 1000, size=(3, 16, 16))
    unit = normalise_mr(volume, IntensityScale())
    assert unit.min() >= -1.0 and unit.max() == 1.0
    with pytest.raises(ValueError):
        normalise_mr(np.zeros((2, 8, 8)), IntensityScale())
    with pytest.raises(ValueError):
        IntensityScale(ct_knots_hu=(0.0, -1.0), ct_knots_unit=(-1.0, 1.0))


def test_translate_volume_keeps_matrix_for_other_spacings(tiny_weights: Path) -> None:
    generator, card, scale = load_generator(tiny_weights)
    assert card.name == "mr_to_ct"
    mr = np.random.default_rng(1).uniform(0, 800, size=(3, 50, 70)).astype(np.float32)
    for spacing in ((3.0, 3.0), (1.5, 2.2)):
        hu = translate_volume(generator, mr, spacing, scale, batch_slices=2)
        assert hu.shape == mr.shape and hu.dtype == np.float32
        assert hu.min() >= -1000.0 and hu.max() <= 1500.0
    with pytest.raises(ValueError):
        translate_volume(generator, mr[0], (3.0, 3.0), scale)


def test_load_generator_refuses_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError):
        load_generator(tmp_path)


def test_translation_is_slice_independent(tiny_weights: Path) -> None:
    """Instance norm per image: a slice translates the same alone or in a batch."""
    torch.manual_seed(0)
    generator, _, scale = load_generator(tiny_weights)
    mr = np.random.default_rng(2).uniform(0, 800, size=(4, 32, 32)).astype(np.float32)
    mr[:, :4, :4] = 800.0  # the same percentile for the volume and for each slice
    together = translate_volume(generator, mr, (3.0, 3.0), scale, batch_slices=4)
    alone = translate_volume(generator, mr[1:2], (3.0, 3.0), scale, batch_slices=1)
    assert np.allclose(together[1], alone[0], atol=0.1)  # HU
