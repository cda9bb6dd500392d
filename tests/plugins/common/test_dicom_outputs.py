"""Round trip of the SEG, Parametric Map and SR builders: write, dciodvfy, read back.

The label map decoded from the SEG must equal the ground truth voxel for voxel for every
source instance, whatever order the series arrived in and whatever its orientation.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from acqflow.models.store import ModelCard
from acqflow.plugins.common.dicom_outputs import content_digest
from acqflow.plugins.common.volume import Volume, series_to_volume
from acqflow.plugins.ct_muscle.inference import StructureMeasurement, UncertaintyMeasure
from acqflow.plugins.ct_muscle.reporting import OutputContext, dicom_outputs
from acqflow.plugins.ct_muscle.structures import default_label_table
from tests.plugins.common.helpers import VARIANTS, labels_in_volume_order, phantom_series

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy (dicom3tools) is not installed")

TABLE = default_label_table()
CARD = ModelCard(name="ct_muscle", version="0.0.1-test", architecture="BayesianUNet",
                 arguments={})


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dciodvfy for ``path`` (warnings are allowed)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                            check=False, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


def seg_type_is_labelmap(path: Path) -> bool:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return bool(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
                and ds.SegmentationType == "LABELMAP")


def _measured(labels: np.ndarray, uncertainty: np.ndarray) -> list[StructureMeasurement]:
    out = []
    for s in TABLE:
        inside = labels == s.label
        if inside.any():
            out.append(StructureMeasurement(
                s.key, s.name, s.label, int(inside.sum()), float(inside.sum()) * 0.36,
                float(uncertainty[inside].mean()), s.label % 3 == 0))
    return out


def _outputs(volume: Volume, labels: np.ndarray, labelmap: bool = False) -> tuple[
    dict[str, Dataset], np.ndarray, list[StructureMeasurement]
]:
    rng = np.random.default_rng(0)
    uncertainty = (rng.random(labels.shape) * (labels > 0)).astype(np.float32)
    measured = _measured(labels, uncertainty)
    context = OutputContext("identity-1", "1.0.0", CARD, TABLE, UncertaintyMeasure.ENTROPY, 0.3,
                            content_digest(volume.datasets))
    outputs = dicom_outputs(context, volume, labels, uncertainty, measured, labelmap=labelmap)
    return {o.name: o.dataset for o in outputs}, uncertainty, measured


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _decoded_labels(seg: hd.seg.Segmentation, uids: list[str]) -> np.ndarray:
    """Label values (label table) per source instance, decoded from the SEG."""
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    lut = np.zeros(len(seg.segment_numbers) + 1, dtype=np.uint8)
    by_type = {s.type.value: s.label for s in TABLE}
    for number in seg.segment_numbers:
        lut[number] = by_type[seg.get_segment_description(number).segmented_property_type.value]
    decoded: np.ndarray = lut[np.asarray(pixels)]
    return decoded


CASES = [(variant, shuffle) for variant in sorted(VARIANTS) for shuffle in (False, True)]


@needs_dciodvfy
@pytest.mark.parametrize(("variant", "shuffle"), CASES)
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_seg_round_trip_voxel_for_voxel(
    tmp_path: Path, variant: str, shuffle: bool, labelmap: bool
) -> None:
    phantom, datasets = phantom_series(variant, shuffle=shuffle)
    volume = series_to_volume(datasets)
    labels = labels_in_volume_order(phantom, datasets, [s.sop_instance_uid for s in volume.sources])
    objects, _, measured = _outputs(volume, labels, labelmap=labelmap)
    path = _write(objects["ct-muscle-seg.dcm"], tmp_path / "seg.dcm")
    errors = dciodvfy_errors(path)
    if labelmap and "Error - Information Object Not found" in errors:
        # Label Map Segmentation Storage (2024) is newer than this dicom3tools release,
        # which then cannot validate the object at all; BINARY is validated always.
        assert seg_type_is_labelmap(path)
    else:
        assert errors == []
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == ("LABELMAP" if labelmap else "BINARY")
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert len(seg.segment_numbers) == len(measured)
    original_order = sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    decoded = _decoded_labels(seg, [str(ds.SOPInstanceUID) for ds in original_order])
    np.testing.assert_array_equal(decoded, phantom.labels)
    positions = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient]
                 for ds in datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            positions[uid], atol=1e-3)
    description = seg.get_segment_description(1)
    assert description.algorithm_identification is not None


@needs_dciodvfy
@pytest.mark.parametrize("variant", ["descending", "oblique"])
def test_parametric_map_round_trip(tmp_path: Path, variant: str) -> None:
    phantom, datasets = phantom_series(variant, shuffle=True)
    volume = series_to_volume(datasets)
    uids = [s.sop_instance_uid for s in volume.sources]
    labels = labels_in_volume_order(phantom, datasets, uids)
    objects, uncertainty, _ = _outputs(volume, labels)
    path = _write(objects["ct-muscle-uncertainty.dcm"], tmp_path / "pm.dcm")
    assert dciodvfy_errors(path) == []
    pm = pydicom.dcmread(path)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert "FloatPixelData" in pm and "PixelData" not in pm
    shared = pm.SharedFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) == (1.0, 0.0)
    anatomy = shared.FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == "B" and anatomy.AnatomicRegionSequence[0].CodeValue
    expected = dict(zip(uids, uncertainty, strict=True))
    for index, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert pm.pixel_array[index].dtype == np.float32
        np.testing.assert_array_equal(pm.pixel_array[index], expected[uid])


@needs_dciodvfy
def test_measurement_report_round_trip(tmp_path: Path) -> None:
    phantom, datasets = phantom_series("oblique", shuffle=True)
    volume = series_to_volume(datasets)
    labels = labels_in_volume_order(phantom, datasets, [s.sop_instance_uid for s in volume.sources])
    objects, _, measured = _outputs(volume, labels)
    seg = objects["ct-muscle-seg.dcm"]
    path = _write(objects["ct-muscle-sr.dcm"], tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups()  # type: ignore[attr-defined]
    assert len(groups) == len(measured)
    for group, m in zip(groups, measured, strict=True):
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        values = {item.name.meaning: item.value for item in group.get_measurements()}
        assert values["Volume"] == pytest.approx(m.volume_ml)
        assert values["Mean segmentation uncertainty"] == pytest.approx(m.mean_uncertainty)
        flags = [item.value.meaning for item in group.get_qualitative_evaluations()
                 if item.name.meaning == "Manual review recommended"]
        assert flags == ["Yes" if m.review_required else "No"]
        assert group.finding_type.value == TABLE.by_label(m.label).type.value


def test_uids_are_deterministic() -> None:
    phantom, datasets = phantom_series("ascending")
    volume = series_to_volume(datasets)
    labels = labels_in_volume_order(phantom, datasets, [s.sop_instance_uid for s in volume.sources])
    first, _, _ = _outputs(volume, labels)
    second, _, _ = _outputs(series_to_volume(list(reversed(datasets))), labels)
    for name, ds in first.items():
        assert ds.SOPInstanceUID == second[name].SOPInstanceUID
        assert ds.SeriesInstanceUID == second[name].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in first.values()}) == len(first)
