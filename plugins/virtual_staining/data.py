"""Training data: phase/fluorescence pairs, their labels, and splits by experiment.

Pairs are found by a file-name pattern (a regular expression with a ``channel`` group and
any of ``experiment``, ``well``, ``position``, ``timepoint``; files whose other groups
agree form a pair) or read from a CSV manifest with the columns ``phase`` and
``fluorescence`` (paths relative to the manifest; common other names such as ``image``
/ ``gfp`` / ``label`` are accepted, see :data:`MANIFEST_COLUMNS`) and optionally
``experiment``, ``well``, ``position``, ``timepoint``. A *field* is one position imaged over time; images
of one field or one experiment never end up on both sides of a split.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.virtual_staining.imaging import (
    FLUORESCENCE_NAMES,
    PHASE_NAMES,
    normalize,
    read_plane,
    rescale_mask,
    rescale_plane,
)
from acqflow.plugins.virtual_staining.labels import LabelOptions, binarize
from acqflow.plugins.virtual_staining.synthetic import SyntheticImage, SyntheticSpec, generate_series

if TYPE_CHECKING:
    from acqflow.plugins.virtual_staining.randomised import PhaseVariety

__all__ = [
    "GENERATORS",
    "MANIFEST_COLUMNS",
    "ImagePair",
    "LabelledImage",
    "Split",
    "at_model_scale",
    "load_pairs",
    "pairs_from_manifest",
    "pairs_from_pattern",
    "split_images",
    "synthetic_images",
]

_TIFF_SUFFIXES = (".tif", ".tiff")
#: ``--generator`` choices: the demo's texture fields, or cells through randomised optics.
GENERATORS = ("demo", "randomised")


@dataclass(frozen=True)
class ImagePair:
    """A phase image and the fluorescence image of the same field and time."""

    phase: Path
    fluorescence: Path
    experiment: str
    field: str
    timepoint: int | None = None


@dataclass(frozen=True)
class LabelledImage:
    """A normalised phase image with its binarised fluorescence, ready for training."""

    name: str
    experiment: str
    field: str
    phase: np.ndarray  # raw 2-D phase plane (original dtype)
    mask: np.ndarray  # bool, GFP-positive pixels

    def __post_init__(self) -> None:
        if self.phase.shape != self.mask.shape:
            raise ValueError(
                f"{self.name}: phase {self.phase.shape} and fluorescence {self.mask.shape} differ"
            )

    @property
    def measured_efficiency(self) -> float:
        """GFP-positive area fraction measured on the fluorescence image."""
        return float(self.mask.mean())

    def normalized(self) -> np.ndarray:
        return normalize(self.phase)


@dataclass(frozen=True)
class Split:
    train: list[LabelledImage]
    validation: list[LabelledImage]
    test: list[LabelledImage]
    grouped_by: str  # "experiment" or "field"


def pairs_from_pattern(
    folder: Path, pattern: str, phase_token: str = "phase", fluorescence_token: str = "gfp"
) -> list[ImagePair]:
    """Pairs of TIFF files under ``folder`` whose names match ``pattern``.

    Raises ValueError when the pattern has no ``channel`` group or nothing pairs up.
    """
    regex = re.compile(pattern)
    if "channel" not in regex.groupindex:
        raise ValueError("the file-name pattern needs a (?P<channel>...) group")
    groups: dict[tuple[tuple[str, str], ...], dict[str, Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.name.lower().endswith(_TIFF_SUFFIXES):
            continue
        match = regex.search(path.relative_to(folder).as_posix())
        if match is None:
            continue
        fields = {k: v for k, v in match.groupdict().items() if v is not None}
        channel = fields.pop("channel").lower()
        key = (("_dir", path.parent.as_posix()), *sorted(fields.items()))
        groups.setdefault(key, {})[channel] = path
    pairs = [
        _pair(dict(key), files[phase_token], files[fluorescence_token])
        for key, files in groups.items()
        if phase_token in files and fluorescence_token in files
    ]
    if not pairs:
        raise ValueError(f"no {phase_token}/{fluorescence_token} pairs matching {pattern!r} in {folder}")
    return pairs


def _pair(fields: dict[str, str], phase: Path, fluorescence: Path) -> ImagePair:
    """An ImagePair; the field is every matched group but channel and time point."""
    experiment = fields.get("experiment") or Path(fields["_dir"]).name or "experiment"
    place = [v for k, v in sorted(fields.items()) if k not in ("_dir", "experiment", "timepoint")]
    # Without well/position groups each image is its own field.
    field = "/".join([fields["_dir"], experiment, *(place or [phase.stem])])
    timepoint = int(fields["timepoint"]) if fields.get("timepoint", "").isdigit() else None
    return ImagePair(phase, fluorescence, experiment, field, timepoint)


#: Column names a manifest may use for each field (case-insensitive), first match wins.
MANIFEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "phase": ("phase", "phase_path", "phase_image", "image", "input", "brightfield", "bf"),
    "fluorescence": (
        "fluorescence",
        "fluorescence_path",
        "fluorescence_image",
        "gfp",
        "stain",
        "label",
        "target",
    ),
    "experiment": ("experiment", "experiment_id", "plate", "run"),
    "well": ("well", "well_id"),
    "position": ("position", "field", "site", "fov", "tile"),
    "timepoint": ("timepoint", "time_point", "time", "t", "frame"),
}


def _manifest_columns(header: Sequence[str], manifest: Path) -> dict[str, str]:
    """The manifest's column for each field; raises ValueError without phase/fluorescence."""
    lowered = {name.strip().lower(): name for name in header}
    found = {}
    for key, aliases in MANIFEST_COLUMNS.items():
        column = next((lowered[a] for a in aliases if a in lowered), None)
        if column is not None:
            found[key] = column
    missing = [k for k in ("phase", "fluorescence") if k not in found]
    if missing:
        accepted = "; ".join(f"{k}: {', '.join(MANIFEST_COLUMNS[k])}" for k in missing)
        raise ValueError(f"{manifest} has no column for {' and '.join(missing)} (accepted names: {accepted})")
    return found


def pairs_from_manifest(manifest: Path) -> list[ImagePair]:
    """Pairs listed in a CSV manifest (columns as in :data:`MANIFEST_COLUMNS`).

    Raises ValueError on missing columns or files.
    """
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = _manifest_columns(reader.fieldnames or [], manifest)
    if not rows:
        raise ValueError(f"{manifest} lists no images")

    def value(row: dict[str, str], key: str) -> str:
        return (row.get(columns[key]) or "").strip() if key in columns else ""

    pairs = []
    for number, row in enumerate(rows, start=2):
        phase = (manifest.parent / value(row, "phase")).resolve()
        fluorescence = (manifest.parent / value(row, "fluorescence")).resolve()
        for path in (phase, fluorescence):
            if not path.is_file():
                raise ValueError(f"{manifest}:{number}: no file {path}")
        experiment = value(row, "experiment") or "experiment"
        field = "/".join([experiment, value(row, "well"), value(row, "position") or phase.stem])
        timepoint = value(row, "timepoint")
        pairs.append(
            ImagePair(phase, fluorescence, experiment, field, int(timepoint) if timepoint.isdigit() else None)
        )
    return pairs


def load_pairs(
    pairs: Sequence[ImagePair],
    label_options: LabelOptions,
    phase_channel: str | int | None = None,
    fluorescence_channel: str | int | None = None,
    model_pixel_um: float | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> list[LabelledImage]:
    """Read and binarise every pair, resampled to ``model_pixel_um`` where the file has a
    pixel size.

    A pair that cannot be used raises InvalidInputError/ValueError/OSError, or, when
    ``skipped`` is given, is appended to it as ``(phase file name, reason)`` instead.
    """
    images = []
    for pair in pairs:
        try:
            phase, pixel = read_plane(pair.phase, phase_channel, PHASE_NAMES)
            fluorescence, _ = read_plane(pair.fluorescence, fluorescence_channel, FLUORESCENCE_NAMES)
            mask = binarize(fluorescence, label_options)
            image = LabelledImage(pair.phase.name, pair.experiment, pair.field, phase, mask)
            images.append(at_model_scale(image, pixel, model_pixel_um))
        except (InvalidInputError, ValueError, OSError) as exc:
            if skipped is None:
                raise
            skipped.append((pair.phase.name, str(exc)))
    return images


def at_model_scale(
    image: LabelledImage, pixel_um: tuple[float, float] | None, model_pixel_um: float | None
) -> LabelledImage:
    """``image`` resampled so one pixel is ``model_pixel_um`` (unchanged without either size)."""
    if pixel_um is None or model_pixel_um is None:
        return image
    phase = rescale_plane(image.phase, pixel_um, model_pixel_um)
    if phase.shape == image.phase.shape:
        return image
    mask = rescale_mask(image.mask, phase.shape)
    return LabelledImage(image.name, image.experiment, image.field, phase, mask)


def synthetic_images(
    experiments: int,
    label_options: LabelOptions,
    seed: int,
    size: int = 256,
    variety: PhaseVariety | None = None,
    model_pixel_um: float | None = None,
) -> list[LabelledImage]:
    """Generated experiments (4 wells x 2 positions x 3 time points each), binarised.

    Without ``variety`` the demo generator draws ``size``-pixel texture fields; with it,
    :mod:`~acqflow.plugins.virtual_staining.randomised` draws cells through randomised optics
    (``size`` unused: fields have a physical size and a drawn pixel size), resampled to
    ``model_pixel_um``.
    """
    items: Iterator[SyntheticImage]
    if variety is None:
        spec = SyntheticSpec(
            experiments=experiments, wells=4, positions=2, timepoints=3, shape=(size, size), seed=seed
        )
        items = generate_series(spec)
    else:
        from acqflow.plugins.virtual_staining.randomised import RandomisedSpec, generate_randomised

        items = generate_randomised(RandomisedSpec(experiments=experiments, seed=seed, variety=variety))
    images = []
    for item in items:
        md = item.metadata
        field = f"{md.experiment}/{md.well}/{md.position}"
        mask = binarize(item.gfp, label_options)
        image = LabelledImage(item.stem, str(md.experiment), field, item.phase, mask)
        images.append(at_model_scale(image, md.pixel_size_um, model_pixel_um))
    return images


def split_images(
    images: Sequence[LabelledImage],
    seed: int,
    test_fraction: float = 0.25,
    validation_fraction: float = 0.2,
) -> Split:
    """Split by experiment when there are >= 3, otherwise by field; never by block.

    Raises ValueError when there are fewer than 3 groups to split.
    """
    by = "experiment" if len({i.experiment for i in images}) >= 3 else "field"
    keys = sorted({getattr(i, by) for i in images})
    if len(keys) < 3:
        raise ValueError(f"need at least 3 {by}s to split into train/validation/test, got {len(keys)}")
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    n_test = max(1, round(len(keys) * test_fraction))
    n_val = max(1, round(len(keys) * validation_fraction))
    if n_test + n_val >= len(keys):
        n_test, n_val = 1, 1
    test_keys, val_keys = set(order[:n_test]), set(order[n_test : n_test + n_val])
    return Split(
        train=[i for i in images if getattr(i, by) not in test_keys | val_keys],
        validation=[i for i in images if getattr(i, by) in val_keys],
        test=[i for i in images if getattr(i, by) in test_keys],
        grouped_by=by,
    )
