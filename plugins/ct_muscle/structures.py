"""The label table of the hip/thigh model: label value, name and coded concepts.

Every structure is coded with the segmented property category "Anatomical Structure"
(SCT 91723000, DICOM CID 7150) and, as its type, a SNOMED CT "structure" concept (DICOM
prefers "structure of" concepts over "entire" ones, PS3.16 section 8.1.1). Codes that
pydicom's code dictionary (DICOM PS3.16) contains are taken from it, with the standard's
code meaning. DICOM PS3.16 has no SNOMED concept for most hip/thigh muscles; those
entries carry SNOMED CT identifiers with a ``code_source`` saying what they were checked
against, or that they were not verified. Three identifiers of the first table were
provably wrong (PS3.16 uses them for other concepts); until a verified SNOMED CT code is
available those structures are coded in acqflow's private scheme "99ACQFLOW" (PS3.3
section 8.2) rather than with a wrong SNOMED concept. Sites can replace any entry
through a JSON or TOML override without code changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom.sr.codedict import codes

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "Code",
    "LabelTable",
    "Structure",
    "default_label_table",
    "load_label_table",
]


@dataclass(frozen=True)
class Code:
    """A coded concept: value, coding scheme designator and meaning."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or not self.scheme or not self.meaning:
            raise ValueError(f"a code needs value, scheme and meaning: {self!r}")


def _from_codedict(concept: Any) -> Code:
    return Code(str(concept.value), str(concept.scheme_designator), str(concept.meaning))


ANATOMICAL_STRUCTURE = _from_codedict(codes.SCT.AnatomicalStructure)


@dataclass(frozen=True)
class Structure:
    """One label of the model: its value in the label map and how DICOM names it."""

    label: int
    key: str
    name: str
    category: Code
    type: Code
    code_source: str
    color: tuple[int, int, int] = (128, 128, 128)

    def __post_init__(self) -> None:
        if self.label < 1 or self.label > 255:
            raise ValueError(f"label of {self.key!r} must be in 1..255, got {self.label}")
        if not self.key.replace("_", "").isalnum():
            raise ValueError(f"structure key must be alphanumeric/underscore: {self.key!r}")
        if any(not 0 <= c <= 255 for c in self.color):
            raise ValueError(f"colour of {self.key!r} must be RGB 0..255")


class LabelTable(Sequence[Structure]):
    """An ordered table of structures with unique, contiguous labels 1..N.

    Raises ValueError when labels are duplicated or not contiguous.
    """

    def __init__(self, structures: Sequence[Structure]) -> None:
        ordered = sorted(structures, key=lambda s: s.label)
        if [s.label for s in ordered] != list(range(1, len(ordered) + 1)):
            raise ValueError("structure labels must be unique and contiguous from 1")
        if len({s.key for s in ordered}) != len(ordered):
            raise ValueError("structure keys must be unique")
        self._structures = tuple(ordered)

    def __getitem__(self, index: Any) -> Any:
        return self._structures[index]

    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self._structures)

    @property
    def num_classes(self) -> int:
        """Number of network outputs: the structures plus background (label 0)."""
        return len(self._structures) + 1

    def by_key(self, key: str) -> Structure:
        """The structure named ``key``; raises KeyError when absent."""
        for structure in self._structures:
            if structure.key == key:
                return structure
        raise KeyError(key)

    def by_label(self, label: int) -> Structure:
        """The structure with label value ``label``; raises KeyError when absent."""
        if 1 <= label <= len(self._structures):
            return self._structures[label - 1]
        raise KeyError(label)


# acqflow's private coding scheme, the one plugins/ct_muscle/reporting.py uses.
_PRIVATE_SCHEME = "99ACQFLOW"

_CODEDICT = "pydicom codedict (DICOM PS3.16)"
_UNVERIFIED = (
    "SNOMED CT; NOT verified: not in DICOM PS3.16 (pydicom codedict) and not found in a "
    "SNOMED CT release or terminology-server listing; verify before clinical use"
)
_NO_SCT = (
    "private code: the previous SNOMED CT id {wrong} is {what} in DICOM PS3.16 (pydicom "
    "codedict); no verified SNOMED CT code for this muscle yet, replace via override"
)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _private(value: str, meaning: str) -> Code:
    return Code(value, _PRIVATE_SCHEME, meaning)


# (key, name, type code, source, colour)
_DEFAULTS: tuple[tuple[str, str, Code, str, tuple[int, int, int]], ...] = (
    ("pelvis", "Pelvis", _from_codedict(codes.SCT.BoneStructureOfPelvis), _CODEDICT,
     (241, 214, 145)),
    ("femur", "Femur", _from_codedict(codes.SCT.Femur), _CODEDICT, (130, 222, 207)),
    ("sacrum", "Sacrum", _from_codedict(codes.SCT.Sacrum), _CODEDICT, (163, 140, 140)),
    # The model segments the thigh adductor muscles as one structure;
    # the type is meant to be SNOMED's group concept for the thigh adductors.
    ("adductor_muscles", "Adductor muscles", _sct("10280002", "Adductor muscle of thigh"),
     _UNVERIFIED + "; intended as the group concept for the thigh adductors",
     (230, 159, 0)),
    ("biceps_femoris", "Biceps femoris", _private("MUS01", "Biceps femoris muscle"),
     _NO_SCT.format(wrong="53840002", what="'Structure of calf of leg'"), (86, 180, 233)),
    ("gluteus_maximus", "Gluteus maximus",
     _sct("206007", "Gluteus maximus muscle"),
     "SNOMED CT; checked: TotalSegmentator PR #612 (verified in SNOMED CT via OLS4 "
     "release 20251017 and tx.fhir.org) and NZHTS AIR body-site value set; not in PS3.16",
     (192, 104, 88)),
    ("gluteus_medius", "Gluteus medius", _sct("78333006", "Gluteus medius muscle"),
     "SNOMED CT; checked: NZHTS AIR body-site value set; same id in the TotalSegmentator "
     "and MOOSE SEG mappings; not in PS3.16", (220, 120, 100)),
    ("gluteus_minimus", "Gluteus minimus", _sct("75297007", "Gluteus minimus muscle"),
     "SNOMED CT; same id in the TotalSegmentator and MOOSE SEG mappings (third-party, "
     "not a SNOMED release); not in PS3.16", (240, 150, 120)),
    ("gracilis", "Gracilis", _sct("20155008", "Gracilis muscle"), _UNVERIFIED,
     (0, 158, 115)),
    ("iliacus", "Iliacus", _private("MUS02", "Iliacus muscle"),
     _NO_SCT.format(wrong="91727004", what="'Muscle' (muscle tissue, CID 7151/7166)"),
     (240, 228, 66)),
    ("obturator_externus", "Obturator externus",
     _sct("16888004", "Obturator externus muscle"), _UNVERIFIED, (0, 114, 178)),
    ("obturator_internus", "Obturator internus",
     _sct("25748003", "Obturator internus muscle"), _UNVERIFIED, (213, 94, 0)),
    ("pectineus", "Pectineus", _sct("33549002", "Pectineus muscle"), _UNVERIFIED,
     (204, 121, 167)),
    ("piriformis", "Piriformis", _sct("18533008", "Piriformis muscle"), _UNVERIFIED,
     (120, 94, 240)),
    ("psoas_major", "Psoas major", _sct("71915009", "Psoas major muscle"), _UNVERIFIED,
     (100, 143, 255)),
    ("rectus_femoris", "Rectus femoris", _private("MUS03", "Rectus femoris muscle"),
     _NO_SCT.format(wrong="52731004", what="'Abdominal cavity structure'"),
     (254, 97, 0)),
    ("sartorius", "Sartorius", _sct("63990007", "Sartorius muscle"), _UNVERIFIED,
     (255, 176, 0)),
    ("semimembranosus", "Semimembranosus", _sct("17431002", "Semimembranosus muscle"),
     _UNVERIFIED, (220, 38, 127)),
    ("semitendinosus", "Semitendinosus", _sct("33133005", "Semitendinosus muscle"),
     _UNVERIFIED, (147, 112, 219)),
    ("tensor_fasciae_latae", "Tensor fasciae latae",
     _sct("15568001", "Tensor fasciae latae muscle"), _UNVERIFIED, (60, 179, 113)),
    # The model segments vastus lateralis and vastus intermedius as one structure. No
    # SNOMED concept for the pair was found (the quadriceps would also claim rectus
    # femoris and vastus medialis, labelled separately), so the type is the dominant
    # muscle, vastus lateralis, and the segment name says that the intermedius is
    # included.
    ("vastus_lateralis_intermedius", "Vastus lateralis with vastus intermedius",
     _sct("1403006", "Vastus lateralis muscle"),
     "SNOMED CT; checked: NZHTS AIR body-site value set; not in PS3.16; type is the "
     "dominant muscle (vastus intermedius included in the label)", (70, 130, 180)),
    ("vastus_medialis", "Vastus medialis", _sct("33127005", "Vastus medialis muscle"),
     _UNVERIFIED, (255, 99, 71)),
)


def default_label_table() -> LabelTable:
    """The built-in table: pelvis, femur, sacrum and 19 muscles, labels 1..22."""
    return LabelTable(
        [
            Structure(
                label=index,
                key=key,
                name=name,
                category=ANATOMICAL_STRUCTURE,
                type=code,
                code_source=source,
                color=color,
            )
            for index, (key, name, code, source, color) in enumerate(_DEFAULTS, 1)
        ]
    )


def _code_from(data: Mapping[str, Any], where: str) -> Code:
    try:
        return Code(str(data["value"]), str(data["scheme"]), str(data["meaning"]))
    except KeyError as exc:
        raise ValueError(f"{where}: code lacks {exc.args[0]!r}") from exc


def _apply_override(base: Structure, data: Mapping[str, Any]) -> Structure:
    changes: dict[str, Any] = {}
    for field_name in ("name", "code_source"):
        if field_name in data:
            changes[field_name] = str(data[field_name])
    if "label" in data:
        changes["label"] = int(data["label"])
    if "color" in data:
        changes["color"] = tuple(int(c) for c in data["color"])
    for field_name in ("category", "type"):
        if field_name in data:
            changes[field_name] = _code_from(data[field_name], f"{base.key}.{field_name}")
    return replace(base, **changes)


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".toml":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot parse label table {path}: {exc}") from exc
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10 has no TOML reader in the standard library
        raise ValueError(f"{path}: TOML needs Python 3.11 or later; use JSON") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"cannot parse label table {path}: {exc}") from exc


def load_label_table(path: Path, base: LabelTable | None = None) -> LabelTable:
    """Apply a JSON or TOML override (``{"structures": {key: {...}}}``) to ``base``.

    Each entry may set ``name``, ``label``, ``color``, ``code_source`` and the codes
    ``category``/``type`` (``{value, scheme, meaning}``); unknown keys add structures
    (then all fields are required). Raises ValueError for unreadable or invalid files.
    """
    raw = _parse(path)
    entries = raw.get("structures") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a 'structures' table")
    table = {s.key: s for s in (base if base is not None else default_label_table())}
    for key, data in entries.items():
        if key in table:
            table[key] = _apply_override(table[key], data)
            continue
        try:
            table[key] = Structure(
                label=int(data["label"]),
                key=key,
                name=str(data["name"]),
                category=_code_from(data["category"], f"{key}.category"),
                type=_code_from(data["type"], f"{key}.type"),
                code_source=str(data.get("code_source", f"override {path.name}")),
                color=tuple(int(c) for c in data.get("color", (128, 128, 128))),  # type: ignore[arg-type]
            )
        except KeyError as exc:
            raise ValueError(f"{path}: new structure {key!r} lacks {exc.args[0]!r}") from exc
    return LabelTable(list(table.values()))
