"""Synthetic phase-contrast / NKX2.5-GFP image pairs for demos and tests.

Each experiment has wells, each well has positions (fields of view) imaged at several
time points. In every field a smooth random "niche" field decides where cardiomyocytes
appear; the cardiomyocyte area is the lowest quantile of that field, so regions grow
(and stay nested) as the well's differentiation efficiency rises over time.

Phase contrast: non-cardiomyocyte cells are flat, coarse-grained texture; cardiomyocyte
regions are finely granular with stronger local contrast and a slightly darker mean. A
strong uneven illumination and per-image gain/offset make a single pixel threshold
useless, while texture statistics (local variance, fine-scale energy) separate the two.
Fluorescence (GFP) is bright inside cardiomyocyte regions with some texture plus
background and camera noise, so Otsu binarisation recovers the regions.

Files written by :func:`write_series` are named::

    {experiment}_{well}_pos{position}_t{timepoint:03d}_{channel}.tif

e.g. ``EXP1_B03_pos1_t005_phase.tif`` and ``EXP1_B03_pos1_t005_gfp.tif`` (``channel`` is
``phase`` or ``gfp``); each is a single-page 2-D TIFF written with ImageJ metadata
(pixel size in micrometres) in the requested bit depth. Time points start at 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from acqflow.plugins.api import ImageMetadata

__all__ = [
    "FILE_NAME_PATTERN",
    "FieldPlace",
    "SyntheticImage",
    "SyntheticSpec",
    "generate_series",
    "parse_name",
    "write_images",
    "write_series",
]

#: Regular expression matching the names written by :func:`write_series`.
FILE_NAME_PATTERN = (
    r"(?P<experiment>[^_/]+)_(?P<well>[A-P]\d{2})_(?P<position>pos\d+)"
    r"_t(?P<timepoint>\d+)_(?P<channel>phase|gfp)\.(?:ome\.)?tiff?$"
)
_ROWS = "ABCDEFGH"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; validates itself (raises ValueError)."""

    experiments: int = 2
    wells: int = 3
    positions: int = 2
    timepoints: int = 4
    shape: tuple[int, int] = (256, 256)
    bit_depth: int = 16
    seed: int = 0
    interval_s: float = 6 * 3600.0
    pixel_size_um: float = 0.65
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def __post_init__(self) -> None:
        if min(self.experiments, self.wells, self.positions, self.timepoints) < 1:
            raise ValueError("experiments, wells, positions and timepoints must be >= 1")
        if self.wells > 8 * 12:
            raise ValueError("at most 96 wells")
        if min(self.shape) < 16:
            raise ValueError(f"shape {self.shape} is too small")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {self.bit_depth}")


@dataclass(frozen=True)
class SyntheticImage:
    """One generated field at one time point: phase, GFP and the true region mask."""

    phase: np.ndarray
    gfp: np.ndarray
    mask: np.ndarray
    metadata: ImageMetadata
    efficiency: float

    @property
    def stem(self) -> str:
        """File-name stem without the channel, e.g. ``EXP1_B03_pos1_t005``."""
        md = self.metadata
        return f"{md.experiment}_{md.well}_{md.position}_t{md.timepoint:03d}"


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    from scipy import ndimage

    field: np.ndarray = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    scaled: np.ndarray = (field - field.mean()) / (field.std() + 1e-6)
    return scaled


@dataclass(frozen=True)
class _FieldTextures:
    """Fixed appearance of one field of view; only the region threshold changes in time."""

    niche: np.ndarray
    plain: np.ndarray
    granular: np.ndarray
    illumination: np.ndarray
    gfp_texture: np.ndarray


def _field_textures(rng: np.random.Generator, shape: tuple[int, int]) -> _FieldTextures:
    from scipy import ndimage

    scale = min(shape) / 256.0
    niche = _noise(rng, shape, sigma=14.0 * max(scale, 1.0) ** 0.5)
    ranks = np.empty(niche.size, dtype=np.float32)
    ranks[np.argsort(niche, axis=None)] = np.linspace(0.0, 1.0, niche.size, dtype=np.float32)
    plain = 0.9 * _noise(rng, shape, 3.0) + 0.25 * _noise(rng, shape, 0.7)
    dots = (rng.random(shape) < 0.04).astype(np.float32)
    granular = 0.6 * _noise(rng, shape, 0.8) + 0.8 * ndimage.gaussian_filter(dots, 0.8) / 0.1
    granular = (granular - granular.mean()) / (granular.std() + 1e-6) * 1.4
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * yy / shape[0] + np.sin(angle) * xx / shape[1]) * 1.6
    illumination = ramp + 0.8 * _noise(rng, shape, min(shape) / 6.0)
    return _FieldTextures(
        niche=ranks.reshape(shape),
        plain=plain,
        granular=granular,
        illumination=illumination,
        gfp_texture=_noise(rng, shape, 2.0),
    )


def _to_dtype(image: np.ndarray, bit_depth: int, rng: np.random.Generator) -> np.ndarray:
    """Map a unit-scale float image into the integer range with a random gain and offset."""
    top = 255.0 if bit_depth == 8 else float(rng.choice([4095.0, 65535.0]))
    low, high = np.percentile(image[::4, ::4], [0.1, 99.9])
    span = rng.uniform(0.45, 0.8) * top
    offset = rng.uniform(0.05, 0.95 * top - span)
    scaled = offset + (image - low) / (high - low + 1e-6) * span
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    result: np.ndarray = np.clip(np.rint(scaled), 0, top).astype(dtype)
    return result


def _render_field(
    rng: np.random.Generator,
    textures: _FieldTextures,
    efficiency: float,
    bit_depth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase, GFP and true mask of one field at the given cardiomyocyte area fraction."""
    from scipy import ndimage

    shape = textures.niche.shape
    mask = textures.niche < efficiency
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)
    fresh = rng.standard_normal(shape).astype(np.float32)
    phase = (
        (1.0 - soft) * textures.plain
        + soft * (textures.granular - 0.35)
        + textures.illumination
        + 0.25 * fresh
    )
    gfp = (
        0.1 * textures.illumination
        + soft * (2.0 + 0.5 * textures.gfp_texture)
        + 0.35 * rng.standard_normal(shape).astype(np.float32)
    )
    return _to_dtype(phase, bit_depth, rng), _to_dtype(gfp, bit_depth, rng), mask


def _well_name(index: int) -> str:
    return f"{_ROWS[index // 12]}{index % 12 + 1:02d}"


@dataclass(frozen=True)
class FieldPlace:
    """Where and when a generated field is imaged: experiment, well and position indices,
    the time point, and the plate's schedule."""

    experiment: int
    well: int
    position: int
    timepoint: int
    positions: int  # per well: fields of a well are imaged a minute apart
    start_time: float
    interval_s: float

    def metadata(self, pixel_um: float) -> ImageMetadata:
        """The metadata a microscope would record for this field."""
        order = self.well * self.positions + self.position
        return ImageMetadata(
            experiment=f"EXP{self.experiment + 1}",
            plate="P1",
            well=_well_name(self.well),
            position=f"pos{self.position + 1}",
            timepoint=self.timepoint,
            acquired_at=self.start_time + self.timepoint * self.interval_s + 60.0 * order,
            pixel_size_um=(pixel_um, pixel_um),
        )


def generate_series(spec: SyntheticSpec) -> Iterator[SyntheticImage]:
    """Yield every image of the spec in acquisition order (time point, then well, position).

    Each well gets a final efficiency drawn from 0.1..0.8; efficiency rises over the time
    points from 30 % of the final value. Deterministic for a given spec.
    """
    rng = np.random.default_rng(spec.seed)
    fields = []
    for e in range(spec.experiments):
        for w in range(spec.wells):
            final = float(rng.uniform(0.1, 0.8))
            for p in range(spec.positions):
                child = np.random.default_rng(rng.integers(2**63))
                fields.append((e, w, p, final, child, _field_textures(child, spec.shape)))
    for t in range(spec.timepoints):
        progress = 1.0 if spec.timepoints == 1 else t / (spec.timepoints - 1)
        for e, w, p, final, child, textures in fields:
            efficiency = final * (0.3 + 0.7 * progress)
            phase, gfp, mask = _render_field(child, textures, efficiency, spec.bit_depth)
            place = FieldPlace(e, w, p, t, spec.positions, spec.start_time, spec.interval_s)
            metadata = place.metadata(spec.pixel_size_um)
            yield SyntheticImage(phase, gfp, mask, metadata, float(mask.mean()))


def write_series(folder: Path, spec: SyntheticSpec) -> list[Path]:
    """Write every image of ``spec`` into ``folder`` (created) in acquisition order.

    Returns the written paths (phase then GFP of each field). Raises OSError when the
    folder cannot be written.
    """
    return write_images(folder, generate_series(spec))


def write_images(folder: Path, images: Iterable[SyntheticImage]) -> list[Path]:
    """Write generated fields as ``{stem}_phase.tif`` / ``{stem}_gfp.tif`` into ``folder``.

    Each file carries its pixel size (ImageJ resolution) and acquisition time (TIFF
    DateTime). Returns the paths in order; raises OSError when the folder cannot be written.
    """
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for image in images:
        size = image.metadata.pixel_size_um
        resolution = (1.0 / size[1], 1.0 / size[0]) if size else None
        for channel, data in (("phase", image.phase), ("gfp", image.gfp)):
            path = folder / f"{image.stem}_{channel}.tif"
            tifffile.imwrite(
                path,
                data,
                imagej=True,
                resolution=resolution,
                metadata={"axes": "YX", "unit": "um"},
                # The acquisition time travels in the file (TIFF DateTime, local time, as
                # microscopes write it) so the daemon's time course has a real time axis.
                datetime=_local_time(image.metadata.acquired_at),
            )
            paths.append(path)
    return paths


def _local_time(when: float | None) -> datetime | None:
    return None if when is None else datetime.fromtimestamp(when)


def parse_name(name: str) -> dict[str, str] | None:
    """Fields of a file name written by :func:`write_series`, or None when it does not match."""
    match = re.search(FILE_NAME_PATTERN, name)
    return match.groupdict() if match else None
