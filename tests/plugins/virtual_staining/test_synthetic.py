from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from acqflow.plugins.virtual_staining.metrics import roc_auc
from acqflow.plugins.virtual_staining.synthetic import (
    SyntheticSpec,
    generate_series,
    parse_name,
    write_series,
)


def test_series_is_deterministic_and_in_acquisition_order() -> None:
    spec = SyntheticSpec(experiments=1, wells=2, positions=2, timepoints=3, shape=(64, 64), seed=3)
    first, again = list(generate_series(spec)), list(generate_series(spec))
    assert len(first) == 12
    assert all(np.array_equal(a.phase, b.phase) for a, b in zip(first, again, strict=True))
    times = [image.metadata.acquired_at or 0.0 for image in first]
    assert times == sorted(times)


def test_regions_grow_and_stay_nested_over_time() -> None:
    spec = SyntheticSpec(experiments=1, wells=3, positions=1, timepoints=4, shape=(96, 96), seed=5)
    by_field: dict[str, list[np.ndarray]] = {}
    for image in generate_series(spec):
        by_field.setdefault(str(image.metadata.well), []).append(image.mask)
    for masks in by_field.values():
        areas = [m.mean() for m in masks]
        assert areas == sorted(areas) and areas[-1] > areas[0]
        assert all((earlier <= later).all() for earlier, later in itertools.pairwise(masks))


@pytest.mark.parametrize(("bits", "dtype"), [(8, np.uint8), (16, np.uint16)])
def test_bit_depths(bits: int, dtype: type) -> None:
    image = next(
        generate_series(
            SyntheticSpec(experiments=1, wells=1, positions=1, timepoints=1, shape=(64, 80), bit_depth=bits)
        )
    )
    assert image.phase.dtype == dtype and image.gfp.dtype == dtype
    assert image.phase.shape == (64, 80)


def test_regions_differ_in_texture_not_in_a_single_pixel_threshold() -> None:
    spec = SyntheticSpec(experiments=1, wells=2, positions=1, timepoints=1, shape=(256, 256), seed=11)
    for image in generate_series(spec):
        phase = image.phase.astype(np.float64)
        pixel_auc = roc_auc(image.mask, phase)
        local_variance = ndimage.uniform_filter((phase - ndimage.uniform_filter(phase, 3)) ** 2, 9)
        assert 0.25 < pixel_auc < 0.75  # intensity alone hardly separates the classes
        assert roc_auc(image.mask, local_variance) > 0.95  # texture does


def test_write_series_names_and_metadata(tmp_path: Path) -> None:
    spec = SyntheticSpec(experiments=1, wells=1, positions=1, timepoints=2, shape=(32, 48), bit_depth=8)
    paths = write_series(tmp_path, spec)
    assert [p.name for p in paths] == [
        "EXP1_A01_pos1_t000_phase.tif",
        "EXP1_A01_pos1_t000_gfp.tif",
        "EXP1_A01_pos1_t001_phase.tif",
        "EXP1_A01_pos1_t001_gfp.tif",
    ]
    assert parse_name(paths[1].name) == {
        "experiment": "EXP1",
        "well": "A01",
        "position": "pos1",
        "timepoint": "000",
        "channel": "gfp",
    }
    with tifffile.TiffFile(paths[0]) as tif:
        assert tif.is_imagej and tif.imagej_metadata is not None
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.asarray().dtype == np.uint8


def test_invalid_spec() -> None:
    with pytest.raises(ValueError, match="bit depth"):
        SyntheticSpec(bit_depth=12)
    with pytest.raises(ValueError, match=">= 1"):
        SyntheticSpec(wells=0)


def test_written_images_carry_their_acquisition_time(tmp_path: Path) -> None:
    from acqflow.daemon.imageio import read_tiff_header

    spec = SyntheticSpec(experiments=1, wells=1, positions=1, timepoints=2, shape=(64, 64))
    paths = write_series(tmp_path, spec)
    phase = [p for p in paths if p.name.endswith("_phase.tif")]
    times = [read_tiff_header(p).acquired_at for p in phase]
    assert times == [spec.start_time, spec.start_time + spec.interval_s]
