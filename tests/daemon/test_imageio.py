"""acqflow.daemon.imageio on real TIFF files written by tifffile: header checks and verified reads."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from acqflow.daemon.imageio import (
    ImageRejected,
    metadata_from_json,
    metadata_to_json,
    read_image,
    read_tiff_header,
)
from acqflow.daemon.journal import Arrival, Journal
from acqflow.plugins.api import ImageMetadata


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def _arrival(journal: Journal, path: Path, metadata: ImageMetadata | None = None) -> Arrival:
    stat = path.stat()
    attrs: dict[str, Any] = {"fingerprint": [stat.st_size, stat.st_mtime_ns]}
    if metadata is not None:
        attrs["metadata"] = metadata_to_json(metadata)
    arrival = journal.record_file_arrival("folder", f"file:{path}", path, attrs)
    assert arrival is not None
    return arrival


def _ramp(shape: tuple[int, ...], dtype: type[np.integer[Any]]) -> np.ndarray:
    top = int(np.iinfo(dtype).max) + 1
    return (np.arange(int(np.prod(shape))) % top).astype(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_single_plane_8_and_16_bit(
    journal: Journal, tmp_path: Path, dtype: type[np.integer[Any]]
) -> None:
    data = _ramp((48, 70), dtype)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, data)
    arrival = _arrival(journal, path, ImageMetadata(experiment="E", well="B03"))
    item = read_image(arrival)
    assert item.axes == "YX" and item.array.dtype == dtype
    np.testing.assert_array_equal(item.array, data)
    assert item.identity == f"file:{path}"
    assert item.metadata.experiment == "E" and item.metadata.well == "B03"


def test_multi_page_plain_tiff(journal: Journal, tmp_path: Path) -> None:
    data = _ramp((4, 32, 40), np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    assert read_tiff_header(path).page_count == 4
    item = read_image(_arrival(journal, path))
    assert item.array.shape == (4, 32, 40) and len(item.axes) == 3 and item.axes.endswith("YX")
    np.testing.assert_array_equal(item.array, data)


def test_imagej_hyperstack_axes_channels_and_pixel_size(journal: Journal, tmp_path: Path) -> None:
    data = _ramp((3, 2, 32, 40), np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
        metadata={"axes": "TCYX", "unit": "um", "Labels": ["phase", "gfp"] * 3},
    )
    item = read_image(_arrival(journal, path, ImageMetadata(experiment="E")))
    assert item.axes == "TCYX"
    np.testing.assert_array_equal(item.array, data)
    assert item.channel_names == ("phase", "gfp")
    assert item.metadata.pixel_size_um == pytest.approx((0.65, 0.65))
    assert item.metadata.experiment == "E"


def test_ome_tiff_axes_channels_and_pixel_size(journal: Journal, tmp_path: Path) -> None:
    data = _ramp((2, 30, 20), np.uint8)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "CYX", "Channel": {"Name": ["Phase", "GFP"]},
                  "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25},
    )
    item = read_image(_arrival(journal, path))
    assert item.axes == "CYX" and item.channel_names == ("Phase", "GFP")
    assert item.metadata.pixel_size_um == pytest.approx((0.25, 0.5))
    np.testing.assert_array_equal(item.array, data)


def test_source_pixel_size_wins_over_file(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _ramp((16, 16), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "um"})
    item = read_image(_arrival(journal, path, ImageMetadata(pixel_size_um=(3.0, 3.0))))
    assert item.metadata.pixel_size_um == (3.0, 3.0)


def test_truncated_pixel_data_is_rejected(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _ramp((64, 64), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the single page's strip now runs past the end
    with pytest.raises(ImageRejected, match="truncated") as info:
        read_image(_arrival(journal, path))
    assert info.value.reason == "truncated"
    with pytest.raises(ImageRejected, match="truncated"):
        read_tiff_header(path)


def test_truncated_stack_is_rejected(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "cut_stack.tif"
    tifffile.imwrite(path, _ramp((5, 64, 64), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    path.write_bytes(path.read_bytes()[:20_000])  # later planes and their directories lost
    with pytest.raises(ImageRejected) as info:
        read_image(_arrival(journal, path))
    assert info.value.reason == "truncated"


def test_truncated_compressed_data_is_rejected(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "zip.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 4000, (128, 128), dtype=np.uint16), compression="zlib")
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ImageRejected) as info:
        read_image(_arrival(journal, path))
    assert info.value.reason in ("truncated", "corrupt")


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (b"", "empty", "zero-byte"),
        (b"hello, this is not an image", "not_image", "not a TIFF"),
        (b"II*\x00", "truncated", "truncated"),
        (b"II*\x00\x00\x00\x00\x00", "corrupt", "without any image directory"),
    ],
)
def test_bad_files_are_rejected_with_a_clear_reason(
    journal: Journal, tmp_path: Path, content: bytes, reason: str, message: str
) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(ImageRejected, match=message) as info:
        read_image(_arrival(journal, path))
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def test_too_large_is_rejected_before_decoding(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _ramp((64, 64), np.uint16))
    with pytest.raises(ImageRejected, match="above the limit") as info:
        read_image(_arrival(journal, path), max_bytes=1000)
    assert info.value.reason == "too_large"


def test_vanished_file_is_rejected(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "gone.tif"
    tifffile.imwrite(path, _ramp((8, 8), np.uint8))
    arrival = _arrival(journal, path)
    path.unlink()
    with pytest.raises(ImageRejected, match="no longer exists"):
        read_image(arrival)


def test_rewritten_file_keeps_its_identity_so_results_replace(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _ramp((8, 8), np.uint8))
    first = _arrival(journal, path)
    again = journal.record_file_arrival("folder", first.key, path, {"fingerprint": [1, 2]})
    assert again is not None and again.generation == 1
    assert read_image(again).identity == first.key == read_image(first).identity


def test_header_reads_metadata_without_pixels(tmp_path: Path) -> None:
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _ramp((2, 16, 24), np.uint16), imagej=True, resolution=(4.0, 2.0),
                     metadata={"axes": "CYX", "unit": "micron", "Labels": ["phase", "gfp"]})
    header = read_tiff_header(path)
    assert header.flavor == "imagej" and header.page_count == 2
    assert header.page_shape == (16, 24) and header.dtype == "uint16"
    assert header.pixel_size_um == pytest.approx((0.5, 0.25))
    assert header.channel_names == ("phase", "gfp")


def test_metadata_json_round_trip() -> None:
    md = ImageMetadata("E", "P", "A01", "pos1", 3, "phase", 1.5e9, (0.5, 0.5))
    assert metadata_from_json(metadata_to_json(md)) == md
    assert metadata_from_json(None) == ImageMetadata()
    assert metadata_from_json({"timepoint": -1}) == ImageMetadata()


def _set_compression(path: Path, value: int) -> None:
    """Rewrite the Compression tag (259) of the first IFD of a little-endian classic TIFF."""
    raw = bytearray(path.read_bytes())
    offset = struct.unpack_from("<I", raw, 4)[0]
    count = struct.unpack_from("<H", raw, offset)[0]
    for index in range(count):
        entry = offset + 2 + 12 * index
        if struct.unpack_from("<H", raw, entry)[0] == 259:
            struct.pack_into("<H", raw, entry + 8, value)
            path.write_bytes(bytes(raw))
            return
    raise AssertionError("no Compression tag")


def test_unknown_compression_is_rejected_as_unsupported(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, _ramp((16, 16), np.uint8))
    _set_compression(path, 34892)  # lossy JPEG (DNG): no built-in decoder
    with pytest.raises(ImageRejected) as info:
        read_image(_arrival(journal, path))
    assert "\n" not in str(info.value)
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        assert info.value.reason == "unsupported" and "imagecodecs" in str(info.value)
    else:  # with the codec the bytes are decoded and found not to be JPEG
        assert info.value.reason in ("unsupported", "corrupt")
