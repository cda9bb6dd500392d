"""Tiny untrained weights for pipeline mechanics (not quality) tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from acqflow.models.store import ModelCard, save_weights
from acqflow.models.unet import BayesianUNet
from acqflow.plugins.ct_muscle.inference import HuWindow, InputGeometry
from acqflow.plugins.ct_muscle.structures import default_label_table

TINY_ARGS: dict[str, Any] = {"in_channels": 1, "num_classes": 23, "base_channels": 4, "depth": 3,
             "dropout": 0.2}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ct_muscle_weights")
    card = ModelCard(
        name="ct_muscle", version="0.0.1-test", architecture="BayesianUNet",
        arguments=dict(TINY_ARGS),
        training={"input": InputGeometry(6.0, HuWindow(200.0, 1200.0), 8).to_dict(),
                  "labels": [s.key for s in default_label_table()]},
    )
    save_weights(BayesianUNet(**TINY_ARGS), card, directory)
    return directory
