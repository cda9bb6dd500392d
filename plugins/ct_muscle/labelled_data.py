"""The user's labelled CT cases for ``train``/``evaluate --data-dir``, in the layouts they have.

Layouts, detected in this order:

* nnU-Net raw (``nnunet``): ``dataset.json``, ``imagesTr/<case>_0000<ending>``,
  ``labelsTr/<case><ending>``; ``file_ending`` from dataset.json (v1: ``.nii.gz``),
  label names from its ``labels`` (v2 ``{"femur": 1}`` or v1 ``{"1": "femur"}``), the CT
  channel from ``channel_names`` (v1 ``modality``).
* image/label pairs (``pairs``): ``images/<case><ending>`` with ``labels/<case><ending>``,
  or ``<case>_image<ending>`` with ``<case>_label<ending>`` side by side; endings
  ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr`` (image and label may differ). An optional
  ``dataset.json`` there supplies label names.
* DICOM (``dicom``): one sub-folder per case with a CT series and one SEG.

Images are HU. Labels are mapped onto the label table (:mod:`.label_mapping`); source
labels left unmapped become background with a warning, and structures of the table
that no case contains are reported in :attr:`LabelledData.missing`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.ct_muscle.label_mapping import LabelMapping, label_names, resolve_mapping
from acqflow.plugins.ct_muscle.structures import LabelTable
from acqflow.plugins.ct_muscle.training import LabelledVolume
from acqflow.plugins.ct_muscle.volume_files import VolumeFile, format_of, read_volume, strip_ending

__all__ = ["DataLayout", "LabelledCase", "LabelledData", "detect_layout", "load_labelled_data"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # the commands print the warnings themselves

_EXPECTED = (
    "an nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/), images/ and labels/ folders "
    "of NIfTI/NRRD files with the same case names, <case>_image/<case>_label NIfTI/NRRD files, "
    "or one folder per case holding a DICOM CT series and its SEG"
)


class DataLayout(str, Enum):
    DICOM = "dicom"
    PAIRS = "pairs"
    NNUNET = "nnunet"


@dataclass(frozen=True)
class LabelledCase:
    """One case: its name (file or folder stem), volume and slice spacing (mm)."""

    name: str
    volume: LabelledVolume
    slice_spacing_mm: float


@dataclass(frozen=True)
class LabelledData:
    """All cases of a data folder (sorted by name) and what the mapping did."""

    directory: Path
    layout: DataLayout
    formats: tuple[str, ...]  # file formats read: dicom, nifti, nrrd
    cases: list[LabelledCase]
    mapping: str  # how labels were mapped
    unmapped: dict[str, int] = field(default_factory=dict)  # source label -> cases holding it
    missing: tuple[str, ...] = ()  # table structures present in no case
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The card's ``training.data`` / the evaluation report's ``data``."""
        return {"source": "+".join(self.formats), "layout": self.layout.value,
                "directory": str(self.directory), "cases": len(self.cases),
                "label_mapping": self.mapping, "unmapped_labels": dict(self.unmapped),
                "missing_structures": list(self.missing)}


def detect_layout(directory: Path) -> DataLayout:
    """Which layout ``directory`` holds; raises InvalidInputError naming what was expected."""
    if not directory.is_dir():
        raise InvalidInputError(f"{directory}: not a folder; expected {_EXPECTED}")
    if (directory / "imagesTr").is_dir() or (directory / "labelsTr").is_dir():
        return DataLayout.NNUNET
    folders = [(directory / sub).is_dir() for sub in ("images", "labels")]
    if all(folders):
        return DataLayout.PAIRS
    if any(folders):
        raise InvalidInputError(f"{directory}: an images/ folder needs a labels/ folder beside it "
                                "(same case names), and the other way round")
    if any(_pair_stem(p, "_image") for p in directory.iterdir()):
        return DataLayout.PAIRS
    if any(p.is_dir() for p in directory.iterdir()):
        return DataLayout.DICOM
    raise InvalidInputError(f"{directory}: no labelled data found; expected {_EXPECTED}")


def load_labelled_data(
    directory: Path, table: LabelTable, label_map: Path | None = None
) -> LabelledData:
    """Every case under ``directory`` mapped onto ``table``.

    Raises InvalidInputError, naming the folder or file, for an unknown layout, an
    unreadable file, an image/label grid mismatch, non-integer labels, a bad label map
    (or one given for DICOM, whose SEG segments are matched by code), or no cases.
    """
    layout = detect_layout(directory)
    if layout is DataLayout.DICOM:
        if label_map is not None:
            raise InvalidInputError(f"{label_map}: a label map applies to NIfTI/NRRD/nnU-Net data; "
                                    f"DICOM SEG segments in {directory} are matched by their codes")
        return _finish(directory, table, layout, ("dicom",), _dicom_cases(directory, table),
                       "SEG segment codes", {}, [])
    notes: list[str] = []
    if layout is DataLayout.NNUNET:
        pairs, names = _nnunet_pairs(directory, notes)
    else:
        pairs, names = _plain_pairs(directory)
    if not pairs:
        raise InvalidInputError(f"{directory}: no image/label pairs found; expected {_EXPECTED}")
    mapping = resolve_mapping(table, names, label_map)
    cases: list[LabelledCase] = []
    unmapped: dict[int, int] = {}
    formats: set[str] = set()
    for name, (image_path, label_path) in sorted(pairs.items()):
        case, left = _read_case(name, image_path, label_path, mapping, notes)
        cases.append(case)
        formats.update(f.value for f in (format_of(image_path), format_of(label_path)) if f)
        for value in left:
            unmapped[value] = unmapped.get(value, 0) + 1
    by_source = {mapping.describe(v): n for v, n in sorted(unmapped.items())}
    return _finish(directory, table, layout, tuple(sorted(formats)), cases, mapping.how, by_source,
                   notes)


def _finish(
    directory: Path, table: LabelTable, layout: DataLayout, formats: tuple[str, ...],
    cases: list[LabelledCase], how: str, unmapped: dict[str, int], notes: list[str],
) -> LabelledData:
    if not cases:
        raise InvalidInputError(f"{directory}: no cases found; expected {_EXPECTED}")
    warnings = [*notes] + [f"label {source} in {count} of {len(cases)} cases maps to no structure; "
                "treated as background" for source, count in unmapped.items()]
    present: set[int] = set()
    for case in cases:
        present.update(int(v) for v in np.unique(case.volume.labels))
    missing = tuple(s.key for s in table if s.label not in present)
    if missing:
        warnings.append(f"structures in no case (they are learnt as absent): {', '.join(missing)}")
    for message in warnings:
        log.warning("%s: %s", directory, message)
    return LabelledData(directory=directory, layout=layout, formats=formats, cases=cases,
                        mapping=how, unmapped=unmapped, missing=missing, warnings=tuple(warnings))


def _dicom_cases(directory: Path, table: LabelTable) -> list[LabelledCase]:
    from acqflow.plugins.ct_muscle.datasets import load_dicom_case

    out = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        volume, slice_mm = load_dicom_case(folder, table)
        out.append(LabelledCase(folder.name, volume, slice_mm))
    return out


def _pair_stem(path: Path, marker: str) -> str | None:
    """``case`` for ``case<marker>.nii.gz`` (and the other endings), else None."""
    if not path.is_file() or format_of(path) is None:
        return None
    stem = strip_ending(path)
    return stem[: -len(marker)] if stem.endswith(marker) and len(stem) > len(marker) else None


def _volume_files(folder: Path) -> dict[str, Path]:
    """Case name -> file for the volume files of ``folder``; raises on a duplicated case."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and format_of(path) is not None:
            name = strip_ending(path)
            if name in out:
                raise InvalidInputError(f"{path}: case {name!r} is also {out[name]}")
            out[name] = path
    return out


def _matched(images: dict[str, Path], labels: dict[str, Path], where: Path) -> dict[str, tuple[Path, Path]]:
    for name in sorted(set(images) ^ set(labels)):
        other = "label" if name in images else "image"
        raise InvalidInputError(f"{(images | labels)[name]}: no {other} file for case {name!r} in {where}")
    return {name: (images[name], labels[name]) for name in images}


def _plain_pairs(directory: Path) -> tuple[dict[str, tuple[Path, Path]], dict[int, str]]:
    if (directory / "images").is_dir() and (directory / "labels").is_dir():
        pairs = _matched(_volume_files(directory / "images"), _volume_files(directory / "labels"),
                         directory)
    else:
        images = {s: p for p in sorted(directory.iterdir()) if (s := _pair_stem(p, "_image"))}
        labels = {s: p for p in sorted(directory.iterdir()) if (s := _pair_stem(p, "_label"))}
        pairs = _matched(images, labels, directory)
    meta = directory / "dataset.json"
    names = label_names(_json(meta).get("labels"), meta) if meta.is_file() else {}
    return pairs, names


def _json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    return raw


def _ct_channel(meta: dict[str, Any], where: Path, notes: list[str]) -> int:
    channels = meta.get("channel_names", meta.get("modality", {"0": "CT"}))
    if not isinstance(channels, dict) or not channels:
        raise InvalidInputError(f"{where}: 'channel_names' must map channel numbers to names")
    ct = [int(k) for k, v in channels.items() if str(v).strip().lower() == "ct"]
    if len(channels) == 1 or not ct:
        channel = int(next(iter(channels)))
        if not ct:
            notes.append(f"{where}: channel {channel} is {channels[next(iter(channels))]!r}, not "
                         "'CT'; its values are taken as HU")
        return channel
    return ct[0]


def _nnunet_pairs(
    directory: Path, notes: list[str]
) -> tuple[dict[str, tuple[Path, Path]], dict[int, str]]:
    meta_path = directory / "dataset.json"
    if not meta_path.is_file():
        raise InvalidInputError(f"{directory}: nnU-Net layout (imagesTr/, labelsTr/) without dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        if not (directory / sub).is_dir():
            raise InvalidInputError(f"{directory}: nnU-Net layout without {sub}/")
    meta = _json(meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    if format_of(Path(f"x{ending}")) is None:
        raise InvalidInputError(f"{meta_path}: file_ending {ending!r} is not NIfTI or NRRD")
    names = label_names(meta.get("labels"), meta_path)
    suffix = f"_{_ct_channel(meta, meta_path, notes):04d}"
    images = {s: p for p in sorted((directory / "imagesTr").iterdir())
              if p.name.endswith(ending) and (s := _pair_stem(p, suffix))}
    labels = {p.name[: -len(ending)]: p for p in sorted((directory / "labelsTr").iterdir())
              if p.is_file() and p.name.endswith(ending)}
    return _matched(images, labels, directory), names


def _read_case(
    name: str, image_path: Path, label_path: Path, mapping: LabelMapping, notes: list[str]
) -> tuple[LabelledCase, set[int]]:
    image = read_volume(image_path)
    label = read_volume(label_path, labels=True)
    notes.extend(image.notes + label.notes)
    _same_grid(image, label)
    labels, unmapped = mapping.apply(label.array)
    volume = LabelledVolume(hu=image.array, labels=labels, spacing=image.spacing[1:])
    return LabelledCase(name, volume, image.spacing[0]), unmapped


def _same_grid(image: VolumeFile, label: VolumeFile) -> None:
    """Raises InvalidInputError unless the label map lies on the image's voxel grid."""
    if image.array.shape != label.array.shape:
        raise InvalidInputError(f"{label.path}: label shape {label.array.shape} (slices, rows, cols) "
                                f"differs from the image's {image.array.shape} ({image.path.name})")
    step = min(image.spacing)
    if (not np.allclose(image.spacing, label.spacing, rtol=1e-3, atol=1e-3)
            or not np.allclose(image.origin, label.origin, atol=0.01 * step)):
        raise InvalidInputError(f"{label.path}: label grid (spacing {label.spacing}, origin "
                                f"{label.origin}) differs from the image's ({image.path.name})")
