"""Property-based tests of the file-name patterns (acqflow.daemon.folders.naming).

Arbitrary names, names generated from every preset's own regular expressions and names
matched by configured patterns never make the parser raise; what it returns stays in the
fields' domains; names written the way each instrument writes them parse back to the
fields they were written from.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import NAMING_SCHEMES, PRESETS, match_name, normalise_well, parse_metadata
from acqflow.plugins.api import ImageMetadata

ROOT = Path("/data/inbox")
BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: A canonical well: one or two row letters, a column 01-99.
CANONICAL_WELL = re.compile(r"[A-Z]{1,2}(?:0[1-9]|[1-9]\d)")
TIMEPOINT_LIMIT = 2**63  # what the journal's integers hold

# Names as the file system hands them over: any text, with the characters that matter to
# the patterns (separators, digits, well letters, the time markers) made frequent, and
# lone surrogates (bytes of a name that is not UTF-8, as os.fsdecode carries them).
_PIECES = st.one_of(
    st.sampled_from(["_", "/", "-", ".", " ", "tif", ".tif", ".ome.tif", ".TIFF", "d", "h", "m",
                     "y", "Z", "T", "XY", "CH", "MMStack", "Pos", "img_", "Site_", "pos", "t"]),
    st.text(alphabet="0123456789", min_size=1, max_size=12),
    st.text(alphabet="ABCDEFGHPab", min_size=1, max_size=3),
    st.text(min_size=1, max_size=6),
    st.text(alphabet=st.characters(categories=["Cs", "Nd", "No", "Zs"]), min_size=1, max_size=3),
)
NAMES = st.lists(_PIECES, max_size=24).map("".join)
SCHEMES = st.sampled_from(NAMING_SCHEMES)
PRESET_PATTERNS = [(name, p) for name, preset in PRESETS.items() for p in preset.patterns]


def _folder(**kwargs: Any) -> FolderSettings:
    return FolderSettings(path=ROOT, **kwargs)


def _inside(relative: str) -> tuple[str, Path]:
    """``relative`` as the watcher hands it over: a path below the watched folder, ``/``-separated."""
    path = ROOT / relative.lstrip("/")
    return path.relative_to(ROOT).as_posix(), path


def _assert_in_domain(md: ImageMetadata, preset: bool) -> None:
    assert md.experiment and md.experiment == md.experiment.strip()
    if md.well is not None and preset:
        assert CANONICAL_WELL.fullmatch(md.well), md.well
    if md.timepoint is not None:
        assert isinstance(md.timepoint, int) and 0 <= md.timepoint < TIMEPOINT_LIMIT
    if md.acquired_at is not None:
        assert math.isfinite(md.acquired_at)
    for text in (md.plate, md.well, md.position, md.channel):
        assert text is None or (text and text == text.strip())


@BOUNDED
@given(relative=NAMES, scheme=SCHEMES)
# what earlier versions got wrong: a column 0, time points too long for int() or the
# journal, a folder named by whitespace
@example(relative="Phase_A0_1_00d04h00m.tif", scheme="auto")
@example(relative="EXP1_B03_pos1_t" + "9" * 5000 + "_gfp.tif", scheme="acqflow")
@example(relative="A1_0_0_0_0_" + "1" * 25 + ".tif", scheme="cytation")
@example(relative="\r/img_000000000_0_000.tif", scheme="micromanager")
def test_any_name_never_raises_and_stays_in_domain(relative: str, scheme: str) -> None:
    folder = _folder(naming=scheme)
    relative, path = _inside(relative)
    found = match_name(relative, folder)
    md = parse_metadata(path, folder)
    _assert_in_domain(md, preset=found is not None)


@BOUNDED
@given(data=st.data(), index=st.integers(0, len(PRESET_PATTERNS) - 1))
def test_names_each_preset_matches_parse_into_the_domains(data: st.DataObject, index: int) -> None:
    scheme, pattern = PRESET_PATTERNS[index]
    relative, path = _inside(data.draw(st.from_regex(pattern, fullmatch=True), label="relative"))
    folder = _folder(naming=scheme)
    found = match_name(relative, folder)
    assume(found is not None)  # a name pathlib rewrote ("a//b", "./") may no longer match
    assert found.scheme == scheme
    md = parse_metadata(path, folder)
    _assert_in_domain(md, preset=True)
    if "well" in found.groups:
        assert md.well is not None


# --- configured patterns -------------------------------------------------------------

_GROUP_BODIES = {
    "experiment": [r"[^/_]+", r"\w+"],
    "plate": [r"[^/]+", r"\d+"],
    "well": [r"[A-Za-z]\d+", r"[^/_]+", r"\w{1,4}"],
    "position": [r"\d+", r"[^/_]+"],
    "timepoint": [r"\d+", r"[^/_]+", r"\w+"],
    "channel": [r"\w+", r"[^/_.]+"],
    "year": [r"\d{4}", r"\d+"], "yy": [r"\d\d"], "month": [r"\d\d", r"\d+"],
    "day": [r"\d\d", r"[^_]+"], "hour": [r"\d\d"], "minute": [r"\d\d", r"\d+"],
}


@st.composite
def user_patterns(draw: st.DrawFn) -> str:
    groups = draw(st.lists(st.sampled_from(sorted(_GROUP_BODIES)), min_size=1, max_size=5, unique=True))
    parts = [f"(?P<{g}>{draw(st.sampled_from(_GROUP_BODIES[g]))})" for g in groups]
    separator = draw(st.sampled_from(["_", "-", "/", "_?"]))
    return separator.join(parts) + r"\.tiff?$"


@BOUNDED
@given(pattern=user_patterns(), data=st.data())
def test_configured_patterns_never_raise_and_keep_their_fields_in_domain(
    pattern: str, data: st.DataObject
) -> None:
    drawn = data.draw(st.one_of(NAMES, st.from_regex(pattern, fullmatch=True)), label="relative")
    relative, path = _inside(drawn)
    folder = _folder(patterns=(pattern,))
    found = match_name(relative, folder)
    md = parse_metadata(path, folder)
    _assert_in_domain(md, preset=False)
    if found is not None and found.scheme == "patterns" and "well" in found.groups:
        written = found.groups["well"].strip()
        assert md.well == normalise_well(written) or (md.well is None and not written)


@pytest.mark.parametrize(("pattern", "relative"), [
    (r"(?P<well>[^/_]+)\.tiff?$", "\r.tif"),  # a well of whitespace
    (r"(?P<timepoint>[^/_]+)\.tif$", "\u00b2.tif"),  # a digit int() does not take
    (r"(?P<year>\d+)-(?P<month>\d+)-(?P<day>\d+)\.tif$", "99999999999-1-1.tif"),  # no such year
    (r"(?P<year>\d+)_(?P<month>\d\d)_(?P<day>\d\d)\.tif$", "0001_01_01.tif"),
])
def test_configured_pattern_edge_cases_stay_in_domain(pattern: str, relative: str) -> None:
    md = parse_metadata(ROOT / relative, _folder(patterns=(pattern,)))
    _assert_in_domain(md, preset=False)
    assert md.well is None and md.timepoint is None


@BOUNDED
@given(well=st.text(max_size=8))
def test_normalise_well_is_canonical_for_well_names_else_keeps_them(well: str) -> None:
    normal = normalise_well(well)
    assert normalise_well(normal) == normal
    looks_like_a_well = re.fullmatch(r"[A-Za-z]{1,2}0*[1-9]\d{0,1}", well.strip(), re.ASCII)
    if looks_like_a_well:
        assert CANONICAL_WELL.fullmatch(normal), normal
    else:
        assert normal == well


# --- round trips: names written the way each instrument writes them ---------------------

ROWS = st.sampled_from([*"ABCDEFGHIJKLMNOP", "AA", "AF"])
COLUMNS = st.integers(1, 48)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                min_size=1, max_size=10)


@BOUNDED
@given(experiment=WORDS, row=ROWS, column=COLUMNS, position=st.integers(0, 999),
       timepoint=st.integers(0, 10**6), channel=WORDS, padded=st.booleans(), ome=st.booleans())
def test_acqflow_names_round_trip(experiment: str, row: str, column: int, position: int,
                                  timepoint: int, channel: str, padded: bool, ome: bool) -> None:
    well = f"{row}{column:02d}" if padded else f"{row}{column}"
    name = f"{experiment}_{well}_pos{position}_t{timepoint:03d}_{channel}{'.ome.tif' if ome else '.tif'}"
    md = parse_metadata(ROOT / name, _folder(naming="acqflow"))
    assert (md.experiment, md.well, md.position, md.timepoint, md.channel) == (
        experiment, f"{row}{column:02d}", f"pos{position}", timepoint, channel)


@BOUNDED
@given(channel=st.sampled_from(["Phase", "Green", "Red", "NIR", "C1", "C2"]), row=ROWS,
       column=COLUMNS, field=st.integers(1, 99), days=st.integers(0, 99), hours=st.integers(0, 23),
       minutes=st.integers(0, 59), prefix=st.one_of(st.none(), WORDS))
def test_incucyte_elapsed_time_names_round_trip(channel: str, row: str, column: int, field: int,
                                                days: int, hours: int, minutes: int,
                                                prefix: str | None) -> None:
    name = f"{channel}_{row}{column}_{field}_{days:02d}d{hours:02d}h{minutes:02d}m.tif"
    if prefix is not None:
        name = f"{prefix}_{name}"
    found = match_name(name, _folder(naming="incucyte"))
    md = parse_metadata(ROOT / name, _folder(naming="incucyte"))
    assert found is not None
    assert (md.well, md.position, md.channel) == (f"{row}{column:02d}", str(field), channel)
    assert md.timepoint == (days * 24 + hours) * 60 + minutes
    assert md.experiment == (prefix if prefix is not None else "inbox")


@BOUNDED
@given(row=ROWS, column=COLUMNS, field=st.integers(1, 99),
       moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_incucyte_dated_and_archive_names_round_trip(row: str, column: int, field: int,
                                                     moment: datetime) -> None:
    moment = moment.replace(second=0, microsecond=0)
    dated = f"VID1_{row}{column}_{field}_{moment:%Y}y{moment:%m}m{moment:%d}d_{moment:%H}h{moment:%M}m.tif"
    archive = f"EssenFiles/ScanData/{moment:%y%m}/{moment:%d}/{moment:%H%M}/0700/{row}{column}-{field}-C1.tif"
    for name in (dated, archive):
        md = parse_metadata(ROOT / name, _folder(naming="incucyte"))
        assert (md.well, md.position) == (f"{row}{column:02d}", str(field)), name
        assert md.acquired_at == moment.timestamp(), name


@BOUNDED
@given(row=ROWS, column=COLUMNS, read=st.integers(1, 99), field=st.integers(1, 99),
       channel=st.sampled_from(["Phase Contrast", "DAPI", "GFP", "Bright Field", "Texas Red"]),
       timepoint=st.integers(0, 999))
def test_cytation_names_round_trip(row: str, column: int, read: int, field: int, channel: str,
                                   timepoint: int) -> None:
    name = f"{row}{column}_{read:02d}_1_{field}_{channel}_{timepoint:03d}.tif"
    md = parse_metadata(ROOT / name, _folder(naming="cytation"))
    assert (md.well, md.position, md.channel, md.timepoint) == (
        f"{row}{column:02d}", str(field), channel, timepoint)


@BOUNDED
@given(experiment=WORDS.filter(lambda w: w.lower() != "image"), timepoint=st.integers(0, 9999),
       tile=st.integers(1, 99), channel=st.integers(1, 4))
def test_keyence_names_round_trip(experiment: str, timepoint: int, tile: int, channel: int) -> None:
    name = f"{experiment}_T{timepoint:04d}_XY{tile:02d}_00001_Z001_CH{channel}.tif"
    md = parse_metadata(ROOT / name, _folder(naming="keyence"))
    assert (md.experiment, md.timepoint, md.position, md.channel) == (
        experiment, timepoint, f"XY{tile:02d}", f"CH{channel}")


@BOUNDED
@given(experiment=WORDS, channel=st.integers(0, 99), position=st.integers(0, 999),
       timepoint=st.integers(0, 10**8))
def test_micromanager_names_round_trip(experiment: str, channel: int, position: int,
                                       timepoint: int) -> None:
    name = f"{experiment}/img_channel{channel:03d}_position{position:03d}_time{timepoint:09d}_z000.tif"
    md = parse_metadata(ROOT / name, _folder(naming="micromanager"))
    assert (md.experiment, md.channel, md.position, md.timepoint) == (
        experiment, f"{channel:03d}", f"{position:03d}", timepoint)
