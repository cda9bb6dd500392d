"""OME-XML through ome-types: every <Image> its own metadata, each image of a multi-image
OME-TIFF an input of its own, and unreadable OME-XML still no reason to refuse a file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import parse_metadata
from acqflow.daemon.folders.watcher import FolderWatcher
from acqflow.daemon.imageio import read_image, read_tiff_header
from acqflow.daemon.journal import Arrival, Journal
from acqflow.daemon.ome import parse_ome
from acqflow.daemon.sinks.results import input_folder

_IMAGE = """<Image ID="Image:{i}" Name="{name}"><AcquisitionDate>2024-05-06T07:0{i}:00Z</AcquisitionDate>
  <StageLabel Name="{name}" X="{x}" XUnit="mm" Y="{y}" YUnit="&#181;m"/>
  <Pixels ID="Pixels:{i}" DimensionOrder="XYCZT" Type="uint16" SizeX="16" SizeY="16" SizeC="1"
    SizeZ="1" SizeT="1" PhysicalSizeX="{size}" PhysicalSizeY="{size}" PhysicalSizeXUnit="um"
    PhysicalSizeYUnit="um"><Channel ID="Channel:{i}:0" Name="{channel}"/>
    <TiffData IFD="{i}" PlaneCount="1">{uuid}</TiffData></Pixels></Image>"""
_PLATE = """<Plate ID="Plate:0" Name="Screen7">
  <Well ID="Well:0" Row="0" Column="0">
    <WellSample ID="WellSample:0" Index="0"><ImageRef ID="Image:0"/></WellSample>
    <WellSample ID="WellSample:1" Index="1"><ImageRef ID="Image:1"/></WellSample></Well>
  <Well ID="Well:1" Row="2" Column="11">
    <WellSample ID="WellSample:2" Index="2"><ImageRef ID="Image:2"/></WellSample></Well></Plate>"""
CHANNELS = ("Phase", "GFP", "DAPI")


def _ome(images: str, plate: str = "") -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">{plate}{images}</OME>')


def _images(count: int, uuids: tuple[str, ...] = ()) -> str:
    return "".join(
        _IMAGE.format(i=i, name=f"Site{i}", x=i, y=10 * i, size=0.5 + 0.1 * i, channel=CHANNELS[i],
                      uuid=uuids[i] if uuids else "")
        for i in range(count)
    )


def _utc(minute: int) -> float:
    return datetime.fromisoformat(f"2024-05-06T07:{minute:02d}:00+00:00").timestamp()


def _plate_file(path: Path) -> np.ndarray:
    """Three OME images (three fields, two wells of plate Screen7), one page each."""
    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    tifffile.imwrite(path, data, description=_ome(_images(3), _PLATE), metadata=None,
                     photometric="minisblack")
    return data


def test_every_ome_image_of_a_plate_gets_its_own_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plate.ome.tif"
    _plate_file(path)
    header = read_tiff_header(path)
    assert header.flavor == "ome" and header.split == (0, 1, 2)
    inputs = header.inputs()
    assert [(h.series, h.plate, h.well, h.position) for h in inputs] == [
        (0, "Screen7", "A01", "Site0"), (1, "Screen7", "A01", "Site1"), (2, "Screen7", "C12", "Site2")]
    assert [h.stage_um for h in inputs] == [(0.0, 0.0), (1000.0, 10.0), (2000.0, 20.0)]  # mm and µm
    assert [h.pixel_size_um for h in inputs] == [pytest.approx((s, s)) for s in (0.5, 0.6, 0.7)]
    assert [h.channel_names for h in inputs] == [(c,) for c in CHANNELS]
    assert [h.acquired_at for h in inputs] == [_utc(0), _utc(1), _utc(2)]
    md = parse_metadata(path, FolderSettings(path=tmp_path), inputs[2])
    assert (md.plate, md.well, md.position, md.channel, md.stage_position_um) == (
        "Screen7", "C12", "Site2", "DAPI", (2000.0, 20.0))


def test_a_member_of_a_multi_file_ome_tiff_describes_its_own_image(tmp_path: Path) -> None:
    uuids = tuple(f'<UUID FileName="pos{i}.ome.tif">urn:uuid:0000000{i}-0000-0000-0000-000000000000</UUID>'
                  for i in range(2))
    path = tmp_path / "pos1.ome.tif"
    xml = _ome(_images(2, uuids)).replace('IFD="1"', 'IFD="0"')  # each file holds one plane
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), description=xml, metadata=None)
    header = read_tiff_header(path)
    assert header.split == ()  # one input: its sibling holds the other image
    assert (header.series, header.position, header.channel_names) == (1, "Site1", ("GFP",))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


def _positions_file(path: Path) -> list[np.ndarray]:
    """Two positions written by tifffile as two OME images of one file."""
    planes = [np.full((12, 10), 10 * (i + 1), np.uint8) for i in range(2)]
    with tifffile.TiffWriter(path, ome=True) as writer:
        for i, plane in enumerate(planes):
            writer.write(plane, metadata={"Name": f"Pos{i}", "PhysicalSizeX": 0.3 + i,
                                          "PhysicalSizeY": 0.3 + i, "Channel": {"Name": ["BF"]}})
    return planes


def test_the_watcher_records_each_position_of_a_multi_image_ome_tiff(
    journal: Journal, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "EXP1_B03_pos1_t005_phase.ome.tif"
    planes = _positions_file(path)
    old = time.time() - 60
    os.utime(path, (old, old))
    watcher = FolderWatcher(FolderSettings(path=inbox), journal, tmp_path / "quarantine", lambda: None)
    assert watcher.rescan() == 2
    assert watcher.rescan() == 0  # the same version is not taken again
    rows = [Arrival.from_row(r) for r in journal.query("SELECT * FROM arrivals ORDER BY id")]
    assert [a.key for a in rows] == [f"file:{path}", f"file:{path}#series=1"]
    assert [a.attrs.get("series") for a in rows] == [0, 1]
    # the name's fields are shared; one name cannot tell the positions apart, each image's OME can
    assert [a.attrs["metadata"]["experiment"] for a in rows] == ["EXP1", "EXP1"]
    assert [a.attrs["metadata"]["position"] for a in rows] == ["Pos0", "Pos1"]
    assert [a.attrs["metadata"]["pixel_size_um"] for a in rows] == [pytest.approx([s, s]) for s in (0.3, 1.3)]
    for arrival, plane in zip(rows, planes, strict=True):
        item = read_image(arrival)
        np.testing.assert_array_equal(item.array, plane)
        assert item.identity == arrival.key
    assert input_folder(rows[0]) != input_folder(rows[1])
    assert str(input_folder(rows[1])).endswith("EXP1_B03_pos1_t005_phase.series1")


def test_an_unnamed_multi_position_file_takes_position_names_from_ome(tmp_path: Path) -> None:
    path = tmp_path / "stage.ome.tif"
    _positions_file(path)
    header = read_tiff_header(path)
    names = [parse_metadata(path, FolderSettings(path=tmp_path), one).position for one in header.inputs()]
    assert names == ["Pos0", "Pos1"]


@pytest.mark.parametrize(("xml", "parsed"), [
    # truncated XML (the reliability corpus' garbage: tifffile sees no OME-XML in it) and
    # well-formed XML that breaks the schema (a negative size), which ome-types refuses
    ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
     '<Image><Pixels SizeX="banana"', False),
    (_ome(_images(1)).replace('SizeX="16"', 'SizeX="-3"'), True),
])
def test_unreadable_ome_xml_is_logged_and_the_file_still_read(
    xml: str, parsed: bool, tmp_path: Path, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint16), description=xml, metadata=None)
    with caplog.at_level(logging.WARNING, logger="acqflow.daemon.ome"):
        header = read_tiff_header(path)
    assert header.flavor == "tiff" and header.images == () and header.split == ()
    warned = [r.getMessage() for r in caplog.records if "unreadable OME-XML" in r.getMessage()]
    assert bool(warned) is parsed
    assert all("bad.ome.tif" in message and "\n" not in message for message in warned)
    stat = path.stat()
    arrival = journal.record_file_arrival("folder", f"file:{path}", path,
                                          {"fingerprint": [stat.st_size, stat.st_mtime_ns]})
    assert arrival is not None and read_image(arrival).array.shape == (16, 16)


def test_loose_micron_spelling_and_old_schema_versions_are_read() -> None:
    xml = _ome(_images(1)).replace("2016-06", "2015-01")
    (image,) = parse_ome(xml, "x.ome.tif") or ()
    assert image.pixel_size_um == pytest.approx((0.5, 0.5))  # "um", not the schema's "µm"
    assert image.position == "Site0" and image.channel_names == ("Phase",)


def test_parse_ome_returns_none_for_text_that_is_no_xml() -> None:
    assert parse_ome("not xml at all", "x.ome.tif") is None
