"""CycleGAN networks: a ResNet generator and a PatchGAN discriminator (Zhu et al. 2017).

The generator is the encoder / residual blocks / decoder network of Johnson et al. with
reflection padding and instance normalisation; it maps a ``(N, C, H, W)`` image in
[-1, 1] to an image of the same size in [-1, 1] (tanh), for any H and W divisible by
``2**downsamplings``. The discriminator is the 70x70-style PatchGAN: a stack of strided
convolutions that scores overlapping patches, one logit per patch (least-squares GAN
loss, so no sigmoid). Widths are arguments, so demo weights stay a few MB.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator", "ResnetGenerator", "init_weights"]


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class ResnetGenerator(nn.Module):
    """Image-to-image generator: c7s1-k, ``downsamplings`` x d, residual blocks, up, c7s1.

    Raises ValueError for non-positive sizes. ``forward`` raises ValueError when H or W
    is not divisible by ``2**downsamplings``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        residual_blocks: int = 6,
        downsamplings: int = 2,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, base_channels) < 1 or residual_blocks < 0 or downsamplings < 0:
            raise ValueError("channels must be >= 1, blocks and downsamplings >= 0")
        self.downsamplings = downsamplings
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base_channels, 7),
            nn.InstanceNorm2d(base_channels),
            nn.ReLU(inplace=True),
        ]
        width = base_channels
        for _ in range(downsamplings):
            layers += [
                nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(width * 2),
                nn.ReLU(inplace=True),
            ]
            width *= 2
        layers += [_ResidualBlock(width) for _ in range(residual_blocks)]
        for _ in range(downsamplings):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.downsamplings
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} not divisible by {factor}")
        out: torch.Tensor = self.model(x)
        return out


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``layers`` strided 4x4 convolutions, then two stride-1 convolutions.

    Returns a map of patch logits ``(N, 1, h, w)``. ``instance_norm`` follows the
    original; without it the discriminator keeps absolute intensities, which is what
    tells a CT (air dark, fat darker than muscle) from an intensity-inverted one.
    Raises ValueError for invalid sizes.
    """

    def __init__(
        self, in_channels: int = 1, base_channels: int = 16, layers: int = 3, instance_norm: bool = True
    ) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or layers < 1:
            raise ValueError("channels and layers must be >= 1")
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for index in range(1, layers + 1):
            stride = 2 if index < layers else 1
            out = base_channels * min(2**index, 8)
            norm: nn.Module = nn.InstanceNorm2d(out) if instance_norm else nn.Identity()
            modules += [nn.Conv2d(width, out, 4, stride=stride, padding=1), norm]
            modules.append(nn.LeakyReLU(0.2, inplace=True))
            width = out
        modules.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Normal(0, ``gain``) initialisation of convolutions, as in the CycleGAN paper."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
