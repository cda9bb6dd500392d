"""DICOM MR Image Storage series of an MR phantom, for tests and the demo.

One single-frame instance per slice, cranial slice first, with a consistent geometry:
ImagePositionPatient is the centre of the first voxel of each slice, slices step along
minus the slice normal (row direction x column direction) so that the first slice is
the most cranial one for the default axial orientation. UIDs derive from
``uid_seed``, so the same phantom and options always give the same series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from acqflow.plugins.mr_muscle.phantoms import MrPhantom, MrPhantomOptions, generate_mr_phantom

__all__ = [
    "MR_IMAGE_STORAGE",
    "MrSeriesOptions",
    "build_mr_series",
    "demo_mr_phantom_series",
    "demo_mr_series",
]

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")


@dataclass(frozen=True)
class MrSeriesOptions:
    """Identity and geometry of the generated series (orientation is row then column cosines)."""

    uid_seed: str = "acqflow-mr-phantom"
    patient_id: str = "PHANTOM-MR"
    patient_name: str = "Phantom^MR"
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (-190.5, -190.5, 0.0)
    series_number: int = 1

    def __post_init__(self) -> None:
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        unit = np.isclose(np.linalg.norm(row), 1.0) and np.isclose(np.linalg.norm(col), 1.0)
        if not unit or not np.isclose(float(row @ col), 0.0, atol=1e-6):
            raise ValueError(f"orientation must be two orthogonal unit vectors: {self.orientation}")


def _uid(options: MrSeriesOptions, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[options.uid_seed, *map(str, parts)]))


def _common(phantom: MrPhantom, options: MrSeriesOptions) -> Dataset:
    """Patient, study, series, frame of reference, equipment and MR acquisition attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = options.patient_name, options.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID = _uid(options, "study")
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesInstanceUID = "MR", _uid(options, "series")
    ds.SeriesNumber, ds.SeriesDescription = options.series_number, "T1 axial (synthetic phantom)"
    ds.SeriesDate, ds.SeriesTime = "20260101", "120000"
    ds.Laterality, ds.PatientPosition, ds.BodyPartExamined = "", "HFS", "HIP"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = _uid(options, "frame"), ""
    ds.Manufacturer, ds.ManufacturerModelName = "acqflow", "synthetic phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
    ds.MRAcquisitionType, ds.SequenceName = "2D", "se_t1"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 12.0, 1
    ds.MagneticFieldStrength, ds.ImagedNucleus = 1.5, "1H"
    ds.SliceThickness = phantom.slice_spacing_mm
    ds.SpacingBetweenSlices = phantom.slice_spacing_mm
    ds.PixelSpacing = [phantom.pixel_spacing_mm, phantom.pixel_spacing_mm]
    ds.ImageOrientationPatient = list(options.orientation)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(phantom.signal.shape[1]), int(phantom.signal.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SOPClassUID = MR_IMAGE_STORAGE
    return ds


def build_mr_series(phantom: MrPhantom, options: MrSeriesOptions | None = None) -> list[Dataset]:
    """One MR Image Storage dataset per phantom slice, with file meta, cranial slice first."""
    opts = options or MrSeriesOptions()
    base = _common(phantom, opts)
    row, col = np.array(opts.orientation[:3]), np.array(opts.orientation[3:])
    normal = np.cross(row, col)
    pixels = np.clip(np.rint(phantom.signal), 0, 4095).astype(np.uint16)
    out: list[Dataset] = []
    for k in range(pixels.shape[0]):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = _uid(opts, "instance", k)
        ds.InstanceNumber = k + 1
        position = np.array(opts.origin) - k * phantom.slice_spacing_mm * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.SliceLocation = round(float(position @ normal), 4)
        ds.ContentDate, ds.ContentTime = "20260101", "120000"
        ds.PixelData = pixels[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out.append(ds)
    return out


def demo_mr_series(
    seed: int = 0, shape: tuple[int, int, int] = (12, 128, 128), options: MrSeriesOptions | None = None
) -> list[Dataset]:
    """A generated MR phantom as an MR Image Storage series (pydicom Datasets, cranial first).

    The same seed and shape give the same pixels and UIDs. Raises ValueError for a
    negative seed or a shape too small for a phantom.
    """
    return demo_mr_phantom_series(seed, shape, options)[0]


def demo_mr_phantom_series(
    seed: int = 0, shape: tuple[int, int, int] = (12, 128, 128), options: MrSeriesOptions | None = None
) -> tuple[list[Dataset], MrPhantom]:
    """:func:`demo_mr_series` and the phantom it shows (its labels are ground truth)."""
    phantom = generate_mr_phantom(seed, MrPhantomOptions(shape=shape))
    opts = options or MrSeriesOptions(uid_seed=f"acqflow-mr-phantom-{seed}-{shape}")
    return build_mr_series(phantom, opts), phantom
