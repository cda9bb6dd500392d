"""Matching a path against a folder's schemes and turning the groups into ImageMetadata."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.errors import ConfigError
from acqflow.daemon.folders.naming.presets import ALIASES, NAMING_SCHEMES, PATTERN_GROUPS, PRESETS
from acqflow.daemon.imageio import TiffHeader
from acqflow.plugins.api import ImageMetadata

__all__ = [
    "NameExplanation",
    "NameMatch",
    "check_naming",
    "explain_name",
    "match_name",
    "normalise_well",
    "parse_metadata",
]

_MAX_DIGITS = 18  # a longer "number" in a name is no time point (and int() refuses > 4300 digits)
_TIMEPOINT_LIMIT = 2**63  # what the journal's integers hold
_TIME_GROUPS = ("yy", "month", "day", "hour", "minute", "second")


@dataclass(frozen=True)
class NameMatch:
    """Which scheme matched a path, the named groups it captured (refined) and where in
    the path the match begins (``start``: the first character of its first folder or of
    the file name)."""

    scheme: str
    groups: dict[str, str]
    start: int = 0


@dataclass(frozen=True)
class NameExplanation:
    """How :func:`parse_metadata` arrives at an image's metadata, for ``--explain-names``.

    ``experiment_from`` names the source of the experiment: ``setting``, ``name``,
    ``layout folder`` (the folder holding a preset's folders), ``parent folder`` or
    ``watched folder``; ``note`` says what happens when no scheme matched.
    """

    relative: str
    match: NameMatch | None
    metadata: ImageMetadata
    experiment_from: str
    note: str


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
    presets in their order, acqflow last, for ``auto``). Returns None when nothing matches.
    """
    if folder.naming == "folder":
        return None
    for pattern in folder.patterns:
        found = re.search(pattern, relative)
        if found:
            return NameMatch("patterns", _groups(found), _start(relative, found))
    if folder.naming == "patterns":
        return None
    chosen = ALIASES.get(folder.naming, folder.naming)
    names = list(PRESETS) if chosen == "auto" else [chosen]
    for name in names:
        preset = PRESETS[name]
        for compiled in preset.patterns:
            found = compiled.search(relative)
            if found:
                groups = _groups(found)
                refined = preset.refine(groups) if preset.refine else groups
                return NameMatch(name, refined, _start(relative, found))
    return None


def parse_metadata(
    path: Path, folder: FolderSettings, header: TiffHeader | None = None
) -> ImageMetadata:
    """Metadata of the image at ``path`` inside the watched ``folder``.

    Name fields (experiment, plate, well, position, time point, channel) come from the
    first matching pattern and are completed by the header (OME plate/well/position, a
    single channel's name, the stage position; for one image of a multi-image OME-TIFF
    its OME plate, well and position win over the name's); the acquisition time from the
    name wins over the header's, which wins over a Gen5 read folder's; pixel size from the
    header only. Never raises for an unmatched name: the parent folder is then the
    experiment and the other fields stay empty.
    """
    return explain_name(path, folder, header).metadata


def explain_name(path: Path, folder: FolderSettings, header: TiffHeader | None = None) -> NameExplanation:
    """What :func:`parse_metadata` gives for ``path`` and why; never raises for a name."""
    relative = _relative(path, folder.path)
    text = relative.as_posix()
    found = match_name(text, folder)
    fields = _convert(found.groups) if found else {}
    if header is not None:
        _merge_header(fields, header)
    if "acquired_at" not in fields and "acquired_fallback" in fields:
        fields["acquired_at"] = fields["acquired_fallback"]
    experiment, source = _experiment(relative, folder, found, fields)
    metadata = ImageMetadata(
        experiment=experiment,
        plate=_text(fields.get("plate")),
        well=_text(fields.get("well")),
        position=_text(fields.get("position")),
        timepoint=_int(fields.get("timepoint")),
        channel=_text(fields.get("channel")),
        acquired_at=_float(fields.get("acquired_at")),
        pixel_size_um=header.pixel_size_um if header is not None else None,
        stage_position_um=header.stage_um if header is not None else None,
    )
    note = "" if found else _fallback_note(folder)
    return NameExplanation(text, found, metadata, source, note)


def normalise_well(well: str) -> str:
    """``b3`` -> ``B03``; anything but one or two letters and a column 1-99 is kept as written."""
    match = re.fullmatch(r"([A-Za-z]{1,2})0*([1-9]\d?)", well.strip())
    return f"{match.group(1).upper()}{int(match.group(2)):02d}" if match else well


# --- helpers -------------------------------------------------------------------------


def _groups(found: re.Match[str]) -> dict[str, str]:
    return {k: v for k, v in found.groupdict().items() if v not in (None, "")}


def _start(relative: str, found: re.Match[str]) -> int:
    start = found.start()
    return start + 1 if relative[start:start + 1] == "/" else start


def _relative(path: Path, root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return PurePosixPath(path.name)


def _experiment(
    relative: PurePosixPath, folder: FolderSettings, found: NameMatch | None, fields: Mapping[str, object]
) -> tuple[str, str]:
    """The experiment and where it came from (see NameExplanation.experiment_from)."""
    if folder.experiment:
        return folder.experiment, "setting"
    named = _text(fields.get("experiment"))
    if named:
        return named, "name"
    preset = PRESETS.get(found.scheme) if found else None
    if found is not None and preset is not None and preset.layout:
        holder = relative.as_posix()[: found.start].rstrip("/").rpartition("/")[2].strip()
        if holder:
            return holder, "layout folder"
        return _root_name(folder), "watched folder"
    parent = relative.parent.name.strip()
    return (parent, "parent folder") if parent else (_root_name(folder), "watched folder")


def _root_name(folder: FolderSettings) -> str:
    return folder.path.name.strip() or "unknown"


def _fallback_note(folder: FolderSettings) -> str:
    if folder.naming == "folder":
        return "naming = folder: the name is not parsed; the parent folder is the experiment"
    tried = "your patterns" if folder.naming == "patterns" else f"naming = {folder.naming}"
    return f"nothing matched ({tried}): experiment = parent folder, other fields from the header"


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
    fallback = _acquired_at({k: groups[f"read_{k}"] for k in _TIME_GROUPS if f"read_{k}" in groups})
    if fallback is not None:
        fields["acquired_fallback"] = fallback
    return fields


def _acquired_at(groups: Mapping[str, str]) -> float | None:
    """Local date and time from year/yy, month, day, hour, minute, second groups, when all parse."""
    year = groups.get("year") or (f"20{groups['yy']}" if "yy" in groups else None)
    if year is None or "month" not in groups or "day" not in groups:
        return None
    texts = (year, groups["month"], groups["day"], groups.get("hour", "0"), groups.get("minute", "0"),
             groups.get("second", "0"))
    numbers = [n for n in (_count(t) for t in texts) if n is not None]
    if len(numbers) != len(texts):
        return None
    years, month, day, hour, minute, second = numbers
    try:
        return datetime(years, month, day, hour, minute, second).timestamp()
    except (ValueError, OverflowError, OSError):  # no such date, or out of the platform's range
        return None


def _merge_header(fields: dict[str, object], header: TiffHeader) -> None:
    # One file name cannot tell the images of a multi-image OME-TIFF apart: there each
    # image's own plate, well and position win over the name's.
    own = bool(header.split)
    if header.plate and (own or "plate" not in fields):
        fields["plate"] = header.plate
    if header.well and (own or "well" not in fields):
        fields["well"] = normalise_well(header.well)
    if header.position and (own or "position" not in fields):
        fields["position"] = header.position
    if len(header.channel_names) == 1 and "channel" not in fields:
        fields["channel"] = header.channel_names[0]
    if header.acquired_at is not None and "acquired_at" not in fields:
        fields["acquired_at"] = header.acquired_at


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _count(text: str) -> int | None:
    """A number written in decimal digits, None for anything else or absurdly long."""
    return int(text) if text.isdecimal() and len(text) <= _MAX_DIGITS else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
