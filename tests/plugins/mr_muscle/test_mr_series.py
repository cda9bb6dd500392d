from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
from acqflow.plugins.mr_muscle.mr_series import (
    MR_IMAGE_STORAGE,
    MrSeriesOptions,
    build_mr_series,
    demo_mr_phantom_series,
    demo_mr_series,
)
from acqflow.plugins.mr_muscle.phantoms import MrPhantomOptions, generate_mr_phantom

MR_ONLY = VolumeOptions(modalities=("MR",))


def test_series_converts_to_the_phantom_volume() -> None:
    series, phantom = demo_mr_phantom_series(1, (5, 64, 64))
    assert all(ds.SOPClassUID == MR_IMAGE_STORAGE and ds.Modality == "MR" for ds in series)
    volume = series_to_volume(list(reversed(series)), MR_ONLY)
    # The series is cranial first; the volume ascends along the normal (+z, cranial last).
    expected = np.clip(np.rint(phantom.signal[::-1]), 0, 4095)
    assert np.array_equal(volume.array, expected)
    assert volume.geometry.spacing == pytest.approx((6.0, 3.0, 3.0))
    assert volume.geometry.frame_of_reference_uid == series[0].FrameOfReferenceUID


def test_non_identity_orientation_keeps_regular_stack() -> None:
    phantom = generate_mr_phantom(2, MrPhantomOptions(shape=(4, 64, 64)))
    c, s = np.cos(0.3), np.sin(0.3)
    options = MrSeriesOptions(uid_seed="rotated", orientation=(c, s, 0.0, -s, c, 0.0))
    volume = series_to_volume(build_mr_series(phantom, options), MR_ONLY)
    assert volume.array.shape == (4, 64, 64)
    assert np.allclose(volume.geometry.row_direction, (c, s, 0.0))


def test_uids_are_deterministic() -> None:
    a = demo_mr_series(3, (3, 64, 64))
    b = demo_mr_series(3, (3, 64, 64))
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    assert len({ds.SOPInstanceUID for ds in a}) == 3


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_generated_mr_instance_passes_dciodvfy(tmp_path: Path) -> None:
    series = demo_mr_series(0, (2, 64, 64))
    path = tmp_path / "mr.dcm"
    series[0].save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.parametrize(
    "name",
    [
        "emri_small.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],
)
def test_enhanced_mr_from_pydicom_data_converts_or_is_refused_clearly(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not in pydicom-data")
    ds = pydicom.dcmread(path)
    try:
        volume = series_to_volume([ds], MR_ONLY)
    except InvalidInputError as exc:
        assert "multi-frame" in str(exc) or "decode" in str(exc)
    else:
        assert volume.array.shape[0] == int(ds.NumberOfFrames)
