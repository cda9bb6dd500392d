"""A 2-D U-net with dropout in every encoder and decoder block (a Bayesian U-net).

Dropout stays switchable at inference (:meth:`BayesianUNet.set_mc_dropout`), so repeated
stochastic forward passes sample the approximate posterior (Monte-Carlo dropout, Gal and
Ghahramani 2016); the spread of the samples is the model's uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BayesianUNet", "McDropout", "SeededMasks"]


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


class SeededMasks:
    """Dropout masks drawn per image from its own seeded generator, for reproducible
    Monte-Carlo sampling.

    Image ``i`` of a batch draws every mask from ``torch.Generator`` seeded with
    ``seeds[i]``, layer after layer in the order of the network, so its samples depend
    on its seed only — not on the other images in the batch, the batch size, the device
    or the process's global random state (which is never touched). Masks are drawn on
    the CPU (a few hundred values per layer) and moved to the activations' device.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        if not seeds:
            raise ValueError("at least one seed is required")
        self._generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    @property
    def images(self) -> int:
        return len(self._generators)

    def draw(self, count: int, channels: int, keep: float) -> torch.Tensor:
        """``(count, channels)`` 0/1 masks, sample-major (row ``t * images + i``).

        Raises ValueError when ``count`` is not a multiple of the number of images.
        """
        samples, rest = divmod(count, self.images)
        if rest or samples < 1:
            raise ValueError(f"{count} masks for {self.images} seeded images")
        per_image = [torch.empty((samples, channels)).bernoulli_(keep, generator=g)
                     for g in self._generators]
        return torch.stack(per_image, dim=1).reshape(count, channels)


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

    def forward_mc(
        self, x: torch.Tensor, samples: int, seeds: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``samples`` stochastic passes of each image in one call, sample-major.

        With ``seeds`` (one per image) every dropout mask comes from
        :class:`SeededMasks`: the samples of an image are fixed by its seed, whatever
        it is batched with, and the global random state is left alone. Without, masks
        come from the global random state as ``forward`` draws them.

        Returns logits ``(samples * N, num_classes, H, W)``: row ``t * N + i`` is sample
        ``t`` of image ``i``, the same as ``forward(x.repeat(samples, 1, 1, 1))`` up to
        rounding, and with the same random state the same samples: every dropout layer
        draws its masks for all ``samples * N`` images in the order ``forward`` does.

        What is deterministic runs once per image instead of once per sample:

        * the first encoder block up to its dropout;
        * the two convolutions that read its (dropped-out) output — the first one of the
          next encoder block, after pooling, and the skip half of the last decoder's
          first convolution. Channel dropout multiplies each channel by a per-sample
          constant ``m >= 0``, which commutes with max-pooling and factors out of a
          convolution: ``conv(m * a) = sum_c m_c * conv_c(a_c)``. The per-channel
          responses ``conv_c(a_c)`` are computed once per image (:func:`_masked_conv`);
          each sample is then a mix of them with its mask, a 1 x C product per output
          value instead of a 3 x 3 x C convolution, and the full-resolution dropped-out
          copies are never materialised. The last decoder's convolution over
          ``cat([up, skip])`` is the sum of its convolutions over each part.

        The last dropout scales the inputs of the 1 x 1 classifier, so it is folded into
        per-sample classifier weights: one batched matrix product writes classes-last
        (channels-last) logits. Raises ValueError for invalid sizes or ``samples < 1``.
        """
        self._check_size(x)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if seeds is not None and len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} images")
        seeded = SeededMasks(seeds) if seeds is not None else None
        first = list(self.encoders[0].children())  # conv-norm-relu x2, dropout
        shared = x
        for layer in first[:-1]:  # no randomness
            shared = layer(shared)
        n = shared.shape[0]
        dropout = first[-1]
        assert isinstance(dropout, McDropout)
        masks = _channel_masks(dropout, samples * n, shared, seeded)  # as F.dropout2d would
        following = [*self.encoders[1:], self.bottleneck]
        block = list(following[0].children())
        h = _masked_conv(block[0], F.max_pool2d(shared, 2), masks, samples)
        for layer in block[1:]:
            h = _apply(layer, h, seeded)
        skips = [h]
        for encoder in following[1:]:
            h = F.max_pool2d(h, 2)
            for layer in encoder.children():
                h = _apply(layer, h, seeded)
            skips.append(h)
        last = len(self.decoders) - 1
        for index, (upsample, decoder) in enumerate(zip(self.upsamplers, self.decoders, strict=True)):
            layers = list(decoder.children())
            conv = layers[0]
            assert isinstance(conv, nn.Conv2d)
            up = upsample(h)
            if index == last:
                parts = up.shape[1]
                h = F.conv2d(up, conv.weight[:, :parts], conv.bias, padding=conv.padding)
                _masked_conv(conv, shared, masks, samples, channels=slice(parts, None),
                             accumulate=h)
            else:
                h = conv(torch.cat([up, skips[-2 - index]], dim=1))
            for layer in layers[1:-1] if index == last else layers[1:]:
                h = _apply(layer, h, seeded)
        # The last dropout and the 1 x 1 classifier: the masks scale the classifier's
        # input columns per sample, a batched matrix product into classes-last logits.
        final = layers[-1]
        assert isinstance(final, McDropout) and self.head.kernel_size == (1, 1)
        count, channels, height, width = h.shape
        scaled = (self.head.weight.flatten(1).unsqueeze(0)
                  * _channel_masks(final, count, h, seeded).unsqueeze(1))  # (count, classes, C)
        pixels = h.permute(0, 2, 3, 1).reshape(count, height * width, channels)
        if self.head.bias is None:
            logits = torch.bmm(pixels, scaled.transpose(1, 2))
        else:
            logits = torch.baddbmm(self.head.bias, pixels, scaled.transpose(1, 2))
        return logits.view(count, height, width, -1).permute(0, 3, 1, 2)

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


def _apply(layer: nn.Module, h: torch.Tensor, seeded: SeededMasks | None) -> torch.Tensor:
    """``layer(h)``, with the masks of ``seeded`` for a dropout layer when given."""
    if seeded is None or not isinstance(layer, McDropout):
        out: torch.Tensor = layer(h)
        return out
    masks = _channel_masks(layer, h.shape[0], h, seeded)
    return h * masks.view(*masks.shape, 1, 1)


def _channel_masks(
    dropout: McDropout, count: int, like: torch.Tensor, seeded: SeededMasks | None = None
) -> torch.Tensor:
    """The ``(count, C)`` multipliers ``F.dropout2d`` would apply to ``count`` copies of
    ``like`` — the same draw from the same random state, or from ``seeded`` — or ones
    when dropout is off."""
    channels = like.shape[1]
    if not (dropout.training or dropout.always_on) or dropout.p == 0:
        return like.new_ones((count, channels))
    keep = 1.0 - dropout.p
    if seeded is not None:
        drawn = seeded.draw(count, channels, keep)
        return drawn.to(device=like.device, dtype=like.dtype).div_(keep)
    masks = like.new_empty((count, channels, 1, 1)).bernoulli_(keep).div_(keep)
    return masks.view(count, channels)


def _masked_conv(
    conv: nn.Module, base: torch.Tensor, masks: torch.Tensor, samples: int,
    channels: slice = slice(None), accumulate: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv`` (restricted to input ``channels``) of ``samples`` copies of ``base`` with
    every channel of every copy scaled by its mask, ``masks`` being ``(samples * N, C)``
    sample-major. Returns ``(samples * N, O, H, W)`` in channels-last memory, or adds it
    to ``accumulate`` (of that shape) and returns that.

    The per-channel responses ``conv_c(base_c)`` come from one batched matrix product of
    the unfolded 3 x 3 neighbourhoods with each channel's weights — laid out
    ``(C, pixels * O)``, so each sample is a ``(1 x C) @ (C x pixels * O)`` product.
    """
    assert isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str)
    weight = conv.weight[:, channels]
    n, c, height, width = base.shape
    out_channels, _, kh, kw = weight.shape
    pixels = height * width
    # (n * C, kh * kw, pixels): the neighbourhoods of each channel of each image
    cols = F.unfold(base.contiguous(), (kh, kw), padding=conv.padding).view(n * c, kh * kw, pixels)
    per_weight = weight.permute(1, 2, 3, 0).reshape(1, c, kh * kw, out_channels)
    per_weight = per_weight.expand(n, -1, -1, -1).reshape(n * c, kh * kw, out_channels)
    responses = torch.bmm(cols.transpose(1, 2), per_weight)  # (n * C, pixels, O)
    per_channel = responses.view(n, c, pixels * out_channels)
    mix = masks.view(samples, n, c).transpose(0, 1)  # (n, samples, C)
    if accumulate is not None and accumulate.is_contiguous(memory_format=torch.channels_last):
        target = accumulate.permute(0, 2, 3, 1).view(samples, n, pixels * out_channels)
        target.transpose(0, 1).baddbmm_(mix, per_channel)
        return accumulate
    out = torch.bmm(mix, per_channel)  # (n, samples, pixels * O)
    out = out.transpose(0, 1).reshape(samples * n, height, width, out_channels)
    if accumulate is not None:
        return accumulate.add_(out.permute(0, 3, 1, 2))
    if conv.bias is not None:
        out = out + conv.bias
    return out.permute(0, 3, 1, 2)
