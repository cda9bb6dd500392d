"""The domain-randomised generator, its optics and the scale and efficiency helpers."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
from acqflow.plugins.virtual_staining.data import LabelledImage, at_model_scale
from acqflow.plugins.virtual_staining.imaging import rescale_plane
from acqflow.plugins.virtual_staining.labels import LabelOptions, binarize
from acqflow.plugins.virtual_staining.metrics import dice
from acqflow.plugins.virtual_staining.optics import PhaseOptics, phase_contrast
from acqflow.plugins.virtual_staining.randomised import (
    HELD_OUT_VARIETY,
    TRAINING_VARIETY,
    RandomisedSpec,
    generate_randomised,
)

SPEC = RandomisedSpec(experiments=1, wells=2, positions=1, timepoints=3, seed=5)


def test_same_spec_same_images_and_another_seed_differs() -> None:
    first, again = list(generate_randomised(SPEC)), list(generate_randomised(SPEC))
    assert len(first) == len(again) == 6
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.phase, b.phase) and np.array_equal(a.gfp, b.gfp)
    other = next(generate_randomised(RandomisedSpec(experiments=1, wells=2, positions=1, seed=6)))
    assert first[0].phase.shape != other.phase.shape or not np.array_equal(first[0].phase, other.phase)


def test_cardiomyocyte_areas_grow_nested_and_gfp_labels_them() -> None:
    images = list(generate_randomised(SPEC))
    by_field: dict[str, list[np.ndarray]] = {}
    for image in images:
        by_field.setdefault(str(image.metadata.well), []).append(image.mask)
        assert image.phase.dtype in (np.uint8, np.uint16)
        assert 0.3 <= image.metadata.pixel_size_um[0] <= 1.3  # type: ignore[index]
        if image.mask.mean() > 0.05:  # Otsu on the GFP image recovers the cardiomyocytes
            assert dice(binarize(image.gfp, LabelOptions()), image.mask) > 0.8
    for masks in by_field.values():
        assert masks[0].sum() <= masks[1].sum() <= masks[2].sum()
        assert not (masks[0] & ~masks[2]).any()  # regions only grow


def test_held_out_variety_leaves_the_training_ranges() -> None:
    outside = []
    for f in fields(TRAINING_VARIETY):
        train, held = getattr(TRAINING_VARIETY, f.name), getattr(HELD_OUT_VARIETY, f.name)
        if train != held:
            outside.append(f.name)
    assert len(outside) >= 10
    assert HELD_OUT_VARIETY.bit_depths == (12,) and 12 in TRAINING_VARIETY.bit_depths


def test_phase_contrast_has_halo_and_shade_off() -> None:
    phi = np.zeros((128, 128), dtype=np.float32)
    phi[34:94, 34:94] = 1.0  # one large flat cell
    optics = PhaseOptics(ring_sigma=6.0, transmission=0.3, retardation=-np.pi / 2, blur=0.5)
    image = phase_contrast(phi, np.ones_like(phi), optics)
    assert abs(float(image[5, 5]) - 1.0) < 0.05  # background at 1
    edge, centre, halo = float(image[64, 36]), float(image[64, 64]), float(image[64, 31])
    assert edge < 0.8  # positive phase contrast: the cell's edge is dark
    assert halo > 1.1  # a bright halo just outside it
    assert abs(centre - 1.0) < abs(edge - 1.0)  # shade-off: the interior fades back


def test_rescale_to_the_model_scale_keeps_the_field_of_view() -> None:
    plane = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    assert rescale_plane(plane, (0.65, 0.65), 0.65) is plane
    half = rescale_plane(plane, (0.325, 0.325), 0.65)
    assert half.shape == (150, 100)
    mask = np.zeros((300, 200), dtype=bool)
    mask[:150] = True
    image = at_model_scale(LabelledImage("x", "E", "f", plane, mask), (1.3, 1.3), 0.65)
    assert image.phase.shape == image.mask.shape == (600, 400)
    assert image.measured_efficiency == pytest.approx(0.5, abs=0.01)


def test_efficiency_calibration_fits_the_low_end_and_round_trips() -> None:
    measured = np.linspace(0.02, 0.8, 20)
    predicted = 0.1 + 0.8 * measured  # over-estimates the low end
    calibration = EfficiencyCalibration.fit(predicted.tolist(), measured.tolist())
    assert calibration.apply(float(predicted[0])) == pytest.approx(measured[0], abs=0.01)
    assert EfficiencyCalibration.from_card({"efficiency_calibration": calibration.to_dict()}) == calibration
    assert EfficiencyCalibration.from_card({}) == EfficiencyCalibration()
    assert EfficiencyCalibration.fit([0.2, 0.2, 0.2], [0.1, 0.3, 0.5]) == EfficiencyCalibration()
    with pytest.raises(ValueError):
        EfficiencyCalibration(0.0, -1.0)
