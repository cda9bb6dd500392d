from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
from tests.plugins.common.helpers import VARIANTS, labels_in_volume_order, phantom_series
from tests.support.samples import sample_files

PYDICOM_FILES = [p for p, header in sample_files() if str(header.get("Modality", "")) in {"CT", "MR"}]


def test_pydicom_data_has_ct_and_mr_files() -> None:
    assert len(PYDICOM_FILES) > 20


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_every_pydicom_ct_mr_file_converts_or_is_refused_clearly(path: Path) -> None:
    try:
        ds = pydicom.dcmread(path, force=True)
    except (ValueError, EOFError, OSError) as exc:  # unreadable container: the SCP rejects it
        pytest.skip(f"not readable as DICOM: {exc}")
    options = VolumeOptions(modalities=("CT", "MR"))
    try:
        volume = series_to_volume([ds], options)
    except InvalidInputError as exc:
        assert len(str(exc)) > 10
        return
    assert volume.array.ndim == 3 and volume.array.shape[0] >= 1
    assert np.all(np.isfinite(volume.array))
    assert all(s > 0 for s in volume.geometry.spacing)
    assert len(volume.sources) == volume.array.shape[0]


def _testdata(name: str) -> pydicom.Dataset:
    path = pydicom.data.get_testdata_file(name)
    assert isinstance(path, str)
    return pydicom.dcmread(path)


def _ct_small() -> pydicom.Dataset:
    return _testdata("CT_small.dcm")


def test_ct_small_is_rescaled_to_hu() -> None:
    ds = _ct_small()
    volume = series_to_volume([ds])
    raw = ds.pixel_array.astype(np.float32)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(volume.array[0], expected)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(name: str) -> None:
    plain = series_to_volume([_testdata("MR_small.dcm")], VolumeOptions(modalities=("MR",)))
    packed = series_to_volume([_testdata(name)], VolumeOptions(modalities=("MR",)))
    np.testing.assert_array_equal(plain.array, packed.array)


def test_enhanced_ct_multiframe_is_accepted() -> None:
    ds = _testdata("eCT_Supplemental.dcm")
    volume = series_to_volume([ds])
    assert volume.array.shape == (2, 512, 512)
    assert volume.is_multiframe and {s.frame_number for s in volume.sources} == {1, 2}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shuffle", [False, True])
def test_generated_series_sorted_along_normal(variant: str, shuffle: bool) -> None:
    phantom, datasets = phantom_series(variant, shuffle=shuffle)
    volume = series_to_volume(datasets)
    geometry = VARIANTS[variant]
    normal = np.cross(geometry.row_direction, geometry.column_direction)
    positions = [np.dot(volume.geometry.slice_position(k), normal)
                 for k in range(volume.array.shape[0])]
    assert np.all(np.diff(positions) > 0)
    assert volume.geometry.spacing == pytest.approx((10.0, 6.0, 6.0))
    uids = [s.sop_instance_uid for s in volume.sources]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for k, uid in enumerate(uids):
        np.testing.assert_allclose(volume.geometry.slice_position(k),
                                   [float(v) for v in by_uid[uid].ImagePositionPatient],
                                   atol=1e-4)
    expected = labels_in_volume_order(phantom, datasets, uids)
    index = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) - 1 for ds in datasets}
    hu = phantom.hu[[index[u] for u in uids]]
    np.testing.assert_allclose(volume.array, np.clip(np.rint(hu + 1024), 0, 65535) - 1024)
    assert expected.shape == volume.array.shape


def _series() -> list[pydicom.Dataset]:
    return phantom_series("ascending")[1]


def test_refuses_localizer() -> None:
    datasets = _series()
    datasets[2].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    with pytest.raises(InvalidInputError, match="localizer"):
        series_to_volume(datasets)


def test_refuses_mixed_orientation() -> None:
    datasets = _series()
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(InvalidInputError, match="mixed orientations"):
        series_to_volume(datasets)


def test_refuses_gap() -> None:
    datasets = _series()
    del datasets[3]
    with pytest.raises(InvalidInputError, match="missing slices"):
        series_to_volume(datasets)


def test_refuses_duplicate_positions() -> None:
    datasets = _series()
    twin = copy.deepcopy(datasets[2])
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(InvalidInputError, match="duplicate"):
        series_to_volume([*datasets, twin])


def test_refuses_mixed_sizes() -> None:
    datasets = _series()
    datasets[0].Rows = 32
    with pytest.raises(InvalidInputError, match="mixed image sizes"):
        series_to_volume(datasets)


def test_refuses_wrong_modality() -> None:
    with pytest.raises(InvalidInputError, match="modality 'MR'"):
        series_to_volume(phantom_series("ascending", modality="MR")[1])


def test_refuses_missing_pixel_data() -> None:
    datasets = _series()
    del datasets[4].PixelData
    with pytest.raises(InvalidInputError, match="no pixel data"):
        series_to_volume(datasets)


def test_refuses_missing_geometry() -> None:
    datasets = _series()
    del datasets[0].ImagePositionPatient
    with pytest.raises(InvalidInputError, match="Image Position"):
        series_to_volume(datasets)


def test_refuses_empty_series() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        series_to_volume([])
