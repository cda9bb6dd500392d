"""Reading microscope images: a cheap header check at the source, a verified read in the worker.

:func:`read_tiff_header` opens a TIFF without decoding pixels: it walks the IFD chain,
checks that the pixel data of the first and last page lies inside the file, and collects
what the embedded metadata says (OME-XML, ImageJ, baseline tags). The folder watcher
calls it on every complete file, so a zero-byte, non-TIFF or truncated file is rejected
where it arrives.

:func:`read_image` is what a worker calls for an image arrival: it repeats the checks
for every page (tifffile pads a short uncompressed strip with zeros without complaint,
so completeness is verified from the strip/tile offsets, the IFD chain and the ImageJ
image count), refuses images that would decode to more than :data:`MAX_DECODED_BYTES`,
and returns an :class:`~plugins.api.ImageItem` with the file's own axes.

Every refusal is an :class:`ImageRejected` (an :class:`~daemon.errors.InputRejected`)
with a one-line message and a short ``reason`` usable as a metric label.
"""

from __future__ import annotations

import logging
import math
import struct
import time
import xml.etree.ElementTree as ElementTree
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from daemon.errors import InputRejected, TransientError
from daemon.journal import Arrival
from plugins.api import ImageItem, ImageMetadata

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
_UNIT_TO_UM = {"um": 1.0, "micron": 1.0, "microns": 1.0, "\u00b5m": 1.0, "\\u00b5m": 1.0,
               "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
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
    an ImageJ or centimetre unit.
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

    Metadata comes from ``arrival.attrs["metadata"]``; a pixel size or channel the
    source did not know is filled from the file. Only the first series (image) of a
    file holding several is read. Raises ImageRejected for empty, non-TIFF, truncated,
    corrupt, unsupported or too large files, and TransientError when the file cannot be
    reached for now (its folder is gone, I/O error).
    """
    path = arrival.path
    size = _size_or_raise(path)
    try:
        with path.open("rb") as fh:
            page_count = _check_structure(fh, size, path.name)
        with tifffile.TiffFile(path) as tif:
            _check_extents(tif, size, path.name, all_pages=True)
            header = _header_from(tif, size, page_count)
            series = tif.series[0]
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


def metadata_to_json(metadata: ImageMetadata) -> dict[str, Any]:
    """ImageMetadata as a JSON-friendly dict (the ``metadata`` attribute of an arrival)."""
    data = asdict(metadata)
    if metadata.pixel_size_um is not None:
        data["pixel_size_um"] = list(metadata.pixel_size_um)
    return data


def metadata_from_json(data: object) -> ImageMetadata:
    """The inverse of :func:`metadata_to_json`; unknown keys are ignored, bad values dropped."""
    if not isinstance(data, Mapping):
        return ImageMetadata()
    fields = {k: data[k] for k in ImageMetadata.__dataclass_fields__ if data.get(k) is not None}
    size = fields.get("pixel_size_um")
    if size is not None:
        fields["pixel_size_um"] = (float(size[0]), float(size[1]))
    try:
        return ImageMetadata(**fields)
    except (TypeError, ValueError) as exc:
        log.warning("ignoring invalid image metadata %r: %s", dict(data), exc)
        return ImageMetadata()


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


@dataclass(frozen=True)
class _OmeInfo:
    pixel_size_um: tuple[float, float] | None
    acquired_at: float | None
    channel_names: tuple[str, ...]
    plate: str | None
    well: str | None


def _header_from(tif: tifffile.TiffFile, size: int, page_count: int) -> TiffHeader:
    page = tif.pages.first
    dtype = page.dtype
    if dtype is None:
        name = Path(tif.filehandle.path).name
        raise ImageRejected("unsupported", f"{name}: unsupported sample format")
    ome = _ome_info(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
    imagej = tif.imagej_metadata
    flavor = "ome" if ome else ("imagej" if imagej else "tiff")
    pixel = ome.pixel_size_um if ome and ome.pixel_size_um else _resolution_um(page, imagej)
    acquired = ome.acquired_at if ome and ome.acquired_at else _tiff_datetime(page)
    if ome and ome.channel_names:
        names = ome.channel_names
    else:
        labels = imagej.get("Labels") if imagej else None
        names = tuple(str(v) for v in labels) if isinstance(labels, list) else ()
    return TiffHeader(
        size=size,
        flavor=flavor,
        page_count=page_count,
        page_shape=tuple(int(v) for v in page.shape),
        dtype=str(np.dtype(dtype)),
        pixel_size_um=pixel,
        acquired_at=acquired,
        channel_names=names,
        plate=ome.plate if ome else None,
        well=ome.well if ome else None,
    )


def _ome_info(xml: str) -> _OmeInfo | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        log.warning("ignoring unparsable OME-XML: %s", exc)
        return None
    image = root.find("{*}Image")
    pixels = image.find("{*}Pixels") if image is not None else None
    if image is None or pixels is None:
        return None
    size = None
    sx, sy = _ome_length(pixels, "X"), _ome_length(pixels, "Y")
    if sx and sy:
        size = (sy, sx)
    date = image.findtext("{*}AcquisitionDate")
    names = tuple(ch.get("Name", "") for ch in pixels.findall("{*}Channel"))
    plate, well = _ome_plate_well(root, image.get("ID", ""))
    return _OmeInfo(size, _iso_time(date), names if any(names) else (), plate, well)


def _ome_length(pixels: ElementTree.Element, axis: str) -> float | None:
    value = pixels.get(f"PhysicalSize{axis}")
    unit = pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")
    scale = _UNIT_TO_UM.get(unit)
    if value is None or scale is None:
        return None
    try:
        length = float(value) * scale
    except ValueError:
        return None
    return length if math.isfinite(length) and length > 0 else None


def _ome_plate_well(root: ElementTree.Element, image_id: str) -> tuple[str | None, str | None]:
    for plate in root.findall("{*}Plate"):
        for well in plate.findall("{*}Well"):
            for sample in well.findall("{*}WellSample"):
                ref = sample.find("{*}ImageRef")
                if ref is not None and ref.get("ID") == image_id:
                    row, column = int(well.get("Row", "0")), int(well.get("Column", "0"))
                    return plate.get("Name") or plate.get("ID"), f"{_row_name(row)}{column + 1:02d}"
    return None, None


def _row_name(row: int) -> str:
    return chr(ord("A") + row) if row < 26 else "A" + chr(ord("A") + row - 26)


def _iso_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
        scale = _UNIT_TO_UM.get(str(imagej["unit"]).strip().lower())
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
    if not updates:
        return metadata
    fields = {**asdict(metadata), **updates}
    return ImageMetadata(**fields)

