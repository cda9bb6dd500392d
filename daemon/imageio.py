"""Reading microscope images: a cheap header check at the source, a verified read in the worker.

:func:`read_tiff_header` opens a TIFF without decoding pixels: it walks the IFD chain,
checks that the pixel data of the first and last page lies inside the file, and collects
what the embedded metadata says (OME-XML image by image through :mod:`acqflow.daemon.ome`,
ImageJ, baseline tags). The folder watcher
calls it on every complete file, so a zero-byte, non-TIFF or truncated file is rejected
where it arrives.

:func:`read_image` is what a worker calls for an image arrival: it repeats the checks
for every page (tifffile pads a short uncompressed strip with zeros without complaint,
so completeness is verified from the strip/tile offsets, the IFD chain and the ImageJ
image count), refuses images that would decode to more than :data:`MAX_DECODED_BYTES`,
and returns an :class:`~acqflow.plugins.api.ImageItem` with the file's own axes.

Every refusal is an :class:`ImageRejected` (an :class:`~acqflow.daemon.errors.InputRejected`)
with a one-line message and a short ``reason`` usable as a metric label.
"""

from __future__ import annotations

import logging
import math
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from acqflow.daemon.errors import InputRejected, TransientError
from acqflow.daemon.journal import Arrival
from acqflow.daemon.ome import UNIT_TO_UM, OmeImage, parse_ome
from acqflow.plugins.api import ImageItem, ImageMetadata

__all__ = [
    "MAX_DECODED_BYTES",
    "ImageRejected",
    "TiffHeader",
    "is_tiff_magic",
    "metadata_from_json",
    "metadata_to_json",
    "read_image",
    "read_tiff_header",
]

log = logging.getLogger(__name__)

#: Largest decoded image accepted (2 GiB, e.g. a 32768 x 32768 16-bit plane): bigger
#: files would exhaust a worker's memory; tile them before acquisition-time processing.
MAX_DECODED_BYTES = 2**31
#: Little/big-endian classic TIFF and BigTIFF.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_MAX_IFDS = 1_000_000
# What tifffile and its codecs raise on malformed input (there is no common base class).
# RuntimeError: every codec error of imagecodecs (JPEG, LZW, JPEG 2000 …) derives from it.
_DECODE_ERRORS = (
    tifffile.TiffFileError, ValueError, TypeError, KeyError, IndexError, struct.error,
    EOFError, OverflowError, zlib.error, NotImplementedError, RuntimeError,
)


class ImageRejected(InputRejected):
    """An image that can never be read; ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF says about itself without decoding pixels.

    ``plate``/``well`` come from an OME Plate; ``channel_names`` from OME channels or
    ImageJ labels; ``acquired_at`` from OME AcquisitionDate or the DateTime tag (local
    time); ``pixel_size_um`` is (y, x) from OME PhysicalSize or the resolution tags with
    an ImageJ or centimetre unit; ``position`` (an OME StageLabel name) and ``stage_um``
    ((x, y) in µm) from OME only.

    An OME-TIFF's metadata above is that of image ``series``: the first image stored in
    this file (the first one at all unless a multi-file OME-TIFF names the files).
    ``images`` lists every OME image; ``split`` the indices of those that are series of
    their own in this file, each to be read as an input of its own (see :meth:`inputs`).
    """

    size: int
    flavor: str  # "ome", "imagej" or "tiff"
    page_count: int
    page_shape: tuple[int, ...]
    dtype: str
    pixel_size_um: tuple[float, float] | None = None
    acquired_at: float | None = None
    channel_names: tuple[str, ...] = ()
    plate: str | None = None
    well: str | None = None
    position: str | None = None
    stage_um: tuple[float, float] | None = None
    series: int = 0
    images: tuple[OmeImage, ...] = ()
    split: tuple[int, ...] = ()

    def inputs(self) -> tuple[TiffHeader, ...]:
        """One header per input the file holds: per image of a multi-image OME-TIFF whose
        images are separate series (each with its own metadata), else this one."""
        return tuple(self.describing(index) for index in self.split) or (self,)

    def describing(self, series: int) -> TiffHeader:
        """This header with the metadata of OME image ``series`` (itself without one)."""
        image = next((i for i in self.images if i.index == series), None)
        if image is None or series == self.series:
            return self
        return replace(self, **_image_fields(image, self.images), series=series)


def is_tiff_magic(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts like a TIFF or BigTIFF."""
    return head[:4] in TIFF_MAGIC


def read_tiff_header(path: Path) -> TiffHeader:
    """Inspect ``path`` cheaply: IFD chain, first/last page extents, embedded metadata.

    Raises ImageRejected (reason ``empty``, ``not_image``, ``truncated`` or ``corrupt``)
    and OSError when the file cannot be opened.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        page_count = _check_structure(fh, size, path.name)
    try:
        with tifffile.TiffFile(path) as tif:
            _check_extents(tif, size, path.name, all_pages=False)
            return _header_from(tif, size, page_count)
    except _DECODE_ERRORS as exc:
        raise ImageRejected("corrupt", f"{path.name}: unreadable TIFF header: {exc}") from exc


def read_image(arrival: Arrival, max_bytes: int = MAX_DECODED_BYTES) -> ImageItem:
    """Read an image arrival's file completely and verified; the worker calls this.

    Metadata comes from ``arrival.attrs["metadata"]``; a pixel size, channel or
    acquisition time the source did not know is filled from the file. The series read is
    ``arrival.attrs["series"]`` (the source gives each image of a multi-image OME-TIFF an
    arrival of its own), else the first. Raises ImageRejected for empty, non-TIFF,
    truncated, corrupt, unsupported or too large files, and TransientError when the file
    cannot be reached for now (its folder is gone, I/O error).
    """
    path = arrival.path
    size = _size_or_raise(path)
    chosen = _series_index(arrival)
    index = chosen or 0
    try:
        with path.open("rb") as fh:
            page_count = _check_structure(fh, size, path.name)
        with tifffile.TiffFile(path) as tif:
            _check_extents(tif, size, path.name, all_pages=True)
            header = _header_from(tif, size, page_count)
            if chosen is not None:
                header = header.describing(chosen)
            if index >= len(tif.series):
                raise ImageRejected(
                    "corrupt", f"{path.name}: no image series {index} (the file holds {len(tif.series)})"
                )
            series = tif.series[index]
            _check_decodable(series, path.name, max_bytes)
            array = np.asarray(series.asarray())
            axes = str(series.axes)
    except OSError as exc:
        raise TransientError(f"{path.name}: cannot read: {exc}") from exc
    except _DECODE_ERRORS as exc:
        # A codec tifffile only has through the optional imagecodecs package (LZW, JPEG…)
        reason = "unsupported" if "imagecodecs" in str(exc) else "corrupt"
        raise ImageRejected(reason, f"{path.name}: cannot decode image: {exc}") from exc
    if array.ndim != len(axes):  # tifffile squeezes; keep axes and array in step
        raise ImageRejected(
            "corrupt", f"{path.name}: axes {axes!r} do not match shape {array.shape}"
        )
    metadata = metadata_from_json(arrival.attrs.get("metadata"))
    names = _channel_names_for(array, axes, header.channel_names)
    metadata = _complete_metadata(metadata, header)
    return ImageItem(
        identity=arrival.key,
        source_path=path,
        array=array,
        axes=axes,
        metadata=metadata,
        channel_names=names,
    )


_PAIRS = ("pixel_size_um", "stage_position_um")  # tuples in ImageMetadata, lists in JSON


def metadata_to_json(metadata: ImageMetadata) -> dict[str, Any]:
    """ImageMetadata as a JSON-friendly dict (the ``metadata`` attribute of an arrival)."""
    data = asdict(metadata)
    for key in _PAIRS:
        if data[key] is not None:
            data[key] = list(data[key])
    return data


def metadata_from_json(data: object) -> ImageMetadata:
    """The inverse of :func:`metadata_to_json`; unknown keys are ignored, bad values dropped."""
    if not isinstance(data, Mapping):
        return ImageMetadata()
    fields = {k: data[k] for k in ImageMetadata.__dataclass_fields__ if data.get(k) is not None}
    try:
        for key in _PAIRS:
            if key in fields:
                fields[key] = (float(fields[key][0]), float(fields[key][1]))
        return ImageMetadata(**fields)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        log.warning("ignoring invalid image metadata %r: %s", dict(data), exc)
        return ImageMetadata()


def _series_index(arrival: Arrival) -> int | None:
    """The series the source chose (an image of a multi-image OME-TIFF), None when it chose none."""
    value = arrival.attrs.get("series")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- structure checks ----------------------------------------------------------------


def _size_or_raise(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError as exc:
        if path.parent.is_dir():
            raise ImageRejected("missing", f"{path.name}: the input file no longer exists") from exc
        raise TransientError(f"{path.parent}: folder not reachable") from exc
    except OSError as exc:
        raise TransientError(f"{path.name}: cannot stat: {exc}") from exc


def _check_structure(fh: BinaryIO, size: int, name: str) -> int:
    """Check the magic bytes and walk the IFD chain; returns the number of IFDs."""
    if size == 0:
        raise ImageRejected("empty", f"{name}: zero-byte file")
    head = fh.read(16)
    if not is_tiff_magic(head):
        raise ImageRejected("not_image", f"{name}: not a TIFF image (starts with {head[:4]!r})")
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if len(head) < (16 if big else 8):
        raise ImageRejected("truncated", f"{name}: truncated TIFF header ({size} bytes)")
    if big:
        count_fmt, entry, next_fmt = order + "Q", 20, order + "Q"
    else:
        count_fmt, entry, next_fmt = order + "H", 12, order + "I"
    offset: int = struct.unpack(next_fmt, head[8:16] if big else head[4:8])[0]
    if offset == 0:
        raise ImageRejected("corrupt", f"{name}: TIFF without any image directory")
    seen: set[int] = set()
    while offset:
        if offset in seen or len(seen) >= _MAX_IFDS:
            raise ImageRejected("corrupt", f"{name}: image directory chain loops")
        seen.add(offset)
        count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
        if offset + count_size > size:
            raise _truncated(name, offset + count_size, size, "image directory")
        fh.seek(offset)
        count: int = struct.unpack(count_fmt, fh.read(count_size))[0]
        next_at = offset + count_size + count * entry
        if next_at + next_size > size:
            raise _truncated(name, next_at + next_size, size, "image directory")
        fh.seek(next_at)
        offset = struct.unpack(next_fmt, fh.read(next_size))[0]
    return len(seen)


def _truncated(name: str, needed: int, size: int, what: str) -> ImageRejected:
    return ImageRejected(
        "truncated", f"{name}: truncated: {what} needs {needed} bytes, the file has {size}"
    )


def _check_extents(tif: tifffile.TiffFile, size: int, name: str, all_pages: bool) -> None:
    """Every strip/tile (of the first and last, or of all pages) must lie inside the file."""
    pages = tif.pages
    count = len(pages)
    indices = range(count) if all_pages else sorted({0, count - 1})
    for index in indices:
        page = pages[index]
        for offset, length in zip(page.dataoffsets, page.databytecounts, strict=False):
            if length and offset + length > size:
                raise _truncated(name, offset + length, size, f"pixel data of page {index}")
    imagej = tif.imagej_metadata
    first = pages.first
    if imagej and int(imagej.get("images", 1)) > count and first.is_contiguous:
        # Large ImageJ stacks store one IFD and the planes back to back after it.
        end = first.dataoffsets[0] + int(imagej["images"]) * first.nbytes
        if end > size:
            raise _truncated(name, end, size, f"ImageJ stack of {imagej['images']} planes")


def _check_decodable(series: tifffile.TiffPageSeries, name: str, max_bytes: int) -> None:
    dtype = np.dtype(series.dtype)
    if dtype.kind not in "uifb":
        raise ImageRejected("unsupported", f"{name}: unsupported pixel type {dtype}")
    nbytes = math.prod(series.shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise ImageRejected(
            "too_large",
            f"{name}: image of shape {tuple(series.shape)} decodes to {nbytes} bytes,"
            f" above the limit of {max_bytes}",
        )


# --- embedded metadata ---------------------------------------------------------------


def _header_from(tif: tifffile.TiffFile, size: int, page_count: int) -> TiffHeader:
    page = tif.pages.first
    dtype = page.dtype
    name = Path(tif.filehandle.path).name
    if dtype is None:
        raise ImageRejected("unsupported", f"{name}: unsupported sample format")
    images = (parse_ome(tif.ome_metadata, name) or ()) if tif.is_ome and tif.ome_metadata else ()
    stored = tuple(i for i in images if i.in_file) or images
    imagej = tif.imagej_metadata
    labels = imagej.get("Labels") if imagej else None
    header = TiffHeader(
        size=size,
        flavor="ome" if images else ("imagej" if imagej else "tiff"),
        page_count=page_count,
        page_shape=tuple(int(v) for v in page.shape),
        dtype=str(np.dtype(dtype)),
        # what the TIFF itself says; the OME image, where it says more, wins below
        pixel_size_um=_resolution_um(page, imagej),
        acquired_at=_tiff_datetime(page),
        channel_names=tuple(str(v) for v in labels) if isinstance(labels, list) else (),
        images=images,
        split=_split_series(tif, images, name),
    )
    if not stored:
        return header
    own = {k: v for k, v in _image_fields(stored[0], images).items() if v not in (None, ())}
    return replace(header, **own, series=stored[0].index)


def _image_fields(image: OmeImage, images: tuple[OmeImage, ...]) -> dict[str, Any]:
    """The TiffHeader fields that OME image ``image`` gives (None or () where it says nothing)."""
    position = image.position or (image.name if len(images) > 1 else None)
    return {
        "pixel_size_um": image.pixel_size_um,
        "acquired_at": image.acquired_at,
        "channel_names": image.channel_names,
        "plate": image.plate,
        "well": image.well,
        "position": position,
        "stage_um": image.stage_um,
    }


def _split_series(tif: tifffile.TiffFile, images: tuple[OmeImage, ...], name: str) -> tuple[int, ...]:
    """Indices of the OME images that are each a series of this very file, when there are
    several; () when the file is one input (one image, images kept in sibling files, or a
    Micro-Manager stack, whose positions tifffile returns as one series)."""
    if len(images) < 2 or not all(i.in_file for i in images) or tif.is_mmstack:
        return ()
    try:
        count = len(tif.series)
    except _DECODE_ERRORS as exc:  # the series layout is unusable: read as one image
        log.warning("%s: OME series unreadable, taking the file as one image: %s", name, exc)
        return ()
    return tuple(i.index for i in images) if count == len(images) else ()


def _tiff_datetime(page: tifffile.TiffPage) -> float | None:
    tag = page.tags.get("DateTime")
    if tag is None or not isinstance(tag.value, str):
        return None
    try:
        return time.mktime(time.strptime(tag.value.strip()[:19], "%Y:%m:%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _resolution_um(
    page: tifffile.TiffPage, imagej: Mapping[str, Any] | None
) -> tuple[float, float] | None:
    """Pixel size from X/YResolution with an ImageJ unit or ResolutionUnit centimetre."""
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return None
    if imagej and imagej.get("unit"):
        scale = UNIT_TO_UM.get(str(imagej["unit"]).strip().lower())
    else:
        unit = page.tags.get("ResolutionUnit")
        scale = 1e4 if unit is not None and int(unit.value) == 3 else None
    if scale is None:
        return None
    sizes = []
    for tag in (yres, xres):
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if not num or not den:
            return None
        sizes.append(scale * den / num)
    return (sizes[0], sizes[1])


def _channel_names_for(array: np.ndarray, axes: str, names: tuple[str, ...]) -> tuple[str, ...]:
    if "C" not in axes:
        return ()
    count = array.shape[axes.index("C")]
    return names[:count] if len(names) >= count else ()


def _complete_metadata(metadata: ImageMetadata, header: TiffHeader) -> ImageMetadata:
    updates: dict[str, Any] = {}
    if metadata.pixel_size_um is None and header.pixel_size_um is not None:
        updates["pixel_size_um"] = header.pixel_size_um
    if metadata.channel is None and len(header.channel_names) == 1:
        updates["channel"] = header.channel_names[0]
    if metadata.acquired_at is None and header.acquired_at is not None:
        updates["acquired_at"] = header.acquired_at
    if metadata.stage_position_um is None and header.stage_um is not None:
        updates["stage_position_um"] = header.stage_um
    if not updates:
        return metadata
    fields = {**asdict(metadata), **updates}
    return ImageMetadata(**fields)

