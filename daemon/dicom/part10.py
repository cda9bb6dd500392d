"""DICOM file helpers: cheap Part-10 encoding for the SCP, header parsing, series reading.

The SCP never decodes a whole dataset: it wraps the bytes it received in a File Meta
Information header built here by hand (a handful of fixed elements, far cheaper than a
pydicom round trip) and parses only the few header attributes it needs.
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from acqflow.daemon.errors import InputRejected
from acqflow.daemon.journal import Arrival, Journal
from acqflow.plugins.api import SeriesItem

__all__ = [
    "HEADER_BYTES",
    "HEADER_TAGS",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION",
    "InstanceHeader",
    "NotSteppable",
    "defined_elements",
    "encode_file_meta",
    "invalid_uid_attribute",
    "is_valid_uid",
    "parse_header",
    "parse_header_prefix",
    "read_part10",
    "read_series",
    "read_series_files",
]

# acqflow's implementation class UID (a 2.25 UUID-derived root, fixed for the project).
IMPLEMENTATION_CLASS_UID = "2.25.156488349616440232212263718513540716591"
IMPLEMENTATION_VERSION = "ACQFLOW_010"

HEADER_TAGS = [
    Tag("SOPClassUID"),
    Tag("SOPInstanceUID"),
    Tag("StudyInstanceUID"),
    Tag("SeriesInstanceUID"),
    Tag("Modality"),
    Tag("InstanceNumber"),
]


# PS3.5 9.1: digits in dot-separated components, no leading zero but a lone "0", at most
# 64 characters. fullmatch: "$" would also accept a trailing newline.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*", re.ASCII)
UID_MAX_CHARS = 64


def is_valid_uid(text: str) -> bool:
    """True when ``text`` follows the DICOM UID rules (PS3.5 9.1)."""
    return len(text) <= UID_MAX_CHARS and _UID.fullmatch(text) is not None


_HEADER_UIDS = (
    ("sop_instance_uid", "SOP Instance UID", 0x00080018),
    ("series_uid", "Series Instance UID", 0x0020000E),
    ("study_uid", "Study Instance UID", 0x0020000D),
)


def invalid_uid_attribute(header: InstanceHeader) -> tuple[str, int] | None:
    """(keyword, tag) of the first instance UID of ``header`` that is not a valid UID."""
    for field, name, tag in _HEADER_UIDS:
        if not is_valid_uid(getattr(header, field)):
            return name, tag
    return None


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian group-2 element (values padded to even length)."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"file meta value too long for (0002,{element:04X})")
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None = None
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a Part-10 file.

    Raises ValueError when a value cannot be encoded (non-ASCII UID, over-long AE).
    """
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
            _element(0x0016, b"AE", source_ae.strip().encode("ascii")) if source_ae else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_length + body


@dataclass(frozen=True)
class InstanceHeader:
    """The few attributes the SCP needs from a received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    instance_number: int | None


def parse_header(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Parse only :data:`HEADER_TAGS` from an encoded dataset (no File Meta, no pixels).

    Stops after InstanceNumber (0020,0013), so the cost does not grow with the pixel
    data. Top-level elements of defined length are stepped over by their lengths
    (:func:`_scan_defined`, a few microseconds per element); a data set with an element
    of undefined length before the last header tag (a sequence) is walked by pydicom's
    element generator instead, which finds the end of such a sequence. Raises
    InputRejected when the bytes cannot be parsed or a required UID is missing.
    """
    syntax = _syntax(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        dataset, whole = _inflate(dataset, INFLATED_HEADER_BYTES)
        if not whole:  # a deflated data set is only ever inflated this far here
            header = _header_of_prefix(dataset, syntax)
            if header is None:
                raise InputRejected(f"DICOM header not within the first {INFLATED_HEADER_BYTES} bytes")
            return header
    try:
        scanned = _scan_defined(dataset, syntax.is_implicit_VR, syntax.is_little_endian)
        if scanned is not None:
            found = scanned[0]
        else:
            found = _scan(dataset, syntax, HEADER_BYTES)
            if len(found) < len(_HEADER_KEYS) and len(dataset) > HEADER_BYTES:
                found = _scan(dataset, syntax, len(dataset))
    except (EOFError, ValueError, TypeError, KeyError, NotImplementedError, struct.error) as exc:
        raise InputRejected(f"cannot parse DICOM header: {type(exc).__name__}: {exc}") from exc
    return _header(found)


def parse_header_prefix(prefix: bytes | memoryview, transfer_syntax: str) -> InstanceHeader | None:
    """The header from the first bytes of a data set that is still arriving.

    None when ``prefix`` ends before the element that follows the last header tag, and
    whenever :func:`parse_header` on the whole data set must decide (a deflated data
    set, an element that is not steppable, one running past the prefix). Raises
    InputRejected when the header is all there but lacks a required UID.
    """
    syntax = _syntax(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        return None
    return _header_of_prefix(prefix, syntax)


def _header_of_prefix(prefix: bytes | memoryview, syntax: UID) -> InstanceHeader | None:
    try:
        scanned = _scan_defined(prefix, syntax.is_implicit_VR, syntax.is_little_endian)
    except ValueError:
        return None
    if scanned is None or not scanned[1]:
        return None
    return _header(scanned[0])


def _header(found: dict[int, str]) -> InstanceHeader:
    header = InstanceHeader(
        sop_class_uid=found.get(0x00080016, ""),
        sop_instance_uid=found.get(0x00080018, ""),
        study_uid=found.get(0x0020000D, ""),
        series_uid=found.get(0x0020000E, ""),
        modality=found.get(0x00080060, ""),
        instance_number=_to_int(found.get(0x00200013, "")),
    )
    for name in ("sop_instance_uid", "study_uid", "series_uid"):
        if not getattr(header, name):
            raise InputRejected(f"DICOM header lacks {name}")
    return header


@functools.lru_cache(maxsize=64)
def _syntax(transfer_syntax: str) -> UID:
    """The UID of a transfer syntax, built (and validated) once per syntax."""
    return UID(transfer_syntax)


HEADER_BYTES = 64 * 1024  # headers of CT/MR images end long before this
INFLATED_HEADER_BYTES = 4 * 1024 * 1024  # how far a deflated data set is inflated for its header
_HEADER_KEYS = frozenset(int(tag) for tag in HEADER_TAGS)
_LAST_HEADER_TAG = max(_HEADER_KEYS)


_UNDEFINED_LENGTH = 0xFFFFFFFF
# explicit VRs with a reserved 2 bytes and a 32-bit length (PS3.5 table 7.1-1)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_LENGTH_16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_LENGTH_32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}


class NotSteppable(Exception):
    """An element whose end cannot be found from its header: one of undefined length
    (a sequence, found only by parsing its items) or one whose explicit VR is not two
    capital letters (an implicit-VR data set labelled explicit, which pydicom detects)."""


def defined_elements(
    data: bytes | memoryview, implicit: bool, little: bool, last_tag: int = 0xFFFFFFFF
) -> Iterator[tuple[int, int, int]]:
    """(tag, value start, value end) of each top-level element, stepped over by length.

    Stops after the elements up to ``last_tag``. A few microseconds per element, where
    pydicom's element generator takes tens. Raises NotSteppable (see there), and
    ValueError when an element, or its header, runs past the end of ``data``.
    """
    tag_struct, short, long = _TAG[little], _LENGTH_16[little], _LENGTH_32[little]
    end, position = len(data), 0
    while position + 8 <= end:
        group, element = tag_struct.unpack_from(data, position)
        tag = group << 16 | element
        if tag > last_tag:
            return
        if implicit:
            (length,), start = long.unpack_from(data, position + 4), position + 8
        else:
            vr = bytes(data[position + 4 : position + 6])
            if vr in _LONG_VRS:
                if position + 12 > end:
                    raise ValueError(f"data set ends inside the header of ({group:04X},{element:04X})")
                (length,), start = long.unpack_from(data, position + 8), position + 12
            elif vr.isalpha() and vr.isupper():
                (length,), start = short.unpack_from(data, position + 6), position + 8
            else:
                raise NotSteppable(f"({group:04X},{element:04X}) has no valid explicit VR")
        if length == _UNDEFINED_LENGTH:
            raise NotSteppable(f"({group:04X},{element:04X}) has undefined length")
        position = start + length
        if position > end:
            raise ValueError(f"element ({group:04X},{element:04X}) runs past the end of the data set")
        yield tag, start, position
    if position != end:
        raise ValueError(f"data set ends inside an element header at byte {position}")


def _scan_defined(
    data: bytes | memoryview, implicit: bool, little: bool
) -> tuple[dict[int, str], bool] | None:
    """Header values found by :func:`defined_elements`, and whether an element after the
    last header tag was reached (the header is complete even if ``data`` is a prefix).

    None when pydicom must walk ``data``; raises ValueError like ``defined_elements``.
    """
    found: dict[int, str] = {}
    end = 0
    try:
        for tag, start, end in defined_elements(data, implicit, little, _LAST_HEADER_TAG):
            if end > start and tag in _HEADER_KEYS:
                found[tag] = _text(data[start:end])
    except NotSteppable:
        return None
    return found, end < len(data)  # stopped before the end: at a tag after the header


def _scan(dataset: bytes | memoryview, syntax: UID, limit: int) -> dict[int, str]:
    """Raw values of the header tags found in the first ``limit`` bytes."""
    stream = BytesIO(dataset[:limit])
    found: dict[int, str] = {}
    elements = data_element_generator(
        stream,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, _vr, _length: int(tag) > _LAST_HEADER_TAG,
        defer_size=None,
    )
    for element in elements:
        if int(element.tag) in _HEADER_KEYS and isinstance(element.value, bytes):
            found[int(element.tag)] = _text(element.value)
    return found


def _text(value: bytes | memoryview) -> str:
    return bytes(value).decode("ascii", "replace").strip("\0 ")


def _inflate(data: bytes | memoryview, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a deflated data set, and whether that is all of it
    (a few kB of deflate can stand for gigabytes)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise InputRejected(f"deflated dataset cannot be inflated: {exc}") from exc
    return inflated, inflater.eof or (not inflater.unconsumed_tail and len(inflated) < limit)


def _to_int(text: str) -> int | None:
    try:
        return int(text.split("\\")[0]) if text else None
    except ValueError:
        return None


def read_part10(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """Read one Part-10 file (with its File Meta Information).

    Raises InputRejected when the file is missing, unreadable or not DICOM.
    """
    try:
        return dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as exc:
        raise InputRejected(f"DICOM file missing: {path}") from exc
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise InputRejected(
            f"not a readable DICOM file: {path}: {type(exc).__name__}: {exc}"
        ) from exc
    except OSError as exc:
        raise InputRejected(f"cannot read DICOM file {path}: {exc}") from exc


def read_series(journal: Journal, arrival: Arrival) -> SeriesItem:
    """Read every spool file of a DICOM series arrival, in arrival order.

    ``identity`` is the series key: a re-opened series is the same input, so its results
    keep their names and UIDs and replace the earlier ones. Raises InputRejected when the
    arrival has no instances, a file is missing or not DICOM, or the files do not belong
    to one series.
    """
    return read_series_files(arrival, [instance.path for instance in journal.instances(arrival.id)])


def read_series_files(arrival: Arrival, paths: Sequence[Path]) -> SeriesItem:
    """:func:`read_series` from the instances' files at ``paths`` (in arrival order): what
    a worker without the journal reads. Raises InputRejected as :func:`read_series`."""
    if not paths:
        raise InputRejected(f"series {arrival.key}: no instances recorded")
    datasets = [read_part10(path) for path in paths]
    series_uid = str(arrival.attrs.get("series_uid") or datasets[0].get("SeriesInstanceUID", ""))
    _check_one_series(arrival.key, series_uid, datasets)
    first = datasets[0]
    return SeriesItem(
        identity=arrival.key,
        study_uid=str(arrival.attrs.get("study_uid") or first.get("StudyInstanceUID", "")),
        series_uid=series_uid,
        modality=str(arrival.attrs.get("modality") or first.get("Modality", "")),
        datasets=datasets,
    )


def _check_one_series(key: str, series_uid: str, datasets: Sequence[Dataset]) -> None:
    for ds in datasets:
        found = str(ds.get("SeriesInstanceUID", ""))
        if found != series_uid:
            sop = ds.get("SOPInstanceUID", "?")
            raise InputRejected(f"series {key}: instance {sop} belongs to series {found!r}")
