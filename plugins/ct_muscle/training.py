"""Training of the hip/thigh Bayesian U-net on slices of labelled CT volumes.

Data are (HU volume, label map) pairs: generated phantoms, or DICOM series with a SEG
(:mod:`acqflow.plugins.ct_muscle.datasets`). Slices are resampled to the model pixel spacing and
padded or cropped to a fixed training size. Each epoch reports the validation Dice per
structure; a checkpoint after every epoch (weights, optimiser, RNG states, history) lets
an interrupted run resume where it stopped. Everything is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.ct_muscle.augmentation import (
    RobustAugmentation,
    add_noise,
    affine_theta,
    blur_some,
    robust_augment,
)
from acqflow.plugins.ct_muscle.inference import MODEL_NAME, InputGeometry, model_grid
from acqflow.plugins.ct_muscle.structures import LabelTable

if TYPE_CHECKING:
    import torch

    from acqflow.models.unet import BayesianUNet

__all__ = [
    "AppearanceAugmentation",
    "LabelledVolume",
    "NetworkOptions",
    "RobustAugmentation",
    "TrainingOptions",
    "TrainingResult",
    "dice_per_class",
    "slices_for_training",
    "train_network",
]


@dataclass(frozen=True)
class LabelledVolume:
    """HU volume and label map (slices, rows, cols) with in-plane spacing (row, col) mm."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float]


@dataclass(frozen=True)
class NetworkOptions:
    """Constructor arguments of the U-net."""

    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.1


@dataclass(frozen=True)
class AppearanceAugmentation:
    """Extra image-quality changes per training slice (off unless given), in HU and pixels.

    Each slice gets Gaussian noise with a standard deviation drawn from
    [0, ``noise_hu_max``] (half of the slices spatially correlated, like reconstruction
    kernels and translated images), and with probability ``blur_probability`` a
    Gaussian blur with sigma drawn from [0, ``blur_sigma_max``]. Used to make a network
    robust to noisier and softer images than the phantoms (e.g. synthetic CT from MR).
    """

    noise_hu_max: float = 50.0
    blur_sigma_max: float = 1.0
    blur_probability: float = 0.5

    def __post_init__(self) -> None:
        if self.noise_hu_max < 0 or self.blur_sigma_max < 0:
            raise ValueError("augmentation strengths must be non-negative")
        if not 0 <= self.blur_probability <= 1:
            raise ValueError(f"blur probability {self.blur_probability} not in [0, 1]")


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation settings; ``size`` is the square training slice size in pixels."""

    epochs: int = 16
    batch_size: int = 8
    learning_rate: float = 3e-3
    seed: int = 0
    size: int = 128
    geometry: InputGeometry = field(default_factory=InputGeometry)
    network: NetworkOptions = field(default_factory=NetworkOptions)
    appearance: AppearanceAugmentation | None = None
    robust: RobustAugmentation | None = None  # replaces the basic augmentation when given
    device: str = "cpu"  # where the network trains (augmentation runs on the CPU, seeded)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch size and learning rate must be positive")
        if self.size % self.geometry.divisor:
            raise ValueError(f"size {self.size} not divisible by {self.geometry.divisor}")


@dataclass(frozen=True)
class TrainingResult:
    """The trained network, per-epoch history and the last validation Dice."""

    model: BayesianUNet
    history: list[dict[str, Any]]
    validation_dice: dict[str, float]


def slices_for_training(
    volumes: Sequence[LabelledVolume], geo: InputGeometry, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windowed slices ``(n, 1, size, size)`` float32 and labels ``(n, size, size)`` int64.

    Images are resampled bilinearly, labels by nearest neighbour, onto the model grid
    (with ``geo.body_size_px``, the finer grid a small body gets at inference,
    :meth:`InputGeometry.for_volume`), then centre-padded (air) or centre-cropped to ``size``.
    """
    import torch
    from torch.nn import functional as F

    images, labels = [], []
    for volume in volumes:
        hu = torch.from_numpy(volume.hu.astype(np.float32))
        x = ((hu - geo.window.lower) / geo.window.width).clamp(0, 1)[:, None]
        y = torch.from_numpy(volume.labels.astype(np.float32))[:, None]
        grid = geo.for_volume(volume.hu, volume.spacing).pixel_spacing_mm
        target, _ = model_grid(hu.shape[1], hu.shape[2], volume.spacing, grid, geo.divisor)
        if target != tuple(hu.shape[1:]):
            x = F.interpolate(x, size=target, mode="bilinear", antialias=True)
            y = F.interpolate(y, size=target, mode="nearest")
        images.append(_fit(x, size))
        labels.append(_fit(y, size))
    return (torch.cat(images).numpy(), torch.cat(labels)[:, 0].long().numpy())


def _fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-pad with zeros or centre-crop the last two axes to ``size``."""
    from torch.nn import functional as F

    for axis in (2, 3):
        extent = x.shape[axis]
        if extent < size:
            before = (size - extent) // 2
            pad = [0, 0, 0, 0]
            pad[(3 - axis) * 2: (3 - axis) * 2 + 2] = [before, size - extent - before]
            x = F.pad(x, pad)
        elif extent > size:
            start = (extent - size) // 2
            x = x.narrow(axis, start, size)
    return x


def _appearance(
    x: torch.Tensor, aug: AppearanceAugmentation, window_width: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Blur and noise of :class:`AppearanceAugmentation` on windowed slices (0..1)."""
    import torch

    x = blur_some(x, aug.blur_probability, aug.blur_sigma_max, generator)
    level = torch.rand(x.shape[0], 1, 1, 1, generator=generator) * aug.noise_hu_max / window_width
    return add_noise(x, level, generator)


def _augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
    appearance: AppearanceAugmentation | None = None, window_width: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, rotation, scale, shift, contrast and noise (same warp for labels), then
    the optional :class:`AppearanceAugmentation`."""
    import torch
    from torch.nn import functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi * 12 / 360)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.15
    grid = F.affine_grid(affine_theta(angle, scale, scale, flip, shift), list(x.shape),
                         align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.1
    offset = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.04
    noise = torch.randn(x.shape, generator=generator) * 0.01
    x = x * gain + offset + noise
    if appearance is not None:
        x = _appearance(x, appearance, window_width, generator)
    return x.clamp(0, 1), y[:, 0].long()


def _loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the classes present in the batch."""
    import torch
    from torch.nn import functional as F

    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return F.cross_entropy(logits, target) + (1 - dice[present]).mean()


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of every foreground class present in ``truth`` or ``pred``."""
    out: dict[int, float] = {}
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        total = int(p.sum()) + int(t.sum())
        if total:
            out[c] = 2.0 * float(np.logical_and(p, t).sum()) / total
    return out


def _validate(
    model: BayesianUNet, x: np.ndarray, y: np.ndarray, table: LabelTable, batch: int
) -> dict[str, float]:
    import torch

    model.eval()
    model.set_mc_dropout(False)
    preds = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            device = next(model.parameters()).device
            logits = model(torch.from_numpy(x[start : start + batch]).to(device))
            preds.append(logits.argmax(dim=1).cpu().numpy())
    dice = dice_per_class(np.concatenate(preds), y, table.num_classes)
    return {table.by_label(label).key: value for label, value in dice.items()}


def _checkpoint_path(directory: Path) -> Path:
    return directory / f"{MODEL_NAME}.checkpoint.pt"


def _save_checkpoint(
    directory: Path, model: BayesianUNet, optimizer: Any, epoch: int,
    history: list[dict[str, Any]], generator: torch.Generator,
) -> None:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "history": history, "generator": generator.get_state(),
        "torch": torch.get_rng_state(), "python": random.getstate(),
    }
    tmp = _checkpoint_path(directory).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(_checkpoint_path(directory))


def _resume(
    directory: Path | None, model: BayesianUNet, optimizer: Any, generator: torch.Generator
) -> tuple[int, list[dict[str, Any]]]:
    """Restore the last checkpoint in ``directory``; returns (next epoch, history)."""
    import torch

    if directory is None or not _checkpoint_path(directory).is_file():
        return 0, []
    device = next(model.parameters()).device
    state = torch.load(_checkpoint_path(directory), weights_only=False, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    return int(state["epoch"]) + 1, list(state["history"])


def _epoch(
    model: BayesianUNet, optimizer: Any, data: tuple[np.ndarray, np.ndarray],
    options: TrainingOptions, generator: torch.Generator, on_batch: Callable[[], None],
) -> float:
    import torch

    model.train()
    x_all, y_all = data
    order = torch.randperm(len(x_all), generator=generator).numpy()
    total = 0.0
    for start in range(0, len(order), options.batch_size):
        index = order[start : start + options.batch_size]
        x, y = torch.from_numpy(x_all[index]), torch.from_numpy(y_all[index])
        if options.robust is not None:
            window = options.geometry.window
            x, y = robust_augment(x, y, generator, options.robust, window.width, window.center)
        else:
            x, y = _augment(x, y, generator, options.appearance, options.geometry.window.width)
        x, y = x.to(options.device), y.to(options.device)
        optimizer.zero_grad()
        loss = _loss(model(x), y, model.head.out_channels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += float(loss.detach()) * len(index)
        on_batch()
    return total / len(order)


def train_network(
    train: Sequence[LabelledVolume],
    validation: Sequence[LabelledVolume],
    table: LabelTable,
    options: TrainingOptions,
    checkpoint_dir: Path | None = None,
    initial: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Train (or resume from ``checkpoint_dir``) and return the network and history.

    ``initial`` is a state dict to start from (fine-tuning) instead of random weights; a
    checkpoint in ``checkpoint_dir`` takes precedence. Raises ValueError when there is no
    training data.
    """
    import torch

    from acqflow.models.unet import BayesianUNet
    from acqflow.plugins.common.progress import TrainingProgress

    if not train:
        raise ValueError("no training volumes")
    torch.manual_seed(options.seed)
    random.seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    model = BayesianUNet(1, table.num_classes, **asdict(options.network))
    if initial is not None:
        model.load_state_dict(initial)
    model = model.to(options.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    scheduler_steps = options.epochs
    data = slices_for_training(train, options.geometry, options.size)
    val = slices_for_training(validation, options.geometry, options.size)
    first, history = _resume(checkpoint_dir, model, optimizer, generator)
    batches = -(-len(data[0]) // options.batch_size)
    with TrainingProgress("training ct-muscle", options.epochs * batches,
                          first * batches) as progress:
        for epoch in range(first, options.epochs):
            for group in optimizer.param_groups:  # cosine decay, resumable from the epoch
                group["lr"] = options.learning_rate * 0.5 * (
                    1 + np.cos(np.pi * epoch / scheduler_steps))
            loss = _epoch(model, optimizer, data, options, generator, progress.advance)
            dice = _validate(model, *val, table, options.batch_size) if len(val[0]) else {}
            mean = float(np.mean(list(dice.values()))) if dice else float("nan")
            history.append({"epoch": epoch + 1, "loss": loss, "validation_mean_dice": mean,
                            "validation_dice": dice})
            progress.line(f"epoch {epoch + 1}/{options.epochs}: loss {loss:.4f}, validation "
                          f"mean Dice {mean:.3f}")
            if checkpoint_dir is not None:
                _save_checkpoint(checkpoint_dir, model, optimizer, epoch, history, generator)
    last = history[-1]["validation_dice"] if history else {}
    model = model.cpu()
    return TrainingResult(model=model, history=history, validation_dice=dict(last))
