from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from acqflow.models.cyclegan import PatchDiscriminator, ResnetGenerator
from acqflow.plugins.mr_muscle.losses import (
    GradientMode,
    ImagePool,
    LossWeights,
    gradient_consistency,
    least_squares,
)
from acqflow.plugins.mr_muscle.training import NetworkOptions, OutputOptions, ScheduleOptions, train_cyclegan


def test_generator_keeps_size_and_range() -> None:
    gen = ResnetGenerator(base_channels=4, residual_blocks=1)
    out = gen(torch.randn(2, 1, 36, 44))
    assert out.shape == (2, 1, 36, 44)
    assert out.abs().max() <= 1.0
    with pytest.raises(ValueError):
        gen(torch.randn(1, 1, 30, 32))


def test_discriminator_scores_patches() -> None:
    disc = PatchDiscriminator(base_channels=4, layers=3)
    assert disc(torch.randn(2, 1, 64, 64)).shape == (2, 1, 6, 6)


def test_signed_gradient_consistency_is_zero_for_same_edges_and_two_for_inverted() -> None:
    image = torch.rand(3, 1, 32, 32)
    signed = GradientMode.SIGNED
    assert float(gradient_consistency(image, 2.0 * image + 0.5, signed)) == pytest.approx(0.0, abs=1e-5)
    assert float(gradient_consistency(image, -image, signed)) == pytest.approx(2.0, abs=1e-5)
    assert 0.8 < float(gradient_consistency(image, torch.rand(3, 1, 32, 32), signed)) < 1.2


def test_magnitude_gradient_consistency_ignores_polarity_but_not_position() -> None:
    image = torch.zeros(2, 1, 32, 32)
    image[:, :, 8:20, 8:20] = 1.0
    moved = torch.roll(image, shifts=6, dims=-1)
    assert float(gradient_consistency(image, 1.0 - image)) == pytest.approx(0.0, abs=1e-4)
    assert float(gradient_consistency(image, moved)) > 0.5


def test_least_squares_targets() -> None:
    ones = torch.ones(2, 1, 4, 4)
    assert float(least_squares(ones, True)) == 0.0
    assert float(least_squares(ones, False)) == 1.0


def test_image_pool_returns_history_after_filling() -> None:
    pool = ImagePool(4, random.Random(0))
    first = torch.zeros(4, 1, 8, 8)
    assert torch.equal(pool.query(first), first)
    mixed = pool.query(torch.ones(16, 1, 8, 8))
    assert 0 < int((mixed.flatten(1).mean(1) == 0).sum()) <= 4
    assert torch.equal(ImagePool(0, random.Random(0)).query(first), first)


def test_loss_weights_validate() -> None:
    with pytest.raises(ValueError):
        LossWeights(cycle=-1.0)


def _slices(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(4, 40, 40)).astype(np.float32)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    net = NetworkOptions(base_channels=4, residual_blocks=1, discriminator_channels=4, discriminator_layers=2)
    full_sched = ScheduleOptions(iterations=6, batch_size=2, crop=32, pool_size=3, seed=5)
    full = train_cyclegan(
        _slices(1),
        _slices(2),
        net,
        full_sched,
        OutputOptions(tmp_path / "full", checkpoint_every=3, sample_every=3, progress=False),
    )
    part_dir = tmp_path / "part"
    # The first half writes its checkpoint at iteration 3 (the schedule of 6 is kept).
    half = ScheduleOptions(iterations=6, batch_size=2, crop=32, pool_size=3, seed=5)
    interrupted = OutputOptions(part_dir, checkpoint_every=3, sample_every=0, progress=False)
    _interrupt_after(3, _slices(1), _slices(2), net, half, interrupted)
    resumed = train_cyclegan(_slices(1), _slices(2), net, half, interrupted)
    assert resumed.resumed_from == 3
    for a, b in zip(
        full.generator.state_dict().values(), resumed.generator.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "full" / "samples").iterdir()) == [
        "iteration_000003.png",
        "iteration_000006.png",
    ]


class _Stop(Exception):
    pass


def _interrupt_after(
    n: int, mr: np.ndarray, ct: np.ndarray, net: NetworkOptions, sched: ScheduleOptions, out: OutputOptions
) -> None:
    """Run until the checkpoint of iteration ``n`` exists, then stop as a killed run would."""
    import acqflow.plugins.mr_muscle.training as training

    original = training._save_checkpoint

    def save_then_stop(path: Path, gan: object, iteration: int, extra: dict[str, object]) -> None:
        original(path, gan, iteration, extra)  # type: ignore[arg-type]
        if iteration == n:
            raise _Stop

    training._save_checkpoint = save_then_stop
    try:
        with pytest.raises(_Stop):
            train_cyclegan(mr, ct, net, sched, out)
    finally:
        training._save_checkpoint = original
