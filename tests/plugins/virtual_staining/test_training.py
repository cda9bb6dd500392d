from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from acqflow.plugins.virtual_staining.data import LabelledImage, split_images, synthetic_images
from acqflow.plugins.virtual_staining.evaluation import ACCEPTANCE, evaluate_images
from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions
from acqflow.plugins.virtual_staining.labels import LabelOptions, block_fractions
from acqflow.plugins.virtual_staining.training import (
    SearchSpace,
    TrainingSettings,
    TrialParams,
    make_blocks,
    run_study,
    train_trial,
)

PARAMS = TrialParams(
    learning_rate=3e-3,
    depth=3,
    width=8,
    dropout=0.1,
    weight_decay=1e-4,
    batch_size=128,
    class_weighting=False,
    block_size=32,
)
FIXED = SearchSpace(
    learning_rate=(3e-3, 3e-3),
    depth=(3,),
    width=(8,),
    dropout=(0.1, 0.1),
    weight_decay=(1e-4, 1e-4),
    batch_size=(128,),
    class_weighting=(False,),
    block_size=(32,),
)


@pytest.fixture(scope="module")
def small() -> list[LabelledImage]:
    return synthetic_images(3, LabelOptions(), seed=5, size=128)


def test_blocks_and_labels_line_up(small: list[LabelledImage]) -> None:
    blocks = make_blocks(small[:2], 32, 16, 0.5)
    assert blocks.x.shape == (2 * 49, 1, 32, 32)
    fractions = block_fractions(small[1].mask, 32, 16).ravel()
    np.testing.assert_array_equal(blocks.y[49:].numpy(), (fractions >= 0.5).astype(np.float32))
    np.testing.assert_allclose(blocks.x[49 + 8, 0].numpy(), small[1].normalized()[16:48, 16:48])


def test_resumed_training_equals_uninterrupted(small: list[LabelledImage], tmp_path: Path) -> None:
    train, validation = make_blocks(small[:12], 32, 16, 0.5), make_blocks(small[12:24], 32, 32, 0.5)
    settings = TrainingSettings(max_epochs=3, patience=5, blocks_per_epoch=256, seed=3)
    straight = train_trial(PARAMS, train, validation, settings)
    checkpoint = tmp_path / "trial.pt"
    first = TrainingSettings(max_epochs=2, patience=5, blocks_per_epoch=256, seed=3)
    train_trial(PARAMS, train, validation, first, checkpoint)
    resumed = train_trial(PARAMS, train, validation, settings, checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for key, value in straight.state.items():
        torch.testing.assert_close(resumed.state[key], value)


def test_study_resumes_and_requeues_interrupted_trials(small: list[LabelledImage], tmp_path: Path) -> None:
    split = split_images(small, seed=0)
    settings = TrainingSettings(trials=1, max_epochs=1, blocks_per_epoch=128, seed=1)
    run_study(split, settings, tmp_path, FIXED)
    study = optuna.load_study(study_name="virtual-staining", storage=f"sqlite:///{tmp_path / 'study.db'}")
    crashed = study.ask({"depth": optuna.distributions.CategoricalDistribution([3])})
    result = run_study(
        split, TrainingSettings(trials=2, max_epochs=1, blocks_per_epoch=128, seed=1), tmp_path, FIXED
    )
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 2 and states[crashed.number] == "FAIL"
    assert result.trials_completed == 2
    requeued = study.get_trials()[-1]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert requeued.system_attrs.get("fixed_params") == {"depth": 3}  # same parameters, tried again


@pytest.mark.slow
def test_tiny_model_meets_acceptance_on_held_out_data(
    fresh_images: list[LabelledImage], tmp_path: Path
) -> None:
    """Train with a fixed seed, score only images the model never saw (another experiment)."""
    images = synthetic_images(4, LabelOptions(), seed=17, size=256)
    split = split_images(images, seed=17)
    settings = TrainingSettings(trials=1, max_epochs=6, patience=3, blocks_per_epoch=6144, seed=17)
    best = run_study(split, settings, tmp_path, FIXED).best
    model = best.params.network()
    model.load_state_dict(best.state)
    predictor = BlockPredictor(model, options=InferenceOptions(threshold=best.threshold))
    for held_out in (split.test, fresh_images):
        metrics = evaluate_images(predictor, held_out, 0.5)
        for key, minimum in ACCEPTANCE.items():
            assert metrics[key] >= minimum, (key, metrics)
        assert metrics["dice"] >= 0.7
    train_experiments = {i.experiment for i in split.train}
    assert not train_experiments & {i.experiment for i in split.test}
