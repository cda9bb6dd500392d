"""DICOM derived objects built with highdicom: SEG, Parametric Map and a TID 1500 SR.

The builders take a :class:`acqflow.plugins.common.volume.Volume` (sorted slices, geometry and the
source frame of every slice) and arrays in the same ``(slices, rows, cols)`` order. Frames
are handed to highdicom in the order of their source images (instances for single-frame
series, frame numbers for multi-frame), so every derived frame references exactly the
source frame it was computed from, whatever order the series arrived in.

What consumers need: a BINARY SEG leaves out frames without any segment (half of a
hip/thigh series is empty), a LABELMAP SEG keeps every frame; the Parametric Map holds
float32 values (Float Pixel Data, identity real-world value mapping) and the Frame
Anatomy functional group, which dcmqi's ``paramap2itkimage`` (3D Slicer) reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from acqflow.plugins.common.carried_metadata import CarriedMetadata, plan_carried_metadata
from acqflow.plugins.common.volume import Volume

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = [
    "AlgorithmInfo",
    "CodeSpec",
    "DeviceInfo",
    "InstanceIds",
    "MapSpec",
    "MeasurementSpec",
    "RoiReport",
    "SegmentSpec",
    "build_measurement_report",
    "build_parametric_map",
    "build_segmentation",
    "content_digest",
]


@dataclass(frozen=True)
class CodeSpec:
    """A coded concept (value, scheme, meaning), independent of highdicom."""

    value: str
    scheme: str
    meaning: str

    def concept(self) -> hd.sr.CodedConcept:
        import highdicom as hd

        return hd.sr.CodedConcept(value=self.value, scheme_designator=self.scheme,
                                  meaning=self.meaning)


@dataclass(frozen=True)
class InstanceIds:
    """UIDs and numbers of one derived instance (in its own series)."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1
    series_description: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    """Equipment attributes written into every derived object."""

    manufacturer: str = "acqflow"
    model_name: str = "acqflow"
    software_version: str = "0"
    device_serial_number: str = "0"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced the content (name and version from the model card)."""

    name: str
    version: str


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: its number in the SEG, its value in the label map, and its codes."""

    number: int
    label: int
    name: str
    category: CodeSpec
    type: CodeSpec
    tracking_uid: str
    color: tuple[int, int, int] = (128, 128, 128)


@dataclass(frozen=True)
class MapSpec:
    """What a parametric map holds (stored as float32) and the anatomy it covers
    (Frame Anatomy: region and frame laterality, B = both sides)."""

    label: str
    explanation: str
    quantity: CodeSpec
    unit: CodeSpec = CodeSpec("1", "UCUM", "no units")
    anatomy: CodeSpec = CodeSpec("61685007", "SCT", "Lower limb")
    laterality: str = "B"

    def __post_init__(self) -> None:
        if self.laterality not in ("R", "L", "U", "B"):
            raise ValueError(f"frame laterality must be R, L, U or B, got {self.laterality!r}")


@dataclass(frozen=True)
class MeasurementSpec:
    """One numeric TID 1419 measurement; ``derivation`` (e.g. Mean) qualifies ``name``."""

    name: CodeSpec
    value: float
    unit: CodeSpec
    derivation: CodeSpec | None = None


@dataclass(frozen=True)
class RoiReport:
    """TID 1411 content for one segment: numeric measurements and qualitative findings."""

    segment: SegmentSpec
    measurements: Sequence[MeasurementSpec] = field(default_factory=tuple)
    evaluations: Sequence[tuple[CodeSpec, CodeSpec]] = field(default_factory=tuple)


def content_digest(datasets: Sequence[Dataset]) -> str:
    """A digest of what a result is computed from: each source instance's SOP Instance
    UID and pixel data, whatever order they arrived in.

    It goes into the UIDs of derived objects, so processing the same instances again
    gives the same UIDs (a PACS replaces the objects) and a new generation of the input
    (instances added, removed or replaced) gives new ones (a PACS keeps no stale result
    under the current UIDs).
    """
    import hashlib

    entries = sorted(
        (str(ds.get("SOPInstanceUID", "")), hashlib.sha256(bytes(ds.get("PixelData") or b"")).hexdigest())
        for ds in datasets
    )
    digest = hashlib.sha256()
    for uid, pixels in entries:
        digest.update(f"{uid}\0{pixels}\n".encode())
    return digest.hexdigest()


def _source_order(volume: Volume) -> tuple[list[Dataset], np.ndarray]:
    """Source images for highdicom and the permutation from volume to source order."""
    if volume.is_multiframe:
        numbers = np.asarray([s.frame_number or 0 for s in volume.sources])
        if len(volume.datasets) != 1:
            raise ValueError("a multi-frame volume must come from one instance")
        return [volume.datasets[0]], np.argsort(numbers, kind="stable")
    return list(volume.datasets), np.arange(len(volume.sources))


def _conformant_sources(sources: Sequence[Dataset]) -> tuple[list[Dataset], CarriedMetadata]:
    """Sources highdicom accepts whatever patient and study values they carry, and the
    decisions to :meth:`~CarriedMetadata.apply` to the built object
    (:mod:`acqflow.plugins.common.carried_metadata`)."""
    carried = plan_carried_metadata(sources[0])
    return carried.conformant(sources), carried


def _check_shape(volume: Volume, array: np.ndarray) -> None:
    if array.shape != volume.array.shape:
        raise ValueError(f"array shape {array.shape} differs from volume {volume.array.shape}")


def _plane_positions(volume: Volume, order: np.ndarray) -> list[hd.PlanePositionSequence]:
    import highdicom as hd

    return [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                 volume.geometry.slice_position(int(k)))
        for k in order
    ]


def build_segmentation(
    volume: Volume,
    label_map: np.ndarray,
    segments: Sequence[SegmentSpec],
    ids: InstanceIds,
    device: DeviceInfo,
    algorithm: AlgorithmInfo,
    labelmap: bool = False,
    keep_empty_frames: bool = False,
) -> hd.seg.Segmentation:
    """A SEG (BINARY, or LABELMAP when ``labelmap``) of ``label_map`` on ``volume``.

    Segment numbers must be 1..N in order; voxels whose label has no segment are left
    empty. A BINARY SEG has no frames for slices without any segment (unless
    ``keep_empty_frames``: how it was written before, kept for comparison). Raises ValueError
    for a shape mismatch or an empty or mis-numbered segment list.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_shape(volume, label_map)
    if not segments or [s.number for s in segments] != list(range(1, len(segments) + 1)):
        raise ValueError("segments must be numbered 1..N and not be empty")
    lut = np.zeros(max(int(label_map.max()), max(s.label for s in segments)) + 1, np.uint8)
    for segment in segments:
        lut[segment.label] = segment.number
    sources, order = _source_order(volume)
    pixels = lut[label_map[order]]
    sources, carried = _conformant_sources(sources)
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number, segment_label=s.name[:64],
            segmented_property_category=s.category.concept(),
            segmented_property_type=s.type.concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            tracking_uid=s.tracking_uid, tracking_id=s.name[:64],
            display_color=hd.color.CIELabColor.from_rgb(*s.color),
        )
        for s in segments
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels,
        segmentation_type="LABELMAP" if labelmap else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=ids.series_instance_uid, series_number=ids.series_number,
        sop_instance_uid=ids.sop_instance_uid, instance_number=ids.instance_number,
        manufacturer=device.manufacturer, manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial_number,
        series_description=ids.series_description or None,
        omit_empty_frames=not (labelmap or keep_empty_frames),
    )
    carried.apply(seg, "segmentation")
    _derive_dimension_organization(seg)
    _declare_private_schemes(seg, [c for s in segments for c in (s.category, s.type)])
    return seg


def build_parametric_map(
    volume: Volume, values: np.ndarray, spec: MapSpec, ids: InstanceIds, device: DeviceInfo
) -> hd.pm.ParametricMap:
    """A Parametric Map of non-negative ``values`` on ``volume``: float32 (Float Pixel
    Data) with an identity real-world value mapping over the values' range, a window
    that spans it, and the Frame Anatomy of ``spec``.

    Raises ValueError for a shape mismatch or negative/non-finite values.
    """
    import highdicom as hd

    _check_shape(volume, values)
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise ValueError("parametric map values must be finite and non-negative")
    sources, order = _source_order(volume)
    sources, carried = _conformant_sources(sources)
    stored = np.ascontiguousarray(values[order], dtype=np.float32)
    top = max(float(stored.max()), 1e-6)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=spec.label[:16], lut_explanation=spec.explanation[:64],
        unit=spec.unit.concept(), value_range=(0.0, top), slope=1.0, intercept=0.0,
        quantity_definition=spec.quantity.concept(),
    )
    pm = hd.pm.ParametricMap(
        source_images=sources, pixel_array=stored,
        series_instance_uid=ids.series_instance_uid, series_number=ids.series_number,
        sop_instance_uid=ids.sop_instance_uid, instance_number=ids.instance_number,
        manufacturer=device.manufacturer, manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial_number,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # LINEAR_EXACT: the window of a map below 1 is narrower than LINEAR allows.
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=top / 2, window_width=top,
            voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)],
        series_description=ids.series_description or None,
        content_label=spec.label.upper().replace(" ", "_")[:16],
    )
    carried.apply(pm, "parametric map")
    _derive_dimension_organization(pm)
    _add_frame_anatomy(pm, spec)
    _frames_ascending(pm, volume)
    return pm


def _derive_dimension_organization(ds: Dataset) -> None:
    """Replace highdicom's random Dimension Organization UID by one derived from the SOP
    Instance UID, so that the same instance is the same bytes on every run."""
    from pydicom.uid import generate_uid

    organizations = ds.get("DimensionOrganizationSequence") or []
    old = {str(item.DimensionOrganizationUID) for item in organizations}
    if not old:
        return
    new = str(generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "dimension organization"]))
    for item in [*organizations, *(ds.get("DimensionIndexSequence") or [])]:
        if str(item.get("DimensionOrganizationUID", "")) in old:
            item.DimensionOrganizationUID = new


def _frames_ascending(pm: Dataset, volume: Volume) -> None:
    """Put the frames in order of ascending position along the slice normal.

    highdicom writes them descending, and dcmqi's ``paramap2itkimage`` (3D Slicer)
    stacks frames in file order from the lowest position, so it showed the map flipped
    along the slices. Each frame keeps its functional groups and dimension index values.
    """
    from pydicom.sequence import Sequence as PydicomSequence

    frames = list(pm.PerFrameFunctionalGroupsSequence)
    normal = volume.geometry.normal
    distance = [float(np.dot(normal, [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]))
                for f in frames]
    order = np.argsort(distance, kind="stable")
    if np.array_equal(order, np.arange(len(frames))):
        return
    data = np.frombuffer(pm.FloatPixelData, dtype=np.float32).reshape(len(frames), -1)
    pm.FloatPixelData = np.ascontiguousarray(data[order]).tobytes()
    pm.PerFrameFunctionalGroupsSequence = PydicomSequence([frames[k] for k in order])


def _add_frame_anatomy(pm: Dataset, spec: MapSpec) -> None:
    """The Frame Anatomy functional group (shared by all frames), which highdicom does
    not write; mandatory in a Parametric Map and read by dcmqi."""
    from pydicom import Dataset as PydicomDataset
    from pydicom.sequence import Sequence as PydicomSequence

    region = PydicomDataset()
    region.CodeValue = spec.anatomy.value
    region.CodingSchemeDesignator = spec.anatomy.scheme
    region.CodeMeaning = spec.anatomy.meaning
    anatomy = PydicomDataset()
    anatomy.AnatomicRegionSequence = PydicomSequence([region])
    # A series laterality of one side carried from the source wins over the spec's; the
    # General Series attribute must then go (Type 2C: only without Frame Laterality).
    carried = str(pm.get("Laterality") or "")
    anatomy.FrameLaterality = carried if carried in ("R", "L") else spec.laterality
    if "Laterality" in pm:
        del pm.Laterality
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = PydicomSequence([anatomy])


def _roi_group(
    report: RoiReport, seg: Dataset, source_series_uid: str, algorithm: AlgorithmInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    import highdicom as hd

    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    segment = report.segment
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.tracking_uid,
                                                     identifier=segment.name[:64]),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment.number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid)),
        finding_type=segment.type.concept(), finding_category=segment.category.concept(),
        algorithm_id=algorithm_id,
        measurements=[
            hd.sr.Measurement(name=m.name.concept(), value=m.value, unit=m.unit.concept(),
                              algorithm_id=algorithm_id,
                              derivation=m.derivation.concept() if m.derivation else None)
            for m in report.measurements
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=name.concept(), value=value.concept())
            for name, value in report.evaluations
        ],
    )


def build_measurement_report(
    volume: Volume,
    seg: Dataset,
    reports: Sequence[RoiReport],
    ids: InstanceIds,
    device: DeviceInfo,
    algorithm: AlgorithmInfo,
    procedure: CodeSpec = CodeSpec("25045-6", "LN", "CT unspecified body region"),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report with one volumetric ROI group per segment report,
    referencing the segments of ``seg`` (its evidence: the SEG and the source images).

    Raises ValueError when ``reports`` is empty.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not reports:
        raise ValueError("a measurement report needs at least one ROI")
    source_series = str(volume.datasets[0].SeriesInstanceUID)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm.name, algorithm.version]),
            name=algorithm.name, manufacturer_name=device.manufacturer,
            model_name=device.model_name),
    )
    evidence, carried = _conformant_sources(volume.datasets)
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure.concept(),
        imaging_measurements=[_roi_group(r, seg, source_series, algorithm) for r in reports],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*evidence, seg], content=content,
        series_instance_uid=ids.series_instance_uid, series_number=ids.series_number,
        sop_instance_uid=ids.sop_instance_uid, instance_number=ids.instance_number,
        manufacturer=device.manufacturer, series_description=ids.series_description or None,
    )
    carried.apply(sr, "measurement report")
    _declare_private_schemes(sr, [c for r in reports for c in _codes_of(r)])
    return sr


def _codes_of(report: RoiReport) -> list[CodeSpec]:
    return [*(m.name for m in report.measurements), *(e[0] for e in report.evaluations),
            report.segment.type, report.segment.category]


def _declare_private_schemes(ds: Dataset, used: Sequence[CodeSpec]) -> None:
    """List private ("99...") coding schemes in the Coding Scheme Identification Sequence."""
    from pydicom import Dataset as PydicomDataset
    from pydicom.sequence import Sequence as PydicomSequence

    schemes = sorted({c.scheme for c in used if c.scheme.startswith("99")})
    if not schemes:
        return
    items = []
    for scheme in schemes:
        item = PydicomDataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName = f"{scheme[2:]} private concepts"
        item.CodingSchemeResponsibleOrganization = "acqflow"
        items.append(item)
    ds.CodingSchemeIdentificationSequence = PydicomSequence(items)
