"""OME-XML metadata of an OME-TIFF, one :class:`OmeImage` per ``<Image>``, via ``ome-types``.

An OME-TIFF may describe several images (positions, wells of a plate): each ``<Image>``
has its own name, stage position, acquisition date, pixel size and channels, and an
OME ``Plate`` links it to a well through ``WellSample`` -> ``ImageRef``. A multi-file
OME-TIFF repeats the description of every file's images in each of them; ``in_file``
tells the images whose planes lie in the file at hand (``TiffData`` without a ``UUID``,
or one naming this file) from those stored in its siblings.

``ome-types`` is imported on first use: it takes half a second to import and the CLI
must start fast. Unparsable or invalid OME-XML is logged and gives None, so such a file
is still read, without its embedded metadata, as before.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ome_types.model import OME, Image, Pixels

__all__ = ["UNIT_TO_UM", "OmeImage", "parse_ome", "row_name"]

log = logging.getLogger(__name__)

#: Length units to micrometres; includes the non-standard spellings some writers use.
UNIT_TO_UM = {"um": 1.0, "micron": 1.0, "microns": 1.0, "\u00b5m": 1.0, "\\u00b5m": 1.0,
              "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
# ImageJ and older writers spell micrometres "um" or "micron", which the OME schema's
# UnitsLength refuses (and ome-types with it, for the whole document): normalised first.
_LOOSE_MICRONS = re.compile(r'(Unit=")(?:um|micron|microns)(")', re.IGNORECASE)


@dataclass(frozen=True)
class OmeImage:
    """What one OME ``<Image>`` says; ``index`` is its place among the document's images
    (the series index tifffile gives it), ``stage_um`` its (x, y) stage position in µm and
    ``pixel_size_um`` (y, x)."""

    index: int
    image_id: str
    name: str | None = None
    position: str | None = None
    stage_um: tuple[float, float] | None = None
    plate: str | None = None
    well: str | None = None
    field: int | None = None
    acquired_at: float | None = None
    pixel_size_um: tuple[float, float] | None = None
    channel_names: tuple[str, ...] = ()
    in_file: bool = True


def parse_ome(xml: str, file_name: str) -> tuple[OmeImage, ...] | None:
    """Every ``<Image>`` of ``xml`` (the OME-XML of the file named ``file_name``).

    Returns None, logging why, when the XML cannot be parsed or breaks the OME schema;
    never raises for bad content.
    """
    from ome_types import from_xml

    text = _LOOSE_MICRONS.sub(r"\1µm\2", xml)
    try:
        with warnings.catch_warnings():
            # Unconvertible values and dangling references are warned about per element;
            # what can still be read is, the rest is left out.
            warnings.simplefilter("ignore")
            document = from_xml(text)
    # ValueError covers pydantic's ValidationError and xsdata's ParserError; ImportError:
    # an older schema version without lxml to convert it; TypeError/KeyError: shapes the
    # converter does not expect.
    except (ValueError, ImportError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring unreadable OME-XML in %s: %s", file_name,
                    " ".join(str(exc).split())[:300])
        return None
    return _images(document, file_name)


def row_name(row: int) -> str:
    """Plate row letters from a 0-based row index: 0 -> ``A``, 26 -> ``AA``."""
    return chr(ord("A") + row) if row < 26 else "A" + chr(ord("A") + row - 26)


# --- conversion ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    plate: str | None
    well: str
    field: int | None
    stage_um: tuple[float, float] | None


def _images(document: OME, file_name: str) -> tuple[OmeImage, ...]:
    samples = _well_samples(document)
    images = []
    for index, image in enumerate(document.images):
        sample = samples.get(image.id)
        pixels = image.pixels
        stage = _stage_um(image) or (sample.stage_um if sample else None)
        images.append(OmeImage(
            index=index,
            image_id=image.id,
            name=_text(image.name),
            position=_text(image.stage_label.name) if image.stage_label is not None else None,
            stage_um=stage,
            plate=sample.plate if sample else None,
            well=sample.well if sample else None,
            field=sample.field if sample else None,
            acquired_at=image.acquisition_date.timestamp() if image.acquisition_date else None,
            pixel_size_um=_pixel_size(pixels),
            channel_names=_channel_names(pixels),
            in_file=_in_file(pixels, file_name),
        ))
    return tuple(images)


def _well_samples(document: OME) -> dict[str, _Sample]:
    """Image ID -> the plate, well and field (WellSample index) it was taken in."""
    found: dict[str, _Sample] = {}
    for plate in document.plates:
        name = _text(plate.name) or plate.id
        for well in plate.wells:
            label = f"{row_name(int(well.row))}{int(well.column) + 1:02d}"
            for sample in well.well_samples:
                if sample.image_ref is None:
                    continue
                stage = _pair(sample.position_x, sample.position_x_unit,
                              sample.position_y, sample.position_y_unit)
                found[sample.image_ref.id] = _Sample(name, label, int(sample.index), stage)
    return found


def _stage_um(image: Image) -> tuple[float, float] | None:
    label = image.stage_label
    if label is not None:
        stage = _pair(label.x, label.x_unit, label.y, label.y_unit)
        if stage is not None:
            return stage
    planes = image.pixels.planes
    if planes:
        first = planes[0]
        return _pair(first.position_x, first.position_x_unit, first.position_y, first.position_y_unit)
    return None


def _pixel_size(pixels: Pixels) -> tuple[float, float] | None:
    x = _length(pixels.physical_size_x, pixels.physical_size_x_unit)
    y = _length(pixels.physical_size_y, pixels.physical_size_y_unit)
    return (y, x) if x and y and x > 0 and y > 0 else None


def _channel_names(pixels: Pixels) -> tuple[str, ...]:
    names = tuple(channel.name or "" for channel in pixels.channels)
    return names if any(names) else ()


def _in_file(pixels: Pixels, file_name: str) -> bool:
    """True unless every TiffData block of the image names another file."""
    named = [block.uuid.file_name for block in pixels.tiff_data_blocks
             if block.uuid is not None and block.uuid.file_name]
    return not named or any(name.lower() == file_name.lower() for name in named)


def _pair(x: float | None, x_unit: Any, y: float | None, y_unit: Any) -> tuple[float, float] | None:
    px, py = _length(x, x_unit), _length(y, y_unit)
    return (px, py) if px is not None and py is not None else None


def _length(value: float | None, unit: Any) -> float | None:
    """``value`` in ``unit`` (an ome-types UnitsLength or its text) in µm; None if unknown."""
    if value is None:
        return None
    symbol = str(getattr(unit, "value", unit) or "\u00b5m")
    scale = UNIT_TO_UM.get(symbol)
    if scale is None:
        return None
    length = float(value) * scale
    return length if math.isfinite(length) else None


def _text(value: str | None) -> str | None:
    return value.strip() or None if isinstance(value, str) else None

