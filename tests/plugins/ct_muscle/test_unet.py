from __future__ import annotations

import pytest
import torch

from acqflow.models.unet import BayesianUNet


def _model() -> BayesianUNet:
    torch.manual_seed(0)
    return BayesianUNet(in_channels=1, num_classes=5, base_channels=4, depth=3, dropout=0.3)


def test_output_shape_and_size_check() -> None:
    model = _model().eval()
    assert model(torch.rand(2, 1, 32, 48)).shape == (2, 5, 32, 48)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 1, 30, 32))


def test_mc_dropout_samples_differ_only_when_enabled() -> None:
    model = _model().eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.set_mc_dropout(True)
        assert not torch.equal(model(x), model(x))
        model.set_mc_dropout(False)
        assert torch.equal(model(x), model(x))


def test_batch_members_are_independent() -> None:
    """GroupNorm: a slice gives the same output alone as in a batch (batched MC is exact)."""
    model = _model().eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_dropout_in_encoder_and_decoder_blocks() -> None:
    from acqflow.models.unet import McDropout

    model = _model()
    assert all(any(isinstance(m, McDropout) for m in block.modules())
               for block in [*model.encoders, model.bottleneck, *model.decoders])


def test_demo_size_is_a_few_megabytes() -> None:
    model = BayesianUNet(1, 23, base_channels=16, depth=3)
    megabytes = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    assert 0.5 < megabytes < 10


def test_forward_mc_equals_forward_of_repeated_input_without_dropout() -> None:
    model = _model().eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_mc(x, 4), model(x.repeat(4, 1, 1, 1)),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        model.forward_mc(x, 0)


def test_forward_mc_draws_the_same_masks_as_forward_of_repeated_input() -> None:
    """The shared prefix holds no randomness: same seed, same samples (sample-major)."""
    model = _model().eval()
    model.set_mc_dropout(True)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        shared = model.forward_mc(x, 5)
        torch.manual_seed(7)
        repeated = model(x.repeat(5, 1, 1, 1))
        assert not torch.equal(shared[:3], shared[3:6])  # the samples do differ
    torch.testing.assert_close(shared, repeated, rtol=1e-4, atol=1e-5)
    cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with torch.no_grad():
        torch.manual_seed(7)
        shared_cl = cl.forward_mc(x.contiguous(memory_format=torch.channels_last), 5)
    torch.testing.assert_close(shared_cl, repeated, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("images", [1, 3])
def test_forward_mc_matches_repeated_forward_at_every_depth(depth: int, images: int) -> None:
    """The factored first-block convolutions and the folded classifier dropout hold for
    any depth and several images per call, in both memory layouts."""
    torch.manual_seed(depth)
    model = BayesianUNet(1, 4, base_channels=8, depth=depth, dropout=0.4).eval()
    model.set_mc_dropout(True)
    x = torch.rand(images, 1, 32, 48)
    with torch.no_grad():
        torch.manual_seed(11)
        repeated = model(x.repeat(6, 1, 1, 1))
        torch.manual_seed(11)
        plain = model.forward_mc(x, 6)
        cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        torch.manual_seed(11)
        last = cl.forward_mc(x.contiguous(memory_format=torch.channels_last), 6)
    assert plain.shape == repeated.shape == (6 * images, 4, 32, 48)
    torch.testing.assert_close(plain, repeated, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, repeated, rtol=1e-4, atol=1e-4)
