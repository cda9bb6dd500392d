from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from acqflow.models.store import WeightsError
from acqflow.plugins.ct_muscle.inference import (
    GRID_LIMIT,
    InputGeometry,
    McOptions,
    Prediction,
    UncertaintyMeasure,
    body_size_mm,
    load_model,
    measure_structures,
    predict_volume,
)
from acqflow.plugins.ct_muscle.structures import default_label_table

if TYPE_CHECKING:
    from acqflow.models.unet import BayesianUNet


@pytest.fixture()
def model_and_geometry(tiny_weights: Path):  # type: ignore[no-untyped-def]
    model, _, geometry = load_model(tiny_weights)
    return model, geometry


@pytest.mark.parametrize("shape", [(3, 50, 70), (2, 128, 96), (1, 37, 41)])
def test_any_matrix_size_comes_back_in_its_own_size(model_and_geometry, shape) -> None:  # type: ignore[no-untyped-def]
    model, geometry = model_and_geometry
    hu = np.random.default_rng(0).normal(0, 300, size=shape).astype(np.float32)
    prediction = predict_volume(model, hu, (2.3, 1.7), geometry, McOptions(samples=3))
    assert prediction.labels.shape == shape and prediction.uncertainty.shape == shape
    assert prediction.labels.dtype == np.uint8


@pytest.mark.parametrize("measure", list(UncertaintyMeasure))
def test_uncertainty_measures_are_bounded(model_and_geometry, measure) -> None:  # type: ignore[no-untyped-def]
    model, geometry = model_and_geometry
    hu = np.random.default_rng(1).normal(0, 300, size=(2, 48, 48)).astype(np.float32)
    unc = predict_volume(model, hu, (6.0, 6.0), geometry,
                         McOptions(samples=4, measure=measure)).uncertainty
    assert unc.min() >= 0
    assert unc.max() <= math.log(23) + 1e-4
    assert unc.max() > 0


def test_batched_equals_one_slice_at_a_time_without_dropout(model_and_geometry) -> None:  # type: ignore[no-untyped-def]
    model, geometry = model_and_geometry
    for module in model.modules():
        if hasattr(module, "p") and hasattr(module, "always_on"):
            module.p = 0.0
    hu = np.random.default_rng(2).normal(0, 300, size=(5, 40, 56)).astype(np.float32)
    batched = predict_volume(model, hu, (3.0, 3.0), geometry, McOptions(samples=3))
    single = predict_volume(model, hu, (3.0, 3.0), geometry,
                            McOptions(samples=3, batch_images=1))
    np.testing.assert_array_equal(batched.labels, single.labels)
    np.testing.assert_allclose(batched.uncertainty, single.uncertainty, atol=1e-5)


def test_measure_structures_volumes_and_flags() -> None:
    table = default_label_table()
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, :2, :2] = 1  # 4 voxels of pelvis
    labels[1] = 5  # 16 voxels of biceps femoris
    unc = np.where(labels == 5, 0.5, 0.1).astype(np.float32)
    found = measure_structures(Prediction(labels, unc, UncertaintyMeasure.ENTROPY), table,
                               voxel_volume_mm3=250.0, threshold=0.3)
    assert [(m.key, m.voxels) for m in found] == [("pelvis", 4), ("biceps_femoris", 16)]
    assert found[0].volume_ml == pytest.approx(1.0)
    assert found[1].mean_uncertainty == pytest.approx(0.5)
    assert [m.review_required for m in found] == [False, True]


def test_agreement_counts_give_each_samples_dice_with_the_prediction() -> None:
    import torch

    from acqflow.plugins.ct_muscle.inference import _agreement, _agreement_counts

    labels = torch.tensor([[[1, 1, 2, 2]]])  # (n=1, H=1, W=4)
    samples = torch.tensor([[[[1, 1, 2, 2]]], [[[1, 2, 2, 2]]]])  # T=2
    counts = _agreement_counts(samples, labels, 3)
    assert counts.shape == (3, 2, 3)
    agreement = _agreement(counts)
    # label 1: sample 0 Dice 1, sample 1: 2*1/(1+2) = 2/3; label 2: 1 and 2*2/(3+2) = 4/5
    assert agreement == pytest.approx({1: (1 + 2 / 3) / 2, 2: (1 + 4 / 5) / 2})
    assert 0 not in agreement  # background is not a structure


def test_predictions_carry_agreement_and_structures_their_disagreement(model_and_geometry) -> None:  # type: ignore[no-untyped-def]
    from acqflow.plugins.ct_muscle.inference import ReviewScore

    model, geometry = model_and_geometry
    hu = np.random.default_rng(3).normal(0, 300, size=(3, 48, 48)).astype(np.float32)
    prediction = predict_volume(model, hu, (6.0, 6.0), geometry, McOptions(samples=4), seed="a")
    predicted = set(np.unique(prediction.labels)) - {0}
    assert predicted and set(prediction.agreement) == predicted
    assert all(0.0 <= v <= 1.0 for v in prediction.agreement.values())
    table = default_label_table()
    by_disagreement = measure_structures(prediction, table, 1.0, 0.05, score=ReviewScore.DISAGREEMENT)
    for m in by_disagreement:
        assert m.disagreement == pytest.approx(1.0 - prediction.agreement[m.label])
        assert m.review_required == (m.disagreement > 0.05)
    for module in model.modules():  # without dropout every sample is the prediction
        if hasattr(module, "p") and hasattr(module, "always_on"):
            module.p = 0.0
    still = predict_volume(model, hu, (6.0, 6.0), geometry, McOptions(samples=4), seed="a")
    assert all(v == pytest.approx(1.0) for v in still.agreement.values())


def test_load_model_checks_label_table(tiny_weights: Path) -> None:
    with pytest.raises(WeightsError, match="label table"):
        load_model(tiny_weights, expected=["femur"])


def test_geometry_round_trips_through_the_card() -> None:
    geometry = InputGeometry(2.5)
    assert InputGeometry.from_dict(geometry.to_dict()) == geometry



def _reference_predict(
    model: BayesianUNet, hu: np.ndarray, spacing: tuple[float, float], geometry: InputGeometry,
    samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The former batched implementation: repeat the input, full forward, resample all
    class probabilities to the matrix, argmax there."""
    import torch
    from torch.nn import functional as F

    from acqflow.plugins.ct_muscle.inference import preprocess_slices

    model.eval()
    model.set_mc_dropout(True)
    labels: list[torch.Tensor] = []
    entropy: list[torch.Tensor] = []
    with torch.inference_mode():
        for k in range(hu.shape[0]):
            x = preprocess_slices(torch.from_numpy(hu[k : k + 1]).float(), spacing, geometry)
            probs = torch.softmax(model(x.repeat(samples, 1, 1, 1)), dim=1)
            mean = probs.mean(dim=0, keepdim=True)
            ent = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=1, keepdim=True)
            size = (round(hu.shape[1] * spacing[0] / geometry.pixel_spacing_mm),
                    round(hu.shape[2] * spacing[1] / geometry.pixel_spacing_mm))
            matrix = (hu.shape[1], hu.shape[2])
            labels.append(F.interpolate(mean[:, :, : size[0], : size[1]], size=matrix,
                                        mode="bilinear", align_corners=False).argmax(dim=1))
            entropy.append(F.interpolate(ent[:, :, : size[0], : size[1]], size=matrix,
                                         mode="bilinear", align_corners=False)[:, 0])
    model.set_mc_dropout(False)
    return torch.cat(labels).numpy(), torch.cat(entropy).numpy()


def test_seeded_mc_agrees_with_the_former_implementation_on_a_phantom(tmp_path: Path) -> None:
    """Shared first block + labels resampled only along boundaries: same masks (same
    seed), so the same labels and uncertainty as repeating the input and resampling all
    class probabilities."""
    import torch

    from acqflow.models.store import bundled_weights_dir
    from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, generate_phantom

    model, _, geometry = load_model(bundled_weights_dir())
    spacing = (0.9, 0.9)
    hu = generate_phantom(11, PhantomOptions(shape=(3, 160, 176), pixel_spacing_mm=0.9,
                                             slice_spacing_mm=3.0)).hu
    # Both on the card's 3 mm grid: this compares two implementations of one computation.
    geometry = InputGeometry(geometry.pixel_spacing_mm, geometry.window, geometry.divisor)
    torch.manual_seed(3)
    ours = predict_volume(model, hu, spacing, geometry, McOptions(samples=6, batch_images=6))
    torch.manual_seed(3)
    labels, entropy = _reference_predict(model, hu, spacing, geometry, 6)
    assert (ours.labels == labels).mean() > 0.9999
    np.testing.assert_allclose(ours.uncertainty, entropy, atol=1e-4)
    assert len(np.unique(labels)) > 5  # boundaries exist to be resampled


@pytest.mark.parametrize("shape", [(2, 17, 23), (1, 40, 9)])
@pytest.mark.parametrize("matrix", [(64, 80), (11, 30)])
def test_resampled_labels_equal_argmax_of_resampled_probabilities(shape, matrix) -> None:  # type: ignore[no-untyped-def]
    import torch
    from torch.nn import functional as F

    from acqflow.plugins.ct_muscle.inference import _resampled_labels

    generator = torch.Generator().manual_seed(0)
    # Smooth class maps with real boundaries: upsampled low-resolution noise.
    coarse = torch.rand((shape[0], 6, 4, 4), generator=generator)
    mean = torch.softmax(8 * F.interpolate(coarse, size=shape[1:], mode="bilinear"), dim=1)
    expected = F.interpolate(mean, size=matrix, mode="bilinear", align_corners=False).argmax(1)
    got = _resampled_labels(mean.permute(0, 2, 3, 1).contiguous(), *matrix)
    assert torch.equal(got, expected)


def test_batch_scale_after_a_gpu_out_of_memory_shrinks_the_forward_batches(model_and_geometry) -> None:  # type: ignore[no-untyped-def]
    model, geometry = model_and_geometry
    forward_mc = model.forward_mc
    slices: list[int] = []

    def recording(x, samples, seeds=None):  # type: ignore[no-untyped-def]
        slices.append(int(x.shape[0]))
        return forward_mc(x, samples, seeds)

    model.forward_mc = recording
    hu = np.random.default_rng(3).normal(0, 300, size=(8, 32, 32)).astype(np.float32)
    largest = []
    for scale in (1.0, 0.5, 0.01):
        slices.clear()
        predict_volume(model, hu, (3.0, 3.0), geometry,
                       McOptions(samples=2, batch_images=8, batch_scale=scale))
        assert sum(slices) == 8
        largest.append(max(slices))
    assert largest == [4, 2, 1]  # slices per forward: 8 images / 2 samples, halved, never below 1
    with pytest.raises(ValueError, match="batch_scale"):
        McOptions(batch_scale=0.0)


def _devices() -> list[str]:
    import torch

    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", _devices())
def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(
    tiny_weights: Path, device: str
) -> None:
    import torch

    model, _, geometry = load_model(tiny_weights, device=device)
    hu = np.random.default_rng(4).normal(0, 300, size=(4, 40, 40)).astype(np.float32)
    options = McOptions(samples=4)
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    first = predict_volume(model, hu, (6.0, 6.0), geometry, options, seed="input-a")
    second = predict_volume(model, hu, (6.0, 6.0), geometry, options, seed="input-a")
    assert torch.equal(torch.get_rng_state(), cpu_state)
    if cuda_states:
        assert all(torch.equal(a, b)
                   for a, b in zip(torch.cuda.get_rng_state_all(), cuda_states, strict=True))
    assert first.labels.tobytes() == second.labels.tobytes()
    assert first.uncertainty.tobytes() == second.uncertainty.tobytes()
    other = predict_volume(model, hu, (6.0, 6.0), geometry, options, seed="input-b")
    assert other.uncertainty.tobytes() != first.uncertainty.tobytes()


def test_seeded_samples_of_a_slice_do_not_depend_on_its_batch(model_and_geometry) -> None:  # type: ignore[no-untyped-def]
    model, geometry = model_and_geometry
    hu = np.random.default_rng(5).normal(0, 300, size=(5, 40, 40)).astype(np.float32)
    batched = predict_volume(model, hu, (6.0, 6.0), geometry,
                             McOptions(samples=3, batch_images=15), seed="s")
    single = predict_volume(model, hu, (6.0, 6.0), geometry,
                            McOptions(samples=3, batch_images=3), seed="s")
    np.testing.assert_allclose(batched.uncertainty, single.uncertainty, atol=1e-5)
    unseeded = predict_volume(model, hu, (6.0, 6.0), geometry, McOptions(samples=3))
    assert np.abs(unseeded.uncertainty - single.uncertainty).max() > 1e-3


def _disc_volume(radius_mm: float, spacing: float, matrix: int, table: bool = False) -> np.ndarray:
    """Air with a fat disc of ``radius_mm`` (and a 3 mm table top below it) per slice."""
    yy, xx = (np.mgrid[0:matrix, 0:matrix] - (matrix - 1) / 2) * spacing
    hu = np.full((6, matrix, matrix), -1000.0, dtype=np.float32)
    hu[:, np.hypot(yy, xx) <= radius_mm] = -100.0
    if table:
        hu[:, (yy > radius_mm + 10) & (yy < radius_mm + 13)] = 200.0
    return hu


@pytest.mark.parametrize(("radius", "spacing"), [(60.0, 0.9), (150.0, 1.875), (40.0, 3.0)])
def test_body_size_is_the_root_of_the_cross_section(radius: float, spacing: float) -> None:
    size = body_size_mm(_disc_volume(radius, spacing, 256, table=True), (spacing, spacing), -280.0)
    assert size == pytest.approx(math.sqrt(math.pi) * radius, rel=0.06)


def test_no_body_has_no_size_and_keeps_the_grid() -> None:
    air = np.full((3, 64, 64), -1000.0, dtype=np.float32)
    assert body_size_mm(air, (2.0, 2.0), -280.0) is None
    geometry = InputGeometry(body_size_px=90.0)
    assert geometry.for_volume(air, (2.0, 2.0)) is geometry


def test_a_small_body_gets_the_finer_grid_that_brings_it_to_size() -> None:
    geometry = InputGeometry(pixel_spacing_mm=3.0, body_size_px=90.0)
    hu = _disc_volume(80.0, 1.0, 400)  # sqrt(area) = 142 mm: 47 pixels at 3 mm
    adapted = geometry.for_volume(hu, (1.0, 1.0))
    size = body_size_mm(hu, (1.0, 1.0), -280.0)
    assert size is not None
    assert size / adapted.pixel_spacing_mm == pytest.approx(90.0, rel=0.01)
    assert adapted.window == geometry.window and adapted.divisor == geometry.divisor
    assert adapted.body_size_px is None  # applied: segmenting with it changes nothing more
    assert adapted.for_volume(hu, (1.0, 1.0)) is adapted
    tiny = _disc_volume(15.0, 0.5, 400)
    assert geometry.for_volume(tiny, (0.5, 0.5)).pixel_spacing_mm == pytest.approx(3.0 / GRID_LIMIT)


def test_a_large_body_and_a_geometry_without_body_size_keep_the_grid() -> None:
    hu = _disc_volume(200.0, 1.875, 256)  # 354 mm: 118 pixels at 3 mm
    geometry = InputGeometry(pixel_spacing_mm=3.0, body_size_px=90.0)
    assert geometry.for_volume(hu, (1.875, 1.875)) is geometry
    plain = InputGeometry()
    assert plain.for_volume(_disc_volume(30.0, 1.0, 128), (1.0, 1.0)) is plain


def test_body_size_goes_through_the_card() -> None:
    geometry = InputGeometry(pixel_spacing_mm=2.0, body_size_px=85.0)
    assert InputGeometry.from_dict(geometry.to_dict()) == geometry
    assert "body_size_px" not in InputGeometry().to_dict()
    with pytest.raises(ValueError, match="body_size_px"):
        InputGeometry(body_size_px=0.0)


def test_small_bodies_are_segmented_on_the_finer_grid(model_and_geometry) -> None:  # type: ignore[no-untyped-def]
    """The prediction comes back on the input's matrix either way, and differs from the
    fixed grid's because the network saw the body at another scale."""
    from dataclasses import replace

    model, geometry = model_and_geometry
    hu = _disc_volume(50.0, 1.5, 128)
    hu[:, 50:70, 50:70] = 40.0
    fixed = predict_volume(model, hu, (1.5, 1.5), geometry, McOptions(samples=2), seed="a")
    sized = predict_volume(model, hu, (1.5, 1.5), replace(geometry, body_size_px=120.0),
                           McOptions(samples=2), seed="a")
    assert sized.labels.shape == fixed.labels.shape == hu.shape
    assert not np.array_equal(sized.uncertainty, fixed.uncertainty)
