"""A 2-D U-net with dropout in every encoder and decoder block (a Bayesian U-net).

Dropout stays switchable at inference (:meth:`BayesianUNet.set_mc_dropout`), so repeated
stochastic forward passes sample the approximate posterior (Monte-Carlo dropout, Gal and
Ghahramani 2016); the spread of the samples is the model's uncertainty.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BayesianUNet", "McDropout"]


class McDropout(nn.Module):
    """Channel dropout that is active in training and, when ``always_on``, at inference."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.always_on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(x, self.p, training=self.training or self.always_on)


class _Block(nn.Sequential):
    """conv-norm-relu x2 followed by dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, out_channels), out_channels),
            nn.ReLU(inplace=True),
            McDropout(dropout),
        )


class BayesianUNet(nn.Module):
    """U-net for ``(N, in_channels, H, W)`` input; H and W must be divisible by ``2**depth``.

    Returns logits ``(N, num_classes, H, W)``. GroupNorm instead of BatchNorm keeps the
    output of one slice independent of the other slices in its batch, so batching
    samples and slices together gives the same result as one slice at a time.
    Raises ValueError for invalid sizes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 16,
        depth: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or num_classes < 2:
            raise ValueError("depth >= 1, base_channels >= 1 and num_classes >= 2 required")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(_Block(previous, width, dropout))
            previous = width
        self.bottleneck = _Block(widths[-2], widths[-1], dropout)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.decoders.append(_Block(width * 2, width, dropout))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def set_mc_dropout(self, enabled: bool) -> None:
        """Keep dropout active in eval mode (Monte-Carlo sampling) or switch it off."""
        for module in self.modules():
            if isinstance(module, McDropout):
                module.always_on = enabled

    def _check_size(self, x: torch.Tensor) -> None:
        factor = 2**self.depth
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} not divisible by {factor}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        return self._after_first_block(self.encoders[0](x))

    def forward_mc(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """``samples`` stochastic passes of each image in one call, sample-major.

        Returns logits ``(samples * N, num_classes, H, W)``: row ``t * N + i`` is sample
        ``t`` of image ``i``, the same as ``forward(x.repeat(samples, 1, 1, 1))``. The
        first encoder block up to its dropout is deterministic, so it runs once per image
        and only its output is repeated; every dropout layer then draws its masks for all
        ``samples * N`` images as ``forward`` would (same shapes, same order), so with the
        same random state the result equals the repeated forward up to rounding.
        Raises ValueError for invalid sizes or ``samples < 1``.
        """
        self._check_size(x)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        first = self.encoders[0]
        layers = list(first.children())  # a _Block: conv-norm-relu x2, dropout
        shared = x
        for layer in layers[:-1]:  # conv-norm-relu x2: no randomness
            shared = layer(shared)
        n = shared.shape[0]
        layout = (torch.channels_last if shared.is_contiguous(memory_format=torch.channels_last)
                  else torch.contiguous_format)
        repeated = torch.empty((samples * n, *shared.shape[1:]), dtype=shared.dtype,
                               device=shared.device, memory_format=layout)
        repeated.view(samples, *shared.shape).copy_(shared.unsqueeze(0).expand(samples,
                                                                               *shared.shape))
        return self._after_first_block(layers[-1](repeated))

    def _after_first_block(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the output of the first encoder block."""
        skips: list[torch.Tensor] = [x]
        x = F.max_pool2d(x, 2)
        for encoder in list(self.encoders)[1:]:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(
            self.upsamplers, self.decoders, reversed(skips), strict=True
        ):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        out: torch.Tensor = self.head(x)
        return out
