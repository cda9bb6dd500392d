"""acqflow.daemon.folders.naming: instrument presets, user patterns and embedded metadata."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.errors import ConfigError
from acqflow.daemon.folders.naming import (
    NAMING_SCHEMES,
    check_naming,
    match_name,
    normalise_well,
    parse_metadata,
    read_tiff_header,
)
from tests.support.naming_cases import ROOT, assert_preset_parses
from tests.support.naming_cases import folder as _folder
from tests.support.naming_cases import local as _local

PRESET_CASES = [
    # Incucyte exports: [prefix_][channel_]well_field_elapsed / date, and archive files
    ("Phase_B3_1_00d04h00m.tif", "incucyte",
     {"well": "B03", "position": "1", "timepoint": 240, "channel": "Phase", "experiment": "inbox"}),
    ("A172_Phase_A7_1_00d00h00m_1.tif", "incucyte",
     {"experiment": "A172", "well": "A07", "position": "1", "timepoint": 0, "channel": "Phase"}),
    ("MyExp_Red_B2_3_01d02h30m.tif", "incucyte",
     {"experiment": "MyExp", "well": "B02", "position": "3", "timepoint": 1590, "channel": "Red"}),
    ("VID193_A1_1_2017y03m29d_10h51m.tif", "incucyte",
     {"experiment": "VID193", "well": "A01", "position": "1",
      "acquired_at": _local(2017, 3, 29, 10, 51)}),
    ("EssenFiles/ScanData/2401/15/1430/0700/B2-1-C1.tif", "incucyte",
     {"plate": "0700", "well": "B02", "position": "1", "channel": "C1",
      "acquired_at": _local(2024, 1, 15, 14, 30)}),
    # BioTek Gen5 (Cytation)
    ("plate7/A1_01_1_1_Phase Contrast_001.tif", "cytation",
     {"experiment": "plate7", "well": "A01", "position": "1", "channel": "Phase Contrast",
      "timepoint": 1}),
    ("P24_01_2_9_DAPI_002.tif", "cytation",
     {"well": "P24", "position": "9", "channel": "DAPI", "timepoint": 2}),
    ("A1_1Z4_DAPI_1_003_.tif", "cytation",
     {"well": "A01", "position": "1", "channel": "DAPI", "timepoint": 3}),
    ("B2_1_Bright Field_1_001_02.tif", "cytation",
     {"well": "B02", "position": "1", "channel": "Bright Field", "timepoint": 1}),
    ("B2_02_SP10Z10_C1_Bright Field_T007.tif", "cytation",
     {"well": "B02", "position": "10", "channel": "Bright Field", "timepoint": 7}),
    # Keyence BZ-X
    ("run3/Image_T0012_XY02_Z001_CH1.tif", "keyence",
     {"experiment": "run3", "position": "XY02", "timepoint": 12, "channel": "CH1"}),
    ("10x_T0001_XY01_00003_Z001_CH2.tif", "keyence",
     {"experiment": "10x", "position": "XY01", "timepoint": 1, "channel": "CH2"}),
    ("Image_XY05_CH3.tif", "keyence", {"experiment": "inbox", "position": "XY05", "channel": "CH3"}),
    # Micro-Manager
    ("cell_1/cell_1_MMStack_Pos0.ome.tif", "micromanager", {"experiment": "cell_1", "position": "Pos0"}),
    ("hcs_1_MMStack_B4-Site_2_1.ome.tif", "micromanager",
     {"experiment": "hcs_1", "well": "B04", "position": "Site_2"}),
    ("acq_1/Pos3/img_000000007_DAPI_000.tif", "micromanager",
     {"experiment": "acq_1", "position": "Pos3", "timepoint": 7, "channel": "DAPI"}),
    ("acq_2/img_channel001_position002_time000000004_z000.tif", "micromanager",
     {"experiment": "acq_2", "position": "002", "timepoint": 4, "channel": "001"}),
    # the project's synthetic data
    ("EXP1_B03_pos1_t005_phase.tif", "acqflow",
     {"experiment": "EXP1", "well": "B03", "position": "pos1", "timepoint": 5, "channel": "phase"}),
    ("day2/EXP2_C11_pos2_t000_gfp.ome.tiff", "acqflow",
     {"experiment": "EXP2", "well": "C11", "position": "pos2", "timepoint": 0, "channel": "gfp"}),
]


@pytest.mark.parametrize(("relative", "scheme", "expected"), PRESET_CASES)
def test_presets_parse_real_looking_names(relative: str, scheme: str, expected: dict[str, Any]) -> None:
    assert_preset_parses(relative, scheme, expected)


def test_unmatched_name_falls_back_to_parent_folder() -> None:
    assert parse_metadata(ROOT / "exp9" / "random name.tif", _folder()).experiment == "exp9"
    top = parse_metadata(ROOT / "random.tif", _folder())
    assert top.experiment == "inbox" and top.well is None and top.timepoint is None


def test_user_pattern_wins_and_may_use_folders() -> None:
    folder = _folder(patterns=(r"(?i)(?P<plate>[^/]+)/(?P<well>[A-H]\d+)--(?P<channel>\w+)\.tif$",))
    md = parse_metadata(ROOT / "PL9" / "c7--bf.tif", folder)
    assert (md.plate, md.well, md.channel, md.experiment) == ("PL9", "C07", "bf", "PL9")
    # a name the user pattern does not match still gets a preset
    assert parse_metadata(ROOT / "EXP1_B03_pos1_t005_phase.tif", folder).well == "B03"


def test_user_pattern_with_date_groups() -> None:
    folder = _folder(patterns=(r"(?P<year>\d{4})(?P<month>\d\d)(?P<day>\d\d)_(?P<well>\w+)\.tif$",))
    md = parse_metadata(ROOT / "20250102_B7.tif", folder)
    assert md.acquired_at == _local(2025, 1, 2) and md.well == "B07"


def test_naming_restricts_schemes() -> None:
    name = "EXP1_B03_pos1_t005_phase.tif"
    assert match_name(name, _folder(naming="incucyte")) is None
    assert match_name(name, _folder(naming="patterns")) is None
    md = parse_metadata(ROOT / "x" / name, _folder(naming="folder"))
    assert md.experiment == "x" and md.well is None


def test_folder_experiment_overrides_everything() -> None:
    md = parse_metadata(ROOT / "EXP1_B03_pos1_t005_phase.tif", _folder(experiment="screen-42"))
    assert md.experiment == "screen-42" and md.well == "B03"


def test_check_naming_rejects_unknown_scheme_and_groups() -> None:
    for scheme in NAMING_SCHEMES:
        check_naming(_folder(naming=scheme))
    with pytest.raises(ConfigError, match="unknown naming scheme 'nikon'"):
        check_naming(_folder(naming="nikon"))
    with pytest.raises(ConfigError, match="unknown group"):
        check_naming(_folder(patterns=(r"(?P<wel>\w+)\.tif",)))


def test_normalise_well() -> None:
    assert [normalise_well(w) for w in ("a1", "B03", "P24", "AA7", "X")] == [
        "A01", "B03", "P24", "AA07", "X"
    ]


def test_imagej_metadata_gives_pixel_size_and_single_channel(tmp_path: Path) -> None:
    path = tmp_path / "EXP1_B03_pos1_t005_phase.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), imagej=True,
                     resolution=(1 / 0.325, 1 / 0.325), metadata={"axes": "YX", "unit": "um"})
    md = parse_metadata(path, FolderSettings(path=tmp_path), read_tiff_header(path))
    assert md.pixel_size_um == pytest.approx((0.325, 0.325))
    assert (md.experiment, md.well, md.timepoint, md.channel) == ("EXP1", "B03", 5, "phase")


OME_PLATE = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
  <Plate ID="Plate:0" Name="PlateA"><Well ID="Well:0" Row="1" Column="2">
    <WellSample ID="WellSample:0" Index="0"><ImageRef ID="Image:0"/></WellSample></Well></Plate>
  <Image ID="Image:0" Name="field"><AcquisitionDate>2024-05-06T07:08:09Z</AcquisitionDate>
    <Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="16" SizeY="16" SizeC="1"
      SizeZ="1" SizeT="1" PhysicalSizeX="650" PhysicalSizeY="650" PhysicalSizeXUnit="nm"
      PhysicalSizeYUnit="nm"><Channel ID="Channel:0:0" Name="Phase"/>
      <TiffData IFD="0" PlaneCount="1"/></Pixels></Image>
</OME>"""


def test_ome_xml_gives_plate_well_channel_time_and_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), description=OME_PLATE, metadata=None)
    header = read_tiff_header(path)
    assert header.flavor == "ome"
    md = parse_metadata(path, FolderSettings(path=tmp_path), header)
    assert (md.plate, md.well, md.channel) == ("PlateA", "B03", "Phase")
    assert md.acquired_at == datetime.fromisoformat("2024-05-06T07:08:09+00:00").timestamp()
    assert md.pixel_size_um == pytest.approx((0.65, 0.65))
    assert md.experiment == tmp_path.name


def test_name_fields_win_over_header(tmp_path: Path) -> None:
    path = tmp_path / "EXP1_D04_pos1_t001_gfp.ome.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), description=OME_PLATE, metadata=None)
    md = parse_metadata(path, FolderSettings(path=tmp_path), read_tiff_header(path))
    assert (md.well, md.channel, md.plate) == ("D04", "gfp", "PlateA")


def test_gen5_is_an_alias_of_cytation() -> None:
    found = match_name("A1_01_1_1_Phase Contrast_001.tif", _folder(naming="gen5"))
    assert found is not None and found.scheme == "cytation"
