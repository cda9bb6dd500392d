from __future__ import annotations

import pytest
import torch

from acqflow.models.tile_cnn import TileCNN, TileCNNConfig, head_size


def _randomised(model: TileCNN) -> TileCNN:
    """Non-trivial batch-norm statistics so that eval mode is really exercised."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize(("block", "depth"), [(16, 2), (24, 3), (32, 3), (48, 2), (64, 4)])
def test_fully_convolutional_grid_equals_block_by_block(block: int, depth: int) -> None:
    torch.manual_seed(1)
    model = _randomised(TileCNN(block, depth, width=4, dropout=0.3))
    image = torch.randn(1, 1, block + 5 * model.step + 3, block + 3 * model.step + 1)
    with torch.no_grad():
        grid = model.block_logits(image)[0]
        blocks = image.unfold(2, block, model.step).unfold(3, block, model.step)
        rows, cols = blocks.shape[2:4]
        singles = model(blocks.permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, block, block))
    assert grid.shape == (rows, cols)
    torch.testing.assert_close(grid, singles.reshape(rows, cols), atol=1e-5, rtol=1e-5)


def test_forward_rejects_wrong_block_size_and_small_images() -> None:
    model = TileCNN(32, 3).eval()
    with pytest.raises(ValueError, match="32x32"):
        model(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="smaller than one block"):
        model.block_logits(torch.zeros(1, 1, 31, 100))


def test_config_validates_itself() -> None:
    with pytest.raises(ValueError, match="multiple"):
        TileCNNConfig(block_size=36, depth=3)
    with pytest.raises(ValueError, match="too small"):
        TileCNNConfig(block_size=16, depth=4)
    with pytest.raises(ValueError, match="dropout"):
        TileCNNConfig(dropout=1.0)
    assert head_size(32, 3) == 2
    assert TileCNNConfig().to_dict()["block_size"] == 32


def test_largest_searched_network_stays_small() -> None:
    model = TileCNN(48, 3, width=16, dropout=0.0)
    assert model.parameter_count() * 4 < 2_000_000  # float32 bytes: a few MB at most


@pytest.mark.parametrize(("block", "depth", "every"), [(24, 2, 1), (24, 2, 3), (32, 3, 2)])
def test_fused_inference_form_gives_the_same_logits(block: int, depth: int, every: int) -> None:
    torch.manual_seed(2)
    model = _randomised(TileCNN(block, depth, width=6, dropout=0.5))
    image = torch.randn(1, 1, 150, 131)
    with torch.no_grad():
        dense = model.block_logits(image)[0]
        sparse = model.fused().block_logits(image, every)[0]
    torch.testing.assert_close(sparse, dense[::every, ::every], atol=1e-5, rtol=1e-5)
