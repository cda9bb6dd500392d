"""DICOM series (single-frame or Enhanced multi-frame) to a 3-D volume with its geometry.

The volume is ``(slices, rows, columns)``, slices sorted by position along the slice
normal (ascending), values rescaled with slope/intercept (HU for CT). The geometry and
the source frame of every slice are kept so that derived objects (SEG, parametric maps)
can reference the exact source instances and frame of reference. Anything that cannot
form one regular stack is refused with :class:`acqflow.plugins.api.InvalidInputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from acqflow.plugins.api import InvalidInputError

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "SourceFrame",
    "Volume",
    "VolumeGeometry",
    "VolumeOptions",
    "series_to_volume",
]

_SINGLE_FRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4": "MR",  # MR Image Storage
}
_MULTI_FRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",  # Enhanced MR Image Storage
}
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, TypeError, AttributeError)


@dataclass(frozen=True)
class VolumeOptions:
    """Which modalities are accepted and how strict the stack checks are."""

    modalities: tuple[str, ...] = ("CT",)
    orientation_tolerance: float = 1e-3  # max difference of direction cosines
    spacing_tolerance: float = 0.1  # max relative deviation of slice spacing from median


@dataclass(frozen=True)
class SourceFrame:
    """The source of one slice: instance (and 1-based frame number for multi-frame)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class VolumeGeometry:
    """Patient-space (LPS, mm) geometry of a volume.

    ``row_direction`` is the direction of increasing column index (first triplet of
    Image Orientation (Patient)), ``column_direction`` that of increasing row index;
    ``normal`` is their cross product, the direction of increasing slice index.
    ``spacing`` is (slice, row, column) in mm.
    """

    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    spacing: tuple[float, float, float]
    frame_of_reference_uid: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from (slice, row, column, 1) indices to patient (x, y, z, 1)."""
        out = np.eye(4)
        out[:3, 0] = self.normal * self.spacing[0]
        out[:3, 1] = np.asarray(self.column_direction) * self.spacing[1]
        out[:3, 2] = np.asarray(self.row_direction) * self.spacing[2]
        out[:3, 3] = self.origin
        return out

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def slice_position(self, index: int) -> tuple[float, float, float]:
        """Image Position (Patient) of slice ``index``."""
        point = np.asarray(self.origin) + self.normal * self.spacing[0] * index
        return (float(point[0]), float(point[1]), float(point[2]))

    @property
    def image_orientation(self) -> tuple[float, ...]:
        return (*self.row_direction, *self.column_direction)


@dataclass(frozen=True)
class Volume:
    """Rescaled voxel values ``(slices, rows, columns)`` plus geometry and provenance.

    ``datasets`` are the source instances in the order of their first slice.
    """

    array: np.ndarray
    geometry: VolumeGeometry
    sources: tuple[SourceFrame, ...]
    modality: str
    datasets: tuple[Dataset, ...]

    @property
    def is_multiframe(self) -> bool:
        return any(source.frame_number is not None for source in self.sources)


@dataclass(frozen=True)
class _Frame:
    dataset_index: int
    frame_number: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float


def _refuse(message: str) -> InvalidInputError:
    return InvalidInputError(message)


def _check_instance(ds: Dataset, options: VolumeOptions, where: str) -> str:
    """Modality/SOP class/pixel checks shared by all instances; returns the modality."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", ""))
    if modality not in options.modalities:
        raise _refuse(f"{where}: modality {modality or 'missing'!r} is not one of "
                      f"{', '.join(options.modalities)}")
    expected = _SINGLE_FRAME_CLASSES.get(sop_class) or _MULTI_FRAME_CLASSES.get(sop_class)
    if expected is None:
        raise _refuse(f"{where}: SOP class {sop_class or 'missing'} is not a CT/MR image "
                      "storage class")
    if "PixelData" not in ds:
        raise _refuse(f"{where}: no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise _refuse(f"{where}: colour images ({ds.get('PhotometricInterpretation')}) "
                      "are not CT/MR slices")
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        raise _refuse(f"{where}: localizer (scout) image")
    return modality


def _float_tuple(value: Any, size: int, what: str, where: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"{where}: invalid {what}: {value!r}") from exc
    if out.shape != (size,) or not np.all(np.isfinite(out)):
        raise _refuse(f"{where}: invalid {what}: {value!r}")
    return out


def _group_item(ds: Dataset, frame_item: Dataset | None, sequence: str) -> Dataset | None:
    """An item of a functional-group sequence, per-frame first, then shared."""
    for groups in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if groups is None:
            continue
        items = groups.get(sequence)
        if items:
            item: Dataset = items[0]
            return item
    return None


def _frame_from(
    index: int, number: int | None, ds: Dataset, attrs: dict[str, Dataset | None], where: str
) -> _Frame:
    plane, orient, measures, transform = (
        attrs["PlanePositionSequence"], attrs["PlaneOrientationSequence"],
        attrs["PixelMeasuresSequence"], attrs["PixelValueTransformationSequence"],
    )
    if plane is None or orient is None or measures is None:
        raise _refuse(f"{where}: missing geometry (position, orientation or pixel spacing)")
    if "ImagePositionPatient" not in plane or "ImageOrientationPatient" not in orient:
        raise _refuse(f"{where}: missing Image Position/Orientation (Patient)")
    if "PixelSpacing" not in measures:
        raise _refuse(f"{where}: missing Pixel Spacing")
    spacing = _float_tuple(measures.PixelSpacing, 2, "Pixel Spacing", where)
    if np.any(spacing <= 0):
        raise _refuse(f"{where}: non-positive Pixel Spacing {tuple(spacing)}")
    thickness = measures.get("SliceThickness")
    source = transform if transform is not None else ds
    return _Frame(
        dataset_index=index,
        frame_number=number,
        position=_float_tuple(plane.ImagePositionPatient, 3, "Image Position (Patient)", where),
        orientation=_float_tuple(orient.ImageOrientationPatient, 6,
                                 "Image Orientation (Patient)", where),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        thickness=float(thickness) if thickness not in (None, "") else None,
        slope=float(source.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(source.get("RescaleIntercept", 0.0) or 0.0),
    )


_GROUPS = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
           "PixelValueTransformationSequence")


def _frames_of(index: int, ds: Dataset) -> list[_Frame]:
    """Geometry of every frame of one instance."""
    where = f"instance {index + 1} ({ds.get('SOPInstanceUID', 'no UID')})"
    if str(ds.SOPClassUID) in _SINGLE_FRAME_CLASSES:
        attrs: dict[str, Dataset | None] = {name: ds for name in _GROUPS}
        return [_frame_from(index, None, ds, attrs, where)]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if per_frame is None or len(per_frame) != count:
        raise _refuse(f"{where}: multi-frame without one functional-group item per frame")
    frames = []
    for number, item in enumerate(per_frame, 1):
        image_type = [str(v).upper() for v in
                      getattr(_group_item(ds, item, "CTImageFrameTypeSequence")
                              or _group_item(ds, item, "MRImageFrameTypeSequence"),
                              "FrameType", [])]
        if "LOCALIZER" in image_type:
            raise _refuse(f"{where} frame {number}: localizer frame")
        attrs = {name: _group_item(ds, item, name) for name in _GROUPS}
        frames.append(_frame_from(index, number, ds, attrs, f"{where} frame {number}"))
    return frames


def _check_stack(frames: list[_Frame], options: VolumeOptions) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > options.orientation_tolerance:
            raise _refuse("mixed orientations: the series holds slices of different "
                          f"orientations ({tuple(first.orientation)} vs "
                          f"{tuple(frame.orientation)})")
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise _refuse(f"mixed pixel spacings {first.pixel_spacing} and "
                          f"{frame.pixel_spacing}")
    row, col = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(
        float(np.dot(row, col))
    ) > 0.01:
        raise _refuse(f"Image Orientation (Patient) {tuple(first.orientation)} is not two "
                      "orthogonal unit vectors")


def _slice_spacing(
    positions: np.ndarray, frames: list[_Frame], normal: np.ndarray, options: VolumeOptions
) -> float:
    """Regular spacing along the normal; raises for gaps, duplicates and oblique stacks."""
    if len(positions) == 1:
        thickness = frames[0].thickness
        if thickness is None or thickness <= 0:
            raise _refuse("single slice without Slice Thickness: slice spacing unknown")
        return thickness
    steps = np.diff(positions)
    if np.any(steps < 1e-3):
        raise _refuse("duplicate slice positions (several acquisitions or phases in one "
                      "series)")
    median = float(np.median(steps))
    if np.any(steps > median * (1.0 + options.spacing_tolerance) + 1e-3):
        gap = int(np.argmax(steps))
        raise _refuse(f"missing slices: gap of {steps[gap]:.2f} mm after slice {gap + 1} "
                      f"where the spacing is {median:.2f} mm")
    if np.any(steps < median * (1.0 - options.spacing_tolerance) - 1e-3):
        raise _refuse(f"irregular slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)")
    return median


def _decode(ds: Dataset, where: str) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array)
    except _DECODE_ERRORS as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise _refuse(f"{where}: cannot decode pixel data (transfer syntax {syntax}): "
                      f"{exc}") from exc
    return pixels


def _sorted_frames(
    datasets: Sequence[Dataset], options: VolumeOptions
) -> tuple[list[_Frame], np.ndarray, str]:
    if not datasets:
        raise _refuse("empty series")
    modalities = {_check_instance(ds, options, f"instance {i + 1}")
                  for i, ds in enumerate(datasets)}
    if len(modalities) > 1 or len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) > 1:
        raise _refuse("instances of more than one series or modality")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise _refuse(f"mixed image sizes {sorted(sizes)}")
    frames = [frame for i, ds in enumerate(datasets) for frame in _frames_of(i, ds)]
    _check_stack(frames, options)
    orientation = frames[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    projections = np.asarray([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(projections, kind="stable")
    return [frames[i] for i in order], projections[order], modalities.pop()


def _check_in_line(frames: list[_Frame], normal: np.ndarray) -> None:
    """All slice origins must lie on one line along the normal (no sheared stacks)."""
    offsets = np.asarray([f.position for f in frames]) - frames[0].position
    lateral = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(lateral, axis=1)) > 0.05 * max(frames[0].pixel_spacing) + 0.01:
        raise _refuse("slices are not stacked along their normal (gantry tilt or shifted "
                      "slices); resample the series first")


def series_to_volume(datasets: Sequence[Dataset], options: VolumeOptions | None = None) -> Volume:
    """Sort, check, decode and rescale a series into a :class:`Volume`.

    Raises InvalidInputError (with a message naming the problem) for wrong modality or
    SOP class, missing pixel data or geometry, localizers, colour images, mixed series,
    sizes, spacings or orientations, duplicate positions, gaps (missing slices),
    irregular or sheared stacks and undecodable pixel data.
    """
    opts = options or VolumeOptions()
    frames, positions, modality = _sorted_frames(datasets, opts)
    orientation = frames[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    slice_spacing = _slice_spacing(positions, frames, normal, opts)
    _check_in_line(frames, normal)
    decoded: dict[int, np.ndarray] = {}
    first = datasets[frames[0].dataset_index]
    array = np.empty((len(frames), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, frame in enumerate(frames):
        ds = datasets[frame.dataset_index]
        if frame.dataset_index not in decoded:
            decoded[frame.dataset_index] = _decode(ds, f"instance {frame.dataset_index + 1}")
        pixels = decoded[frame.dataset_index]
        plane = pixels if frame.frame_number is None else pixels.reshape(
            -1, *pixels.shape[-2:])[frame.frame_number - 1]
        if plane.shape != array.shape[1:]:
            raise _refuse(f"instance {frame.dataset_index + 1}: decoded shape {plane.shape} "
                          f"differs from Rows/Columns {array.shape[1:]}")
        array[k] = plane.astype(np.float32) * frame.slope + frame.intercept
    return _assemble(array, frames, datasets, modality, slice_spacing)


def _assemble(
    array: np.ndarray, frames: list[_Frame], datasets: Sequence[Dataset], modality: str,
    slice_spacing: float,
) -> Volume:
    orientation = frames[0].orientation
    first = datasets[frames[0].dataset_index]
    frame_of_reference = str(first.get("FrameOfReferenceUID", ""))
    if not frame_of_reference:
        raise _refuse("missing Frame of Reference UID")
    geometry = VolumeGeometry(
        origin=(float(frames[0].position[0]), float(frames[0].position[1]),
                float(frames[0].position[2])),
        row_direction=(float(orientation[0]), float(orientation[1]), float(orientation[2])),
        column_direction=(float(orientation[3]), float(orientation[4]), float(orientation[5])),
        spacing=(slice_spacing, frames[0].pixel_spacing[0], frames[0].pixel_spacing[1]),
        frame_of_reference_uid=frame_of_reference,
    )
    sources = tuple(
        SourceFrame(str(datasets[f.dataset_index].SOPClassUID),
                    str(datasets[f.dataset_index].SOPInstanceUID), f.frame_number)
        for f in frames
    )
    order = list(dict.fromkeys(f.dataset_index for f in frames))
    return Volume(array=array, geometry=geometry, sources=sources, modality=modality,
                  datasets=tuple(datasets[i] for i in order))
