from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from acqflow.plugins.api import (
    ImageItem,
    ImageMetadata,
    InvalidInputError,
    Pipeline,
    PipelineContext,
    SeriesItem,
)
from acqflow.plugins.mr_muscle.mr_series import MrSeriesOptions, build_mr_series, demo_mr_series
from acqflow.plugins.mr_muscle.phantoms import MrPhantomOptions, generate_mr_phantom
from acqflow.plugins.mr_muscle.pipeline import MrMusclePipeline
from acqflow.plugins.mr_muscle.synthetic_ct import NOT_FOR_DIAGNOSIS
from tests.plugins.mr_muscle.conftest import dciodvfy_errors


def _item(datasets: list[pydicom.Dataset], identity: str = "mr-test-1") -> SeriesItem:
    return SeriesItem(
        identity=identity,
        study_uid=str(datasets[0].StudyInstanceUID),
        series_uid=str(datasets[0].SeriesInstanceUID),
        modality="MR",
        datasets=datasets,
    )


@pytest.fixture(scope="module")
def pipeline(tiny_weights: Path) -> MrMusclePipeline:
    p = MrMusclePipeline()
    p.load(
        PipelineContext(
            device="cpu", options={"samples": 2, "synthetic_ct_series": True}, weights_dir=tiny_weights
        )
    )
    return p


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    datasets = demo_mr_series(0, (6, 64, 64))
    shuffled = list(datasets)
    random.Random(3).shuffle(shuffled)  # arrival order is not slice order
    return shuffled


def test_pipeline_satisfies_the_contract() -> None:
    p = MrMusclePipeline()
    assert isinstance(p, Pipeline)
    assert p.name == "mr-muscle"


def test_outputs_reference_the_mr_series_and_pass_dciodvfy(
    pipeline: MrMusclePipeline, series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    result = pipeline.run(_item(series))
    by_name = {o.name: o.dataset for o in result.dicom}
    seg_ds = by_name["mr-muscle-seg.dcm"]
    mr_uids = {str(ds.SOPInstanceUID) for ds in series}
    for name in ("mr-muscle-seg.dcm", "mr-muscle-sr.dcm", "mr-muscle-uncertainty.dcm"):
        ds = by_name[name]
        assert dciodvfy_errors(ds, tmp_path / name) == [], name
        assert ds.StudyInstanceUID == series[0].StudyInstanceUID
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(tmp_path / "mr-muscle-seg.dcm"))
    assert {uid for _, _, uid in seg.get_source_image_uids()} == mr_uids
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert seg_ds.ManufacturerModelName == "mr-muscle"
    assert len(result.records) == len(seg.SegmentSequence)
    assert all(set(f.labels) <= {"pipeline", "structure"} for f in result.figures)


def test_synthetic_ct_series_is_derived_and_not_for_diagnosis(
    pipeline: MrMusclePipeline, series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    result = pipeline.run(_item(series))
    synthetic = [o.dataset for o in result.dicom if o.name.startswith("mr-muscle-synthetic-ct/")]
    assert len(synthetic) == len(series)
    mr_uids = {str(ds.SOPInstanceUID) for ds in series}
    for ds in synthetic:
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert NOT_FOR_DIAGNOSIS in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.ImageComments
        assert ds.BurnedInAnnotation == "NO"
        assert ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
        assert str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) in mr_uids
    assert dciodvfy_errors(synthetic[0], tmp_path / "synthetic.dcm") == []


def test_uids_are_deterministic_per_identity(
    pipeline: MrMusclePipeline, series: list[pydicom.Dataset]
) -> None:
    first = {o.name: o.dataset.SOPInstanceUID for o in pipeline.run(_item(series)).dicom}
    again = {o.name: o.dataset.SOPInstanceUID for o in pipeline.run(_item(series[::-1])).dicom}
    other = {o.name: o.dataset.SOPInstanceUID for o in pipeline.run(_item(series, "mr-test-2")).dicom}
    assert first == again
    assert not set(first.values()) & set(other.values())


def test_non_identity_orientation_is_accepted(pipeline: MrMusclePipeline) -> None:
    phantom = generate_mr_phantom(4, MrPhantomOptions(shape=(4, 64, 64)))
    c, s = np.cos(0.4), np.sin(0.4)
    datasets = build_mr_series(phantom, MrSeriesOptions(uid_seed="oblique", orientation=(c, s, 0, -s, c, 0)))
    assert pipeline.run(_item(datasets)).dicom


def test_ct_series_and_images_are_refused(pipeline: MrMusclePipeline, series: list[pydicom.Dataset]) -> None:
    ct = [pydicom.Dataset(ds) for ds in series]
    for ds in ct:
        ds.Modality = "CT"
    with pytest.raises(InvalidInputError, match="modality"):
        pipeline.run(_item(ct))
    image = ImageItem("img", Path("x.tif"), np.zeros((4, 4)), "YX", ImageMetadata())
    with pytest.raises(InvalidInputError):
        pipeline.run(image)


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_enhanced_mr_from_pydicom_data_is_refused_clearly(pipeline: MrMusclePipeline, name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not in pydicom-data")
    ds = pydicom.dcmread(path)
    with pytest.raises(InvalidInputError, match="multi-frame"):
        pipeline.run(_item([ds]))


def test_unknown_option_and_use_before_load(tiny_weights: Path, series: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="unknown mr-muscle options"):
        MrMusclePipeline().load(
            PipelineContext(device="cpu", options={"sampels": 3}, weights_dir=tiny_weights)
        )
    with pytest.raises(RuntimeError):
        MrMusclePipeline().run(_item(series))


def test_a_new_generation_of_the_series_gets_new_uids(pipeline: MrMusclePipeline) -> None:
    """A re-opened MR series (4 slices, completed to 6): new UIDs for every output,
    the synthetic CT included; each generation again gives its own UIDs back."""
    complete = sorted(demo_mr_series(1, (6, 64, 64)), key=lambda ds: int(ds.InstanceNumber))

    def uids(datasets: list[pydicom.Dataset]) -> dict[str, str]:
        return {o.name: str(o.dataset.SOPInstanceUID) for o in pipeline.run(_item(datasets)).dicom}

    partial, full = uids(complete[:4]), uids(complete)
    assert not set(partial.values()) & set(full.values())
    assert uids(complete[:4][::-1]) == partial


def test_dcmqi_reads_the_mr_seg_and_uncertainty_map(pipeline: MrMusclePipeline, tmp_path: Path) -> None:
    from tests.support.dcmqi import frames_by_position, paramap_volume, seg_volume

    series = demo_mr_series(1, (6, 64, 64))
    by_name = {o.name: o.dataset for o in pipeline.run(_item(series)).dicom}
    seg_path, map_path = tmp_path / "seg.dcm", tmp_path / "map.dcm"
    by_name["mr-muscle-seg.dcm"].save_as(seg_path, enforce_file_format=True)
    by_name["mr-muscle-uncertainty.dcm"].save_as(map_path, enforce_file_format=True)
    masks = seg_volume(seg_path, tmp_path / "seg")
    assert len(masks) == len(by_name["mr-muscle-seg.dcm"].SegmentSequence)
    assert all(mask.shape == (len(series), 64, 64) for mask in masks.values())
    pm = pydicom.dcmread(map_path)
    np.testing.assert_array_equal(paramap_volume(map_path, tmp_path / "map"),
                                  pm.pixel_array[frames_by_position(pm)])


def test_rerun_gives_identical_objects_and_other_samples_new_instances(tiny_weights: Path) -> None:
    """Seeded MC dropout: a re-run (a new pipeline, as after a restart) gives the same
    objects apart from their creation timestamps; other samples or a label map SEG give
    new instances in new series."""
    from tests.support.reproducibility import without_timestamps

    series = demo_mr_series(2, (6, 64, 64))
    def run(options: dict[str, object]) -> dict[str, pydicom.Dataset]:
        p = MrMusclePipeline()
        p.load(PipelineContext(device="cpu", options=options, weights_dir=tiny_weights))
        return {o.name: o.dataset for o in p.run(_item(series)).dicom}

    first, again = run({"samples": 3}), run({"samples": 3})
    for name, ds in first.items():
        assert without_timestamps(ds) == without_timestamps(again[name]), name
    for options in ({"samples": 4}, {"samples": 3, "labelmap": True}):
        changed = run(options)
        for name, ds in first.items():
            assert changed[name].SOPInstanceUID != ds.SOPInstanceUID, (options, name)
            assert changed[name].SeriesInstanceUID != ds.SeriesInstanceUID, (options, name)


def _contrast_agnostic_dir(tiny_weights: Path, tmp_path: Path) -> Path:
    """A weights folder with only the contrast-agnostic network (no mr_to_ct at all)."""
    import shutil

    folder = tmp_path / "weights" / "mr_muscle_contrast_agnostic"
    folder.mkdir(parents=True)
    for name in ("ct_muscle.safetensors", "ct_muscle.json"):
        shutil.copy(tiny_weights / name, folder / name)
    return folder.parent


def test_contrast_agnostic_route_needs_no_translation_and_gives_other_instances(
    tiny_weights: Path, pipeline: MrMusclePipeline, tmp_path: Path
) -> None:
    series = demo_mr_series(0, (6, 64, 64))
    weights = _contrast_agnostic_dir(tiny_weights, tmp_path)
    agnostic = MrMusclePipeline()
    agnostic.load(PipelineContext(device="cpu", options={"samples": 2, "route": "contrast-agnostic"},
                                  weights_dir=weights))
    result = agnostic.run(_item(series))
    again = agnostic.run(_item(series))
    by_name = {o.name: o.dataset for o in result.dicom}
    assert set(by_name) == {"mr-muscle-seg.dcm", "mr-muscle-sr.dcm", "mr-muscle-uncertainty.dcm"}
    seg = by_name["mr-muscle-seg.dcm"]
    assert dciodvfy_errors(seg, tmp_path / "seg.dcm") == []
    assert "mr_to_ct" not in str(seg.SegmentSequence[0].SegmentAlgorithmName)
    assert "contrast-agnostic" in result.summary
    assert {r.fields["route"] for r in result.records} == {"contrast-agnostic"}
    assert [o.dataset.PixelData for o in result.dicom if o.name.endswith("seg.dcm")] == [
        o.dataset.PixelData for o in again.dicom if o.name.endswith("seg.dcm")]
    translated = {o.name: o.dataset for o in pipeline.run(_item(series)).dicom}
    assert translated["mr-muscle-seg.dcm"].SOPInstanceUID != seg.SOPInstanceUID
    with pytest.raises(ValueError, match="route must be one of"):
        MrMusclePipeline().load(PipelineContext(device="cpu", options={"route": "direct"},
                                                weights_dir=weights))
    with pytest.raises(ValueError, match="synthetic_ct_series needs route synthetic-ct"):
        MrMusclePipeline().load(PipelineContext(
            device="cpu", options={"route": "contrast-agnostic", "synthetic_ct_series": True},
            weights_dir=weights))
