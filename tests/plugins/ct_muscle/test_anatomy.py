"""The domain-randomised phantoms: seeded, every anatomy model draws the zone's structures,
and the held-out variety reaches settings the training variety never draws."""

from __future__ import annotations

import numpy as np
import pytest

from acqflow.plugins.ct_muscle.anatomy import (
    HELD_OUT_VARIETY,
    TRAINING_VARIETY,
    Anatomy,
    Variety,
    randomised_phantom,
    randomised_volumes,
)
from acqflow.plugins.ct_muscle.structures import default_label_table

SHAPE = (6, 96, 96)


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    one = randomised_phantom(5, SHAPE, 5.0)
    again = randomised_phantom(5, SHAPE, 5.0)
    other = randomised_phantom(6, SHAPE, 5.0)
    np.testing.assert_array_equal(one.hu, again.hu)
    np.testing.assert_array_equal(one.labels, again.labels)
    assert not np.array_equal(one.labels, other.labels)


@pytest.mark.parametrize("anatomy", list(Anatomy))
def test_every_anatomy_model_draws_bones_and_muscles_with_muscle_hu(anatomy: Anatomy) -> None:
    table = default_label_table()
    phantom = randomised_phantom(11, (12, 128, 128), 4.0, variety=Variety(anatomies=(anatomy,)))
    present = set(np.unique(phantom.labels)) - {0}
    names = {table.by_label(int(label)).key for label in present}
    assert {"femur", "pelvis"} <= names
    assert len(names - {"femur", "pelvis", "sacrum"}) >= 12  # muscles of all three zones
    muscle = np.isin(phantom.labels, [table.by_key(k).label for k in ("gluteus_maximus",
                                                                      "vastus_medialis")])
    femur = phantom.labels == table.by_key("femur").label
    assert -60 < float(np.median(phantom.hu[muscle])) < 130
    assert float(np.median(phantom.hu[femur])) > 120


def test_the_anatomy_models_differ_for_the_same_seed() -> None:
    drawn = [randomised_phantom(3, SHAPE, 5.0, variety=Variety(anatomies=(a,))).labels
             for a in Anatomy]
    for i in range(len(drawn)):
        for j in range(i + 1, len(drawn)):
            assert np.mean(drawn[i] != drawn[j]) > 0.01


def test_held_out_variety_draws_outside_the_training_ranges() -> None:
    rng = np.random.default_rng(0)
    low, high = TRAINING_VARIETY.body_scale
    scales = [HELD_OUT_VARIETY.draw("body_scale", rng) for _ in range(200)]
    assert all(s < low or s > high for s in scales)
    assert min(scales) < low and max(scales) > high
    assert Anatomy.ELLIPSES not in TRAINING_VARIETY.anatomies
    assert HELD_OUT_VARIETY.anatomies == (Anatomy.ELLIPSES,)


def test_body_size_is_physical_not_a_fraction_of_the_matrix() -> None:
    coarse = randomised_phantom(8, (4, 64, 64), 7.5)  # 480 mm field
    fine = randomised_phantom(8, (4, 160, 160), 3.0)  # the same field, finer
    area = [(p.labels > 0).sum() * p.pixel_spacing_mm ** 2 for p in (coarse, fine)]
    assert area[0] == pytest.approx(area[1], rel=0.15)


def test_volumes_and_refusals() -> None:
    volumes = randomised_volumes(range(2), shape=(3, 64, 64), pixel_spacing_mm=7.5)
    assert [v.hu.shape for v in volumes] == [(3, 64, 64)] * 2 and volumes[0].spacing == (7.5, 7.5)
    with pytest.raises(ValueError, match="cannot draw"):
        randomised_phantom(1, (3, 16, 16))
