"""The Patient and Study module tables acqflow carries equal highdicom's own (private)
tables, which decide what highdicom copies from a source into a derived object."""

from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage, MRImageStorage, SegmentationStorage

from acqflow.plugins.common.iod_modules import patient_and_study_keywords


def _highdicom_keywords(sop_class_uid: str) -> frozenset[str]:
    # Reaching into highdicom here is the point: the test notices when its tables change.
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return frozenset()
    attributes = get_module_attribute_map()
    return frozenset(str(item["keyword"]) for module in get_iod_module_map()[iod]
                     if module["ie"] in ("Patient", "Study")
                     for item in attributes[module["key"]] if len(item["path"]) == 0)


def test_every_sop_class_matches_highdicom() -> None:
    from highdicom._standard_utils import get_sop_class_iod_map

    uids = sorted(get_sop_class_iod_map())
    assert len(uids) > 100
    differing = [uid for uid in uids if patient_and_study_keywords(uid) != _highdicom_keywords(uid)]
    assert not differing


@pytest.mark.parametrize("uid", [CTImageStorage, MRImageStorage, SegmentationStorage])
def test_images_carry_the_patient_and_study_modules(uid: str) -> None:
    keywords = patient_and_study_keywords(uid)
    assert {"PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "PatientAge"} <= keywords
    assert "SeriesInstanceUID" not in keywords  # the series is the derived object's own


def test_an_unknown_sop_class_has_none() -> None:
    assert patient_and_study_keywords("1.2.3.4") == frozenset()
