"""Instrument presets against the example names of the documentation they follow.

Every name in VENDOR_EXAMPLES is quoted as docs/microscopes.md cites it (verbatim where the
source shows a whole name, else filled in from the documented template, marked so); each
must be recognised by its preset in ``auto`` mode and parse to the fields written beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import match_name, parse_metadata
from acqflow.daemon.imageio import read_tiff_header
from tests.support.naming_cases import ROOT, assert_preset_parses
from tests.support.naming_cases import folder as _folder
from tests.support.naming_cases import local as _local

# (relative path, preset, expected fields); "inbox" is the watched folder's own name
VENDOR_EXAMPLES = [
    # Incucyte: export names (LIVECell, an Incucyte export guide), archive (OMERO_scripts README)
    ("Phase_B3_1_00d00h00m.tif", "incucyte",
     {"experiment": "inbox", "well": "B03", "position": "1", "timepoint": 0, "channel": "Phase"}),
    ("A172_Phase_A7_1_00d00h00m_1.tif", "incucyte",
     {"experiment": "A172", "well": "A07", "position": "1", "timepoint": 0, "channel": "Phase"}),
    ("EssenFiles/ScanData/2505/16/1124/1248/A1-1-C1.tif", "incucyte",  # template filled in
     {"experiment": "1248", "plate": "1248", "well": "A01", "position": "1", "channel": "C1",
      "acquired_at": _local(2025, 5, 16, 11, 24)}),
    ("EssenFiles/ScanData/2505/16/1124/1248/B2-1-Ph.tif", "incucyte",  # template filled in
     {"well": "B02", "position": "1", "channel": "Ph"}),
    # BioTek Gen5 (bioformats2raw README and BioTekTest)
    ("A1_01_1_1_Phase Contrast_001.tif", "cytation",
     {"experiment": "inbox", "well": "A01", "position": "1", "channel": "Phase Contrast", "timepoint": 1}),
    ("P24_01_1_9_DAPI_002.tif", "cytation",
     {"well": "P24", "position": "9", "channel": "DAPI", "timepoint": 2}),
    ("A1_-2_1_1_Tsf[Stitched[Channel1 300,400]]_001.tif", "cytation",
     {"well": "A01", "position": "1", "channel": "Tsf[Stitched[Channel1 300,400]]", "timepoint": 1}),
    ("A1_01_3_4_Blue_001.tif", "cytation",
     {"well": "A01", "position": "4", "channel": "Blue", "timepoint": 1}),
    ("A1_1Z0_DAPI_1_001_.tif", "cytation",
     {"well": "A01", "position": "1", "channel": "DAPI", "timepoint": 1}),
    ("A1_1Z4_DAPI_1_003_.tif", "cytation",
     {"well": "A01", "position": "1", "channel": "DAPI", "timepoint": 3}),
    ("B2_1_Bright Field_1_001_02.tif", "cytation",
     {"well": "B02", "position": "1", "channel": "Bright Field", "timepoint": 1}),
    ("H10_1_Stitched[AandB_Phase Contrast]_1_001_-1.tif", "cytation",
     {"well": "H10", "position": "1", "channel": "Stitched[AandB_Phase Contrast]", "timepoint": 1}),
    ("A1ROI2_01_1_2Z0_Confocal RFP_001.tif", "cytation",
     {"well": "A01", "position": "ROI2-2", "channel": "Confocal RFP", "timepoint": 1}),
    ("ID_A9 info/A9_-1_2_1_GFP_001.tif", "cytation",
     {"experiment": "inbox", "well": "A09", "position": "1", "channel": "GFP", "timepoint": 1}),
    ("D3/D3_1_Bright Field_1_001_02.tif", "cytation",
     {"experiment": "inbox", "well": "D03", "position": "1", "channel": "Bright Field"}),
    ("B2_02_SP10Z10_C1_Bright Field_T001.tif", "cytation",  # a Cytation 5 ImageJ macro's example
     {"well": "B02", "position": "10", "channel": "Bright Field", "timepoint": 1}),
    # Keyence BZ-X: XY01 folders (AutoStitch-Keyence), _00001_Z001_CH1 suffix (stitch-Keyence-images)
    ("myExp/XY01/Image_XY01_00001_Z001_CH1.tif", "keyence",  # template filled in
     {"experiment": "myExp", "position": "XY01", "channel": "CH1"}),
    # Micro-Manager: stacks (an MM OME-XML, Bio-Formats issue 2308), image files (MM file formats)
    ("speedtest_1/speedtest_1_MMStack_Pos0.ome.tif", "micromanager",
     {"experiment": "speedtest_1", "position": "Pos0"}),
    ("prefix_1_MMStack_1.ome.tif", "micromanager", {"experiment": "prefix_1", "position": None}),
    ("LB_MSS109_0min_100ms_1/Default/img_channel000_position000_time000000000_z000.tif", "micromanager",
     {"experiment": "LB_MSS109_0min_100ms_1", "position": "000", "timepoint": 0, "channel": "000"}),
    ("Untitled_1/Pos1/img_000000004_DAPI_000.tif", "micromanager",  # template filled in
     {"experiment": "Untitled_1", "position": "Pos1", "timepoint": 4, "channel": "DAPI"}),
    # MetaXpress / ImageXpress (EZStitcher formats page, MoBIE issue 1056, parserix README)
    ("TimePoint_1/A01_s1_w1.tif", "imagexpress",
     {"experiment": "inbox", "well": "A01", "position": "1", "channel": "1", "timepoint": 1}),
    ("Plate10x4sites_A01_s1_w1.TIF", "imagexpress",
     {"plate": "Plate10x4sites", "well": "A01", "position": "1", "channel": "1"}),
    ("MIP-2P-2sub_C05_s1_w146C9B2CD-0BB3-4B8A-9187-2805F4C90506.tif", "imagexpress",
     {"plate": "MIP-2P-2sub", "well": "C05", "position": "1", "channel": "1"}),
    ("HCC15691/2015-07-31/4014/val screen_B02_s1_w3E75611A2-A874-4065-BDAC-EE2467105EEB.tif", "imagexpress",
     {"experiment": "4014", "plate": "val screen", "well": "B02", "position": "1", "channel": "3"}),
    # ImageXpress HCS.ai (fractal converters page), template filled in
    ("Screen_20250101-1200/experiment/timepoint1/Screen_t1_C05_s0_w0_z1.tif", "imagexpress",
     {"experiment": "Screen_20250101-1200", "plate": "Screen", "well": "C05", "position": "0",
      "channel": "0", "timepoint": 1}),
    # Operetta / Opera Phenix, Harmony export (fractal converters page, EZStitcher formats page)
    ("my_acquisition/Images/r01c01f01p01-ch1sk1fk1fl1.tiff", "operetta",
     {"experiment": "my_acquisition", "well": "A01", "position": "01", "channel": "1", "timepoint": 1}),
    ("r01c01f002p01-ch1sk1fk1fl1.tiff", "operetta",
     {"experiment": "inbox", "well": "A01", "position": "002", "channel": "1", "timepoint": 1}),
    # Harmony 5.3 and later (Revvity support article on Signals Image Artist downloads)
    ("r01c03f02p01-ch01t01.tiff", "operetta",
     {"experiment": "inbox", "well": "A03", "position": "02", "channel": "01", "timepoint": 1}),
]


@pytest.mark.parametrize(("relative", "preset", "expected"), VENDOR_EXAMPLES,
                         ids=[case[0] for case in VENDOR_EXAMPLES])
def test_vendor_examples_parse_to_their_fields(relative: str, preset: str, expected: dict[str, Any]) -> None:
    assert_preset_parses(relative, preset, expected)


def test_harmony_datastore_names_carry_no_fields() -> None:
    # Harmony 5.2 and earlier hand out datastore identifiers (the same Revvity article)
    relative = "screen-7/114-103-143-712-1112-3-44-159.tiff"
    assert match_name(relative, _folder()) is None
    md = parse_metadata(ROOT / relative, _folder())
    assert (md.experiment, md.well, md.position, md.channel) == ("screen-7", None, None, None)


@pytest.mark.parametrize(("alias", "preset", "relative"), [
    ("gen5", "cytation", "A1_01_1_1_Phase Contrast_001.tif"),
    ("metaxpress", "imagexpress", "Plate10x4sites_A01_s1_w1.TIF"),
    ("harmony", "operetta", "r01c01f01p01-ch1sk1fk1fl1.tiff"),
])
def test_aliases_name_the_vendor_software(alias: str, preset: str, relative: str) -> None:
    found = match_name(relative, _folder(naming=alias))
    assert found is not None and found.scheme == preset


# --- Gen5 read folders: one experiment, a time course --------------------------------

GEN5_READS = [  # (read folder, field, kinetic read): two reads of two fields of well B3
    ("241128_111010_Plate 1", 1, 1), ("241128_111010_Plate 1", 2, 1),
    ("241128_131012_Plate 1", 1, 2), ("241128_131012_Plate 1", 2, 2),
]


def test_gen5_read_folders_of_a_plate_form_one_experiment_with_distinct_fields() -> None:
    parsed = [
        parse_metadata(ROOT / "scratch-assay" / folder / f"B3_02_1_{field}_Phase Contrast_{read:03d}.tif",
                       _folder())
        for folder, field, read in GEN5_READS
    ]
    assert {md.experiment for md in parsed} == {"scratch-assay"}
    assert {md.plate for md in parsed} == {"Plate 1"}
    assert [(md.well, md.position, md.timepoint) for md in parsed] == [
        ("B03", "1", 1), ("B03", "2", 1), ("B03", "1", 2), ("B03", "2", 2)]
    # the read folder gives each read its time, so the reads are on a real time axis
    assert [md.acquired_at for md in parsed] == [_local(2024, 11, 28, 11, 10, 10)] * 2 + [
        _local(2024, 11, 28, 13, 10, 12)] * 2


def test_gen5_read_folders_at_the_top_belong_to_the_watched_folder() -> None:
    md = parse_metadata(ROOT / "241128_111010_Plate 1" / "A1_02_1_1_Bright Field_001.tif", _folder())
    assert (md.experiment, md.plate, md.well) == ("inbox", "Plate 1", "A01")


def test_gen5_header_time_wins_over_the_read_folder_time(tmp_path: Path) -> None:
    folder = tmp_path / "241128_111010_Plate 1"
    folder.mkdir()
    path = folder / "A1_02_1_1_Bright Field_002.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), datetime="2024:11:28 11:55:00")
    md = parse_metadata(path, FolderSettings(path=tmp_path), read_tiff_header(path))
    assert md.acquired_at == _local(2024, 11, 28, 11, 55, 0)
    assert md.timepoint == 2


# --- generic layouts -------------------------------------------------------------------


@pytest.mark.parametrize(("relative", "expected"), [
    ("EXP1/B03/1/t005.tif", ("EXP1", "B03", "1", 5, None)),
    ("screens/EXP2/c11/field2/T012_gfp.ome.tif", ("EXP2", "C11", "field2", 12, "gfp")),
    ("B03/pos2/t000.tif", ("inbox", "B03", "pos2", 0, None)),  # the watched folder is the experiment
])
def test_well_field_time_folders(relative: str, expected: tuple[Any, ...]) -> None:
    found = match_name(relative, _folder())
    assert found is not None and found.scheme == "well_folders"
    md = parse_metadata(ROOT / relative, _folder())
    assert (md.experiment, md.well, md.position, md.timepoint, md.channel) == expected


@pytest.mark.parametrize(("relative", "expected"), [
    ("PL1_B03_2_phase.tif", ("inbox", "PL1", "B03", "2", None, "phase")),
    ("day3/P0042_h12_10_t004_gfp.tif", ("day3", "P0042", "H12", "10", 4, "gfp")),
])
def test_plate_well_field_names(relative: str, expected: tuple[Any, ...]) -> None:
    found = match_name(relative, _folder())
    assert found is not None and found.scheme == "plate_well_field"
    md = parse_metadata(ROOT / relative, _folder())
    assert (md.experiment, md.plate, md.well, md.position, md.timepoint, md.channel) == expected


def test_presets_that_consumed_folders_keep_the_user_experiment_setting() -> None:
    md = parse_metadata(ROOT / "EXP1" / "B03" / "1" / "t005.tif", _folder(experiment="assay-9"))
    assert md.experiment == "assay-9" and md.well == "B03"


def test_metaxpress_time_point_folders_are_one_experiment() -> None:
    names = [f"PlateA/TimePoint_{t}/PlateA_B02_s2_w1.TIF" for t in (1, 2, 3)]
    parsed = [parse_metadata(ROOT / name, _folder()) for name in names]
    assert {md.experiment for md in parsed} == {"PlateA"}
    assert [md.timepoint for md in parsed] == [1, 2, 3]


def test_metaxpress_thumbnails_are_not_taken_for_images() -> None:
    assert match_name("Plate10x4sites_A01_s1_w1_thumb46C9B2CD-0BB3-4B8A-9187-2805F4C90506.tif",
                      _folder(naming="imagexpress")) is None


def test_name_time_still_wins_over_a_header(tmp_path: Path) -> None:
    path = tmp_path / "VID193_A1_1_2017y03m29d_10h51m.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), datetime="2020:01:01 00:00:00")
    md = parse_metadata(path, FolderSettings(path=tmp_path), read_tiff_header(path))
    assert md.acquired_at == _local(2017, 3, 29, 10, 51)
