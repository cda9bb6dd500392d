"""Training data: phase/fluorescence pairs, their labels, and splits by experiment.

Pairs are found by a file-name pattern (a regular expression with a ``channel`` group and
any of ``experiment``, ``well``, ``position``, ``timepoint``; files whose other groups
agree form a pair) or read from a CSV manifest with the columns ``phase`` and
``fluorescence`` (paths relative to the manifest) and optionally ``experiment``,
``well``, ``position``, ``timepoint``. A *field* is one position imaged over time; images
of one field or one experiment never end up on both sides of a split.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plugins.virtual_staining.imaging import FLUORESCENCE_NAMES, PHASE_NAMES, normalize, read_plane
from plugins.virtual_staining.labels import LabelOptions, binarize
from plugins.virtual_staining.synthetic import SyntheticSpec, generate_series

__all__ = [
    "ImagePair",
    "LabelledImage",
    "Split",
    "load_pairs",
    "pairs_from_manifest",
    "pairs_from_pattern",
    "split_images",
    "synthetic_images",
]

_TIFF_SUFFIXES = (".tif", ".tiff")


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


def pairs_from_manifest(manifest: Path) -> list[ImagePair]:
    """Pairs listed in a CSV manifest; raises ValueError on missing columns or files."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"phase", "fluorescence"} <= set(rows[0]):
        raise ValueError(f"{manifest} needs the columns 'phase' and 'fluorescence'")
    pairs = []
    for number, row in enumerate(rows, start=2):
        phase = (manifest.parent / row["phase"]).resolve()
        fluorescence = (manifest.parent / row["fluorescence"]).resolve()
        for path in (phase, fluorescence):
            if not path.is_file():
                raise ValueError(f"{manifest}:{number}: no file {path}")
        experiment = row.get("experiment") or "experiment"
        field = "/".join([experiment, row.get("well") or "", row.get("position") or phase.stem])
        timepoint = row.get("timepoint") or ""
        pairs.append(
            ImagePair(phase, fluorescence, experiment, field, int(timepoint) if timepoint.isdigit() else None)
        )
    return pairs


def load_pairs(
    pairs: Sequence[ImagePair],
    label_options: LabelOptions,
    phase_channel: str | int | None = None,
    fluorescence_channel: str | int | None = None,
) -> list[LabelledImage]:
    """Read and binarise every pair; raises InvalidInputError/ValueError/OSError per file."""
    images = []
    for pair in pairs:
        phase, _ = read_plane(pair.phase, phase_channel, PHASE_NAMES)
        fluorescence, _ = read_plane(pair.fluorescence, fluorescence_channel, FLUORESCENCE_NAMES)
        mask = binarize(fluorescence, label_options)
        images.append(LabelledImage(pair.phase.name, pair.experiment, pair.field, phase, mask))
    return images


def synthetic_images(
    experiments: int, label_options: LabelOptions, seed: int, size: int = 256
) -> list[LabelledImage]:
    """Generated experiments (4 wells x 2 positions x 3 time points each), binarised."""
    spec = SyntheticSpec(
        experiments=experiments,
        wells=4,
        positions=2,
        timepoints=3,
        shape=(size, size),
        bit_depth=16,
        seed=seed,
    )
    images = []
    for item in generate_series(spec):
        md = item.metadata
        field = f"{md.experiment}/{md.well}/{md.position}"
        mask = binarize(item.gfp, label_options)
        images.append(LabelledImage(item.stem, str(md.experiment), field, item.phase, mask))
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
