"""The shipped weights: acceptance on generator settings training never saw, honest card."""

from __future__ import annotations

import pytest

from acqflow.models.store import bundled_weights_dir, load_weights, read_card
from acqflow.models.tile_cnn import TileCNN
from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
from acqflow.plugins.virtual_staining.data import LabelledImage, synthetic_images
from acqflow.plugins.virtual_staining.evaluation import ACCEPTANCE, HELD_OUT_ACCEPTANCE, evaluate_images
from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions
from acqflow.plugins.virtual_staining.labels import LabelOptions
from acqflow.plugins.virtual_staining.pipeline import MODEL_NAME
from acqflow.plugins.virtual_staining.randomised import HELD_OUT_VARIETY

FRESH_SEED = 424243  # never used for training or for the card's figures


@pytest.fixture(scope="module")
def held_out_images() -> list[LabelledImage]:
    """One experiment (24 fields x time points) from the generator settings training never saw."""
    return synthetic_images(1, LabelOptions(), FRESH_SEED, variety=HELD_OUT_VARIETY, model_pixel_um=0.65)


def test_demo_weights_meet_acceptance_on_held_out_generator_settings(
    held_out_images: list[LabelledImage],
) -> None:
    card = read_card(bundled_weights_dir(), MODEL_NAME)
    model = TileCNN(**card.arguments)
    load_weights(model, bundled_weights_dir(), MODEL_NAME)
    inference = card.training["inference"]
    assert card.training["data"]["seed"] != FRESH_SEED
    assert card.training["data"]["variety"] == "training" and card.training["pixel_size_um"] == 0.65
    metrics = evaluate_images(
        BlockPredictor(model, options=InferenceOptions(threshold=inference["threshold"])),
        held_out_images,
        card.training["labels"]["positive_fraction"],
        EfficiencyCalibration.from_card(inference),
    )
    for key, minimum in HELD_OUT_ACCEPTANCE.items():
        assert metrics[key] >= minimum, (key, metrics)
    assert metrics["efficiency_mean_abs_error"] <= 0.06, metrics


def test_card_records_command_seed_and_held_out_metrics() -> None:
    card = read_card(bundled_weights_dir(), MODEL_NAME)
    command = card.training["command"]
    assert command.startswith("acqflow train virtual-staining --synthetic ")
    assert f"--seed {card.training['seed']}" in command
    assert set(ACCEPTANCE) <= set(card.metrics)
    assert all(card.metrics[key] >= minimum for key, minimum in ACCEPTANCE.items())
    held_out = card.metrics["held_out_variety"]
    assert isinstance(held_out, dict) and held_out["images"] >= 72
    assert all(held_out[key] >= minimum for key, minimum in HELD_OUT_ACCEPTANCE.items())
    assert (bundled_weights_dir() / f"{MODEL_NAME}.safetensors").stat().st_size < 4_000_000
    assert card.training["split"]["test"]["experiments"]  # metrics come from held-out experiments
    assert not set(card.training["split"]["test"]["experiments"]) & set(
        card.training["split"]["train"]["experiments"]
    )
