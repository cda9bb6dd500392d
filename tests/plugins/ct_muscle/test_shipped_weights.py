"""Acceptance of the demo weights that ship in models/weights, on fresh held-out phantoms.

The seeds here are used by no training or validation run (training uses seeds from
``seed * 100000``), so this is a held-out measurement, not a training-set one.
"""

from __future__ import annotations

import pytest
import torch

from models.store import bundled_weights_dir
from plugins.ct_muscle.datasets import phantom_volumes
from plugins.ct_muscle.evaluation import evaluate_model
from plugins.ct_muscle.inference import McOptions, load_model
from plugins.ct_muscle.phantoms import PhantomOptions
from plugins.ct_muscle.structures import default_label_table

HELD_OUT_SEEDS = [31_337_001, 31_337_002]

pytestmark = pytest.mark.slow


def test_shipped_weights_meet_the_acceptance_criteria() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    table = default_label_table()
    model, card, geometry = load_model(bundled_weights_dir(), expected=[s.key for s in table])
    assert card.training["seed"] is not None and "command" in card.training
    report = evaluate_model(model, geometry, phantom_volumes(HELD_OUT_SEEDS), table,
                            McOptions(samples=10),
                            slice_spacing_mm=PhantomOptions().slice_spacing_mm)
    assert report.mean_dice >= 0.85, report.as_dict()
    assert report.uncertainty_ratio > 1.0, report.as_dict()
    assert report.uncertainty_wrong > report.uncertainty_correct
