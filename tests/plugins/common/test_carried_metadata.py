"""Non-conformant patient and study values never cost a result.

Each case puts one value that does not conform to its VR into every instance of a CT
series (as received bytes, the way the spool reads them), builds the ct-muscle outputs
(SEG, Parametric Map, SR), and checks: the SEG validates with no dciodvfy error that the
source does not have itself, highdicom reads it back, the attribute is carried exactly as
received, written empty or omitted as documented, and the warning names the attribute but
never its value.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement

from acqflow.plugins.common.carried_metadata import Action, plan_carried_metadata
from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
from acqflow.plugins.ct_muscle.inference import StructureMeasurement, UncertaintyMeasure
from acqflow.plugins.ct_muscle.reporting import OutputContext, dicom_outputs
from acqflow.plugins.mr_muscle.synthetic_ct import SyntheticCtIdentity, build_synthetic_ct_series
from tests.plugins.common.helpers import labels_in_volume_order, phantom_series
from tests.plugins.common.test_dicom_outputs import (
    CARD,
    TABLE,
    dciodvfy_errors,
    needs_dciodvfy,
)

CASES: dict[str, tuple[str, bytes, Action]] = {
    "long-name": ("PatientName", b"ZZTOPSECRET^" + b"N" * 70, Action.CARRIED),
    "long-id": ("PatientID", b"PIDXYZ123" + b"9" * 70, Action.CARRIED),
    "long-accession": ("AccessionNumber", b"ACCXYZ" + b"7" * 20, Action.CARRIED),
    "long-study-id": ("StudyID", b"STUDYXYZ" + b"1" * 20, Action.CARRIED),
    "dashed-birth-date": ("PatientBirthDate", b"1972-03-04", Action.EMPTY),
    "month-13": ("PatientBirthDate", b"19721304", Action.EMPTY),
    "february-30": ("PatientBirthDate", b"19720230", Action.EMPTY),
    "dashed-study-date": ("StudyDate", b"2026-01-01", Action.EMPTY),
    "study-time-25h": ("StudyTime", b"250000", Action.EMPTY),
    "study-time-colons": ("StudyTime", b"12:00:00", Action.EMPTY),
    "sex-word": ("PatientSex", b"male", Action.EMPTY),
    "age-words": ("PatientAge", b"52 years", Action.OMITTED),
    "weight-word": ("PatientWeight", b"heavy", Action.OMITTED),
}


def _received(datasets: list[Dataset], keyword: str, value: bytes) -> list[Dataset]:
    """``datasets`` written and read back (raw elements, as from the spool), each with
    ``keyword`` set to the received bytes ``value``."""
    padded = value + (b" " if len(value) % 2 else b"")
    tag = tag_for_keyword(keyword)
    assert tag is not None
    out: list[Dataset] = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        received = pydicom.dcmread(buffer)
        received.add(RawDataElement(tag, dictionary_VR(tag), len(padded), padded, 0, False, True))  # type: ignore[arg-type]
        out.append(received)
    return out


def _measured(labels: np.ndarray) -> list[StructureMeasurement]:
    out: list[StructureMeasurement] = []
    for s in TABLE:
        inside = labels == s.label
        if inside.any():
            out.append(StructureMeasurement(s.key, s.name, s.label, int(inside.sum()),
                                            float(inside.sum()) * 0.36, 0.1, False))
    return out


def _build(datasets: list[Dataset], labels: np.ndarray) -> dict[str, Dataset]:
    volume = series_to_volume(datasets)
    context = OutputContext("identity-1", "1.0.0", CARD, TABLE, UncertaintyMeasure.ENTROPY,
                            0.3, "content")
    outputs = dicom_outputs(context, volume, labels, np.zeros(labels.shape, np.float32),
                            _measured(labels))
    return {o.name: o.dataset for o in outputs}


def _raw_value(path: Path, keyword: str) -> bytes | None:
    """The bytes of ``keyword`` in the file, as written (None when absent)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    tag = tag_for_keyword(keyword)
    assert tag is not None
    element = ds.get_item(tag) if tag in ds else None
    if element is None:
        return None
    value = element.value
    return value if isinstance(value, bytes) else str(value or "").encode()


@needs_dciodvfy
@pytest.mark.parametrize("case", sorted(CASES))
def test_non_conformant_value_gives_a_valid_seg(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    keyword, value, action = CASES[case]
    phantom, clean = phantom_series("ascending")
    datasets = _received(clean, keyword, value)
    volume = series_to_volume(datasets)
    labels = labels_in_volume_order(phantom, datasets, [s.sop_instance_uid for s in volume.sources])
    with caplog.at_level(logging.WARNING, logger="acqflow.plugins.common.carried_metadata"):
        objects = _build(datasets, labels)

    source = datasets[0]
    source.save_as(tmp_path / "source.dcm", enforce_file_format=True)
    source_errors = set(dciodvfy_errors(tmp_path / "source.dcm"))
    for name, ds in objects.items():
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        new_errors = set(dciodvfy_errors(path)) - source_errors
        assert new_errors == set(), (name, new_errors)
        written = _raw_value(path, keyword)
        if action is Action.CARRIED:
            assert written is not None and written.rstrip(b" ") == value
        elif action is Action.EMPTY:
            assert written == b""
        else:
            assert written is None

    seg = hd.seg.segread(tmp_path / "ct-muscle-seg.dcm")
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    decoded = np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.sop_instance_uid for s in volume.sources],
        combine_segments=True, relabel=True))
    np.testing.assert_array_equal(decoded > 0, labels > 0)
    hd.sr.srread(tmp_path / "ct-muscle-sr.dcm")

    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all(keyword in w and action.value in w for w in warnings)
    shown = value.decode()
    assert not any(shown in w or shown[:8] in w for w in warnings)


def test_conformant_series_needs_no_decisions() -> None:
    _, datasets = phantom_series("ascending")
    plan = plan_carried_metadata(_received(datasets, "PatientName", b"DOE^JANE")[0])
    assert plan.decisions == ()


def test_received_datasets_are_not_changed() -> None:
    phantom, clean = phantom_series("ascending")
    datasets = _received(clean, "PatientBirthDate", b"1972-03-04")
    volume = series_to_volume(datasets)
    labels = labels_in_volume_order(phantom, datasets, [s.sop_instance_uid for s in volume.sources])
    _build(datasets, labels)
    for ds in datasets:
        raw = ds.get_item("PatientBirthDate")
        assert raw is not None and raw.value == b"1972-03-04"


def test_synthetic_ct_carries_the_same_decisions() -> None:
    _, clean = phantom_series("ascending", modality="MR")
    datasets = _received(_received(clean, "PatientBirthDate", b"1972-03-04"),
                         "PatientID", b"PIDXYZ123" + b"9" * 70)
    volume = series_to_volume(datasets, VolumeOptions(modalities=("MR",)))
    series = build_synthetic_ct_series(volume, np.zeros(volume.array.shape, np.float32),
                                       SyntheticCtIdentity("identity-1", "1.0.0", "content"))
    first = series[0]
    assert "PatientBirthDate" in first and not first.PatientBirthDate
    assert str(first.PatientID) == "PIDXYZ123" + "9" * 70
