from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.virtual_staining.imaging import (
    FLUORESCENCE_NAMES,
    PHASE_NAMES,
    normalize,
    read_plane,
    select_plane,
)

RNG = np.random.default_rng(0)
PHASE = RNG.integers(0, 4000, size=(40, 50)).astype(np.uint16)
GFP = RNG.integers(0, 4000, size=(40, 50)).astype(np.uint16)


def test_plain_plane_is_returned_as_is() -> None:
    assert select_plane(PHASE, "YX") is not None
    np.testing.assert_array_equal(select_plane(PHASE, "YX"), PHASE)


@pytest.mark.parametrize(
    ("names", "wanted"),
    [
        (("GFP", "Phase"), None),
        (("a", "b"), 1),
        (("a", "b"), "1"),
        (("gfp", "brightfield"), None),
        (("x", "PC-10x"), "pc-10x"),
    ],
)
def test_phase_channel_by_name_or_index(names: tuple[str, str], wanted: str | int | None) -> None:
    stack = np.stack([GFP, PHASE])
    np.testing.assert_array_equal(select_plane(stack, "CYX", names, wanted), PHASE)


def test_hyperstack_with_singleton_axes_and_z() -> None:
    stack = np.stack([np.stack([GFP, PHASE])] * 3)[None]  # TZCYX with T=1, Z=3
    np.testing.assert_array_equal(select_plane(stack, "TZCYX", ("gfp", "phase")), PHASE)


def test_pages_count_as_channels_and_rgb_is_averaged() -> None:
    np.testing.assert_array_equal(select_plane(np.stack([PHASE, GFP]), "IYX", (), 0), PHASE)
    rgb = np.stack([PHASE] * 3, axis=-1)
    np.testing.assert_allclose(select_plane(rgb, "YXS"), PHASE.astype(np.float32))


@pytest.mark.parametrize(
    ("array", "axes", "names", "wanted", "message"),
    [
        (np.zeros(100), "X", (), None, "Y and X"),
        (np.zeros((2, 3, 40, 50)), "CZYX", ("a", "b"), None, "no a channel"),
        (np.zeros((4, 40, 50)), "TYX", (), None, "axis T has 4"),
        (np.stack([GFP, GFP]), "CYX", ("gfp", "nkx"), None, "no a channel"),
        (np.stack([GFP, GFP]), "CYX", ("gfp", "nkx"), 5, "out of range"),
        (GFP, "YX", ("gfp",), "phase", "no channel 'phase'"),
        (np.zeros((40, 50), dtype=bool), "YX", (), None, "pixel type"),
        (np.full((40, 50), np.nan), "YX", (), None, "NaN"),
        (np.zeros((4, 50)), "YX", (), None, "smaller"),
        (np.zeros((40, 50)), "YXZ", (), None, "Y and X"),
    ],
)
def test_invalid_input(
    array: np.ndarray, axes: str, names: tuple[str, ...], wanted: str | int | None, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        select_plane(array, axes, names, wanted)


def test_normalize_is_independent_of_bit_depth_scaling() -> None:
    eight = (PHASE / 16).astype(np.float64)
    np.testing.assert_allclose(normalize(PHASE), normalize(eight), atol=1e-4)
    assert normalize(np.full((20, 20), 3, dtype=np.uint8)).dtype == np.float32


def test_read_imagej_hyperstack_with_labels_and_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.stack([GFP, PHASE]),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),
        metadata={"axes": "CYX", "unit": "um", "Labels": ["NKX2.5-GFP", "Phase"]},
    )
    phase, size = read_plane(path, None, PHASE_NAMES)
    gfp, _ = read_plane(path, None, FLUORESCENCE_NAMES)
    np.testing.assert_array_equal(phase, PHASE)
    np.testing.assert_array_equal(gfp, GFP)
    assert size == pytest.approx((0.25, 0.5))


def test_read_ome_tiff_channel_names(tmp_path: Path) -> None:
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(
        path, np.stack([PHASE, GFP]), metadata={"axes": "CYX", "Channel": {"Name": ["BF", "EGFP"]}}
    )
    gfp, size = read_plane(path, None, FLUORESCENCE_NAMES)
    np.testing.assert_array_equal(gfp, GFP)
    assert size is None
    phase, _ = read_plane(path, "bf", PHASE_NAMES)
    np.testing.assert_array_equal(phase, PHASE)
