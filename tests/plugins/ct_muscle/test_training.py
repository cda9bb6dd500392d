from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acqflow.plugins.ct_muscle.datasets import phantom_volumes
from acqflow.plugins.ct_muscle.evaluation import average_surface_distance
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.ct_muscle.training import (
    AppearanceAugmentation,
    NetworkOptions,
    TrainingOptions,
    dice_per_class,
    slices_for_training,
    train_network,
)

TINY = PhantomOptions(shape=(3, 64, 64), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)
FAST = TrainingOptions(epochs=2, batch_size=3, size=64, network=NetworkOptions(4, 3, 0.1))


def test_dice_per_class() -> None:
    truth = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2]])
    assert dice_per_class(pred, truth, 4) == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}


def test_assd_of_shifted_cube() -> None:
    a = np.zeros((12, 12, 12), bool)
    b = np.zeros_like(a)
    a[3:8, 3:8, 3:8] = True
    b[3:8, 3:8, 4:9] = True
    assert average_surface_distance(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert 0.0 < average_surface_distance(a, b, (1.0, 1.0, 2.0)) <= 2.0
    assert average_surface_distance(a, np.zeros_like(a), (1, 1, 1)) == float("inf")


def test_slices_resampled_to_model_grid_and_fitted() -> None:
    volumes = phantom_volumes([1], TINY)
    x, y = slices_for_training(volumes, FAST.geometry, 32)
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 32, 32)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) <= set(range(23))


def test_small_bodies_are_trained_on_the_grid_inference_uses() -> None:
    """With body_size_px a small body is resampled onto the finer grid inference gives
    it, so it fills that many model pixels (square root of its area) in training too."""
    from acqflow.plugins.ct_muscle.inference import InputGeometry
    from acqflow.plugins.ct_muscle.training import LabelledVolume

    yy, xx = (np.mgrid[0:128, 0:128] - 63.5) * 1.5
    body = np.hypot(yy, xx) <= 60.0  # sqrt(area) 106 mm: 35 pixels at 3 mm
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)[None].repeat(2, axis=0)
    volume = LabelledVolume(hu=hu, labels=body.astype(np.uint8)[None].repeat(2, axis=0),
                            spacing=(1.5, 1.5))
    _, plain = slices_for_training([volume], InputGeometry(), 96)
    _, sized = slices_for_training([volume], InputGeometry(body_size_px=60.0), 96)
    assert np.sqrt((plain[0] > 0).sum()) == pytest.approx(106.3 / 3.0, rel=0.05)
    assert np.sqrt((sized[0] > 0).sum()) == pytest.approx(60.0, rel=0.05)


def test_training_is_seeded_and_resumable(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    table = default_label_table()
    train, val = phantom_volumes([1, 2], TINY), phantom_volumes([3], TINY)
    full = train_network(train, val, table, FAST)
    one = TrainingOptions(epochs=1, batch_size=3, size=64, network=FAST.network)
    train_network(train, val, table, one, checkpoint_dir=tmp_path)
    resumed = train_network(train, val, table, FAST, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key])
    assert resumed.validation_dice == full.validation_dice


def test_appearance_augmentation_adds_bounded_noise_and_blur() -> None:
    from acqflow.plugins.ct_muscle.training import _appearance

    x = torch.zeros(64, 1, 48, 48)
    x[:, :, :, 24:] = 0.5  # a vertical edge
    generator = torch.Generator().manual_seed(0)
    none = _appearance(x, AppearanceAugmentation(0.0, 0.0, 0.0), 1200.0, generator)
    torch.testing.assert_close(none, x)  # zero strength changes nothing
    out = _appearance(x, AppearanceAugmentation(60.0, 1.5, 1.0), 1200.0, generator)
    flat = out[:, 0, 4:44, 4:16] - x[:, 0, 4:44, 4:16]  # away from the edge: noise only
    spread = flat.flatten(1).std(dim=1)
    assert float(spread.max()) <= 60.0 / 1200.0 * 1.2  # at most noise_hu_max, in window units
    assert float(spread.min()) < float(spread.max()) / 3  # drawn per slice, not fixed
    step = (out[:, 0, :, 25] - out[:, 0, :, 22]).mean(dim=1)  # the edge, softened by blur
    assert float(step.min()) < 0.45 and float(step.max()) > 0.3
    with pytest.raises(ValueError, match="probability"):
        AppearanceAugmentation(blur_probability=1.5)


def test_fine_tuning_starts_from_the_given_weights() -> None:
    torch.set_num_threads(1)
    table = default_label_table()
    train, val = phantom_volumes([1], TINY), phantom_volumes([3], TINY)
    base = train_network(train, val, table, FAST).model.state_dict()
    still = TrainingOptions(epochs=1, batch_size=3, size=64, network=FAST.network,
                            learning_rate=1e-12, appearance=AppearanceAugmentation())
    tuned = train_network(train, val, table, still, initial=base).model.state_dict()
    fresh = train_network(train, val, table, still).model.state_dict()
    weight = "encoders.0.0.weight"
    torch.testing.assert_close(tuned[weight], base[weight])
    assert not torch.allclose(fresh[weight], base[weight])


@pytest.mark.slow
def test_train_and_evaluate_commands(tmp_path: Path) -> None:
    import typer

    from acqflow.plugins.ct_muscle.commands import evaluate, train

    app = typer.Typer()
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    runner = CliRunner()
    out = tmp_path / "weights"
    result = runner.invoke(app, ["train", "--output", str(out), "--phantoms", "1",
                                 "--validation", "1", "--epochs", "1", "--seed", "3",
                                 "--elastic", "0.04", "--elastic-cells", "7",
                                 "--body-size-px", "70"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "ct_muscle.json").read_text())
    assert card["training"]["seed"] == 3 and card["sha256"]
    assert card["training"]["input"]["body_size_px"] == 70.0
    tuned = tmp_path / "tuned"
    result = runner.invoke(app, ["train", "--output", str(tuned), "--phantoms", "1",
                                 "--validation", "1", "--epochs", "1", "--init-weights", str(out)])
    assert result.exit_code == 0, result.output
    # Fine-tuning keeps the body size the weights were trained and are used with.
    assert json.loads((tuned / "ct_muscle.json").read_text())["training"]["input"][
        "body_size_px"] == 70.0
    robust = card["training"]["augmentation"]["robust"]
    assert (robust["elastic"], robust["elastic_cells"]) == (0.04, 7)
    result = runner.invoke(app, ["train", "--output", str(tmp_path / "basic"), "--phantoms", "1",
                                 "--validation", "1", "--epochs", "1", "--augmentation", "basic",
                                 "--elastic", "0.04"])
    assert result.exit_code == 2 and "--elastic" in result.output
    result = runner.invoke(app, ["evaluate", "--weights-dir", str(out), "--phantoms", "1",
                                 "--samples", "2", "--write-card"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"dice", "assd_mm", "uncertainty_ratio_wrong_to_correct",
                           "pearson_structure_uncertainty_vs_dice", "mean_dice",
                           "review_threshold_fitted", "review_threshold_in_use"}
    assert "held_out" in json.loads((out / "ct_muscle.json").read_text())["metrics"]


def test_dicom_cases_load_as_labelled_volumes(tmp_path: Path) -> None:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.common.volume import series_to_volume
    from acqflow.plugins.ct_muscle.datasets import load_dicom_cases
    from acqflow.plugins.ct_muscle.inference import Prediction, UncertaintyMeasure, measure_structures
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series, generate_phantom
    from acqflow.plugins.ct_muscle.reporting import OutputContext, dicom_outputs

    table = default_label_table()
    datasets = demo_ct_series(5, TINY)
    volume = series_to_volume(datasets)
    truth = generate_phantom(5, TINY).labels[::-1]  # the demo series steps feet-wards
    prediction = Prediction(truth.copy(), np.zeros(truth.shape, np.float32),
                            UncertaintyMeasure.ENTROPY)
    context = OutputContext("case", "1.0.0", ModelCard("ct_muscle", "1", "BayesianUNet", {}),
                            table, UncertaintyMeasure.ENTROPY, 1.0, "content")
    outputs = dicom_outputs(context, volume, truth, prediction.uncertainty,
                            measure_structures(prediction, table, 1.0, 1.0))
    case = tmp_path / "case1"
    case.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(case / f"ct{i}.dcm", enforce_file_format=True)
    seg = next(o.dataset for o in outputs if o.name == "ct-muscle-seg.dcm")
    seg.save_as(case / "seg.dcm", enforce_file_format=True)
    (loaded,) = load_dicom_cases(tmp_path, table)
    np.testing.assert_array_equal(loaded.labels, truth)
    np.testing.assert_allclose(loaded.hu, volume.array)
    assert loaded.spacing == (TINY.pixel_spacing_mm, TINY.pixel_spacing_mm)
