"""Monte-Carlo-dropout inference of the Bayesian U-net on a CT volume.

Slices are windowed, resampled to the model's pixel spacing, padded to the network's
size divisor and pushed through the network T times with dropout on. The T samples of a
group of slices go through as one batch (``samples x slices`` images), never one pass per
sample and slice; what is deterministic — the first encoder block and the per-channel
responses of the two convolutions that read its output — runs once per slice
(``BayesianUNet.forward_mc``). The uncertainty and the label map (the argmax of the
bilinearly resampled mean softmax) are resampled back to the original matrix, so any
field of view and matrix size works.

Given a ``seed`` (the pipelines derive it from the input's content digest and the
model's weight hash, :func:`mc_seed`), slice ``k`` draws its dropout masks from its own
generator seeded with ``slice_seed(seed, k)``: the same input, model and options give
the same samples on every run, whatever the slices are batched with, and the process's
global random state is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.ct_muscle.structures import LabelTable

if TYPE_CHECKING:
    import torch

    from acqflow.models.store import ModelCard
    from acqflow.models.unet import BayesianUNet

__all__ = [
    "BODY_LEVEL",
    "GRID_LIMIT",
    "LOW_ATTENUATION_HU",
    "HuWindow",
    "InputGeometry",
    "McOptions",
    "Prediction",
    "ReviewScore",
    "StructureMeasurement",
    "UncertaintyMeasure",
    "body_size_mm",
    "load_model",
    "mc_seed",
    "measure_structures",
    "predict_volume",
    "preprocess_slices",
    "slice_seed",
]

MODEL_NAME = "ct_muscle"
# Muscle below 30 HU is low-attenuation (fatty infiltration, myosteatosis); the fraction
# of a muscle's voxels below it is the usual density measure next to the mean HU.
LOW_ATTENUATION_HU = 30.0


class UncertaintyMeasure(str, Enum):
    """Per-voxel uncertainty from the T softmax samples."""

    VARIANCE = "variance"  # sum over classes of the variance of the class probability
    ENTROPY = "entropy"  # entropy of the mean softmax (predictive entropy), in nats
    MUTUAL_INFORMATION = "mutual_information"  # entropy minus mean sample entropy


class ReviewScore(str, Enum):
    """What a structure is flagged for review by."""

    DISAGREEMENT = "disagreement"  # 1 - mean Dice of the MC samples with the prediction
    UNCERTAINTY = "uncertainty"  # mean voxel uncertainty inside the structure


@dataclass(frozen=True)
class HuWindow:
    """HU range mapped to [0, 1] before the network; values outside are clipped."""

    center: float = 200.0
    width: float = 1200.0

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be positive, got {self.width}")

    @property
    def lower(self) -> float:
        return self.center - self.width / 2


@dataclass(frozen=True)
class InputGeometry:
    """What the network was trained on: pixel spacing (mm), HU window, size divisor.

    ``body_size_px``, when set, brings small bodies up to size: a volume whose body
    (the square root of its cross-section area, :func:`body_size_mm`) would be smaller
    than that many model pixels is segmented on a finer grid that makes it that size, so
    a child's or a small adult's thigh keeps the resolution the network needs for its
    thin muscles. Larger bodies keep ``pixel_spacing_mm`` (the network segments them well
    as they are); the grid is never finer than ``pixel_spacing_mm / GRID_LIMIT``.
    """

    pixel_spacing_mm: float = 3.0
    window: HuWindow = HuWindow()
    divisor: int = 8
    body_size_px: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm <= 0 or self.divisor < 1:
            raise ValueError("pixel spacing must be positive and divisor >= 1")
        if self.body_size_px is not None and self.body_size_px <= 0:
            raise ValueError("body_size_px must be positive")

    def to_dict(self) -> dict[str, float]:
        out = {
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "window_center": self.window.center,
            "window_width": self.window.width,
            "divisor": self.divisor,
        }
        if self.body_size_px is not None:
            out["body_size_px"] = self.body_size_px
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputGeometry:
        body = data.get("body_size_px")
        return cls(
            pixel_spacing_mm=float(data["pixel_spacing_mm"]),
            window=HuWindow(float(data["window_center"]), float(data["window_width"])),
            divisor=int(data["divisor"]),
            body_size_px=None if body is None else float(body),
        )

    def for_volume(self, hu: np.ndarray, spacing: tuple[float, float]) -> InputGeometry:
        """The geometry a ``(slices, rows, cols)`` HU volume is segmented on: this one,
        or with ``body_size_px`` and a body smaller than that on this grid, the finer grid
        that brings the body to that size (a geometry without a body size)."""
        if self.body_size_px is None:
            return self
        size = body_size_mm(hu, spacing, self.window.lower + BODY_LEVEL * self.window.width)
        if size is None:
            return self
        grid = round(max(size / self.body_size_px, self.pixel_spacing_mm / GRID_LIMIT), 2)
        if grid >= self.pixel_spacing_mm:
            return self
        # Without a body size: the result is final, applying it again changes nothing.
        return InputGeometry(grid, self.window, self.divisor, None)


# Body size: the body is what lies above this fraction of the HU window (-280 HU with the
# default window: above air, below any fat); a grid refined for a small body is at most
# GRID_LIMIT times finer than the trained pixel spacing.
BODY_LEVEL = 0.1
GRID_LIMIT = 2.5
_BODY_SLICES = 32  # slices sampled for the body size
_BODY_GRID_MM = 2.0  # the body mask is taken on about this grid


def body_size_mm(hu: np.ndarray, spacing: tuple[float, float], level_hu: float) -> float | None:
    """The square root of the body's cross-section area (mm), the median over up to 32
    evenly spaced slices of a ``(slices, rows, cols)`` volume, or None without a body.

    The body is the voxels above ``level_hu``, opened once on a ~2 mm grid (which drops
    noise specks and thin objects such as a table top) with its holes filled.
    """
    from scipy import ndimage

    if hu.ndim != 3 or hu.shape[0] == 0:
        return None
    step = (max(1, int(_BODY_GRID_MM // spacing[0])), max(1, int(_BODY_GRID_MM // spacing[1])))
    area_px = spacing[0] * step[0] * spacing[1] * step[1]
    picks = np.unique(np.linspace(0, hu.shape[0] - 1, min(_BODY_SLICES, hu.shape[0])).round())
    sizes = []
    for k in picks.astype(int):
        mask = ndimage.binary_opening(hu[k, :: step[0], :: step[1]] > level_hu)
        area = float(ndimage.binary_fill_holes(mask).sum()) * area_px
        if area > 0:
            sizes.append(math.sqrt(area))
    return float(np.median(sizes)) if sizes else None


@dataclass(frozen=True)
class McOptions:
    """Monte-Carlo sampling: T samples, the measure, and images per forward batch.

    ``batch_images`` None picks by device: T on a CPU (one slice per forward, the fastest
    there: bigger batches fall out of the caches), 8 x T on a GPU. ``batch_scale`` scales
    the slices per batch down (never below one) after the device ran out of memory.
    """

    samples: int = 10
    measure: UncertaintyMeasure = UncertaintyMeasure.ENTROPY
    batch_images: int | None = None
    batch_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.samples < 1 or (self.batch_images is not None and self.batch_images < 1):
            raise ValueError("samples and batch_images must be >= 1")
        if not (0.0 < self.batch_scale <= 1.0):
            raise ValueError("batch_scale must be in (0, 1]")
        object.__setattr__(self, "measure", UncertaintyMeasure(self.measure))


@dataclass(frozen=True)
class Prediction:
    """Label map (uint8) and per-voxel uncertainty (float32), both (slices, rows, cols).

    ``agreement`` maps each predicted label to the mean, over the T Monte-Carlo samples,
    of the Dice between that sample's own segmentation (its argmax) and the prediction,
    on the model grid: a structure-level measure of how much the samples disagree about
    the structure's extent, which ranks failed structures better than the mean voxel
    uncertainty does (docs/models/ct-muscle.md, "Failure detection").
    """

    labels: np.ndarray
    uncertainty: np.ndarray
    measure: UncertaintyMeasure
    agreement: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StructureMeasurement:
    """Volume and mean uncertainty of one predicted structure, the samples' disagreement
    about it (1 - :attr:`Prediction.agreement`; None when the prediction has none) and,
    on CT, its density: mean HU and the fraction of its voxels below
    :data:`LOW_ATTENUATION_HU`."""

    key: str
    name: str
    label: int
    voxels: int
    volume_ml: float
    mean_uncertainty: float
    review_required: bool
    mean_hu: float | None = None
    low_attenuation_fraction: float | None = None
    disagreement: float | None = None


def mc_seed(*parts: str) -> str:
    """The MC-dropout seed of a run: a digest of what fixes its samples (the input's
    content digest, the model's weight hash, ...)."""
    import hashlib

    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def slice_seed(seed: str, index: int) -> int:
    """The 63-bit generator seed of slice ``index`` of a run seeded with ``seed``."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\0slice\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def model_grid(
    rows: int, cols: int, spacing: tuple[float, float], pixel_spacing_mm: float, divisor: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Size of a ``rows`` x ``cols`` slice on a network's pixel grid, and that size padded
    up to a multiple of the network's ``divisor``."""
    size = (
        max(1, round(rows * spacing[0] / pixel_spacing_mm)),
        max(1, round(cols * spacing[1] / pixel_spacing_mm)),
    )
    padded = (math.ceil(size[0] / divisor) * divisor, math.ceil(size[1] / divisor) * divisor)
    return size, padded


def preprocess_slices(
    hu: torch.Tensor, spacing: tuple[float, float], geo: InputGeometry
) -> torch.Tensor:
    """Window ``(n, rows, cols)`` HU slices and resample them onto the padded model grid.

    Returns ``(n, 1, H, W)``; padding is 0, the value of air after windowing.
    """
    import torch
    from torch.nn import functional as F

    x = ((hu - geo.window.lower) / geo.window.width).clamp_(0.0, 1.0).unsqueeze(1)
    size, padded = model_grid(hu.shape[-2], hu.shape[-1], spacing, geo.pixel_spacing_mm, geo.divisor)
    if size != tuple(hu.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros((x.shape[0], 1, *padded), dtype=x.dtype, device=x.device)
    out[:, :, : size[0], : size[1]] = x
    return out


def _uncertainty(probs: torch.Tensor, measure: UncertaintyMeasure) -> torch.Tensor:
    """``probs`` is (T, n, H, W, C), classes last; returns (n, H, W)."""
    import torch

    if measure is UncertaintyMeasure.VARIANCE:
        return probs.var(dim=0, unbiased=False).sum(dim=-1)
    mean = probs.mean(dim=0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=-1)
    if measure is UncertaintyMeasure.ENTROPY:
        return entropy
    sample_entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean(dim=0)
    return (entropy - sample_entropy).clamp_min(0.0)


def _mc_on_model_grid(
    model: BayesianUNet, x: torch.Tensor, options: McOptions, seeds: Sequence[int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean softmax ``(n, H, W, C)`` (classes last), uncertainty ``(n, H, W)`` and each
    sample's labels ``(T, n, H, W)`` on the padded grid.

    The whole padded slice goes through the network: GroupNorm statistics span the
    field of view, so cropping to the body would change the result.
    """
    import torch

    n = x.shape[0]
    # The deterministic part runs once per slice (BayesianUNet.forward_mc); the
    # result is sample-major (T * n, C, H, W), the same layout as repeating the input.
    logits = model.forward_mc(x.contiguous(memory_format=torch.channels_last), options.samples,
                              seeds)
    # Channels-last logits viewed as (T * n, H, W, C): the softmax runs over the
    # innermost dimension without a layout copy.
    probs = torch.softmax(logits.permute(0, 2, 3, 1), dim=-1)
    probs = probs.reshape(options.samples, n, *probs.shape[1:])
    # max().indices is the argmax (the first maximum on ties, as argmax) and measured
    # faster than argmax over the innermost dimension on a CPU.
    return probs.mean(dim=0), _uncertainty(probs, options.measure), probs.max(dim=-1).indices


def _agreement_counts(samples: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(3, T, C)`` voxel counts per sample and class: the sample's own segmentation, its
    overlap with ``labels`` (the prediction), and the prediction itself (the same in every
    row). ``samples`` is ``(T, n, H, W)``, ``labels`` ``(n, H, W)``."""
    import torch

    t = samples.shape[0]
    offset = torch.arange(t, device=samples.device).view(t, 1, 1, 1) * classes
    index = (samples + offset).flatten()
    own = torch.bincount(index, minlength=t * classes)
    same = torch.bincount(index[(samples == labels[None]).flatten()], minlength=t * classes)
    predicted = torch.bincount(labels.flatten(), minlength=classes).repeat(t)
    return torch.stack([own, same, predicted]).view(3, t, classes).cpu()


def _agreement(counts: torch.Tensor) -> dict[int, float]:
    """Mean sample Dice per predicted label from summed :func:`_agreement_counts`."""
    own, same, predicted = counts.double()
    dice = 2.0 * same / (own + predicted).clamp_min(1.0)
    present = predicted[0] > 0
    return {int(c): float(dice[:, c].mean()) for c in range(1, counts.shape[2]) if bool(present[c])}


def _bilinear_taps(
    size_in: int, size_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weight of ``F.interpolate(mode="bilinear", align_corners=False)``.

    Output index ``o`` reads inputs ``i0[o]`` and ``i1[o]`` with weights ``1 - lam[o]``
    and ``lam[o]``, computed as PyTorch's kernel does (float32, source index clamped at 0).
    """
    import torch

    scale = torch.tensor(size_in / size_out, dtype=torch.float32, device=device)
    dst = torch.arange(size_out, dtype=torch.float32, device=device)
    src = (scale * (dst + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(size_in - 1)
    lam = (src - i0).clamp(0.0, 1.0)
    i1 = torch.where(i0 < size_in - 1, i0 + 1, i0)
    return i0, i1, lam


def _resampled_labels(mean: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Argmax over the classes of ``mean`` ``(n, h, w, C)`` bilinearly resampled to
    ``(rows, cols)``, without resampling all C channels everywhere.

    Each resampled vector is a convex combination of its 2 x 2 source vectors, so where
    the four sources have the same argmax, that class is the argmax of the combination
    too. Only the output pixels whose sources disagree (those along label boundaries,
    a few per cent) are interpolated in full, with the weights of ``F.interpolate``.
    """
    import torch

    # (n, h, w) as uint8 (at most 256 classes): the gathers below move an eighth of the
    # bytes of int64 labels.
    low = mean.argmax(dim=-1)
    if mean.shape[-1] <= 256:
        low = low.to(torch.uint8)
    r0, r1, ry = _bilinear_taps(mean.shape[1], rows, mean.device)
    c0, c1, cx = _bilinear_taps(mean.shape[2], cols, mean.device)
    top, bottom = low.index_select(1, r0), low.index_select(1, r1)
    labels = top.index_select(2, c0)
    disagree = labels != top.index_select(2, c1)
    disagree |= labels != bottom.index_select(2, c0)
    disagree |= labels != bottom.index_select(2, c1)
    s, y, x = disagree.nonzero(as_tuple=True)
    ly, lx = ry[y, None], cx[x, None]
    y0, y1, x0, x1 = r0[y], r1[y], c0[x], c1[x]
    value = (((1 - ly) * (1 - lx)) * mean[s, y0, x0] + ((1 - ly) * lx) * mean[s, y0, x1]
             + (ly * (1 - lx)) * mean[s, y1, x0] + (ly * lx) * mean[s, y1, x1])
    labels[s, y, x] = value.argmax(dim=-1).to(labels.dtype)
    return labels


def _predict_chunk(
    model: BayesianUNet, hu: torch.Tensor, spacing: tuple[float, float], geo: InputGeometry,
    options: McOptions, seeds: Sequence[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, uncertainty and :func:`_agreement_counts` (model grid) for ``(n, rows,
    cols)`` slices, all T samples in one batch."""
    from torch.nn import functional as F

    _, rows, cols = hu.shape
    x = preprocess_slices(hu, spacing, geo)
    mean_grid, unc_grid, samples = _mc_on_model_grid(model, x, options, seeds)
    size, _ = model_grid(rows, cols, spacing, geo.pixel_spacing_mm, geo.divisor)
    mean = mean_grid[:, : size[0], : size[1]]
    unc = unc_grid[:, None, : size[0], : size[1]]
    grid_labels = mean.argmax(dim=-1)
    counts = _agreement_counts(samples[:, :, : size[0], : size[1]], grid_labels, mean.shape[-1])
    if size == (rows, cols):
        return grid_labels, unc[:, 0], counts
    unc = F.interpolate(unc, size=(rows, cols), mode="bilinear", align_corners=False)
    return _resampled_labels(mean, rows, cols), unc[:, 0], counts


def predict_volume(
    model: BayesianUNet,
    hu: np.ndarray,
    spacing: tuple[float, float],
    geo: InputGeometry,
    options: McOptions | None = None,
    seed: str | None = None,
) -> Prediction:
    """MC-dropout label map and uncertainty of a ``(slices, rows, cols)`` HU volume.

    ``spacing`` is the in-plane (row, column) spacing in mm; ``geo`` with a
    ``body_size_px`` is adapted to the volume's body first (:meth:`InputGeometry.for_volume`).
    With ``seed`` the samples are reproducible (slice ``k`` seeded by :func:`slice_seed`);
    without, they come from the global random state. Raises ValueError for a volume that
    is not 3-D.
    """
    import torch

    opts = options or McOptions()
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {hu.shape}")
    geo = geo.for_volume(hu, spacing)
    device = next(model.parameters()).device
    model.eval()
    model.set_mc_dropout(True)
    labels = np.empty(hu.shape, dtype=np.uint8)
    uncertainty = np.empty(hu.shape, dtype=np.float32)
    batch_images = opts.batch_images or opts.samples * (1 if device.type == "cpu" else 8)
    per_batch = max(1, int(batch_images // opts.samples * opts.batch_scale))
    counts: torch.Tensor | None = None
    with torch.inference_mode():
        for start in range(0, hu.shape[0], per_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(hu[start : start + per_batch]))
            seeds = (None if seed is None else
                     [slice_seed(seed, k) for k in range(start, start + chunk.shape[0])])
            lab, unc, chunk_counts = _predict_chunk(model, chunk.float().to(device), spacing, geo,
                                                    opts, seeds)
            labels[start : start + per_batch] = lab.cpu().numpy()
            uncertainty[start : start + per_batch] = unc.cpu().numpy()
            counts = chunk_counts if counts is None else counts + chunk_counts
    model.set_mc_dropout(False)
    agreement = _agreement(counts) if counts is not None else {}
    return Prediction(labels=labels, uncertainty=uncertainty, measure=opts.measure, agreement=agreement)


def measure_structures(
    prediction: Prediction, table: LabelTable, voxel_volume_mm3: float, threshold: float,
    hu: np.ndarray | None = None, score: ReviewScore = ReviewScore.UNCERTAINTY,
) -> list[StructureMeasurement]:
    """Volume (mL), mean uncertainty and the samples' disagreement of each predicted
    structure, label order, and with ``hu`` (the CT volume, same shape) its mean HU and
    low-attenuation fraction.

    A structure is flagged for review when its ``score`` (mean uncertainty, or
    disagreement) exceeds ``threshold``; a prediction without agreement figures flags by
    mean uncertainty.
    Structures absent from the prediction are left out. Raises ValueError when ``hu``
    does not have the shape of the label map.
    """
    flat_labels = prediction.labels.ravel()
    counts = np.bincount(flat_labels, minlength=table.num_classes)
    sums = np.bincount(flat_labels, weights=prediction.uncertainty.ravel().astype(np.float64),
                       minlength=table.num_classes)
    density = None if hu is None else _density(flat_labels, hu, prediction.labels.shape,
                                               counts, table.num_classes)
    out: list[StructureMeasurement] = []
    for structure in table:
        voxels = int(counts[structure.label])
        if voxels == 0:
            continue
        mean_unc = float(sums[structure.label] / voxels)
        mean_hu, low = (None, None) if density is None else (
            float(density[0][structure.label]), float(density[1][structure.label]))
        agreement = prediction.agreement.get(structure.label)
        disagreement = None if agreement is None else 1.0 - agreement
        flagged_by = (disagreement if score is ReviewScore.DISAGREEMENT and disagreement is not None
                      else mean_unc)
        out.append(
            StructureMeasurement(
                key=structure.key,
                name=structure.name,
                label=structure.label,
                voxels=voxels,
                volume_ml=voxels * voxel_volume_mm3 / 1000.0,
                mean_uncertainty=mean_unc,
                review_required=flagged_by > threshold,
                mean_hu=mean_hu,
                low_attenuation_fraction=low,
                disagreement=disagreement,
            )
        )
    return out


def _density(
    flat_labels: np.ndarray, hu: np.ndarray, shape: tuple[int, ...], counts: np.ndarray,
    classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean HU and the fraction below :data:`LOW_ATTENUATION_HU` per label (0 where empty)."""
    if hu.shape != shape:
        raise ValueError(f"HU volume {hu.shape} differs from the label map {shape}")
    flat_hu = hu.ravel()
    total = np.bincount(flat_labels, weights=flat_hu.astype(np.float64), minlength=classes)
    low = np.bincount(flat_labels[flat_hu < LOW_ATTENUATION_HU], minlength=classes)
    safe = np.maximum(counts, 1)
    return total / safe, low / safe


def load_model(
    weights_dir: Path, device: str = "cpu", expected: Sequence[str] | None = None
) -> tuple[BayesianUNet, ModelCard, InputGeometry]:
    """Build the network from its card, load and verify its weights.

    ``expected`` are the structure keys of the label table in label order; raises
    acqflow.models.store.WeightsError when the weights are missing, corrupt or were trained for
    other structures.
    """
    import torch

    from acqflow.models.store import WeightsError, load_weights, read_card
    from acqflow.models.unet import BayesianUNet

    card = read_card(weights_dir, MODEL_NAME)
    if card.architecture != "BayesianUNet":
        raise WeightsError(f"{MODEL_NAME} card names architecture {card.architecture!r}")
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: keep the RNG
        model = BayesianUNet(**card.arguments)
    load_weights(model, weights_dir, MODEL_NAME, device=device)
    # Channels-last lets oneDNN/cuDNN run the batched convolutions much faster.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    trained = card.training.get("labels")
    if expected is not None and trained is not None and list(trained) != list(expected):
        raise WeightsError("weights were trained for a different label table")
    try:
        geo = InputGeometry.from_dict(card.training["input"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"card of {MODEL_NAME} lacks a valid training.input: {exc}") from exc
    return model.to(device).eval(), card, geo
