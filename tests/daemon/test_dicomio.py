"""daemon.dicomio: hand-built File Meta, header scan, reading a spooled series."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from daemon.dicomio import encode_file_meta, parse_header, read_part10, read_series
from daemon.errors import InputRejected
from daemon.journal import Instance, Journal
from tests.support.peers import SyntheticSeries, write_synthetic_ct


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
