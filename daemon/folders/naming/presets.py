"""The instrument presets: how each vendor's software names files and folders.

Each preset is a tuple of regular expressions searched (``re.search``, case-insensitive)
in the path relative to the watched folder, ``/``-separated, plus an optional ``refine``
that turns instrument-specific groups into the common fields. Where the documentation
of each layout comes from is in docs/microscopes.md; the example names of the tests
(tests/daemon/test_naming_vendors.py) are the ones quoted there.

Groups a preset may capture beyond the common fields, consumed by ``refine`` or by the
parser: ``row``/``column`` (1-based plate indices, Operetta), ``roi`` (Gen5 beacons),
``read_yy`` ... ``read_second`` (the time a Gen5 read folder names, which the file's
own header time overrides), ``edays``/``ehours``/``eminutes`` (Incucyte elapsed time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from acqflow.daemon.ome import row_name

__all__ = ["ALIASES", "NAMING_SCHEMES", "PATTERN_GROUPS", "PRESETS", "Fields", "NamingPreset"]

Fields = dict[str, str]

#: Named groups a user pattern may use: the six metadata fields, plus an acquisition
#: time as ``year`` (or two-digit ``yy``), ``month``, ``day``, ``hour``, ``minute``, ``second``.
PATTERN_GROUPS = frozenset(
    {"experiment", "plate", "well", "position", "timepoint", "channel",
     "year", "yy", "month", "day", "hour", "minute", "second"}
)
_TIFF = r"\.(?:ome\.)?tiff?$"
_START = r"(?:^|/)"
_WELL = r"[A-Za-z]{1,2}(?:0?[1-9]|[1-9]\d)"  # columns 1-99: no plate has a column 0
_INCUCYTE_CHANNELS = r"Phase|Ph|Green|Red|NIR|Blue|Orange|Gray|Grey|Brightfield|C\d"
# Gen5 saves each plate read into a folder named by the read's start, "241128_111010_Plate 1";
# a plate may also be split into one folder per well ("B2/", "ID_A9 info/").
_GEN5_READ = (
    r"(?:(?P<read_yy>\d\d)(?P<read_month>\d\d)(?P<read_day>\d\d)_(?P<read_hour>\d\d)"
    r"(?P<read_minute>\d\d)(?P<read_second>\d\d)_(?P<plate>[^/]+)/)?"
    rf"(?:(?:ID_)?{_WELL}(?: info)?/)?"
)
_GEN5_WELL = rf"(?P<well>{_WELL})"
# MetaXpress writes TimePoint_N (and ZStep_N) folders; database copies append a GUID to "w1".
_IXM_DIRS = r"(?:TimePoint_(?P<timepoint>\d+)/)?(?:ZStep_\d+/)?"
_GUID = r"(?:[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12})?"
# Harmony (Operetta, Opera Phenix): row, column, field and plane, then channel and time.
_HARMONY_FIELD = r"(?:Images/)?r(?P<row>\d\d)c(?P<column>\d\d)f(?P<position>\d+)p\d+"
# Micro-Manager position labels: HCS sites, grid positions (2.0 "1-Pos000_000", 1.4 "1-Pos_000_000"), PosN.
_MM_POSITION = rf"{_WELL}-Site_\d+|\d+-Pos_?\d+_\d+|Pos\d+"


@dataclass(frozen=True)
class NamingPreset:
    """File-name conventions of one instrument; ``refine`` fixes up matched groups.

    ``layout``: the patterns describe folders as well as the file (``TimePoint_3/``,
    ``B03/2/``); the experiment then defaults to the folder holding what they matched
    (the watched folder's own name at its top) instead of the file's parent folder.
    """

    name: str
    patterns: tuple[re.Pattern[str], ...]
    refine: Callable[[Fields], Fields] | None = None
    layout: bool = False


def _compile(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def _gen5(fields: Fields) -> Fields:
    """A Gen5 beacon (``A1ROI2_...``) is a position of its own: ROI and field together."""
    roi = fields.get("roi")
    if roi is None:
        return fields
    refined = {k: v for k, v in fields.items() if k != "roi"}
    refined["position"] = f"ROI{roi}-{fields.get('position', '1')}"
    return refined


def _split_site(fields: Fields) -> Fields:
    """Micro-Manager HCS positions ``A1-Site_0`` name the well and the site."""
    position = fields.get("position", "")
    match = re.fullmatch(rf"({_WELL})-(Site_\d+)", position)
    if match and not fields.get("well"):
        return {**fields, "well": match.group(1), "position": match.group(2)}
    return fields


def _drop_default_prefix(fields: Fields) -> Fields:
    """Keyence's default prefix ``Image`` says nothing about the experiment."""
    if fields.get("experiment", "").lower() == "image":
        return {k: v for k, v in fields.items() if k != "experiment"}
    return fields


def _row_column_well(fields: Fields) -> Fields:
    """Operetta's ``r02c03`` (1-based row and column) is well ``B03``."""
    refined = {k: v for k, v in fields.items() if k not in ("row", "column")}
    row, column = fields.get("row", ""), fields.get("column", "")
    if row.isdecimal() and column.isdecimal() and 1 <= int(row) <= 52 and 1 <= int(column) <= 99:
        refined["well"] = f"{row_name(int(row) - 1)}{int(column):02d}"
    return refined


PRESETS: dict[str, NamingPreset] = {
    "incucyte": NamingPreset(
        "incucyte",
        _compile(
            _START + rf"(?:(?P<experiment>[^/]+?)_)??(?:(?P<channel>{_INCUCYTE_CHANNELS})_)?"
            rf"(?P<well>{_WELL})_(?P<position>\d+)_(?P<edays>\d+)d(?P<ehours>\d\d)h"
            rf"(?P<eminutes>\d\d)m(?:_\d+)?{_TIFF}",
            _START + rf"(?:(?P<experiment>[^/]+?)_)??(?:(?P<channel>{_INCUCYTE_CHANNELS})_)?"
            rf"(?P<well>{_WELL})_(?P<position>\d+)_(?P<year>\d{{4}})y(?P<month>\d\d)m"
            rf"(?P<day>\d\d)d_(?P<hour>\d\d)h(?P<minute>\d\d)m{_TIFF}",
            _START + r"(?P<yy>\d\d)(?P<month>\d\d)/(?P<day>\d\d)/(?P<hour>\d\d)(?P<minute>\d\d)/"
            rf"(?P<plate>\d+)/(?P<well>{_WELL})-(?P<position>\d+)-(?P<channel>[A-Za-z0-9]+){_TIFF}",
        ),
    ),
    "cytation": NamingPreset(
        "cytation",
        _compile(
            # well[ROI n]_step_channel-index_field[Zn]_channel_kinetic-read
            _START + _GEN5_READ + _GEN5_WELL + r"(?:ROI(?P<roi>\d+))?_-?\d+_\d+_(?P<position>\d+)"
            rf"(?:Z\d+)?_(?P<channel>[^/]+?)_(?P<timepoint>-?\d+){_TIFF}",
            _START + _GEN5_READ + _GEN5_WELL + r"_-?\d+_SP(?P<position>\d+)(?:Z\d+)?_C\d+"
            rf"_(?P<channel>[^/]+?)_T(?P<timepoint>\d+){_TIFF}",
            # well_field[Zn]_channel_step_kinetic-read[_n]
            _START + _GEN5_READ + _GEN5_WELL + r"_(?P<position>\d+)(?:Z\d+)?_(?P<channel>[^/]+?)_\d+"
            rf"_(?P<timepoint>\d+)(?:_-?\d+)?_?{_TIFF}",
        ),
        _gen5,
        layout=True,
    ),
    "keyence": NamingPreset(
        "keyence",
        _compile(
            # multi-point captures go into XY01/, XY02/ ... below the capture's folder
            _START + r"(?:XY\d+/)?(?P<experiment>[^/]+?)(?:_T(?P<timepoint>\d+))?_(?P<position>XY\d+)"
            rf"(?:_\d{{5}})?(?:_Z\d+)?_(?P<channel>CH\d+|Overlay){_TIFF}",
        ),
        _drop_default_prefix,
        layout=True,
    ),
    "micromanager": NamingPreset(
        "micromanager",
        _compile(
            # stacks: NAME_MMStack[_position][_n].ome.tif, _n numbering the files of one stack
            _START + rf"(?P<experiment>[^/]+?)_MMStack(?:_(?P<position>{_MM_POSITION}"
            r"|[^/_.]*[^/_.\d][^/_.]*))?(?:_\d+)?\.ome\.tiff?$",
            _START + rf"(?:(?:Default|{_MM_POSITION})/)?img_channel(?P<channel>\d+)_position"
            rf"(?P<position>\d+)_time(?P<timepoint>\d+)_z\d+{_TIFF}",
            _START + rf"(?:(?P<position>{_MM_POSITION})/)?img_(?P<timepoint>\d{{9}})"
            rf"_(?P<channel>[^/]+?)_\d{{3}}{_TIFF}",
        ),
        _split_site,
        layout=True,
    ),
    "imagexpress": NamingPreset(
        "imagexpress",
        _compile(
            # HCS.ai: <acquisition>/experiment/timepointN/<protocol>_tN_C05_s0_w0_z0.tif; first,
            # because these names also fit the MetaXpress pattern below
            _START + r"(?:(?P<experiment>[^/]+)/experiment[^/]*/)?(?:timepoint\d+/)?"
            rf"(?P<plate>[^/]+?)_t(?P<timepoint>\d+)_(?P<well>{_WELL})_s(?P<position>\d+)"
            rf"_w(?P<channel>\d+)(?:_z\d+)?{_TIFF}",
            # [plate_]well_s<site>[_w<wavelength>][GUID][_z<n>]; exports without the plate name
            _START + _IXM_DIRS + rf"(?:(?P<plate>[^/]+?)_)?(?P<well>{_WELL})_s(?P<position>\d+)"
            rf"(?:_w(?P<channel>\d+))?{_GUID}(?:_z\d+)?{_TIFF}",
            _START + _IXM_DIRS + rf"(?:(?P<plate>[^/]+?)_)?(?P<well>{_WELL})_w(?P<channel>\d+){_GUID}"
            rf"(?:_z\d+)?{_TIFF}",
            _START + rf"TimePoint_(?P<timepoint>\d+)/(?:ZStep_\d+/)?(?P<plate>[^/]+?)_(?P<well>{_WELL})"
            + _TIFF,
        ),
        layout=True,
    ),
    "operetta": NamingPreset(
        "operetta",
        _compile(
            _START + _HARMONY_FIELD + rf"-ch(?P<channel>\d+)sk(?P<timepoint>\d+)fk\d+fl\d+{_TIFF}",
            # Harmony 5.3 and later: r01c03f02p01-ch01t01.tiff
            _START + _HARMONY_FIELD + rf"-ch(?P<channel>\d+)t(?P<timepoint>\d+){_TIFF}",
        ),
        _row_column_well,
        layout=True,
    ),
    "well_folders": NamingPreset(
        "well_folders",
        _compile(
            _START + rf"(?P<well>{_WELL})/(?P<position>[^/]+)/t(?P<timepoint>\d+)"
            rf"(?:_(?P<channel>[^/]+?))?{_TIFF}",
        ),
        layout=True,
    ),
    "plate_well_field": NamingPreset(
        "plate_well_field",
        _compile(
            _START + rf"(?P<plate>[^/_]+)_(?P<well>{_WELL})_(?P<position>\d+)(?:_t(?P<timepoint>\d+))?"
            rf"_(?P<channel>[^/_]+?){_TIFF}",
        ),
    ),
    "acqflow": NamingPreset(
        "acqflow",
        _compile(
            _START + rf"(?P<experiment>[^_/]+)_(?P<well>{_WELL})_(?P<position>pos\d+)"
            rf"_t(?P<timepoint>\d+)_(?P<channel>[^_/]+?){_TIFF}",
        ),
    ),
}

#: Other names of presets, as the vendors' software is also called.
ALIASES = {"gen5": "cytation", "metaxpress": "imagexpress", "harmony": "operetta"}
#: Values of the ``naming`` setting of a folder.
NAMING_SCHEMES = ("auto", *PRESETS, "patterns", "folder", *ALIASES)
