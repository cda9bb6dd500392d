from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from acqflow.plugins.api import (
    ImageItem,
    ImageMetadata,
    InputKind,
    InvalidInputError,
    Pipeline,
    PipelineContext,
    SeriesItem,
)
from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series
from acqflow.plugins.ct_muscle.pipeline import CtMusclePipeline

SMALL = PhantomOptions(shape=(6, 64, 64), pixel_spacing_mm=6.0, slice_spacing_mm=10.0)


def _item(datasets: list[Dataset], identity: str = "series-1") -> SeriesItem:
    first = datasets[0]
    return SeriesItem(identity=identity, study_uid=str(first.StudyInstanceUID),
                      series_uid=str(first.SeriesInstanceUID), modality="CT",
                      datasets=datasets)


@pytest.fixture(scope="module")
def pipeline(tiny_weights: Path) -> CtMusclePipeline:
    p = CtMusclePipeline()
    p.load(PipelineContext(device="cpu", options={"samples": 3, "review_threshold": 0.0},
                           weights_dir=tiny_weights))
    return p


def test_declares_the_contract() -> None:
    p = CtMusclePipeline()
    assert isinstance(p, Pipeline)
    assert (p.name, p.input_kind) == ("ct-muscle", InputKind.DICOM_SERIES)


def test_run_returns_seg_map_sr_records_and_figures(pipeline: CtMusclePipeline) -> None:
    datasets = demo_ct_series(1, SMALL)
    result = pipeline.run(_item(datasets))
    classes = {o.name: str(o.dataset.SOPClassUID) for o in result.dicom}
    assert classes["ct-muscle-uncertainty.dcm"] == "1.2.840.10008.5.1.4.1.1.30"
    assert result.records, "the untrained test network labels something"
    assert classes["ct-muscle-seg.dcm"] == "1.2.840.10008.5.1.4.1.1.66.4"
    assert classes["ct-muscle-sr.dcm"] == "1.2.840.10008.5.1.4.1.1.88.34"
    for output in result.dicom:
        assert output.dataset.StudyInstanceUID == datasets[0].StudyInstanceUID
        assert output.dataset.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID \
            if "FrameOfReferenceUID" in output.dataset else True
    assert all(r.kind == "ct-structure" for r in result.records)
    for figure in result.figures:
        assert set(figure.labels) == {"pipeline", "structure"}
        assert figure.name in {"structure_uncertainty", "review_required"}
    assert result.review_required == any(r.fields["review_required"] for r in result.records)
    json.dumps([dict(r.fields) for r in result.records])


def test_rerun_in_other_order_gives_the_same_uids(pipeline: CtMusclePipeline) -> None:
    datasets = demo_ct_series(2, SMALL)
    shuffled = list(datasets)
    random.Random(0).shuffle(shuffled)
    first = {o.name: o.dataset.SOPInstanceUID for o in pipeline.run(_item(datasets)).dicom}
    again = {o.name: o.dataset.SOPInstanceUID for o in pipeline.run(_item(shuffled)).dicom}
    other = {o.name: o.dataset.SOPInstanceUID
             for o in pipeline.run(_item(datasets, identity="series-2")).dicom}
    assert first == again
    assert not set(first.values()) & set(other.values())


def test_refuses_non_ct_and_images(pipeline: CtMusclePipeline) -> None:
    datasets = demo_ct_series(3, SMALL)
    for ds in datasets:
        ds.Modality = "MR"
    with pytest.raises(InvalidInputError, match="modality"):
        pipeline.run(_item(datasets))
    image = ImageItem(identity="x", source_path=Path("x.tif"), array=np.zeros((4, 4)),
                      axes="YX", metadata=ImageMetadata())
    with pytest.raises(InvalidInputError):
        pipeline.run(image)


def test_options_are_validated(tiny_weights: Path) -> None:
    with pytest.raises(ValueError, match="unknown ct-muscle options"):
        CtMusclePipeline().load(PipelineContext(device="cpu", options={"sampels": 3},
                                                weights_dir=tiny_weights))
    with pytest.raises(ValueError):
        CtMusclePipeline().load(PipelineContext(device="cpu", options={"measure": "nonsense"},
                                                weights_dir=tiny_weights))
    with pytest.raises(ValueError, match="review_score must be one of"):
        CtMusclePipeline().load(PipelineContext(device="cpu", options={"review_score": "votes"},
                                                weights_dir=tiny_weights))
    with pytest.raises(RuntimeError):
        CtMusclePipeline().run(_item(demo_ct_series(1, SMALL)))


def test_labelmap_and_window_options(tiny_weights: Path) -> None:
    p = CtMusclePipeline()
    p.load(PipelineContext(device="cpu", weights_dir=tiny_weights, options={
        "samples": 2, "labelmap": True, "window_center": 40.0, "window_width": 400.0,
        "measure": "mutual_information"}))
    result = p.run(_item(demo_ct_series(4, SMALL)))
    segs = [o.dataset for o in result.dicom if o.name == "ct-muscle-seg.dcm"]
    assert all(seg.SegmentationType == "LABELMAP" for seg in segs)
    assert all(r.fields["uncertainty_measure"] == "mutual_information" for r in result.records)


def _result_uids(pipeline: CtMusclePipeline, datasets: list[Dataset]) -> dict[str, tuple[str, str]]:
    return {o.name: (str(o.dataset.SeriesInstanceUID), str(o.dataset.SOPInstanceUID))
            for o in pipeline.run(_item(datasets)).dicom}


def test_a_new_generation_of_the_series_gets_new_uids(pipeline: CtMusclePipeline) -> None:
    """A re-opened series (first 4 slices, then completed to 6) is the same input
    (identity) with new content: none of its result UIDs may be those of the stale result,
    or a PACS keeps the stale objects; processing either generation again is reproducible."""
    complete = sorted(demo_ct_series(4, SMALL), key=lambda ds: int(ds.InstanceNumber))
    partial = complete[:4]
    first = _result_uids(pipeline, partial)
    completed = _result_uids(pipeline, complete)
    assert set(first) <= set(completed)
    for name, (series_uid, sop_uid) in first.items():
        assert series_uid != completed[name][0] and sop_uid != completed[name][1], name
    assert _result_uids(pipeline, list(reversed(partial))) == first
    assert _result_uids(pipeline, complete) == completed


def test_replaced_pixels_with_the_same_instance_uids_get_new_uids(
    pipeline: CtMusclePipeline,
) -> None:
    datasets = demo_ct_series(5, SMALL)
    replaced = list(datasets)
    changed = copy.deepcopy(datasets[2])
    pixels = bytearray(datasets[2].PixelData)
    pixels[:2] = (int.from_bytes(pixels[:2], "little") ^ 1).to_bytes(2, "little")
    changed.PixelData = bytes(pixels)
    replaced[2] = changed
    first, second = _result_uids(pipeline, datasets), _result_uids(pipeline, replaced)
    assert all(first[name][1] != second[name][1] for name in first)


def test_tracking_uids_stay_with_the_input_across_generations(pipeline: CtMusclePipeline) -> None:
    """Tracking UIDs name a structure of the input, so the new result's findings link
    to the earlier one's."""
    complete = sorted(demo_ct_series(4, SMALL), key=lambda ds: int(ds.InstanceNumber))

    def tracking(datasets: list[Dataset]) -> dict[str, str]:
        seg = next(o.dataset for o in pipeline.run(_item(datasets)).dicom
                   if o.name == "ct-muscle-seg.dcm")
        return {str(s.SegmentLabel): str(s.TrackingUID) for s in seg.SegmentSequence}

    partial, full = tracking(complete[:4]), tracking(complete)
    common = set(partial) & set(full)
    assert common and all(partial[k] == full[k] for k in common)


def test_non_conformant_patient_values_still_give_every_output(
    pipeline: CtMusclePipeline,
) -> None:
    """Real PACS data: a dashed birth date, a too-long name and ID, a word for sex."""
    datasets = demo_ct_series(6, SMALL)
    for ds in datasets:
        ds.PatientName = "ZZTOPSECRET^" + "N" * 70
        ds.PatientID = "PIDXYZ123" + "9" * 70
        ds.PatientBirthDate = "1972-03-04"
        ds.PatientSex = "male"
    names = {o.name for o in pipeline.run(_item(datasets)).dicom}
    assert names == {"ct-muscle-seg.dcm", "ct-muscle-sr.dcm", "ct-muscle-uncertainty.dcm"}


def _run_fresh(tiny_weights: Path, options: dict[str, object], datasets: list[Dataset]) -> dict[str, Dataset]:
    p = CtMusclePipeline()
    p.load(PipelineContext(device="cpu", options=options, weights_dir=tiny_weights))
    return {o.name: o.dataset for o in p.run(_item(datasets)).dicom}


def test_rerun_gives_identical_objects_without_touching_the_global_rng(tiny_weights: Path) -> None:
    """Seeded MC dropout: a re-run (a new pipeline, as after a restart, other arrival
    order) gives byte-identical objects apart from their creation timestamps, whatever
    the global random state; the run does not change that state."""
    import torch

    from tests.support.reproducibility import without_timestamps

    datasets = demo_ct_series(7, SMALL)
    torch.manual_seed(1)
    first = _run_fresh(tiny_weights, {"samples": 3}, datasets)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    again = _run_fresh(tiny_weights, {"samples": 3}, list(reversed(datasets)))
    assert torch.equal(torch.get_rng_state(), state)
    assert set(first) == set(again)
    for name, ds in first.items():
        assert without_timestamps(ds) == without_timestamps(again[name]), name


@pytest.mark.parametrize("options", [{"samples": 4}, {"samples": 3, "labelmap": True},
                                     {"samples": 3, "measure": "variance"},
                                     {"samples": 3, "review_score": "uncertainty"},
                                     {"samples": 3, "body_size_px": 400.0}],
                         ids=["samples", "labelmap", "measure", "review_score", "body_size_px"])
def test_changed_options_give_new_instances_in_new_series(
    tiny_weights: Path, options: dict[str, object]
) -> None:
    datasets = demo_ct_series(7, SMALL)
    base = _run_fresh(tiny_weights, {"samples": 3}, datasets)
    changed = _run_fresh(tiny_weights, options, datasets)
    for name, ds in base.items():
        assert changed[name].SOPInstanceUID != ds.SOPInstanceUID, name
        assert changed[name].SeriesInstanceUID != ds.SeriesInstanceUID, name


def test_records_carry_density_next_to_volume_and_uncertainty(pipeline: CtMusclePipeline) -> None:
    from acqflow.plugins.common.volume import series_to_volume

    datasets = demo_ct_series(8, SMALL)
    result = pipeline.run(_item(datasets))
    hu = series_to_volume(datasets).array
    for record in result.records:
        assert -1024.0 <= record.fields["mean_hu"] <= float(hu.max())
        assert 0.0 <= record.fields["low_attenuation_fraction"] <= 1.0
    sr = next(o.dataset for o in result.dicom if o.name == "ct-muscle-sr.dcm")
    import highdicom as hd

    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()  # type: ignore[attr-defined]
    by_key = {r.fields["structure"]: r.fields for r in result.records}
    for group, record in zip(groups, result.records, strict=True):
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        fields = by_key[record.fields["structure"]]
        assert float(values["Attenuation Coefficient"]) == pytest.approx(fields["mean_hu"])
        assert float(values["Monte-Carlo sample disagreement"]) == pytest.approx(fields["disagreement"])
        assert float(values["Fraction of voxels below 30 HU"]) == pytest.approx(
            fields["low_attenuation_fraction"])


def test_structures_are_flagged_by_the_samples_disagreement(tiny_weights: Path) -> None:
    datasets = demo_ct_series(9, SMALL)
    records = {}
    for score, threshold in (("disagreement", 0.5), ("uncertainty", 0.5)):
        p = CtMusclePipeline()
        p.load(PipelineContext(device="cpu", options={"samples": 3, "review_score": score,
                                                      "review_threshold": threshold},
                               weights_dir=tiny_weights))
        records[score] = p.run(_item(datasets)).records
    for record in records["disagreement"]:
        fields = record.fields
        assert 0.0 <= fields["disagreement"] <= 1.0 and fields["review_score"] == "disagreement"
        assert fields["review_required"] == (fields["disagreement"] > 0.5)
    for record in records["uncertainty"]:
        assert record.fields["review_required"] == (record.fields["mean_uncertainty"] > 0.5)
