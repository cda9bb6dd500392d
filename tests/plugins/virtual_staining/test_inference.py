from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from acqflow.models.tile_cnn import TileCNN
from acqflow.plugins.virtual_staining.inference import (
    BlockPredictor,
    InferenceOptions,
    loop_block_probabilities,
)


def _model(block: int = 32, depth: int = 3) -> TileCNN:
    torch.manual_seed(0)
    model = TileCNN(block, depth, width=4, dropout=0.2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_var is not None
                module.running_var.fill_(0.3)
    return model.eval()


def _phase(shape: tuple[int, int], dtype: type = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 200 if dtype == np.uint8 else 4000, size=shape).astype(dtype)


@pytest.mark.parametrize(("block", "depth", "stride"), [(32, 3, 16), (24, 3, 8), (16, 2, 4)])
def test_whole_image_matches_block_loop(block: int, depth: int, stride: int) -> None:
    model = _model(block, depth)
    predictor = BlockPredictor(model, options=InferenceOptions(stride=stride))
    padded, _ = predictor.pad(_phase((70, 90)))
    every = stride // predictor.unit
    whole = torch.sigmoid(predictor.block_grid(padded)).numpy()[::every, ::every]
    np.testing.assert_allclose(whole, loop_block_probabilities(model, padded, stride), atol=1e-5)


@pytest.mark.parametrize("shape", [(1000, 1300), (40, 37), (8, 8), (256, 256)])
def test_any_size_gives_full_resolution_map(shape: tuple[int, int]) -> None:
    prediction = BlockPredictor(_model()).predict(_phase(shape, np.uint8))
    assert prediction.probability.shape == shape
    assert prediction.probability.dtype == np.float32
    assert prediction.probability.min() >= 0.0 and prediction.probability.max() <= 1.0
    assert prediction.block_probability.shape == (math.ceil(shape[0] / 32), math.ceil(shape[1] / 32))
    assert prediction.full_blocks().shape == (shape[0] // 32, shape[1] // 32)
    assert 0 <= prediction.blocks_positive <= prediction.blocks_total


def test_counted_blocks_are_the_blocks_at_the_image_origin() -> None:
    model = _model()
    predictor = BlockPredictor(model)
    phase = _phase((96, 128))
    prediction = predictor.predict(phase)
    padded, margin = predictor.pad(phase)
    block = padded[margin + 32 : margin + 64, margin + 64 : margin + 96]
    with torch.no_grad():
        single = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(block))[None, None]))
    assert prediction.block_probability[1, 2] == pytest.approx(float(single), abs=1e-5)


def test_tiling_does_not_change_the_result() -> None:
    model = _model()
    phase = _phase((300, 410))
    big = BlockPredictor(model, options=InferenceOptions(tile_size=4096)).predict(phase)
    small = BlockPredictor(model, options=InferenceOptions(tile_size=64)).predict(phase)
    np.testing.assert_allclose(big.probability, small.probability, atol=1e-5)
    np.testing.assert_allclose(big.block_probability, small.block_probability, atol=1e-5)


def test_map_is_smooth_blend_of_overlapping_blocks() -> None:
    prediction = BlockPredictor(_model(), options=InferenceOptions(stride=8)).predict(_phase((128, 128)))
    steps = np.abs(np.diff(prediction.probability, axis=1))
    assert steps.max() < 0.2  # no block-edge jumps as with non-overlapping tiles


@pytest.mark.parametrize(("block", "depth", "stride"), [(32, 3, 16), (16, 2, 4)])
def test_map_is_the_window_weighted_mean_of_the_blocks_covering_each_pixel(
    block: int, depth: int, stride: int
) -> None:
    """The blend against its definition, block by block in plain numpy."""
    model = _model(block, depth)
    predictor = BlockPredictor(model, options=InferenceOptions(stride=stride))
    phase = _phase((75, 61))
    padded, margin = predictor.pad(phase)
    probabilities = loop_block_probabilities(model, padded, stride)
    ramp = np.sin(np.pi * (np.arange(block) + 0.5) / block)
    window = np.outer(ramp, ramp)
    total = np.zeros(padded.shape)
    weight = np.zeros(padded.shape)
    for (i, j), value in np.ndenumerate(probabilities):
        y, x = i * stride, j * stride
        total[y : y + block, x : x + block] += value * window
        weight[y : y + block, x : x + block] += window
    expected = (total / weight)[margin : margin + 75, margin : margin + 61]
    np.testing.assert_allclose(predictor.predict(phase).probability, expected, atol=1e-5)


def test_invalid_inference_options() -> None:
    with pytest.raises(ValueError, match="multiple"):
        BlockPredictor(_model(), options=InferenceOptions(stride=12))
    with pytest.raises(ValueError, match="multiple"):
        BlockPredictor(_model(), options=InferenceOptions(stride=64))
    with pytest.raises(ValueError, match="threshold"):
        InferenceOptions(threshold=1.0)
