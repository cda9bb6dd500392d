"""Hostile files for a watched folder, generated: every folder case of the corpus.

A writer takes the case's own folder inside the inbox, a folder outside the watched
tree, and writes its input the way a broken instrument or a hostile user would
(partially, with pauses, through symlinks, under names that are not UTF-8). TIFFs are
built by hand where tifffile would refuse to write the lie (declared sizes, offsets past
the end, IFD loops), so a "huge" image is a few hundred bytes on disk.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["SECRET", "WRITERS", "FolderDelivery", "good_tiff", "tiff_by_hand"]

SECRET = b"CORPUS-SECRET-OUTSIDE-THE-TREE"  # bytes of a file outside the watched tree
GROWING_PAUSE_FACTOR = 3.0  # the paused writer stops for this many stable_seconds


@dataclass(frozen=True)
class FolderDelivery:
    """Where the case wrote (``marker``: a text every journal path of it contains)."""

    marker: str
    outside: Path | None = None  # a file outside the tree the case points at


def good_tiff(seed: int, shape: tuple[int, int] = (64, 64), dtype: str = "uint16", **kwargs: object) -> bytes:
    data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, photometric="minisblack", **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def tiff_by_hand(
    width: int,
    height: int,
    strip: bytes,
    *,
    bits: int = 16,
    compression: int = 1,
    sample_format: int = 1,
    strip_offset: int | None = None,
    next_ifd: int = 0,
    strip_bytes: int | None = None,
) -> bytes:
    """A one-strip little-endian classic TIFF whose every field may lie."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, compression),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, len(strip) if strip_bytes is None else strip_bytes),
        (339, 3, sample_format),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    entries = b""
    for tag, kind, value in tags:
        if tag == 273:
            value = data_offset if strip_offset is None else strip_offset
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        entries += struct.pack("<HHI", tag, kind, 1) + packed
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", next_ifd)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _file(name: str, data: Callable[[], bytes]) -> Callable[[Path, Path, float], FolderDelivery]:
    def writer(folder: Path, outside: Path, stable: float) -> FolderDelivery:
        _write(folder / name, data())
        return FolderDelivery(folder.name)

    return writer


def _growing(folder: Path, outside: Path, stable: float) -> FolderDelivery:
    """Half a valid TIFF, a pause of several stable times with the file open, the rest."""
    payload = good_tiff(11, (256, 256))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "slow-writer.tif").open("wb") as handle:
        handle.write(payload[: len(payload) // 2])
        handle.flush()
        time.sleep(stable * GROWING_PAUSE_FACTOR)
        handle.write(payload[len(payload) // 2 :])
    return FolderDelivery(folder.name)


def _symlink(target_data: Callable[[], bytes]) -> Callable[[Path, Path, float], FolderDelivery]:
    def writer(folder: Path, outside: Path, stable: float) -> FolderDelivery:
        target = outside / f"{folder.name}.tif"
        _write(target, target_data())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "link.tif").symlink_to(target)
        return FolderDelivery(folder.name, outside=target)

    return writer


def _non_utf8(data: Callable[[], bytes]) -> Callable[[Path, Path, float], FolderDelivery]:
    def writer(folder: Path, outside: Path, stable: float) -> FolderDelivery:
        folder.mkdir(parents=True, exist_ok=True)
        name = os.path.join(os.fsencode(folder), b"scan-\xff\xfe-latin1-\xe9.tif")
        with open(name, "wb") as handle:
            handle.write(data())
        return FolderDelivery(folder.name)

    return writer


def _fifo(folder: Path, outside: Path, stable: float) -> FolderDelivery:
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.tif")
    return FolderDelivery(folder.name)


def _renamed_into_place(folder: Path, outside: Path, stable: float) -> FolderDelivery:
    _write(folder / "copying.tif.part", good_tiff(12))
    time.sleep(stable * 2)  # a temporary name is never taken, however long it stays
    (folder / "copying.tif.part").rename(folder / "copied.tif")
    return FolderDelivery(folder.name)


def _last_page_truncated() -> bytes:
    buffer = io.BytesIO()
    data = np.random.default_rng(5).integers(0, 255, size=(4, 64, 64)).astype("uint8")
    tifffile.imwrite(buffer, data, photometric="minisblack")
    raw = buffer.getvalue()
    return raw[: len(raw) - 2000]


def _corrupt_deflate() -> bytes:
    good = zlib.compress(np.zeros((64, 64), np.uint16).tobytes())
    return tiff_by_hand(64, 64, good[:10] + b"\x00garbage-in-the-stream" + good[10:], compression=8)


def _size_bomb() -> bytes:
    """Declares 50000 x 50000 16-bit (5 GB decoded); one small deflate strip on disk."""
    return tiff_by_hand(50000, 50000, zlib.compress(b"\0" * 65536), compression=8)


def _ome_garbage() -> bytes:
    return good_tiff(
        13,
        description='<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/'
        'Schemas/OME/2016-06"><Image><Pixels SizeX="banana"',
    )


WRITERS: dict[str, Callable[[Path, Path, float], FolderDelivery]] = {
    "folder-zero-byte": _file("empty.tif", lambda: b""),
    "folder-truncated-tiff": _file("truncated.tif", lambda: good_tiff(1, (256, 256))[:40000]),
    "folder-text-named-tif": _file("notes.tif", lambda: b"lab notes, not an image\n" * 40),
    "folder-png-named-tif": _file("picture.tif", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 400),
    "folder-dicom-named-tif": _file("scan.tif", lambda: b"\0" * 128 + b"DICM" + b"\x02\x00" * 100),
    "folder-header-only": _file("header.tif", lambda: b"II*\x00\x08\x00\x00\x00"),
    "folder-ifd-offset-past-end": _file(
        "far.tif", lambda: b"II*\x00" + struct.pack("<I", 10**8) + b"\0" * 64
    ),
    "folder-ifd-loop": _file("loop.tif", lambda: tiff_by_hand(8, 8, b"\0" * 128, next_ifd=8)),
    "folder-strip-past-end": _file("strip.tif", lambda: tiff_by_hand(64, 64, b"\0" * 64, strip_bytes=8192)),
    "folder-strip-offset-past-end": _file(
        "offset.tif", lambda: tiff_by_hand(64, 64, b"\0" * 8192, strip_offset=10**7)
    ),
    "folder-declared-size-bomb": _file("mosaic.tif", _size_bomb),
    "folder-corrupt-deflate-strip": _file("deflate.tif", _corrupt_deflate),
    "folder-unsupported-sample-format": _file(
        "complex.tif", lambda: tiff_by_hand(16, 16, b"\0" * 2048, bits=64, sample_format=6)
    ),
    "folder-unknown-compression": _file(
        "codec.tif", lambda: tiff_by_hand(64, 64, b"\0" * 8192, compression=65000)
    ),
    "folder-last-page-truncated": _file("stack.tif", _last_page_truncated),
    "folder-truncated-bigtiff": _file("big.tif", lambda: good_tiff(2, (256, 256), bigtiff=True)[:60000]),
    "folder-growing-writer-pauses": _growing,
    "folder-symlink-outside-tree": _symlink(lambda: good_tiff(15)),
    "folder-symlink-outside-to-bad-file": _symlink(lambda: SECRET * 20),
    "folder-non-utf8-name": _non_utf8(lambda: good_tiff(14)),
    "folder-non-utf8-name-bad-content": _non_utf8(lambda: b"not an image\n" * 20),
    "folder-temporary-name-renamed": _renamed_into_place,
    "folder-ome-xml-garbage": _file("ome.ome.tif", _ome_garbage),
    "folder-fifo-named-tif": _fifo,  # last: a watcher that opens it blocks for good
}
