"""Hostile DICOM instances, generated: every case of the corpus sent by C-STORE.

A case builder takes a seed (the case id) and returns a :class:`DicomDelivery`: the
instances to send, each already encoded as the bytes of its data set, and how to send
them (``peer``: ``pynetdicom`` for data sets pydicom can still encode, ``raw`` for bytes
no real SCU would send, see ``tests.support.raw_dicom``). Every series is small (32 x 32,
3 slices) so the corpus stays fast; all carry the distinctive patient of
:data:`PATIENT_NAME` so the corpus can prove that no patient data reaches the logs.
"""

from __future__ import annotations

import copy
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom.dsutils import encode

__all__ = [
    "BUILDERS",
    "PATIENT_ID",
    "PATIENT_NAME",
    "DicomDelivery",
    "Instance",
    "base_series",
    "encoded",
]

PATIENT_NAME = "ZZCORPUS^DISTINCTIVE"
PATIENT_ID = "PHI-4711-CORPUS"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Instance:
    """One C-STORE: SOP class and instance of the command, the data set's bytes."""

    sop_class: str
    sop_uid: str
    data: bytes
    syntax: str = ExplicitVRLittleEndian
    dataset: Dataset | None = None  # for the pynetdicom peer


@dataclass(frozen=True)
class DicomDelivery:
    """What a case sends: instances on one association (``peer``), for ``series_uid``."""

    series_uid: str
    instances: tuple[Instance, ...]
    peer: str = "pynetdicom"  # or "raw"
    syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
    sop_classes: tuple[str, ...] = (CTImageStorage,)
    later: tuple[Instance, ...] = field(default=())  # sent after the first result (re-opened)


def base_series(seed: str, n: int = 3, rows: int = 32, cols: int = 32, start: int = 0) -> list[Dataset]:
    """A valid axial CT series (slices ``start`` .. ``start+n-1``), UIDs from ``seed``."""
    study, series, frame = (generate_uid(entropy_srcs=[seed, k]) for k in ("study", "series", "frame"))
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    out = []
    for index in range(start, start + n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop", str(index)])
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "acqflow corpus"
        ds.ReferringPhysicianName = ""
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19720304"
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, index + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [-12.5, -12.5, -2.0 * index]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.0
        ds.PixelSpacing = [0.78125, 0.78125]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = rng.integers(900, 1200, size=(rows, cols), dtype=np.uint16)
        pixels[rows // 4 : 3 * rows // 4, cols // 4 : 3 * cols // 4] += 300
        ds.PixelData = pixels.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out.append(ds)
    return out


def encoded(ds: Dataset, implicit: bool = False) -> bytes:
    """The data set (no File Meta) as it travels in explicit (or implicit) VR little endian."""
    data = encode(ds, implicit, True)
    assert data is not None, "pydicom could not encode the data set"
    return bytes(data)


def _delivery(datasets: list[Dataset], peer: str = "pynetdicom") -> DicomDelivery:
    instances = tuple(
        Instance(str(ds.SOPClassUID), str(ds.SOPInstanceUID), encoded(ds), dataset=ds) for ds in datasets
    )
    return DicomDelivery(str(datasets[0].SeriesInstanceUID), instances, peer=peer)


def _mutated(seed: str, change: Callable[[list[Dataset]], None], n: int = 3) -> DicomDelivery:
    datasets = base_series(seed, n)
    change(datasets)
    return _delivery(datasets)


def _set(keyword: str, value: object, only: int | None = None) -> Callable[[list[Dataset]], None]:
    def change(datasets: list[Dataset]) -> None:
        for index, ds in enumerate(datasets):
            if only is None or index == only:
                setattr(ds, keyword, value)

    return change


def _delete(keyword: str, only: int | None = None) -> Callable[[list[Dataset]], None]:
    def change(datasets: list[Dataset]) -> None:
        for index, ds in enumerate(datasets):
            if only is None or index == only:
                delattr(ds, keyword)

    return change


# --- data sets pydicom can still encode --------------------------------------------------


def _huge_declared(datasets: list[Dataset]) -> None:
    for ds in datasets[:2]:
        ds.Rows = ds.Columns = 65535
    del datasets[2:]


def _mixed_sizes(datasets: list[Dataset]) -> None:
    datasets[1].Rows = datasets[1].Columns = 48
    datasets[1].PixelData = np.zeros((48, 48), np.uint16).tobytes()


def _bits_lie(datasets: list[Dataset]) -> None:
    for ds in datasets:  # 32-bit declared, 16-bit pixels sent
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31


def _bits_stored_over_allocated(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.BitsStored, ds.HighBit = 20, 19


def _mixed_orientation(datasets: list[Dataset]) -> None:
    datasets[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def _gap(datasets: list[Dataset]) -> None:
    datasets[2].ImagePositionPatient = [-12.5, -12.5, -20.0]


def _duplicate_positions(datasets: list[Dataset]) -> None:
    datasets[2].ImagePositionPatient = list(datasets[1].ImagePositionPatient)


def _colour(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()


def _truncated_pixels(datasets: list[Dataset]) -> None:
    datasets[1].PixelData = datasets[1].PixelData[:1000]


def _cut_stream(stream: bytes) -> bytes:
    """The main header and 20 bytes of tile data, then the EOC marker."""
    return stream[: stream.find(b"\xff\x93") + 20] + b"\xff\xd9"


def _zeroed_stream(stream: bytes) -> bytes:
    """Same length, markers intact, the second half of the tile data zeroed (a torn write)."""
    start = stream.find(b"\xff\x93") + 2
    middle = (start + len(stream)) // 2
    return stream[:middle] + b"\0" * (len(stream) - 2 - middle) + b"\xff\xd9"


def _jpeg2000(seed: str, damage: Callable[[bytes], bytes]) -> DicomDelivery:
    """A JPEG 2000 lossless series whose middle frame's code stream is damaged."""
    from imagecodecs import jpeg2k_encode

    datasets = base_series(seed)
    for index, ds in enumerate(datasets):
        pixels = np.frombuffer(ds.PixelData, np.uint16).reshape(32, 32)
        stream = bytes(jpeg2k_encode(pixels, level=0, codecformat="J2K"))
        ds.PixelData = encapsulate([damage(stream) if index == 1 else stream])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    instances = tuple(
        Instance(str(ds.SOPClassUID), str(ds.SOPInstanceUID), encoded(ds), JPEG2000Lossless, ds)
        for ds in datasets
    )
    return DicomDelivery(str(datasets[0].SeriesInstanceUID), instances, syntaxes=(JPEG2000Lossless,))


def _duplicate_instance(seed: str) -> DicomDelivery:
    delivery = _delivery(base_series(seed))
    first, *rest = delivery.instances
    return DicomDelivery(delivery.series_uid, (first, first, *rest))


def _reopened(seed: str) -> DicomDelivery:
    first = _delivery(base_series(seed, 3))
    later = _delivery(base_series(seed, 2, start=3))
    return DicomDelivery(first.series_uid, first.instances, later=later.instances)


def _unknown_syntax(seed: str) -> DicomDelivery:
    delivery = _delivery(base_series(seed))
    return DicomDelivery(
        delivery.series_uid, delivery.instances, peer="raw", syntaxes=("1.2.826.0.1.3680043.9.9999.1",)
    )


def _not_offered_class(seed: str) -> DicomDelivery:
    datasets = base_series(seed)
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    delivery = _delivery(datasets, peer="raw")
    return DicomDelivery(
        delivery.series_uid, delivery.instances, peer="raw", sop_classes=(SECONDARY_CAPTURE,)
    )


# --- bytes no real SCU sends -------------------------------------------------------------


def _raw(
    seed: str, data_for: Callable[[Dataset, bytes], bytes], command_uid: str | None = None
) -> DicomDelivery:
    """One instance (the second slice of a valid series) whose data set bytes are replaced."""
    ds = base_series(seed)[1]
    data = data_for(ds, encoded(ds))
    instance = Instance(str(ds.SOPClassUID), command_uid or str(ds.SOPInstanceUID), data)
    return DicomDelivery(str(ds.SeriesInstanceUID), (instance,), peer="raw")


def _header_then_garbage(ds: Dataset, data: bytes) -> bytes:
    """Everything up to the pixel module, then bytes that are not DICOM elements."""
    head = copy.deepcopy(ds)
    for keyword in (
        "PixelData",
        "RescaleSlope",
        "RescaleIntercept",
        "PixelRepresentation",
        "HighBit",
        "BitsStored",
        "BitsAllocated",
        "Columns",
        "Rows",
        "PhotometricInterpretation",
        "SamplesPerPixel",
        "PixelSpacing",
    ):
        if keyword in head:
            delattr(head, keyword)
    return encoded(head) + b"\xff\xff\xff\xff" + np.random.default_rng(7).bytes(3000)


def _with_preamble(ds: Dataset, data: bytes) -> bytes:
    """A Part-10 file's preamble, magic and File Meta sent as if they were the data set."""
    meta = encoded(ds.file_meta)
    return b"\0" * 128 + b"DICM" + meta + data


def _uid_pair(seed: str, second: str, first: str | None = None) -> DicomDelivery:
    """Two instances whose SOP Instance UIDs differ only where spool names rewrite or cut."""
    datasets = base_series(seed, 2)
    uids = (first or f"1.2.826.0.1.3680043.10.543.{zlib.crc32(seed.encode())}", second)
    root = uids[0]
    instances = []
    for ds, uid in zip(datasets, (root, second.format(root=root)), strict=True):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        instances.append(Instance(str(ds.SOPClassUID), uid, encoded(ds)))
    return DicomDelivery(str(datasets[0].SeriesInstanceUID), tuple(instances), peer="raw")


def _long_uid_pair(seed: str) -> DicomDelivery:
    root = "1.2.826.0.1.3680043.10.543." + "1" * 100
    return _uid_pair(seed, root + "2", first=root + "1")


def _dots_pair(seed: str) -> DicomDelivery:
    return _uid_pair(seed, "...", first="..")


def _plus_underscore_pair(seed: str) -> DicomDelivery:
    return _uid_pair(seed, "1.2.826.0.1.3680043.10.543_7", first="1.2.826.0.1.3680043.10.543+7")


BUILDERS: dict[str, Callable[[str], DicomDelivery]] = {
    "dicom-patient-name-too-long": lambda s: _mutated(s, _set("PatientName", "Z" * 70 + "^" + "Q" * 70)),
    "dicom-patient-id-too-long": lambda s: _mutated(s, _set("PatientID", "PHI-" + "9" * 96)),
    "dicom-birth-date-month-13": lambda s: _mutated(s, _set("PatientBirthDate", "19721304")),
    "dicom-birth-date-truncated": lambda s: _mutated(s, _set("PatientBirthDate", "197")),
    "dicom-birth-date-iso-format": lambda s: _mutated(s, _set("PatientBirthDate", "1972-03-04")),
    "dicom-study-date-garbage": lambda s: _mutated(s, _set("StudyDate", "notadate")),
    "dicom-rows-columns-65535": lambda s: _mutated(s, _huge_declared),
    "dicom-missing-pixel-data": lambda s: _mutated(s, _delete("PixelData", only=1)),
    "dicom-truncated-pixel-data": lambda s: _mutated(s, _truncated_pixels),
    "dicom-wrong-modality": lambda s: _mutated(s, _set("Modality", "US")),
    "dicom-mixed-orientations": lambda s: _mutated(s, _mixed_orientation),
    "dicom-missing-slice": lambda s: _mutated(s, _gap),
    "dicom-duplicate-positions": lambda s: _mutated(s, _duplicate_positions),
    "dicom-mixed-sizes": lambda s: _mutated(s, _mixed_sizes),
    "dicom-bit-depth-lie": lambda s: _mutated(s, _bits_lie),
    "dicom-bits-stored-over-allocated": lambda s: _mutated(s, _bits_stored_over_allocated),
    "dicom-negative-pixel-spacing": lambda s: _mutated(s, _set("PixelSpacing", [-0.5, 0.5])),
    "dicom-nan-pixel-spacing": lambda s: _mutated(s, _set("PixelSpacing", ["NaN", "NaN"])),
    "dicom-missing-position": lambda s: _mutated(s, _delete("ImagePositionPatient", only=0)),
    "dicom-localizer": lambda s: _mutated(s, _set("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"])),
    "dicom-colour-image": lambda s: _mutated(s, _colour),
    "dicom-corrupt-jpeg2000-frame": lambda s: _jpeg2000(s, _zeroed_stream),
    "dicom-truncated-jpeg2000-frame": lambda s: _jpeg2000(s, _cut_stream),
    "dicom-duplicate-instance": _duplicate_instance,
    "dicom-reopened-series": _reopened,
    "dicom-unknown-transfer-syntax": _unknown_syntax,
    "dicom-sop-class-not-offered": _not_offered_class,
    "dicom-garbage-data-set": lambda s: _raw(s, lambda ds, data: np.random.default_rng(3).bytes(4096)),
    "dicom-part10-preamble-in-data-set": lambda s: _raw(s, _with_preamble),
    "dicom-garbage-after-header": lambda s: _raw(s, _header_then_garbage),
    "dicom-empty-data-set": lambda s: _raw(s, lambda ds, data: b""),
    "dicom-sop-uid-differs-from-command": lambda s: _raw(
        s, lambda ds, data: data, command_uid="1.2.826.0.1.3680043.10.543.99"
    ),
    "dicom-element-length-past-end": lambda s: _raw(
        s, lambda ds, data: data[:200] + struct.pack("<HH2sH", 0x0008, 0x1030, b"LO", 0xFFF0) + b"x" * 64
    ),
    "dicom-uid-trailing-dot": lambda s: _uid_pair(s, "{root}."),
    "dicom-uid-plus-vs-underscore": _plus_underscore_pair,
    "dicom-uid-only-dots": _dots_pair,
    "dicom-uid-over-120-chars": _long_uid_pair,
}
