"""The DICOM objects of one ct-muscle result: SEG, uncertainty map and TID 1500 SR.

UIDs are derived from everything that changes the content: the input identity, the
content of its instances (:func:`acqflow.plugins.common.dicom_outputs.content_digest`), the
pipeline version, the model version and weight hash, the options that change the
result (samples, measure, review threshold, HU window, ...: :attr:`OutputContext.options`)
and the SEG's SOP class (BINARY or LABELMAP). Processing the same series again with the
same model and options yields the same instances with the same pixel data (the
MC-dropout samples are seeded from the same digests), so a PACS that keeps its copy
keeps an identical one; any change yields new instances in new series. Only the
creation timestamps (Instance Creation, Content, SR completion dates and times) are
those of the run. Tracking UIDs leave the content out: they name a structure of this
input across its results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import generate_uid

from acqflow.plugins.api import DicomOutput
from acqflow.plugins.common.dicom_outputs import (
    AlgorithmInfo,
    CodeSpec,
    DeviceInfo,
    InstanceIds,
    MapSpec,
    MeasurementSpec,
    RoiReport,
    SegmentSpec,
    build_measurement_report,
    build_parametric_map,
    build_segmentation,
)
from acqflow.plugins.ct_muscle.inference import StructureMeasurement, UncertaintyMeasure
from acqflow.plugins.ct_muscle.structures import LabelTable

if TYPE_CHECKING:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.common.volume import Volume

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
# 1 - the mean Dice of the Monte-Carlo samples' segmentations with the result
_DISAGREEMENT = CodeSpec("UNC20", PRIVATE_SCHEME, "Monte-Carlo sample disagreement")
_LOW_ATTENUATION = CodeSpec("LAF01", PRIVATE_SCHEME, "Fraction of voxels below 30 HU")
_VOLUME = CodeSpec("118565006", "SCT", "Volume")
_ATTENUATION = CodeSpec("112031", "DCM", "Attenuation Coefficient")
_MEAN = CodeSpec("373098007", "SCT", "Mean")
_HOUNSFIELD = CodeSpec("[hnsf'U]", "UCUM", "Hounsfield unit")
_MILLILITER = CodeSpec("mL", "UCUM", "milliliter")
_NO_UNITS = CodeSpec("1", "UCUM", "no units")
SEG_CLASSES = {False: "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage (BINARY)
               True: "1.2.840.10008.5.1.4.1.1.66.7"}  # Label Map Segmentation Storage
_YES = CodeSpec("373066001", "SCT", "Yes")
_NO = CodeSpec("373067005", "SCT", "No")


@dataclass(frozen=True)
class OutputContext:
    """Everything about the run that the DICOM objects record.

    ``options`` are ``name=value`` strings of every option that changes the content
    (samples, measure, review threshold, HU window, label table ...); they go into the
    UIDs with the model's weight hash and the SEG's SOP class.
    """

    identity: str
    pipeline_version: str
    card: ModelCard
    table: LabelTable
    measure: UncertaintyMeasure
    review_threshold: float
    content: str  # content_digest() of the source instances
    options: Sequence[str] = ()

    def run_entropy(self) -> list[str]:
        """What identifies the run apart from the content: input, pipeline, model."""
        return [self.identity, "ct-muscle", self.pipeline_version, self.card.version]

    def content_entropy(self, seg_class: str) -> list[str]:
        """What fixes the content of this run's objects, apart from the input identity."""
        return [self.content, f"weights={self.card.sha256}", f"measure={self.measure.value}",
                f"review_threshold={self.review_threshold!r}",
                f"labels={','.join(s.key for s in self.table)}", *self.options,
                f"seg_class={seg_class}"]

    def uid(self, kind: str, part: str, seg_class: str = SEG_CLASSES[False]) -> str:
        """A UID fixed by the run (:meth:`run_entropy`), what fixes the content
        (:meth:`content_entropy`, with the SEG's SOP class), the object and the part."""
        return str(generate_uid(entropy_srcs=[*self.run_entropy(),
                                              *self.content_entropy(seg_class), kind, part]))

    def tracking_uid(self, key: str) -> str:
        """The tracking UID of structure ``key``: the same for every generation of the input."""
        return str(generate_uid(entropy_srcs=[*self.run_entropy(), "tracking", key]))

    def ids(self, kind: str, number: int, description: str,
            seg_class: str = SEG_CLASSES[False]) -> InstanceIds:
        return InstanceIds(series_instance_uid=self.uid(kind, "series", seg_class),
                           sop_instance_uid=self.uid(kind, "instance", seg_class),
                           series_number=number, series_description=description)

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
        RoiReport(segment=spec, measurements=_measurements(m),
                  evaluations=((REVIEW_CONCEPT, _YES if m.review_required else _NO),))
        for spec, m in zip(specs, measured, strict=True)
    ]


def _measurements(m: StructureMeasurement) -> tuple[MeasurementSpec, ...]:
    """Volume, mean uncertainty, the samples' disagreement, and on CT the mean HU and
    low-attenuation fraction."""
    out = [MeasurementSpec(_VOLUME, m.volume_ml, _MILLILITER),
           MeasurementSpec(_MEAN_UNCERTAINTY, m.mean_uncertainty, _NO_UNITS)]
    if m.disagreement is not None:
        out.append(MeasurementSpec(_DISAGREEMENT, m.disagreement, _NO_UNITS))
    if m.mean_hu is not None:
        out.append(MeasurementSpec(_ATTENUATION, m.mean_hu, _HOUNSFIELD, derivation=_MEAN))
    if m.low_attenuation_fraction is not None:
        out.append(MeasurementSpec(_LOW_ATTENUATION, m.low_attenuation_fraction, _NO_UNITS))
    return tuple(out)


def dicom_outputs(
    context: OutputContext, volume: Volume, labels: np.ndarray, uncertainty: np.ndarray,
    measured: list[StructureMeasurement], labelmap: bool = False,
) -> list[DicomOutput]:
    """SEG and SR (when any structure was found) and the uncertainty Parametric Map."""
    outputs: list[DicomOutput] = []
    measure_code = _MEASURE_CONCEPTS[context.measure]
    seg_class = SEG_CLASSES[labelmap]
    pm = build_parametric_map(
        volume, uncertainty,
        MapSpec(label="uncertainty", explanation=measure_code.meaning, quantity=measure_code),
        context.ids("map", MAP_SERIES_NUMBER, "Muscle segmentation uncertainty", seg_class),
        context.device)
    if measured:
        specs = segment_specs(context, measured)
        seg = build_segmentation(
            volume, labels, specs,
            context.ids("seg", SEG_SERIES_NUMBER, "Hip and thigh muscles (AI)", seg_class),
            context.device, context.algorithm, labelmap=labelmap)
        if str(seg.SOPClassUID) != seg_class:
            raise ValueError(f"SEG built as {seg.SOPClassUID}, UIDs derived for {seg_class}")
        outputs.append(DicomOutput("ct-muscle-seg.dcm", seg))
        sr = build_measurement_report(
            volume, seg, _roi_reports(context, specs, measured),
            context.ids("sr", SR_SERIES_NUMBER, "Muscle volumes, density and uncertainty",
                        seg_class),
            context.device, context.algorithm)
        outputs.append(DicomOutput("ct-muscle-sr.dcm", sr))
    outputs.append(DicomOutput("ct-muscle-uncertainty.dcm", pm))
    return outputs
