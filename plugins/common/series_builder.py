"""Build a single-frame CT or MR DICOM series from a volume and its geometry.

Used for demos and tests (phantoms sent through the daemon, round-trip checks with
shuffled order, descending positions and oblique orientations); the instances are
complete CT/MR Image Storage objects with proper patient geometry.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["SeriesGeometry", "SeriesSpec", "build_series"]

_STORAGE = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


@dataclass(frozen=True)
class SeriesGeometry:
    """Patient-space geometry of the volume's first slice and the stacking direction.

    ``step`` is the vector (mm) from one slice origin to the next; by default it is the
    slice normal times ``slice_spacing`` (a negative spacing gives descending positions).
    """

    origin: tuple[float, float, float] = (-192.0, -192.0, 0.0)
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (3.0, 3.0)  # (between rows, between columns)
    slice_spacing: float = 6.0

    def position(self, index: int) -> tuple[float, float, float]:
        normal = np.cross(self.row_direction, self.column_direction)
        point = np.asarray(self.origin) + normal * self.slice_spacing * index
        return (float(point[0]), float(point[1]), float(point[2]))


@dataclass(frozen=True)
class SeriesSpec:
    """Patient/study/series identity of a generated series; UIDs derive from ``seed``."""

    seed: str = "demo"
    modality: str = "CT"
    patient_name: str = "PHANTOM^HIP"
    patient_id: str = "PHANTOM-0001"
    series_description: str = "Synthetic hip/thigh phantom"
    series_number: int = 1
    rescale_intercept: float = -1024.0

    def __post_init__(self) -> None:
        if self.modality not in _STORAGE:
            raise ValueError(f"modality must be CT or MR, got {self.modality!r}")


def _base(spec: SeriesSpec, geometry: SeriesGeometry, shape: tuple[int, int]) -> Dataset:
    ds = Dataset()
    today = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    ds.PatientName, ds.PatientID, ds.PatientSex = spec.patient_name, spec.patient_id, "O"
    ds.PatientBirthDate = ""
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[spec.seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[spec.seed, "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[spec.seed, "for"])
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.Modality, ds.SeriesNumber = spec.modality, spec.series_number
    ds.SeriesDescription = spec.series_description
    ds.Manufacturer, ds.PositionReferenceIndicator = "acqflow phantom", ""
    ds.BodyPartExamined = "HIP"
    ds.PatientPosition = "FFS"
    ds.ImageOrientationPatient = [*geometry.row_direction, *geometry.column_direction]
    ds.PixelSpacing = list(geometry.pixel_spacing)
    ds.SliceThickness = abs(geometry.slice_spacing)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if spec.modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = spec.rescale_intercept, 1, "HU"
        ds.KVP, ds.WindowCenter, ds.WindowWidth = 120, 40, 400
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTrainLength = "2D", 1
        ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 500, 15, 1.5
    return ds


def build_series(
    values: np.ndarray, geometry: SeriesGeometry, spec: SeriesSpec | None = None
) -> list[Dataset]:
    """One instance per slice of ``values`` (slices, rows, cols), in slice order.

    CT values are HU (stored with the rescale intercept); MR values are stored as they
    are (clipped to 0..65535). Raises ValueError for a non-3-D array.
    """
    spec = spec or SeriesSpec()
    if values.ndim != 3:
        raise ValueError(f"expected (slices, rows, cols), got {values.shape}")
    offset = spec.rescale_intercept if spec.modality == "CT" else 0.0
    stored = np.clip(np.rint(values - offset), 0, 65535).astype(np.uint16)
    out = []
    for k in range(values.shape[0]):
        ds = _base(spec, geometry, values.shape[1:])
        ds.SOPClassUID = _STORAGE[spec.modality]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[spec.seed, "instance", str(k)])
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(geometry.position(k))
        ds.SliceLocation = float(np.dot(geometry.position(k),
                                        np.cross(geometry.row_direction,
                                                 geometry.column_direction)))
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
            ds.SOPClassUID, ds.SOPInstanceUID)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out.append(ds)
    return out
