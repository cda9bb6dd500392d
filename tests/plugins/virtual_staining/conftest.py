"""Fixtures for the virtual-staining tests: one CPU thread, small generated data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from acqflow.plugins.virtual_staining.data import LabelledImage, synthetic_images
from acqflow.plugins.virtual_staining.labels import LabelOptions


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    """The suite shares small machines: keep torch on one thread, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def fresh_images() -> list[LabelledImage]:
    """Two generated experiments that no shipped or test model was trained on."""
    return synthetic_images(2, LabelOptions(), seed=424242, size=256)
