"""The DICOM objects of one ct-muscle result: SEG, uncertainty map and TID 1500 SR.

UIDs are derived from the input identity, the content of its instances
(:func:`plugins.common.dicom_outputs.content_digest`), the pipeline version and the model
version: processing the same series again yields the same instances (a PACS replaces
them) instead of duplicates, and a new generation of the series (a re-opened series
completed with more slices) yields new ones. Tracking UIDs leave the content out: they
name a structure of this input across its results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import generate_uid

from plugins.api import DicomOutput
from plugins.common.dicom_outputs import (
    AlgorithmInfo,
    CodeSpec,
    DeviceInfo,
    InstanceIds,
    MapSpec,
    RoiReport,
    SegmentSpec,
    build_measurement_report,
    build_parametric_map,
    build_segmentation,
)
from plugins.ct_muscle.inference import StructureMeasurement, UncertaintyMeasure
from plugins.ct_muscle.structures import LabelTable

if TYPE_CHECKING:
    from models.store import ModelCard
    from plugins.common.volume import Volume

__all__ = ["OutputContext", "dicom_outputs", "segment_specs"]

SEG_SERIES_NUMBER = 9101
MAP_SERIES_NUMBER = 9102
SR_SERIES_NUMBER = 9103

# No DICOM or SNOMED concept names a Monte-Carlo-dropout uncertainty or a review request,
# so they are coded in a private scheme (PS3.3 section 8.2: 99 prefix).
PRIVATE_SCHEME = "99ACQFLOW"
REVIEW_CONCEPT = CodeSpec("RVW01", PRIVATE_SCHEME, "Manual review recommended")
_MEASURE_CONCEPTS = {
    UncertaintyMeasure.ENTROPY: CodeSpec("UNC01", PRIVATE_SCHEME, "MC dropout predictive entropy"),
    UncertaintyMeasure.VARIANCE: CodeSpec("UNC02", PRIVATE_SCHEME, "MC dropout predictive variance"),
    UncertaintyMeasure.MUTUAL_INFORMATION: CodeSpec(
        "UNC03", PRIVATE_SCHEME, "MC dropout mutual information"),
}
_MEAN_UNCERTAINTY = CodeSpec("UNC10", PRIVATE_SCHEME, "Mean segmentation uncertainty")
_VOLUME = CodeSpec("118565006", "SCT", "Volume")
_MILLILITER = CodeSpec("mL", "UCUM", "milliliter")
_NO_UNITS = CodeSpec("1", "UCUM", "no units")
_YES = CodeSpec("373066001", "SCT", "Yes")
_NO = CodeSpec("373067005", "SCT", "No")


@dataclass(frozen=True)
class OutputContext:
    """Everything about the run that the DICOM objects record."""

    identity: str
    pipeline_version: str
    card: ModelCard
    table: LabelTable
    measure: UncertaintyMeasure
    review_threshold: float
    content: str  # content_digest() of the source instances

    def run_entropy(self) -> list[str]:
        """What identifies the run apart from the content: input, pipeline, model."""
        return [self.identity, "ct-muscle", self.pipeline_version, self.card.version]

    def uid(self, kind: str, part: str) -> str:
        """A UID fixed by the run (:meth:`run_entropy`), the content, object and part."""
        return str(generate_uid(entropy_srcs=[*self.run_entropy(), self.content, kind, part]))

    def tracking_uid(self, key: str) -> str:
        """The tracking UID of structure ``key``: the same for every generation of the input."""
        return str(generate_uid(entropy_srcs=[*self.run_entropy(), "tracking", key]))

    def ids(self, kind: str, number: int, description: str) -> InstanceIds:
        return InstanceIds(series_instance_uid=self.uid(kind, "series"),
                           sop_instance_uid=self.uid(kind, "instance"), series_number=number,
                           series_description=description)

    @property
    def device(self) -> DeviceInfo:
        return DeviceInfo(manufacturer="acqflow", model_name="ct-muscle",
                          software_version=f"{self.pipeline_version} model {self.card.version}")

    @property
    def algorithm(self) -> AlgorithmInfo:
        return AlgorithmInfo(name=f"{self.card.name} {self.card.architecture}",
                             version=self.card.version)


def segment_specs(
    context: OutputContext, measured: list[StructureMeasurement]
) -> list[SegmentSpec]:
    """One segment per predicted structure, numbered 1..N in label order."""
    specs = []
    for number, m in enumerate(measured, 1):
        s = context.table.by_label(m.label)
        specs.append(SegmentSpec(
            number=number, label=s.label, name=s.name,
            category=CodeSpec(s.category.value, s.category.scheme, s.category.meaning),
            type=CodeSpec(s.type.value, s.type.scheme, s.type.meaning),
            tracking_uid=context.tracking_uid(s.key), color=s.color))
    return specs


def _roi_reports(
    context: OutputContext, specs: list[SegmentSpec], measured: list[StructureMeasurement]
) -> list[RoiReport]:
    return [
        RoiReport(
            segment=spec,
            measurements=((_VOLUME, m.volume_ml, _MILLILITER),
                          (_MEAN_UNCERTAINTY, m.mean_uncertainty, _NO_UNITS)),
            evaluations=((REVIEW_CONCEPT, _YES if m.review_required else _NO),),
        )
        for spec, m in zip(specs, measured, strict=True)
    ]


def dicom_outputs(
    context: OutputContext, volume: Volume, labels: np.ndarray, uncertainty: np.ndarray,
    measured: list[StructureMeasurement], labelmap: bool = False,
) -> list[DicomOutput]:
    """SEG and SR (when any structure was found) and the uncertainty Parametric Map."""
    outputs: list[DicomOutput] = []
    measure_code = _MEASURE_CONCEPTS[context.measure]
    pm = build_parametric_map(
        volume, uncertainty,
        MapSpec(label="uncertainty", explanation=measure_code.meaning, quantity=measure_code),
        context.ids("map", MAP_SERIES_NUMBER, "Muscle segmentation uncertainty"),
        context.device)
    if measured:
        specs = segment_specs(context, measured)
        seg = build_segmentation(
            volume, labels, specs,
            context.ids("seg", SEG_SERIES_NUMBER, "Hip and thigh muscles (AI)"),
            context.device, context.algorithm, labelmap=labelmap)
        outputs.append(DicomOutput("ct-muscle-seg.dcm", seg))
        sr = build_measurement_report(
            volume, seg, _roi_reports(context, specs, measured),
            context.ids("sr", SR_SERIES_NUMBER, "Muscle volumes and uncertainty"),
            context.device, context.algorithm)
        outputs.append(DicomOutput("ct-muscle-sr.dcm", sr))
    outputs.append(DicomOutput("ct-muscle-uncertainty.dcm", pm))
    return outputs
