"""Acquisition metadata of a microscope image from its embedded metadata and its name.

:func:`parse_metadata` combines two sources:

* the file's header (:func:`read_tiff_header`, no pixels decoded): pixel size, acquisition
  time, channel names and, for OME-TIFFs, plate, well, position and stage position of the
  OME image the input is (every ``<Image>`` of a multi-image OME-TIFF is an input of its own);
* its path relative to the watched folder, matched (``re.search``, ``/`` separators)
  against, in order: the folder's own ``patterns``, the instrument presets, the generic
  acqflow pattern ``EXP_WELL_posN_tNNN_channel.tif``.

The experiment is the folder's ``experiment`` setting when set, else what the name says,
else, for presets that describe folders (a Gen5 read folder, ``TimePoint_N``, Operetta's
``Images``, ``WELL/FIELD/``), the folder holding those, else the file's parent folder (the
watched folder's name for files at its top). Wells are normalised to row letters and a
two-digit column (``a1`` -> ``A01``) so that all instruments group alike; other fields are
kept as written in the name. Time points are the numbers in the name as written (0- or
1-based per instrument); Incucyte names that carry elapsed time (``01d04h30m``) give the
elapsed minutes as time point.

Presets (``naming`` setting; ``auto`` tries all of them in this order), with the sources
of each layout in docs/microscopes.md:

* ``incucyte`` — exports ``[prefix_][Channel_]WELL_FIELD_DDdHHhMMm[_n].tif``
  (``Phase_B3_1_00d00h00m.tif``), dated exports ``VID193_A1_1_2017y03m29d_10h51m.tif`` and
  archive files ``YYMM/DD/HHMM/PLATE/A1-1-C1.tif``;
* ``cytation`` (alias ``gen5``) — Gen5 image files ``A1_01_1_1_Phase Contrast_001.tif``
  (well, read step, channel index, field, channel, kinetic read), beacons
  ``A1ROI1_01_1_1Z0_Confocal DAPI_001.tif``, ``A1_1Z0_DAPI_1_001_.tif``,
  ``B2_02_SP10Z10_C1_Bright Field_T001.tif``, in read folders ``241128_111010_Plate 1/``
  (plate and read time) and optional well folders;
* ``keyence`` (BZ-X) — ``Image_T0001_XY01_00001_Z001_CH2.tif``, multi-point in ``XY01/``;
* ``micromanager`` — stacks ``speedtest_1_MMStack_Pos0.ome.tif``, image-per-file
  ``NAME/Pos0/img_000000003_DAPI_000.tif`` (1.4) and
  ``NAME/Default/img_channel000_position000_time000000000_z000.tif`` (2.x);
* ``imagexpress`` (alias ``metaxpress``) — ``TimePoint_1/Plate10x4sites_A01_s1_w1.TIF``
  and HCS.ai ``timepoint1/PROTOCOL_t1_C05_s0_w0_z0.tif``;
* ``operetta`` (alias ``harmony``) — ``Images/r01c01f01p01-ch1sk1fk1fl1.tiff`` and, from
  Harmony 5.3, ``r01c03f02p01-ch01t01.tiff``;
* ``well_folders`` — ``EXP/B03/2/t005.tif``; ``plate_well_field`` — ``PL1_B03_2_phase.tif``;
* ``acqflow`` — ``EXP1_B03_pos1_t005_phase.tif`` (the project's synthetic data);
* ``patterns`` — the folder's ``patterns`` only; ``folder`` — no name parsing at all.
"""

from __future__ import annotations

from acqflow.daemon.folders.naming.parse import (
    NameExplanation,
    NameMatch,
    check_naming,
    explain_name,
    match_name,
    normalise_well,
    parse_metadata,
)
from acqflow.daemon.folders.naming.presets import (
    ALIASES,
    NAMING_SCHEMES,
    PATTERN_GROUPS,
    PRESETS,
    NamingPreset,
)
from acqflow.daemon.imageio import TiffHeader, read_tiff_header

__all__ = [
    "ALIASES",
    "NAMING_SCHEMES",
    "PATTERN_GROUPS",
    "PRESETS",
    "NameExplanation",
    "NameMatch",
    "NamingPreset",
    "TiffHeader",
    "check_naming",
    "explain_name",
    "match_name",
    "normalise_well",
    "parse_metadata",
    "read_tiff_header",
]
