from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series
from acqflow.plugins.mr_muscle.data import dicom_slices
from acqflow.plugins.mr_muscle.mr_series import MrSeriesOptions, build_mr_series
from acqflow.plugins.mr_muscle.phantoms import MrPhantomOptions, generate_mr_phantom
from acqflow.plugins.mr_muscle.translation import IntensityScale


def _write(folder: Path, datasets: list) -> None:  # type: ignore[type-arg]
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)


def test_dicom_folders_give_normalised_slices_per_modality(tmp_path: Path) -> None:
    phantom = generate_mr_phantom(1, MrPhantomOptions(shape=(4, 64, 64), pixel_spacing_mm=6.0))
    _write(tmp_path / "mr" / "a", build_mr_series(phantom, MrSeriesOptions(uid_seed="a")))
    _write(tmp_path / "mr" / "ct", demo_ct_series(2, PhantomOptions(shape=(3, 64, 64))))
    (tmp_path / "mr" / "notes.txt").write_text("not DICOM")
    scale = IntensityScale()
    mr = dicom_slices(tmp_path / "mr", "MR", scale)
    assert mr.slices.shape == (4, 128, 128)  # 6 mm resampled to the 3 mm grid
    assert mr.slices.min() >= -1.0 and mr.slices.max() <= 1.0 and mr.volumes == 1
    ct = dicom_slices(tmp_path / "mr", "CT", scale, min_rows=32)
    assert ct.slices.shape[0] == 3 and np.isclose(ct.slices.min(), -1.0)
    with pytest.raises(ValueError, match="no MR series"):
        dicom_slices(tmp_path / "mr" / "ct", "MR", scale)
