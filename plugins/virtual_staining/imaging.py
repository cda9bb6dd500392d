"""Picking the phase (or fluorescence) plane out of an image and normalising intensities.

Microscope files come as plain 2-D TIFFs, multi-page stacks, ImageJ hyperstacks or
OME-TIFF; tifffile names their axes (``"YX"``, ``"CYX"``, ``"TZCYX"``, ``"IYX"`` for
plain pages, ``"YXS"`` for RGB samples). :func:`select_plane` reduces any of these to one
2-D plane or raises :class:`~acqflow.plugins.api.InvalidInputError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acqflow.plugins.api import InvalidInputError

__all__ = [
    "FLUORESCENCE_NAMES",
    "MIN_SIDE",
    "PHASE_NAMES",
    "model_pixel_size",
    "normalize",
    "read_plane",
    "rescale_mask",
    "rescale_plane",
    "resize_map",
    "select_plane",
]

PHASE_NAMES = ("phase", "ph", "pc", "brightfield", "bf", "trans", "tl")
FLUORESCENCE_NAMES = ("gfp", "nkx", "fitc", "green", "488", "egfp")
MIN_SIDE = 8
_CHANNEL_AXES = ("C", "I", "Q")


def _channel_index(size: int, names: Sequence[str], wanted: str | int | None, defaults: Sequence[str]) -> int:
    """Index of the wanted channel; raises InvalidInputError when it cannot be decided."""
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit()):
        index = int(wanted)
        if not 0 <= index < size:
            raise InvalidInputError(f"channel index {index} out of range for {size} channels")
        return index
    lowered = [n.lower() for n in names]
    candidates = [wanted.lower()] if isinstance(wanted, str) else list(defaults)
    for candidate in candidates:
        for i, name in enumerate(lowered[:size]):
            if name == candidate or (len(candidate) > 2 and candidate in name):
                return i
    if wanted is None and size == 1:
        return 0
    label = f"channel {wanted!r}" if wanted is not None else f"a channel named like {list(defaults)}"
    raise InvalidInputError(f"no {label} among {list(names) or size} channels")


def select_plane(
    array: np.ndarray,
    axes: str,
    channel_names: Sequence[str] = (),
    channel: str | int | None = None,
    defaults: Sequence[str] = PHASE_NAMES,
) -> np.ndarray:
    """The 2-D ``YX`` plane of the wanted channel.

    ``channel`` is an index or a name (matched against ``channel_names``); when None, a
    channel whose name matches ``defaults`` is taken, or the only one. Z stacks give their
    middle plane; RGB samples are averaged. Raises InvalidInputError for missing Y/X axes,
    an undecidable channel, several time points, non-numeric or non-finite pixels, or an
    image smaller than ``MIN_SIDE`` pixels.
    """
    axes = axes.upper()
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        raise InvalidInputError(f"need Y and X axes, got axes {axes!r} for shape {array.shape}")
    if array.dtype.kind not in "uif":
        raise InvalidInputError(f"unsupported pixel type {array.dtype}")
    index: list[int | slice] = []
    channel_axis = next((a for a in _CHANNEL_AXES if a in axes and array.shape[axes.index(a)] > 1), None)
    for axis, size in zip(axes, array.shape, strict=True):
        if axis in "YXS":
            index.append(slice(None))
        elif axis == channel_axis:
            index.append(_channel_index(size, channel_names, channel, defaults))
        elif axis == "Z":
            index.append(size // 2)
        elif size == 1:
            index.append(0)
        else:
            raise InvalidInputError(f"axis {axis} has {size} planes; expected one image ({axes})")
    if channel_axis is None and channel is not None and channel_names:
        _channel_index(1, channel_names, channel, defaults)
    kept = "".join(a for a, i in zip(axes, index, strict=True) if isinstance(i, slice))
    plane = np.asarray(array[tuple(index)])
    if "S" in kept:
        samples = kept.index("S")
        rgb = np.take(plane, range(min(3, plane.shape[samples])), axis=samples)
        plane = rgb.astype(np.float32).mean(axis=samples)
        kept = kept.replace("S", "")
    if kept == "XY":
        plane = plane.T
    if min(plane.shape) < MIN_SIDE:
        raise InvalidInputError(f"image {plane.shape} is smaller than {MIN_SIDE}x{MIN_SIDE}")
    if plane.dtype.kind == "f" and not np.isfinite(plane).all():
        raise InvalidInputError("image contains NaN or infinite pixels")
    return plane


def normalize(plane: np.ndarray) -> np.ndarray:
    """Float32 copy scaled so the 1st..99th percentile spans 1 and the median sits at 0.

    Makes 8-bit, 12-bit-in-16 and 16-bit images of the same scene look alike to the model.
    """
    image = plane.astype(np.float32)
    step = max(1, int(np.sqrt(image.size / 250_000)))
    low, mid, high = np.percentile(image[::step, ::step], [1.0, 50.0, 99.0])
    return (image - np.float32(mid)) / np.float32(max(high - low, 1e-6))


#: Relative pixel-size difference below which an image is used as it is.
SCALE_TOLERANCE = 0.05


def model_pixel_size(training: Mapping[str, Any]) -> float | None:
    """The scale (um per pixel) of weights from their card's ``training`` section; None
    for weights trained without one (used without resampling)."""
    value = training.get("pixel_size_um")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def rescale_plane(plane: np.ndarray, pixel_um: tuple[float, float], target_um: float) -> np.ndarray:
    """``plane`` resampled so that one pixel is ``target_um`` (float32; the input itself
    when both sides already are within :data:`SCALE_TOLERANCE`).

    Downsampling is anti-aliased (Gaussian prefilter) so a 0.3 um image does not alias
    into the model's scale. Raises InvalidInputError when the result would be smaller
    than ``MIN_SIDE`` pixels.
    """
    from skimage.transform import resize

    factors = (pixel_um[0] / target_um, pixel_um[1] / target_um)
    if all(abs(f - 1.0) <= SCALE_TOLERANCE for f in factors):
        return plane
    shape = tuple(max(1, round(side * f)) for side, f in zip(plane.shape, factors, strict=True))
    if min(shape) < MIN_SIDE:
        raise InvalidInputError(
            f"image {plane.shape} at {pixel_um[1]:.3g} um is only {shape} at the model's {target_um:g} um"
        )
    resized: np.ndarray = resize(  # type: ignore[no-untyped-call]
        plane.astype(np.float32), shape, order=1, anti_aliasing=min(factors) < 1.0, preserve_range=True
    ).astype(np.float32)
    return resized


def rescale_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask resampled to ``shape`` (area-weighted, then > 0.5)."""
    return resize_map(mask.astype(np.float32), shape) > 0.5


def resize_map(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A float map (probabilities, fractions) resampled to ``shape``, bilinear."""
    from skimage.transform import resize

    if values.shape == tuple(shape):
        return values
    resized: np.ndarray = resize(  # type: ignore[no-untyped-call]
        values, shape, order=1, anti_aliasing=values.shape[0] > shape[0], preserve_range=True
    ).astype(np.float32)
    return resized


def read_plane(
    path: Path, channel: str | int | None, defaults: Sequence[str]
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read one plane of a TIFF / OME-TIFF / ImageJ file and its pixel size in um (y, x).

    Raises InvalidInputError when the wanted plane cannot be found, OSError when the file
    cannot be read.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
        names = _channel_names(tif)
        pixel_size = _pixel_size(tif)
    return select_plane(array, axes, names, channel, defaults), pixel_size


def _channel_names(tif: object) -> tuple[str, ...]:
    """Channel names from OME or ImageJ metadata, empty when there are none."""
    import xml.etree.ElementTree as ET

    ome = getattr(tif, "ome_metadata", None)
    if ome:
        root = ET.fromstring(ome)
        found = [e.get("Name", "") for e in root.iter() if e.tag.endswith("}Channel")]
        if any(found):
            return tuple(found)
    imagej = getattr(tif, "imagej_metadata", None) or {}
    labels = imagej.get("Labels")
    return tuple(str(x) for x in labels) if isinstance(labels, list) else ()


def _pixel_size(tif: object) -> tuple[float, float] | None:
    """Pixel size in um from the first page's resolution tags (ImageJ convention)."""
    pages = getattr(tif, "pages", None)
    page = pages.first if pages is not None else None
    tags = getattr(page, "tags", None)
    if tags is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    xres = tags["XResolution"].value
    yres = tags["YResolution"].value
    unit_tag = tags.get("ResolutionUnit")
    # TIFF resolution unit 2 = inch, 3 = centimetre; ImageJ writes 1 (none) plus "unit=um".
    scale = {2: 25400.0, 3: 10000.0}.get(int(unit_tag.value) if unit_tag is not None else 1, 1.0)
    try:
        sx = scale * xres[1] / xres[0]
        sy = scale * yres[1] / yres[0]
    except (TypeError, ZeroDivisionError):
        return None
    if sx <= 0 or sy <= 0 or (sx == 1.0 and sy == 1.0 and scale == 1.0):
        return None
    return float(sy), float(sx)
