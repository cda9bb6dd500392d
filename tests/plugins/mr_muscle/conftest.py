from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from pydicom import Dataset

from acqflow.models.cyclegan import ResnetGenerator
from acqflow.models.store import ModelCard, save_weights
from acqflow.models.unet import BayesianUNet
from acqflow.plugins.ct_muscle.inference import InputGeometry
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.mr_muscle.translation import IntensityScale


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained, tiny mr_to_ct and ct_muscle weights: for DICOM plumbing, not for quality."""
    directory = tmp_path_factory.mktemp("tiny-weights")
    torch.manual_seed(0)
    table = default_label_table()
    gen_args = {
        "in_channels": 1,
        "out_channels": 1,
        "base_channels": 4,
        "residual_blocks": 1,
        "downsamplings": 2,
    }
    save_weights(
        ResnetGenerator(**gen_args),
        ModelCard(
            name="mr_to_ct",
            version="0.0-test",
            architecture="ResnetGenerator",
            arguments=gen_args,
            training={"input": IntensityScale().to_dict()},
        ),
        directory,
    )
    unet_args: dict[str, Any] = {
        "in_channels": 1,
        "num_classes": table.num_classes,
        "base_channels": 4,
        "depth": 2,
        "dropout": 0.1,
    }
    save_weights(
        BayesianUNet(**unet_args),
        ModelCard(
            name="ct_muscle",
            version="0.0-test",
            architecture="BayesianUNet",
            arguments=unet_args,
            training={"input": InputGeometry(divisor=4).to_dict(), "labels": [s.key for s in table]},
        ),
        directory,
    )
    return directory


def dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    """Error lines of dciodvfy for ``ds`` written to ``path`` (skips when dciodvfy is absent)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
