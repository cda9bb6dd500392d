"""CycleGAN training on unpaired 2-D axial MR and CT slices.

Two ResNet generators (MR to CT and back) and two PatchGAN discriminators learn from
random crops of slices already normalised to [-1, 1] (:mod:`acqflow.plugins.mr_muscle.data`).
Adam with linear learning-rate decay to zero over the last part of the run, an image
pool per discriminator, checkpoints that resume the run exactly (networks, optimisers,
schedules, pools and random states), sample grids written as PNG while training goes,
and a rich progress bar.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.mr_muscle.losses import ImagePool, LossWeights, gradient_consistency, least_squares

if TYPE_CHECKING:
    import torch
    from torch import nn

    from acqflow.models.cyclegan import ResnetGenerator

__all__ = ["NetworkOptions", "OutputOptions", "ScheduleOptions", "TrainingResult", "train_cyclegan"]

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class NetworkOptions:
    """Widths of the generators and discriminators."""

    base_channels: int = 12
    residual_blocks: int = 4
    discriminator_channels: int = 16
    discriminator_layers: int = 4  # receptive field 142 px: the whole 128 px slice
    # Instance norm would make the discriminators nearly blind to global intensity
    # inversion; in our runs both generators then drifted to inverted images.
    discriminator_instance_norm: bool = False

    def generator_arguments(self) -> dict[str, int]:
        return {
            "in_channels": 1,
            "out_channels": 1,
            "base_channels": self.base_channels,
            "residual_blocks": self.residual_blocks,
            "downsamplings": 2,
        }


@dataclass(frozen=True)
class ScheduleOptions:
    """Iterations, batch, crop size, Adam learning rate and where its linear decay starts."""

    iterations: int = 2000
    batch_size: int = 1
    crop: int = 128
    learning_rate: float = 2e-4
    decay_from: float = 0.5  # fraction of the iterations run at the full learning rate
    pool_size: int = 50
    seed: int = 0
    mr_augmentation: bool = False  # per MR crop: a random gain field and gamma (_Crops)

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.crop < 16 or self.crop % 4:
            raise ValueError("iterations, batch >= 1 and crop >= 16, a multiple of 4, required")
        if not 0.0 <= self.decay_from <= 1.0 or self.learning_rate <= 0:
            raise ValueError("decay_from must be in [0, 1] and the learning rate positive")


@dataclass(frozen=True)
class OutputOptions:
    """Where checkpoints and sample grids go, and how often."""

    work_dir: Path
    checkpoint_every: int = 200
    sample_every: int = 100
    resume: bool = True
    progress: bool = True


@dataclass
class TrainingResult:
    generator: ResnetGenerator
    iterations: int
    resumed_from: int
    losses: dict[str, float] = field(default_factory=dict)  # mean of the last 50 iterations


class _CycleGan:
    """The four networks, their optimisers and schedules, as one checkpointable unit."""

    def __init__(self, net: NetworkOptions, sched: ScheduleOptions) -> None:
        import torch

        from acqflow.models.cyclegan import PatchDiscriminator, ResnetGenerator, init_weights

        torch.manual_seed(sched.seed)
        self.g_mr_ct = ResnetGenerator(**net.generator_arguments())
        self.g_ct_mr = ResnetGenerator(**net.generator_arguments())
        disc = (1, net.discriminator_channels, net.discriminator_layers, net.discriminator_instance_norm)
        self.d_ct = PatchDiscriminator(*disc)
        self.d_mr = PatchDiscriminator(*disc)
        for module in self.modules():
            init_weights(module)
        gens = [*self.g_mr_ct.parameters(), *self.g_ct_mr.parameters()]
        discs = [*self.d_ct.parameters(), *self.d_mr.parameters()]
        self.opt_g = torch.optim.Adam(gens, lr=sched.learning_rate, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(discs, lr=sched.learning_rate, betas=(0.5, 0.999))
        keep = int(sched.iterations * sched.decay_from)
        span = max(1, sched.iterations - keep)

        def factor(step: int) -> float:
            return 1.0 - max(0, step - keep) / span

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)

    def modules(self) -> list[nn.Module]:
        return [self.g_mr_ct, self.g_ct_mr, self.d_ct, self.d_mr]

    def state(self) -> dict[str, Any]:
        names = ("g_mr_ct", "g_ct_mr", "d_ct", "d_mr", "opt_g", "opt_d", "sched_g", "sched_d")
        return {name: getattr(self, name).state_dict() for name in names}

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


# MR intensity augmentation: log-amplitude of the gain field (a receive-coil profile on
# top of the phantoms' own) and the gamma range, drawn per crop.
MR_GAIN_MAX = 0.3
MR_GAMMA = (0.75, 1.33)


class _Crops:
    """Random square crops of random slices of one domain, drawn from a numpy generator;
    with ``intensity``, each crop (in [-1, 1]) also gets a smooth random gain and gamma."""

    def __init__(self, slices: np.ndarray, crop: int, rng: np.random.Generator,
                 intensity: bool = False) -> None:
        if slices.ndim != 3 or min(slices.shape[1:]) < crop:
            raise ValueError(f"need (n, rows, cols) slices of at least {crop} px, got {slices.shape}")
        self.slices = slices
        self.crop = crop
        self.rng = rng
        self.intensity = intensity

    def _recolour(self, crop: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        coarse = self.rng.uniform(-1.0, 1.0, size=(3, 3))
        field = ndimage.zoom(coarse, self.crop / 3, order=1, mode="nearest", grid_mode=True)
        gain = np.exp(self.rng.uniform(0.0, MR_GAIN_MAX) * field[: self.crop, : self.crop])
        gamma = self.rng.uniform(*MR_GAMMA)
        unit = np.clip((crop + 1.0) / 2.0 * gain, 0.0, 1.0) ** gamma
        out: np.ndarray = (unit * 2.0 - 1.0).astype(np.float32)
        return out

    def batch(self, size: int) -> torch.Tensor:
        import torch

        n, rows, cols = self.slices.shape
        out = np.empty((size, 1, self.crop, self.crop), dtype=np.float32)
        for i in range(size):
            k = int(self.rng.integers(n))
            y = int(self.rng.integers(rows - self.crop + 1))
            x = int(self.rng.integers(cols - self.crop + 1))
            out[i, 0] = self.slices[k, y : y + self.crop, x : x + self.crop]
            if self.intensity:
                out[i, 0] = self._recolour(out[i, 0])
        return torch.from_numpy(out)


def _generator_step(
    gan: _CycleGan, mr: torch.Tensor, ct: torch.Tensor, w: LossWeights
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """One update of both generators; returns the loss terms and the fakes."""
    import torch

    l1 = torch.nn.functional.l1_loss
    for disc in (gan.d_ct, gan.d_mr):
        disc.requires_grad_(False)
    fake_ct, fake_mr = gan.g_mr_ct(mr), gan.g_ct_mr(ct)
    terms = {
        "adv": least_squares(gan.d_ct(fake_ct), True) + least_squares(gan.d_mr(fake_mr), True),
        "cyc": l1(gan.g_ct_mr(fake_ct), mr) + l1(gan.g_mr_ct(fake_mr), ct),
    }
    if w.identity > 0:
        terms["idt"] = l1(gan.g_mr_ct(ct), ct) + l1(gan.g_ct_mr(mr), mr)
    if w.gradient > 0:
        terms["gc"] = gradient_consistency(mr, fake_ct, w.gradient_mode) + gradient_consistency(
            ct, fake_mr, w.gradient_mode
        )
    weights = {"adv": w.adversarial, "cyc": w.cycle, "idt": w.identity, "gc": w.gradient}
    total = sum((weights[k] * v for k, v in terms.items()), torch.zeros(()))
    gan.opt_g.zero_grad(set_to_none=True)
    total.backward()  # type: ignore[no-untyped-call]
    gan.opt_g.step()
    for disc in (gan.d_ct, gan.d_mr):
        disc.requires_grad_(True)
    return {k: float(v.detach()) for k, v in terms.items()}, fake_ct, fake_mr


def _discriminator_step(
    gan: _CycleGan,
    real: tuple[torch.Tensor, torch.Tensor],
    fake: tuple[torch.Tensor, torch.Tensor],
    pools: tuple[ImagePool, ImagePool],
) -> float:
    """One update of both discriminators on real images and pooled fakes; returns the loss."""
    loss = 0.5 * (
        least_squares(gan.d_ct(real[1]), True) + least_squares(gan.d_ct(pools[0].query(fake[0])), False)
    )
    loss = loss + 0.5 * (
        least_squares(gan.d_mr(real[0]), True) + least_squares(gan.d_mr(pools[1].query(fake[1])), False)
    )
    gan.opt_d.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    gan.opt_d.step()
    return float(loss.detach())


def sample_grid(gan_g_mr_ct: nn.Module, gan_g_ct_mr: nn.Module, mr: np.ndarray, ct: np.ndarray) -> bytes:
    """PNG of two rows: MR, synthetic CT, reconstructed MR / CT, synthetic MR, reconstructed CT."""
    import torch
    from PIL import Image

    device = next(gan_g_mr_ct.parameters()).device
    with torch.inference_mode():
        x_mr = torch.from_numpy(mr[None, None].astype(np.float32)).to(device)
        x_ct = torch.from_numpy(ct[None, None].astype(np.float32)).to(device)
        f_ct, f_mr = gan_g_mr_ct(x_mr), gan_g_ct_mr(x_ct)
        row1 = [x_mr, f_ct, gan_g_ct_mr(f_ct)]
        row2 = [x_ct, f_mr, gan_g_mr_ct(f_mr)]
    rows = [np.concatenate([t[0, 0].cpu().numpy() for t in row], axis=1) for row in (row1, row2)]
    grid = ((np.clip(np.concatenate(rows, axis=0), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def _save_checkpoint(path: Path, gan: _CycleGan, iteration: int, extra: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"iteration": iteration, "gan": gan.state(), **extra}, tmp)
    tmp.replace(path)


@dataclass
class _RunState:
    gan: _CycleGan
    crops: tuple[_Crops, _Crops]
    pools: tuple[ImagePool, ImagePool]
    pool_rng: random.Random
    device: str = "cpu"
    start: int = 0

    def extra(self) -> dict[str, Any]:
        import torch

        return {
            "rng_mr": self.crops[0].rng.bit_generator.state,
            "rng_ct": self.crops[1].rng.bit_generator.state,
            "pool_rng": self.pool_rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "pools": [pool.images for pool in self.pools],
        }

    def restore(self, data: dict[str, Any]) -> None:
        import torch

        self.gan.restore(data["gan"])
        self.crops[0].rng.bit_generator.state = data["rng_mr"]
        self.crops[1].rng.bit_generator.state = data["rng_ct"]
        self.pool_rng.setstate(data["pool_rng"])
        torch.set_rng_state(data["torch_rng"])
        for pool, images in zip(self.pools, data["pools"], strict=True):
            pool.images = [image.to(self.device) for image in images]
        self.start = int(data["iteration"])


def _prepare(
    mr: np.ndarray,
    ct: np.ndarray,
    net: NetworkOptions,
    sched: ScheduleOptions,
    out: OutputOptions,
    device: str,
) -> _RunState:
    """Fresh run state, or the state of the checkpoint in ``out.work_dir`` when resuming."""
    import torch

    pool_rng = random.Random(sched.seed)
    state = _RunState(
        gan=_CycleGan(net, sched),
        crops=(
            _Crops(mr, sched.crop, np.random.default_rng([sched.seed, 1]), sched.mr_augmentation),
            _Crops(ct, sched.crop, np.random.default_rng([sched.seed, 2])),
        ),
        pools=(ImagePool(sched.pool_size, pool_rng), ImagePool(sched.pool_size, pool_rng)),
        pool_rng=pool_rng,
        device=device,
    )
    for module in state.gan.modules():
        module.to(device)
    checkpoint = out.work_dir / CHECKPOINT
    if out.resume and checkpoint.is_file():
        state.restore(torch.load(checkpoint, map_location="cpu", weights_only=False))
    return state


def train_cyclegan(
    mr: np.ndarray,
    ct: np.ndarray,
    net: NetworkOptions,
    sched: ScheduleOptions,
    out: OutputOptions,
    weights: LossWeights | None = None,
    on_sample: Callable[[int, bytes], None] | None = None,
    device: str = "cpu",
) -> TrainingResult:
    """Train on ``(n, rows, cols)`` MR and CT slices in [-1, 1]; returns the MR-to-CT generator.

    Checkpoints go to ``out.work_dir/checkpoint.pt`` (resumed from when present and
    ``out.resume``), sample grids to ``out.work_dir/samples/`` (and ``on_sample``).
    ``device`` is a torch device ("cpu", "cuda"). Raises ValueError when the slices are
    smaller than the crop.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    w = weights or LossWeights()
    out.work_dir.mkdir(parents=True, exist_ok=True)
    (out.work_dir / "samples").mkdir(exist_ok=True)
    state = _prepare(mr, ct, net, sched, out, device)
    history: list[dict[str, float]] = []
    columns = (
        TextColumn("CycleGAN"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not out.progress) as progress:
        task = progress.add_task("train", total=sched.iterations, completed=state.start, loss="")
        for iteration in range(state.start + 1, sched.iterations + 1):
            real = (
                state.crops[0].batch(sched.batch_size).to(device),
                state.crops[1].batch(sched.batch_size).to(device),
            )
            terms, fake_ct, fake_mr = _generator_step(state.gan, real[0], real[1], w)
            terms["d"] = _discriminator_step(state.gan, real, (fake_ct, fake_mr), state.pools)
            state.gan.sched_g.step()
            state.gan.sched_d.step()
            history.append(terms)
            progress.update(task, advance=1, loss=" ".join(f"{k} {v:.3f}" for k, v in terms.items()))
            _periodic(state, iteration, sched, out, (mr, ct), on_sample)
    recent = history[-50:]
    means = {k: float(np.mean([h[k] for h in recent])) for k in (recent[0] if recent else {})}
    return TrainingResult(
        generator=state.gan.g_mr_ct.eval(),
        iterations=sched.iterations,
        resumed_from=state.start,
        losses=means,
    )


def _periodic(
    state: _RunState,
    iteration: int,
    sched: ScheduleOptions,
    out: OutputOptions,
    data: tuple[np.ndarray, np.ndarray],
    on_sample: Callable[[int, bytes], None] | None,
) -> None:
    """Sample grid and checkpoint when their interval (or the last iteration) is reached."""
    last = iteration == sched.iterations
    if out.sample_every > 0 and (iteration % out.sample_every == 0 or last):
        mr, ct = data
        state.gan.g_mr_ct.eval()
        state.gan.g_ct_mr.eval()
        png = sample_grid(
            state.gan.g_mr_ct, state.gan.g_ct_mr, _fit(mr[len(mr) // 2]), _fit(ct[len(ct) // 2])
        )
        state.gan.g_mr_ct.train()
        state.gan.g_ct_mr.train()
        (out.work_dir / "samples" / f"iteration_{iteration:06d}.png").write_bytes(png)
        if on_sample is not None:
            on_sample(iteration, png)
    if out.checkpoint_every > 0 and (iteration % out.checkpoint_every == 0 or last):
        _save_checkpoint(out.work_dir / CHECKPOINT, state.gan, iteration, state.extra())


def _fit(image: np.ndarray, divisor: int = 4) -> np.ndarray:
    """Crop a slice to a multiple of the generator's size divisor."""
    rows, cols = (image.shape[0] // divisor) * divisor, (image.shape[1] // divisor) * divisor
    return image[:rows, :cols]
