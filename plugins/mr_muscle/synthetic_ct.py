"""The synthetic CT as a derived DICOM series, clearly marked as not for diagnosis.

One CT Image Storage instance per MR slice, in the MR series' study and frame of
reference, on the MR geometry: Image Type DERIVED\\SECONDARY\\AXIAL, a series
description and image comments saying "synthetic CT, not for diagnosis", a derivation
description, and a Source Image Sequence pointing at the MR instance (and
frame) each slice was computed from. UIDs derive from the item identity, the content of
its instances and the pipeline version, so a re-run replaces rather than duplicates and
a new generation of the series gets new UIDs. Patient and study attributes that do not
conform to their VR are carried, emptied or omitted (:mod:`acqflow.plugins.common.carried_metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from acqflow.plugins.common.carried_metadata import plan_carried_metadata
from acqflow.plugins.common.volume import Volume

__all__ = ["CT_IMAGE_STORAGE", "NOT_FOR_DIAGNOSIS", "SyntheticCtIdentity", "build_synthetic_ct_series"]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
NOT_FOR_DIAGNOSIS = "SYNTHETIC CT FROM MR - NOT FOR DIAGNOSIS"
_INTERCEPT = -1024.0
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PatientPosition",
)


@dataclass(frozen=True)
class SyntheticCtIdentity:
    """What makes the output unique and what produced it."""

    identity: str
    version: str
    content: str = ""  # acqflow.plugins.common.dicom_outputs.content_digest of the MR instances
    algorithm: str = "acqflow mr-muscle CycleGAN MR-to-CT"
    series_number: int = 9902

    def uid(self, *parts: object) -> UID:
        return generate_uid(entropy_srcs=[
            self.identity, "mr-muscle", self.version, self.content, "synthetic-ct", *map(str, parts)])


def _header(volume: Volume, who: SyntheticCtIdentity) -> Dataset:
    carried = plan_carried_metadata(volume.datasets[0])
    source = carried.conformant(volume.datasets[:1])[0]
    ds = Dataset()
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    for keyword in _PATIENT_STUDY:
        ds.__setattr__(keyword, source.get(keyword, ""))
    carried.apply(ds, "synthetic CT")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", who.uid("series"), who.series_number
    ds.SeriesDescription = NOT_FOR_DIAGNOSIS
    ds.ImageComments = f"{NOT_FOR_DIAGNOSIS}. Computed from MR by {who.algorithm} {who.version}."
    ds.DerivationDescription = f"MR translated to synthetic CT by {who.algorithm} {who.version}"
    # No code of CID 7203 (Image Derivation) describes cross-modality synthesis; free text only.
    ds.Laterality = source.get("Laterality", "")
    ds.FrameOfReferenceUID = volume.geometry.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.Manufacturer, ds.ManufacturerModelName = "acqflow", "mr-muscle"
    ds.SoftwareVersions = who.version
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.BurnedInAnnotation, ds.RecognizableVisualFeatures = "NO", "NO"
    ds.LossyImageCompression = "00"
    ds.KVP, ds.AcquisitionNumber = "", 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _INTERCEPT, 1.0, "HU"
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    ds.Rows, ds.Columns = int(volume.array.shape[1]), int(volume.array.shape[2])
    spacing = volume.geometry.spacing
    ds.PixelSpacing = [spacing[1], spacing[2]]
    ds.SliceThickness = spacing[0]
    ds.ImageOrientationPatient = [round(v, 6) for v in volume.geometry.image_orientation]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _source_item(volume: Volume, index: int) -> Dataset:
    source = volume.sources[index]
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    if source.frame_number is not None:
        item.ReferencedFrameNumber = source.frame_number
    item.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code("121322", "DCM", "Source image for image processing operation")]
    )
    return item


def build_synthetic_ct_series(volume: Volume, hu: np.ndarray, who: SyntheticCtIdentity) -> list[Dataset]:
    """CT datasets (with file meta) of ``hu`` on the geometry of the MR ``volume``.

    Raises ValueError when ``hu`` does not have the volume's shape.
    """
    if hu.shape != volume.array.shape:
        raise ValueError(f"synthetic CT shape {hu.shape} differs from the MR volume {volume.array.shape}")
    header = _header(volume, who)
    stored = np.clip(np.rint(hu - _INTERCEPT), 0, 4095).astype(np.uint16)
    out: list[Dataset] = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.update(header)
        ds.SOPInstanceUID = who.uid("instance", k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(v, 4) for v in volume.geometry.slice_position(k)]
        ds.SourceImageSequence = DicomSequence([_source_item(volume, k)])
        ds.PixelData = stored[k].tobytes()
        out.append(_with_meta(ds))
    return out


def _with_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
