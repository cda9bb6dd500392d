"""The pipeline's SEG and uncertainty map open in the readers consumers use: dcmqi's
``segimage2itkimage`` / ``paramap2itkimage`` (3D Slicer) give back the same voxels as
highdicom, and dciodvfy finds no errors. A BINARY SEG carries no empty frames."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from acqflow.plugins.api import PipelineContext, SeriesItem
from acqflow.plugins.common.volume import series_to_volume
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series
from acqflow.plugins.ct_muscle.pipeline import CtMusclePipeline
from tests.support.dcmqi import frames_by_position, paramap_volume, seg_volume

SERIES = PhantomOptions(shape=(8, 64, 64), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)


@pytest.fixture(scope="module")
def written(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    Path, list[Dataset]
]:
    pipeline = CtMusclePipeline()
    pipeline.load(PipelineContext(device="cpu", options={"samples": 2}, weights_dir=tiny_weights))
    datasets = demo_ct_series(11, SERIES)
    first = datasets[0]
    result = pipeline.run(SeriesItem(identity="consumers", study_uid=str(first.StudyInstanceUID),
                                     series_uid=str(first.SeriesInstanceUID), modality="CT",
                                     datasets=datasets))
    folder = tmp_path_factory.mktemp("consumers")
    for output in result.dicom:
        output.dataset.save_as(folder / output.name, enforce_file_format=True)
    return folder, datasets


def _source_order(datasets: list[Dataset]) -> list[str]:
    """SOP Instance UIDs in ascending slice position (the order dcmqi writes z in)."""
    return [s.sop_instance_uid for s in series_to_volume(datasets).sources]


def test_binary_seg_has_a_frame_only_where_a_segment_is(written: tuple[Path, list[Dataset]]) -> None:
    folder, datasets = written
    seg = hd.seg.segread(folder / "ct-muscle-seg.dcm")
    masks = np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=_source_order(datasets), combine_segments=False))
    present = int(masks.any(axis=(1, 2)).sum())  # (slice, segment) pairs with voxels
    assert int(seg.NumberOfFrames) == present < len(datasets) * len(seg.segment_numbers)


def test_segimage2itkimage_reads_the_seg(written: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, datasets = written
    path = folder / "ct-muscle-seg.dcm"
    by_code = seg_volume(path, tmp_path / "seg")
    seg = hd.seg.segread(path)
    masks = np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=_source_order(datasets), combine_segments=False))
    assert len(by_code) == len(seg.segment_numbers)
    for index, number in enumerate(seg.segment_numbers):
        code = seg.get_segment_description(number).segmented_property_type.value
        np.testing.assert_array_equal(by_code[code], masks[..., index] > 0)


def test_paramap2itkimage_reads_the_float_uncertainty_map(
    written: tuple[Path, list[Dataset]], tmp_path: Path
) -> None:
    folder, _ = written
    path = folder / "ct-muscle-uncertainty.dcm"
    pm = pydicom.dcmread(path)
    assert "FloatPixelData" in pm and "FrameAnatomySequence" in pm.SharedFunctionalGroupsSequence[0]
    values = paramap_volume(path, tmp_path / "map")
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, pm.pixel_array[frames_by_position(pm)])
    assert values.max() > 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("name", ["ct-muscle-seg.dcm", "ct-muscle-uncertainty.dcm", "ct-muscle-sr.dcm"])
def test_dciodvfy_finds_no_errors(written: tuple[Path, list[Dataset]], name: str) -> None:
    folder, _ = written
    run = subprocess.run(["dciodvfy", str(folder / name)], capture_output=True, text=True,
                         check=False, timeout=120)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
