"""A small CNN that classifies square blocks of a single-channel image.

The network uses only *valid* 3x3 convolutions, 2x2 max pooling and a final convolution
whose kernel covers what is left of a block, so one block of ``block_size`` pixels maps
to exactly one logit. Run on a larger image the same module is fully convolutional: the
output at grid position ``(i, j)`` is the logit of the block whose top-left corner is at
``(i * step, j * step)`` with ``step = 2 ** depth`` -- identical to classifying that block
on its own, without any Python loop over blocks (see :meth:`TileCNN.block_logits`).
:meth:`TileCNN.fused` gives the same function in a faster inference-only form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusedTileCNN", "TileCNN", "TileCNNConfig", "head_size"]


def head_size(block_size: int, depth: int) -> int:
    """Side of the feature map left of one block after ``depth`` conv+pool stages."""
    size = block_size
    for _ in range(depth):
        size = (size - 2) // 2
    return size


@dataclass(frozen=True)
class TileCNNConfig:
    """Constructor arguments of :class:`TileCNN`; validates itself.

    Raises ValueError when the block is too small for the depth, or when the block size
    is not a multiple of the network's step (``2 ** depth``), which the fully
    convolutional mode needs to place blocks on a regular grid.
    """

    block_size: int = 32
    depth: int = 3
    width: int = 8
    dropout: float = 0.1
    in_channels: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {self.depth}")
        if self.width < 1 or self.in_channels < 1:
            raise ValueError("width and in_channels must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.block_size % (2**self.depth):
            raise ValueError(f"block size {self.block_size} is not a multiple of 2**depth = {2**self.depth}")
        if head_size(self.block_size, self.depth) < 1:
            raise ValueError(f"block size {self.block_size} is too small for depth {self.depth}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TileCNN(nn.Module):
    """Block classifier: ``(N, C, B, B) -> (N,)`` logits, or a logit grid for larger input.

    Each stage is conv3x3 (valid) -> batch norm -> ReLU -> max-pool 2x2; the channel count
    doubles every stage starting at ``width``. The head is a convolution covering the
    remaining ``head_size`` pixels, dropout and a 1x1 convolution to one logit.
    """

    def __init__(
        self,
        block_size: int = 32,
        depth: int = 3,
        width: int = 8,
        dropout: float = 0.1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.config = TileCNNConfig(block_size, depth, width, dropout, in_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(depth):
            out = width * 2**stage
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        hidden = channels * 2
        self.head = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=head_size(block_size, depth)),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def step(self) -> int:
        """Pixel distance between neighbouring outputs in fully convolutional mode."""
        return int(2**self.config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of blocks ``(N, C, B, B) -> (N,)``; raises ValueError on another size."""
        if x.shape[-2:] != (self.block_size, self.block_size):
            raise ValueError(f"expected {self.block_size}x{self.block_size} blocks, got {tuple(x.shape)}")
        logits: torch.Tensor = self.head(self.features(x))
        return logits.flatten()

    def block_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logit grid ``(N, C, H, W) -> (N, gh, gw)`` for every block at a multiple of ``step``.

        ``gh = (H - block_size) // step + 1``; raises ValueError when the image is smaller
        than one block.
        """
        if min(image.shape[-2:]) < self.block_size:
            raise ValueError(f"image {tuple(image.shape)} is smaller than one block")
        grid: torch.Tensor = self.head(self.features(image))
        gh = (image.shape[-2] - self.block_size) // self.step + 1
        gw = (image.shape[-1] - self.block_size) // self.step + 1
        return grid[:, 0, :gh, :gw]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fused(self) -> FusedTileCNN:
        """An inference-only copy with batch norm folded in; see :class:`FusedTileCNN`."""
        return FusedTileCNN(self)


class FusedTileCNN(nn.Module):
    """Inference form of a :class:`TileCNN`: same logits up to float rounding, less memory traffic.

    Batch norm (eval statistics) is folded into the preceding convolution, max pooling
    comes before the ReLU (they commute, so the ReLU touches a quarter of the pixels),
    dropout is dropped, and weights use the channels-last layout, for which the CPU
    convolution kernels are markedly faster. The module is a frozen snapshot: later
    changes to the source model are not reflected.
    """

    def __init__(self, model: TileCNN) -> None:
        super().__init__()
        self.config = model.config
        layers: list[nn.Module] = []
        modules = list(model.features)
        for index in range(0, len(modules), 4):
            conv, norm = modules[index], modules[index + 1]
            assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
            layers += [_fold(conv, norm), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        head, final = model.head[0], model.head[3]
        assert isinstance(head, nn.Conv2d) and isinstance(final, nn.Conv2d)
        self.head = _copy_conv(head)
        self.final = _copy_conv(final)
        self.eval().requires_grad_(False)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def step(self) -> int:
        return int(2**self.config.depth)

    def block_logits(self, image: torch.Tensor, every: int = 1) -> torch.Tensor:
        """Logit grid ``(N, C, H, W) -> (N, gh, gw)`` of the blocks at multiples of ``every * step``.

        ``every > 1`` evaluates the head only where it is needed (a sparser grid);
        raises ValueError when the image is smaller than one block.
        """
        if min(image.shape[-2:]) < self.block_size:
            raise ValueError(f"image {tuple(image.shape)} is smaller than one block")
        features = self.features(image.contiguous(memory_format=torch.channels_last))
        hidden = torch.relu(F.conv2d(features, self.head.weight, self.head.bias, stride=every))
        grid: torch.Tensor = self.final(hidden)
        gh = (image.shape[-2] - self.block_size) // (self.step * every) + 1
        gw = (image.shape[-1] - self.block_size) // (self.step * every) + 1
        return grid[:, 0, :gh, :gw]


def _kernel(conv: nn.Conv2d) -> tuple[int, int]:
    height, width = conv.kernel_size
    return int(height), int(width)


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    copy = nn.Conv2d(conv.in_channels, conv.out_channels, _kernel(conv), bias=conv.bias is not None)
    copy.load_state_dict(conv.state_dict())
    return copy


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A biased convolution equal to ``norm(conv(x))`` with the norm's running statistics."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, _kernel(conv), bias=True)
    assert fused.bias is not None
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(norm.bias.detach() - norm.running_mean * scale)
    return fused
