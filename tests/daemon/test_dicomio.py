"""acqflow.daemon.dicom.part10: hand-built File Meta, header scan, reading a spooled series."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from acqflow.daemon.dicom.part10 import (
    _scan,
    _scan_defined,
    defined_elements,
    encode_file_meta,
    parse_header,
    parse_header_prefix,
    read_part10,
    read_series,
)
from acqflow.daemon.errors import InputRejected
from acqflow.daemon.journal import Instance, Journal
from tests.support.peers import SyntheticSeries, write_synthetic_ct
from tests.support.samples import sample_files


def _dataset_bytes(path: Path) -> tuple[bytes, str]:
    """The encoded dataset of a Part-10 file (after its File Meta) and its syntax."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    raw = path.read_bytes()
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return raw[start:], str(meta.TransferSyntaxUID)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=3, seed="io", rows=32,
                              cols=32)


def test_file_meta_round_trips_through_pydicom(series: SyntheticSeries) -> None:
    dataset, syntax = _dataset_bytes(series.paths[0])
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", series.sop_uids[0], syntax, "MODALITY1")
    ds = dcmread(BytesIO(meta + dataset))
    assert ds.file_meta.MediaStorageSOPInstanceUID == series.sop_uids[0]
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert ds.SOPInstanceUID == series.sop_uids[0] and ds.pixel_array.shape == (32, 32)


def test_parse_header_reads_only_what_the_scp_needs(series: SyntheticSeries) -> None:
    dataset, syntax = _dataset_bytes(series.paths[2])
    header = parse_header(memoryview(dataset), syntax)
    assert (header.series_uid, header.study_uid, header.modality, header.instance_number) == (
        series.series_uid, series.study_uid, "CT", 3)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(dataset) + deflater.flush()
    assert parse_header(deflated, "1.2.840.10008.1.2.1.99") == header


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_parse_header_other_transfer_syntaxes(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    dataset, syntax = _dataset_bytes(Path(path))
    full = dcmread(path, stop_before_pixels=True)
    header = parse_header(dataset, syntax)
    assert header.sop_instance_uid == full.SOPInstanceUID
    assert header.series_uid == full.SeriesInstanceUID and header.modality == "MR"


def _sample_datasets() -> list[tuple[str, bytes, UID]]:
    """(name, encoded data set, syntax) of every Part-10 sample file of pydicom and pydicom-data."""
    samples = []
    for path, header in sample_files():
        raw = path.read_bytes()
        try:
            syntax = UID(header.file_meta.TransferSyntaxUID)
            start = 132 + 12 + int(header.file_meta.FileMetaInformationGroupLength)
        except (AttributeError, KeyError, ValueError, TypeError):
            continue  # no File Meta: nothing a C-STORE would carry
        if raw[128:132] == b"DICM" and syntax != DeflatedExplicitVRLittleEndian:
            samples.append((path.name, raw[start:], syntax))
    return samples


def test_length_stepping_scan_agrees_with_pydicom_on_every_sample_file() -> None:
    """The fast path finds exactly what pydicom's element generator finds, or defers to it."""
    samples = _sample_datasets()
    assert len(samples) > 150, "pydicom-data sample files missing"
    stepped = 0
    for name, data, syntax in samples:
        scanned = _scan_defined(data, syntax.is_implicit_VR, syntax.is_little_endian)
        if scanned is not None:
            stepped += 1
            assert scanned[0] == _scan(data, syntax, len(data)), name
    assert stepped > 0.7 * len(samples)  # the fast path is the common one


def test_a_prefix_gives_the_whole_header_or_nothing() -> None:
    """What the SCP parses from a data set's first fragment, before the rest arrives."""
    complete = 0
    for name, data, syntax in _sample_datasets():
        try:
            whole = parse_header(data, syntax)
        except InputRejected:
            continue
        for cut in (16, 300, 2048, 16384):
            prefix = parse_header_prefix(memoryview(data)[:cut], syntax)
            assert prefix is None or prefix == whole, (name, cut)
            complete += prefix is not None
    assert complete > 100  # most headers are whole within the first 16 kB


def test_prefix_ending_inside_the_header_gives_nothing() -> None:
    dataset = _header_dataset()
    dataset.Rows = 2  # an element after the header
    data = _encoded(dataset)
    whole = parse_header(data, ExplicitVRLittleEndian)
    cut_at_rows = data.index(b"\x28\x00\x10\x00")
    assert parse_header_prefix(data[: cut_at_rows + 8], ExplicitVRLittleEndian) == whole
    for cut in range(cut_at_rows):
        assert parse_header_prefix(data[:cut], ExplicitVRLittleEndian) is None, cut
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(data) + deflater.flush()
    assert parse_header_prefix(deflated, DeflatedExplicitVRLittleEndian) is None


def _encoded(dataset: Dataset) -> bytes:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _header_dataset() -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.Modality = "CT"
    dataset.StudyInstanceUID = "1.2.3"
    dataset.SeriesInstanceUID = "1.2.3.5"
    dataset.InstanceNumber = 7
    return dataset


def test_sequence_of_undefined_length_is_walked_by_pydicom() -> None:
    dataset = _header_dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    dataset.ReferencedImageSequence = [item]
    dataset["ReferencedImageSequence"].is_undefined_length = True
    data = _encoded(dataset)
    assert _scan_defined(data, False, True) is None
    header = parse_header(data, ExplicitVRLittleEndian)
    assert (header.sop_instance_uid, header.series_uid, header.instance_number) == ("1.2.3.4", "1.2.3.5", 7)
    dataset["ReferencedImageSequence"].is_undefined_length = False
    assert _scan_defined(_encoded(dataset), False, True) is not None  # defined length: stepped over


def test_length_stepping_scan_refuses_an_element_past_the_end() -> None:
    data = _encoded(_header_dataset())
    assert _scan_defined(data, False, True) is not None
    with pytest.raises(ValueError, match="runs past the end"):
        _scan_defined(data[:-1], False, True)
    with pytest.raises(ValueError, match="inside an element header"):
        _scan_defined(data[:-5], False, True)
    tags = [tag for tag, _start, _stop in defined_elements(data, False, True)]
    assert tags == sorted(tags) and tags[-1] == 0x00200013
    with pytest.raises(InputRejected, match="runs past the end"):
        parse_header(data[:-1], ExplicitVRLittleEndian)


def test_parse_header_rejects_garbage() -> None:
    with pytest.raises(InputRejected):
        parse_header(b"\x08\x00\x18\x00UI\xff\xff" + b"x" * 40, "1.2.840.10008.1.2.1")
    with pytest.raises(InputRejected, match="lacks"):
        parse_header(b"", "1.2.840.10008.1.2.1")
    with pytest.raises(InputRejected, match="inflated"):
        parse_header(b"not deflate", "1.2.840.10008.1.2.1.99")


def _journal_with(tmp_path: Path, series: SyntheticSeries, paths: list[Path]) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.open_association("a", "SCU")
    for index, path in enumerate(paths):
        journal.record_instance(
            "series:" + series.series_uid, path.parent,
            {"modality": "CT", "study_uid": series.study_uid, "series_uid": series.series_uid},
            Instance(series.sop_uids[index], 0, path, 1, "SCU", "a", 100.0 + index, index + 1),
        )
    return journal


def test_read_series_gives_identity_and_datasets(tmp_path: Path, series: SyntheticSeries) -> None:
    journal = _journal_with(tmp_path, series, list(series.paths))
    arrival = journal.arrival_by_key("series:" + series.series_uid)
    assert arrival is not None
    item = read_series(journal, arrival)
    journal.close()
    assert item.identity == f"series:{series.series_uid}"
    assert (item.study_uid, item.series_uid, item.modality) == (
        series.study_uid, series.series_uid, "CT")
    assert [ds.InstanceNumber for ds in item.datasets] == [1, 2, 3]


def test_read_series_rejects_missing_and_non_dicom(tmp_path: Path, series: SyntheticSeries) -> None:
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("this is not DICOM")
    journal = _journal_with(tmp_path, series, [series.paths[0], tmp_path / "gone.dcm"])
    arrival = journal.arrival_by_key("series:" + series.series_uid)
    assert arrival is not None
    with pytest.raises(InputRejected, match="missing"):
        read_series(journal, arrival)
    journal.close()
    with pytest.raises(InputRejected, match="not a readable DICOM"):
        read_part10(not_dicom)


def test_synthetic_ct_is_deterministic_and_valid(tmp_path: Path) -> None:
    first = write_synthetic_ct(tmp_path / "a", n_slices=2, seed="same", rows=32, cols=32)
    second = write_synthetic_ct(tmp_path / "b", n_slices=2, seed="same", rows=32, cols=32)
    other = write_synthetic_ct(tmp_path / "c", n_slices=2, seed="other", rows=32, cols=32)
    assert first.sop_uids == second.sop_uids and first.series_uid == second.series_uid
    assert first.paths[1].read_bytes() == second.paths[1].read_bytes()
    assert set(first.sop_uids).isdisjoint(other.sop_uids)
    ds = dcmread(first.paths[1])
    assert (ds.InstanceNumber, ds.ImagePositionPatient[2], ds.PixelSpacing) == (2, -1.0, [0.78125, 0.78125])
    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools dciodvfy not installed")
    report = subprocess.run(["dciodvfy", str(first.paths[0])], capture_output=True, text=True,
                            check=False, timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors
