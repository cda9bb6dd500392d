"""A test pipeline that fails the way careless code fails on patient values.

``PriorLookup`` logs the patient's name and ID, reads the birth date through pydicom
(which warns with a non-conformant value and raises ``Unable to convert '…'``), and for
a conformant date raises an error naming the patient, the ID and the date unquoted. The
daemon must keep all of it out of its logs, journal, quarantine notes and CLI output.
Registered by the end-to-end test, never shipped.
"""

from __future__ import annotations

import logging

from pydicom.valuerep import DA

from acqflow.plugins.api import (
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    SeriesItem,
)

__all__ = ["PriorLookup"]

log = logging.getLogger(__name__)


class PriorLookup:
    name = "test-prior-lookup"
    version = "1.0"
    input_kind = InputKind.DICOM_SERIES

    def load(self, context: PipelineContext) -> None:
        del context

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        if not isinstance(item, SeriesItem):
            raise InvalidInputError("test-prior-lookup takes DICOM series")
        ds = item.datasets[0]
        log.warning("looking up priors of %s (%s)", ds.PatientName, ds.PatientID)
        born = DA(ds.PatientBirthDate)  # ValueError quoting a non-conformant value
        raise LookupError(f"no prior study of {ds.PatientName} ({ds.PatientID}) born {born} "
                          f"({ds.PatientBirthDate})")
