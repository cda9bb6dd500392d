"""Acquisition metadata of a microscope image from its embedded metadata and its name.

:func:`parse_metadata` combines two sources:

* the file's header (:func:`read_tiff_header`, no pixels decoded): pixel size, acquisition
  time, channel names and, for OME plates, plate and well;
* its path relative to the watched folder, matched (``re.search``, ``/`` separators)
  against, in order: the folder's own ``patterns``, the instrument presets below, the
  generic acqflow pattern ``EXP_WELL_posN_tNNN_channel.tif``.

The experiment is the folder's ``experiment`` setting when set, else what the name says,
else the file's parent folder (the watched folder's name for files at its top).
Wells are normalised to row letters and a two-digit column (``a1`` -> ``A01``) so that
all instruments group alike; other fields are kept as written in the name. Time points are
the numbers in the name as written (0- or 1-based per instrument); Incucyte names that
carry elapsed time (``01d04h30m``) give the elapsed minutes as time point.

Presets (``naming`` setting; ``auto`` tries all of them):

* ``incucyte`` — exports ``[prefix_][Channel_]WELL_FIELD_DDdHHhMMm[_n].tif``
  (``Phase_B3_1_00d04h00m.tif``, ``A172_Phase_A7_1_00d00h00m_1.tif``), dated exports
  ``VID193_A1_1_2017y03m29d_10h51m.tif`` and archive files
  ``YYMM/DD/HHMM/PLATE/A1-1-Ph.tif``;
* ``cytation`` (alias ``gen5``; BioTek Cytation/Lionheart exported by Gen5) —
  ``A1_01_1_1_Phase Contrast_001.tif``
  (well, read step, channel index, field, channel, kinetic read), ``A1_1Z0_DAPI_1_001_.tif``
  and ``B2_02_SP10Z10_C1_Bright Field_T001.tif``;
* ``keyence`` (BZ-X) — ``Image_T0001_XY01_00001_Z001_CH2.tif`` (T, tile and Z optional);
* ``micromanager`` — stacks ``NAME_MMStack_Pos0.ome.tif`` (HCS positions ``A1-Site_0``
  give the well), image-per-file ``NAME/Pos0/img_000000003_DAPI_000.tif`` (1.4) and
  ``NAME/img_channel000_position001_time000000003_z000.tif`` (2.x);
* ``acqflow`` — ``EXP1_B03_pos1_t005_phase.tif`` (the project's synthetic data);
* ``patterns`` — the folder's ``patterns`` only; ``folder`` — no name parsing at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from daemon.config import FolderSettings
from daemon.errors import ConfigError
from daemon.imageio import TiffHeader, read_tiff_header
from plugins.api import ImageMetadata

__all__ = [
    "NAMING_SCHEMES",
    "PATTERN_GROUPS",
    "PRESETS",
    "NameMatch",
    "NamingPreset",
    "TiffHeader",
    "check_naming",
    "match_name",
    "normalise_well",
    "parse_metadata",
    "read_tiff_header",
]

Fields = dict[str, str]

#: Named groups a user pattern may use: the six metadata fields, plus an acquisition
#: time as ``year`` (or two-digit ``yy``), ``month``, ``day``, ``hour``, ``minute``.
PATTERN_GROUPS = frozenset(
    {"experiment", "plate", "well", "position", "timepoint", "channel",
     "year", "yy", "month", "day", "hour", "minute"}
)
_TIFF = r"\.(?:ome\.)?tiff?$"
_MAX_DIGITS = 18  # a longer "number" in a name is no time point (and int() refuses > 4300 digits)
_TIMEPOINT_LIMIT = 2**63  # what the journal's integers hold
_START = r"(?:^|/)"
_WELL = r"[A-Za-z]{1,2}(?:0?[1-9]|[1-9]\d)"  # columns 1-99: no plate has a column 0
_INCUCYTE_CHANNELS = r"Phase|Ph|Green|Red|NIR|Blue|Orange|Gray|Grey|Brightfield|C\d"


@dataclass(frozen=True)
class NamingPreset:
    """File-name conventions of one instrument; ``refine`` fixes up matched groups."""

    name: str
    patterns: tuple[re.Pattern[str], ...]
    refine: Callable[[Fields], Fields] | None = None


@dataclass(frozen=True)
class NameMatch:
    """Which scheme matched a path and the raw named groups it captured."""

    scheme: str
    groups: Fields


def _compile(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


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
            _START + rf"(?P<well>{_WELL})_-?\d+_\d+_(?P<position>\d+)_(?P<channel>[^/]+?)"
            rf"_(?P<timepoint>\d+){_TIFF}",
            _START + rf"(?P<well>{_WELL})_-?\d+_SP(?P<position>\d+)(?:Z\d+)?_C\d+"
            rf"_(?P<channel>[^/]+?)_T(?P<timepoint>\d+){_TIFF}",
            _START + rf"(?P<well>{_WELL})_(?P<position>\d+)(?:Z\d+)?_(?P<channel>[^/]+?)_\d+"
            rf"_(?P<timepoint>\d+)(?:_-?\d+)?_?{_TIFF}",
        ),
    ),
    "keyence": NamingPreset(
        "keyence",
        _compile(
            _START + r"(?P<experiment>[^/]+?)(?:_T(?P<timepoint>\d+))?_(?P<position>XY\d+)"
            rf"(?:_\d{{5}})?(?:_Z\d+)?_(?P<channel>CH\d+|Overlay){_TIFF}",
        ),
        _drop_default_prefix,
    ),
    "micromanager": NamingPreset(
        "micromanager",
        _compile(
            _START + r"(?P<experiment>[^/]+?)_MMStack_(?P<position>[A-Za-z]{1,2}\d{1,2}-Site_\d+"
            r"|\d+-Pos_\d+_\d+|Pos\d+|[^/_.]+)(?:_\d+)?\.ome\.tiff?$",
            _START + r"(?:(?P<experiment>[^/]+)/)?img_channel(?P<channel>\d+)_position"
            rf"(?P<position>\d+)_time(?P<timepoint>\d+)_z\d+{_TIFF}",
            _START + r"(?:(?P<experiment>[^/]+)/)?(?P<position>[^/]+)/img_(?P<timepoint>\d{9})"
            rf"_(?P<channel>[^/]+?)_\d{{3}}{_TIFF}",
        ),
        _split_site,
    ),
    "acqflow": NamingPreset(
        "acqflow",
        _compile(
            _START + rf"(?P<experiment>[^_/]+)_(?P<well>{_WELL})_(?P<position>pos\d+)"
            rf"_t(?P<timepoint>\d+)_(?P<channel>[^_/]+?){_TIFF}",
        ),
    ),
}

_ALIASES = {"gen5": "cytation"}
#: Values of the ``naming`` setting of a folder.
NAMING_SCHEMES = ("auto", *PRESETS, "patterns", "folder", *_ALIASES)


def check_naming(folder: FolderSettings) -> None:
    """Validate a folder's ``naming`` and ``patterns``; raises ConfigError naming the key."""
    if folder.naming not in NAMING_SCHEMES:
        raise ConfigError(
            f"folders.naming: unknown naming scheme {folder.naming!r}"
            f" (choose from {', '.join(NAMING_SCHEMES)})"
        )
    for pattern in folder.patterns:
        unknown = set(re.compile(pattern).groupindex) - PATTERN_GROUPS
        if unknown:
            raise ConfigError(
                f"folders.patterns: {pattern!r} uses unknown group(s) {sorted(unknown)}"
                f" (allowed: {', '.join(sorted(PATTERN_GROUPS))})"
            )


def match_name(relative: str, folder: FolderSettings) -> NameMatch | None:
    """Match a ``/``-separated path relative to the watched folder against its schemes.

    User patterns first (unless ``naming`` is ``folder``), then the chosen preset (all
    presets, acqflow last, for ``auto``). Returns None when nothing matches.
    """
    if folder.naming == "folder":
        return None
    for pattern in folder.patterns:
        found = re.search(pattern, relative)
        if found:
            return NameMatch("patterns", _groups(found))
    if folder.naming == "patterns":
        return None
    chosen = _ALIASES.get(folder.naming, folder.naming)
    names = list(PRESETS) if chosen == "auto" else [chosen]
    for name in names:
        preset = PRESETS[name]
        for compiled in preset.patterns:
            found = compiled.search(relative)
            if found:
                groups = _groups(found)
                return NameMatch(name, preset.refine(groups) if preset.refine else groups)
    return None


def parse_metadata(
    path: Path, folder: FolderSettings, header: TiffHeader | None = None
) -> ImageMetadata:
    """Metadata of the image at ``path`` inside the watched ``folder``.

    Name fields (experiment, plate, well, position, time point, channel) come from the
    first matching pattern and are completed by the header (OME plate/well, a single
    channel's name); the acquisition time from the name wins over the header's; pixel
    size comes from the header only. Never raises for an unmatched name: the parent
    folder is then the experiment and the other fields stay empty.
    """
    relative = _relative(path, folder.path)
    found = match_name(relative.as_posix(), folder)
    fields = _convert(found.groups) if found else {}
    if header is not None:
        _merge_header(fields, header)
    experiment = folder.experiment or fields.get("experiment") or _parent_name(relative, folder)
    return ImageMetadata(
        experiment=str(experiment),
        plate=_text(fields.get("plate")),
        well=_text(fields.get("well")),
        position=_text(fields.get("position")),
        timepoint=_int(fields.get("timepoint")),
        channel=_text(fields.get("channel")),
        acquired_at=_float(fields.get("acquired_at")),
        pixel_size_um=header.pixel_size_um if header is not None else None,
    )


# --- helpers -------------------------------------------------------------------------


def _groups(found: re.Match[str]) -> Fields:
    return {k: v for k, v in found.groupdict().items() if v not in (None, "")}


def _relative(path: Path, root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return PurePosixPath(path.name)


def _parent_name(relative: PurePosixPath, folder: FolderSettings) -> str:
    parent = relative.parent.name.strip()
    return parent or folder.path.name or "unknown"


def normalise_well(well: str) -> str:
    """``b3`` -> ``B03``; anything but one or two letters and a column 1-99 is kept as written."""
    match = re.fullmatch(r"([A-Za-z]{1,2})0*([1-9]\d?)", well.strip())
    return f"{match.group(1).upper()}{int(match.group(2)):02d}" if match else well


def _convert(groups: Mapping[str, str]) -> dict[str, object]:
    """Raw groups to typed fields: well normalised, time point and acquisition time parsed."""
    texts = ("experiment", "plate", "position", "channel")
    fields: dict[str, object] = {k: v.strip() for k, v in groups.items() if k in texts}
    well = groups.get("well", "").strip()
    if well:
        fields["well"] = normalise_well(well)
    timepoint = _count(groups.get("timepoint", ""))
    if timepoint is None and "edays" in groups:
        days, hours, minutes = (_count(groups[k]) for k in ("edays", "ehours", "eminutes"))
        if days is not None and hours is not None and minutes is not None:
            timepoint = (days * 24 + hours) * 60 + minutes
    if timepoint is not None and timepoint < _TIMEPOINT_LIMIT:
        fields["timepoint"] = timepoint
    acquired = _acquired_at(groups)
    if acquired is not None:
        fields["acquired_at"] = acquired
    return fields


def _acquired_at(groups: Mapping[str, str]) -> float | None:
    """Local date and time from year/yy, month, day, hour, minute groups, when all parse."""
    year = groups.get("year") or (f"20{groups['yy']}" if "yy" in groups else None)
    if year is None or "month" not in groups or "day" not in groups:
        return None
    texts = (year, groups["month"], groups["day"], groups.get("hour", "0"), groups.get("minute", "0"))
    numbers = [n for n in (_count(t) for t in texts) if n is not None]
    if len(numbers) != len(texts):
        return None
    years, month, day, hour, minute = numbers
    try:
        return datetime(years, month, day, hour, minute).timestamp()
    except (ValueError, OverflowError, OSError):  # no such date, or out of the platform's range
        return None


def _merge_header(fields: dict[str, object], header: TiffHeader) -> None:
    if header.plate and "plate" not in fields:
        fields["plate"] = header.plate
    if header.well and "well" not in fields:
        fields["well"] = normalise_well(header.well)
    if len(header.channel_names) == 1 and "channel" not in fields:
        fields["channel"] = header.channel_names[0]
    if header.acquired_at is not None and "acquired_at" not in fields:
        fields["acquired_at"] = header.acquired_at


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _count(text: str) -> int | None:
    """A number written in decimal digits, None for anything else or absurdly long."""
    return int(text) if text.isdecimal() and len(text) <= _MAX_DIGITS else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
