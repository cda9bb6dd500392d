"""Acceptance of the shipped demo weights on freshly generated held-out MR phantoms.

The phantoms come from the held-out anatomy range (seeds >= 20,000,000), apart from the
CycleGAN's MR and CT training phantoms, and are generated here, at test time.
"""

from __future__ import annotations

import pytest

from models.store import bundled_weights_dir
from plugins.ct_muscle.structures import default_label_table

pytestmark = pytest.mark.slow


def test_translation_beats_direct_baseline_on_held_out_phantoms() -> None:
    import torch

    from plugins.ct_muscle.inference import load_model
    from plugins.mr_muscle.evaluation import EvaluationOptions, evaluate_held_out
    from plugins.mr_muscle.translation import load_generator

    torch.manual_seed(0)
    weights = bundled_weights_dir()
    if not (weights / "ct_muscle.json").is_file() or not (weights / "mr_to_ct.json").is_file():
        pytest.fail("shipped weights models/weights/{ct_muscle,mr_to_ct} are missing")
    table = default_label_table()
    generator, _, scale = load_generator(weights)
    unet, _, geometry = load_model(weights, "cpu", [s.key for s in table])
    # Indices 100+ are not the ones `acqflow evaluate mr-muscle` reports by default.
    options = EvaluationOptions(phantoms=2, first=100, shape=(16, 128, 128), samples=2)
    report = evaluate_held_out(generator, scale, unet, geometry, table, options)
    print(f"held-out mean Dice: translated {report.translated_mean:.3f}, baseline {report.baseline_mean:.3f}")
    assert report.translated_mean >= 0.75
    assert report.translated_mean - report.baseline_mean >= 0.2
