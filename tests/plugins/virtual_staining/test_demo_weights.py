"""The shipped demo weights: acceptance on freshly generated held-out data, honest card."""

from __future__ import annotations

from models.store import bundled_weights_dir, load_weights, read_card
from models.tile_cnn import TileCNN
from plugins.virtual_staining.data import LabelledImage
from plugins.virtual_staining.evaluation import ACCEPTANCE, evaluate_images
from plugins.virtual_staining.inference import BlockPredictor, InferenceOptions
from plugins.virtual_staining.pipeline import MODEL_NAME


def test_demo_weights_meet_acceptance_on_fresh_data(fresh_images: list[LabelledImage]) -> None:
    card = read_card(bundled_weights_dir(), MODEL_NAME)
    model = TileCNN(**card.arguments)
    load_weights(model, bundled_weights_dir(), MODEL_NAME)
    threshold = card.training["inference"]["threshold"]
    assert card.training["data"]["seed"] != 424242  # the fixture's seed: data never trained on
    metrics = evaluate_images(
        BlockPredictor(model, options=InferenceOptions(threshold=threshold)),
        fresh_images,
        card.training["labels"]["positive_fraction"],
    )
    for key, minimum in ACCEPTANCE.items():
        assert metrics[key] >= minimum, (key, metrics)
    assert metrics["dice"] >= 0.7


def test_card_records_command_seed_and_held_out_metrics() -> None:
    card = read_card(bundled_weights_dir(), MODEL_NAME)
    command = card.training["command"]
    assert command.startswith("acqflow train virtual-staining --synthetic ")
    assert f"--seed {card.training['seed']}" in command
    assert set(ACCEPTANCE) <= set(card.metrics)
    assert all(card.metrics[key] >= minimum for key, minimum in ACCEPTANCE.items())
    assert (bundled_weights_dir() / f"{MODEL_NAME}.safetensors").stat().st_size < 4_000_000
    assert card.training["split"]["test"]["experiments"]  # metrics come from held-out experiments
    assert not set(card.training["split"]["test"]["experiments"]) & set(
        card.training["split"]["train"]["experiments"]
    )
