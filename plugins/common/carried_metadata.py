"""Patient and study attributes of derived objects, tolerant of values real PACS data carry.

highdicom parses some patient and study attributes of the source image (names, dates,
times, sex) and refuses values that do not conform to their VR: a ``1972-03-04`` birth
date, a month 13, a 70-character patient ID, ``male`` for Patient's Sex. None of these
may cost a result. Before a derived object is built, each non-conformant attribute of
the Patient and Study information entities is decided on once, from its received bytes
(never parsed into a date, time or name):

* the identifiers a PACS files a result under (:data:`CARRIED_AS_RECEIVED`) are carried
  exactly as received, so the result lands next to its source;
* any other Type 2 attribute (:data:`EMPTY_WHEN_INVALID`) is written empty, which is legal;
* everything else is omitted.

Every decision is logged as a warning naming the attribute and what was done, never the
value. highdicom builds from conformant copies of the sources (the received datasets are
not changed), and the carried elements are put into the built object afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from pydicom import Dataset
from pydicom.charset import decode_bytes
from pydicom.config import IGNORE, RAISE
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DT, TM, validate_value

from acqflow.plugins.common.iod_modules import patient_and_study_keywords

__all__ = [
    "CARRIED_AS_RECEIVED",
    "EMPTY_WHEN_INVALID",
    "Action",
    "CarriedMetadata",
    "Decision",
    "plan_carried_metadata",
]

log = logging.getLogger(__name__)

# What a PACS matches a result to its patient and study by: changing or dropping these
# would file the result under another patient, so they travel as they came.
CARRIED_AS_RECEIVED = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs",
    "StudyInstanceUID", "StudyID", "AccessionNumber",
})
# Type 2 in the Patient and General Study modules: present, so empty when invalid.
EMPTY_WHEN_INVALID = frozenset({
    "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
})
# Enumerated values highdicom checks beyond the VR (PS3.3 C.7.1.1).
_ENUMERATED = {"PatientSex": frozenset({"M", "F", "O"})}
_TEMPORAL = {"DA": DA, "TM": TM, "DT": DT}
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
# Sequences and binary values: highdicom copies them untouched and never parses them.
_SKIPPED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "UR", "US", "SS", "UL",
                          "SL", "UV", "SV", "FL", "FD", "AT"})


class Action(str, Enum):
    """What happens to a non-conformant attribute in a derived object."""

    CARRIED = "carried as received"
    EMPTY = "written empty"
    OMITTED = "omitted"


@dataclass(frozen=True)
class Decision:
    """One non-conformant attribute: its tag, keyword, what is done and the element to carry."""

    tag: BaseTag
    keyword: str
    action: Action
    received: DataElement | None  # the element to put back (CARRIED only)


@dataclass(frozen=True)
class CarriedMetadata:
    """The decisions for one series: conformant copies for highdicom, then :meth:`apply`."""

    decisions: tuple[Decision, ...]

    def conformant(self, sources: Sequence[Dataset]) -> list[Dataset]:
        """Copies of ``sources`` (elements shared, not duplicated) that highdicom accepts;
        the sources themselves are returned when nothing needed deciding."""
        if not self.decisions:
            return list(sources)
        return [self._conformant_copy(ds) for ds in sources]

    def _conformant_copy(self, ds: Dataset) -> Dataset:
        copy = Dataset()
        # Tags, not iteration over the dataset (which converts every element): raw stays raw.
        for tag in ds.keys():  # noqa: SIM118
            copy.add(ds.get_item(tag))
        if hasattr(ds, "file_meta"):
            copy.file_meta = ds.file_meta
        copy.set_original_encoding(ds.original_encoding[0], ds.original_encoding[1],
                                   ds.original_character_set)
        for decision in self.decisions:
            if decision.action is Action.OMITTED:
                if decision.tag in copy:
                    del copy[decision.tag]
            else:
                copy.add(DataElement(decision.tag, dictionary_VR(decision.tag), None))
        return copy

    def apply(self, built: Dataset, kind: str) -> None:
        """Put the carried elements into ``built`` (made from :meth:`conformant` copies,
        ``kind`` names it in the log) and log one warning per decision, naming the
        attribute only."""
        for decision in self.decisions:
            if decision.action is Action.CARRIED and decision.received is not None:
                built.add(decision.received)
            elif decision.action is Action.OMITTED and decision.tag in built:
                del built[decision.tag]
            log.warning("source %s is not a conformant value: %s in the %s",
                        decision.keyword, decision.action.value, kind)


def plan_carried_metadata(source: Dataset) -> CarriedMetadata:
    """The decisions for every non-conformant Patient or Study attribute of ``source``
    (the image highdicom copies them from). Never raises for a value."""
    decisions = []
    for tag in _patient_and_study_tags(source):
        element = source.get_item(tag)
        keyword = keyword_for_tag(tag)
        vr = _vr_of(element)
        if element is None or vr in _SKIPPED_VRS:
            continue
        text = _text_of(element, vr, source)
        if text is not None and _conforms(keyword, vr, text):
            continue
        if keyword in CARRIED_AS_RECEIVED and text is not None:
            carried = DataElement(tag, vr, text, validation_mode=IGNORE)
            decisions.append(Decision(BaseTag(tag), keyword, Action.CARRIED, carried))
        elif keyword in EMPTY_WHEN_INVALID or keyword in CARRIED_AS_RECEIVED:
            decisions.append(Decision(BaseTag(tag), keyword, Action.EMPTY, None))
        else:
            decisions.append(Decision(BaseTag(tag), keyword, Action.OMITTED, None))
    return CarriedMetadata(tuple(decisions))


def _patient_and_study_tags(source: Dataset) -> list[BaseTag]:
    """Top-level tags of ``source`` in its IOD's Patient and Study modules (exactly what
    highdicom copies into a derived object, :mod:`acqflow.plugins.common.iod_modules`)."""
    keywords = patient_and_study_keywords(str(source.get("SOPClassUID", "")))
    return [tag for tag in source.keys() if keyword_for_tag(tag) in keywords]  # noqa: SIM118


def _vr_of(element: DataElement | RawDataElement | None) -> str:
    if element is None:
        return ""
    vr = element.VR
    if vr is None or vr in ("US or SS", "OB or OW"):
        return str(dictionary_VR(element.tag))
    return str(vr)


def _text_of(element: DataElement | RawDataElement, vr: str, source: Dataset) -> str | None:
    """The value as text, decoded from the received bytes without any VR conversion;
    None when it cannot even be decoded."""
    value = element.value
    try:
        if isinstance(value, bytes):
            if vr in _TEXT_VRS:
                encodings = source.get("SpecificCharacterSet") or ["ISO_IR 6"]
                return decode_bytes(value, list(encodings) if isinstance(encodings, MultiValue)
                                    else [str(encodings)], set()).rstrip("\0 ")
            return value.decode("ascii").rstrip("\0 ")
    except (UnicodeDecodeError, LookupError, ValueError):
        return None
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _conforms(keyword: str, vr: str, text: str) -> bool:
    """Whether ``text`` is a legal value of ``vr`` (and of the attribute's enumeration)."""
    if not text:
        return True
    values = [text] if vr in ("LT", "ST", "UT") else text.split("\\")
    try:
        for value in values:
            validate_value(vr, value, RAISE)
            if vr in _TEMPORAL and value:
                _TEMPORAL[vr](value.strip())
    except (ValueError, TypeError, OverflowError):
        return False
    allowed = _ENUMERATED.get(keyword)
    return allowed is None or all(v in allowed for v in values)
