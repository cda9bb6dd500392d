"""The inputs a complete image file becomes: one, or one per image of a multi-image OME-TIFF.

An OME-TIFF holding several images (the positions of a multi-position acquisition, the
wells of a plate), each a series of its own, gives one arrival per image, so that every
position is processed with its own metadata (OME image N's position, stage position,
plate and well, acquisition date, pixel size, channels). The first image keeps the
file's key ``file:<path>`` (what a single-image file has); image N gets
``file:<path>#series=N`` and the attribute ``series`` that the worker reads. Files whose
images tifffile cannot separate (a Micro-Manager stack with all positions in one file,
images stored in sibling files) stay one input with the metadata of the first image the
file itself holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import parse_metadata
from acqflow.daemon.imageio import TiffHeader, metadata_to_json

__all__ = ["SERIES_MARK", "ImageInput", "image_inputs", "series_key"]

#: What separates a file's key from the series of one of its images.
SERIES_MARK = "#series="


@dataclass(frozen=True)
class ImageInput:
    """One arrival to record: its journal key and attributes (``metadata`` included)."""

    key: str
    attrs: dict[str, Any]


def series_key(key: str, series: int) -> str:
    """The key of image ``series`` of the file keyed ``key`` (the first keeps the file's)."""
    return key if series == 0 else f"{key}{SERIES_MARK}{series}"


def image_inputs(
    key: str, path: Path, folder: FolderSettings, header: TiffHeader | None, attrs: dict[str, Any]
) -> list[ImageInput]:
    """The inputs of the file at ``path``: ``attrs`` (fingerprint, relative path, …) plus
    each input's parsed ``metadata`` and, for an image of a multi-image file, ``series``."""
    if header is None or not header.split:
        metadata = metadata_to_json(parse_metadata(path, folder, header))
        return [ImageInput(key, {**attrs, "metadata": metadata})]
    return [
        ImageInput(
            series_key(key, one.series),
            {**attrs, "series": one.series, "series_count": len(header.split),
             "metadata": metadata_to_json(parse_metadata(path, folder, one))},
        )
        for one in header.inputs()
    ]
