"""Mapping of a data set's label values onto the structures of the label table.

Sources, in order of precedence: a label-map file (``--label-map``, TOML or JSON), then
the label names of ``dataset.json`` matched by name, then (only when the data carry no
names at all) the table's own label values. A map file has one table::

    [labels]
    1 = "femur"                        # a label value ...
    "Gluteus Max" = "gluteus_maximus"  # ... or a label name of dataset.json
    9 = "background"                   # dropped without a warning

Names match case-insensitively with spaces, hyphens and underscores equivalent, against
the table's keys and names. A target that is no structure of the table is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.ct_muscle.structures import LabelTable

__all__ = ["BACKGROUND", "LabelMapping", "label_names", "normalise", "read_label_map", "resolve_mapping"]

BACKGROUND = "background"


def normalise(name: str) -> str:
    """Lower case, runs of spaces, hyphens and underscores as one underscore."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class LabelMapping:
    """Source label value -> table label (0: background); ``how`` says where it came from.

    ``names`` are the source names of the values (from dataset.json), for messages.
    """

    values: dict[int, int]
    how: str
    names: dict[int, str] = field(default_factory=dict)

    def describe(self, value: int) -> str:
        name = self.names.get(value)
        return f"{value} ({name!r})" if name else str(value)

    def apply(self, labels: np.ndarray) -> tuple[np.ndarray, set[int]]:
        """Labels in table values (uint8) and the nonzero source values left unmapped."""
        present, inverse = np.unique(labels, return_inverse=True)
        lut = np.array([self.values.get(int(v), 0) for v in present], dtype=np.uint8)
        unmapped = {int(v) for v in present if v != 0 and int(v) not in self.values}
        return lut[inverse].reshape(labels.shape), unmapped


def _structure_index(table: LabelTable) -> dict[str, int]:
    index: dict[str, int] = {BACKGROUND: 0}
    for structure in table:
        index[normalise(structure.key)] = structure.label
        index[normalise(structure.name)] = structure.label
    return index


def label_names(raw: Any, where: Path) -> dict[int, str]:
    """Value -> name from a dataset.json ``labels`` entry, nnU-Net v2 or v1 form.

    v2 is ``{"background": 0, "femur": 1}``, v1 ``{"0": "background", "1": "femur"}``.
    Region entries of v2 (a list of values) name no single value and are skipped.
    Raises InvalidInputError for anything else.
    """
    if not isinstance(raw, dict) or not raw:
        raise InvalidInputError(f"{where}: 'labels' must be a non-empty mapping")
    names: dict[int, str] = {}
    if all(isinstance(v, str) for v in raw.values()):  # v1: "value": "name"
        for key, name in raw.items():
            if not str(key).strip().isdigit():
                raise InvalidInputError(f"{where}: label value {key!r} is not an integer")
            names[int(key)] = name
        return names
    for name, value in raw.items():  # v2: "name": value
        if isinstance(value, list):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{where}: label {name!r} has value {value!r}, not an integer >= 0")
        names[value] = str(name)
    return names


def read_label_map(path: Path) -> dict[str, str]:
    """The ``labels`` table of a TOML (by ``.toml``) or JSON label-map file.

    Raises InvalidInputError, naming the file, when it cannot be read or has no such table.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the label map: {exc}") from exc
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw: Any = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise InvalidInputError(f"{path}: cannot parse the label map: {exc}") from exc
    entries = raw.get("labels") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise InvalidInputError(f"{path}: expected a non-empty 'labels' table (source -> structure key)")
    if not all(isinstance(v, str) for v in entries.values()):
        raise InvalidInputError(f"{path}: every label must map to a structure key (a string)")
    return {str(k): str(v) for k, v in entries.items()}


def _from_file(
    entries: Mapping[str, str], names: Mapping[int, str], index: Mapping[str, int], where: Path
) -> dict[int, int]:
    by_name = {normalise(n): v for v, n in names.items()}
    values: dict[int, int] = {}
    for source, target in entries.items():
        if source.strip().isdigit():
            value = int(source)
        elif normalise(source) in by_name:
            value = by_name[normalise(source)]
        else:
            known = ", ".join(sorted(names.values())) or "none (no dataset.json)"
            raise InvalidInputError(f"{where}: {source!r} is neither a label value nor a label name of "
                                    f"the data (names: {known})")
        label = index.get(normalise(target))
        if label is None:
            raise InvalidInputError(f"{where}: label {source!r} maps to {target!r}, which is not a "
                                    f"structure of the label table (nor {BACKGROUND!r})")
        values[value] = label
    return values


def resolve_mapping(
    table: LabelTable, names: Mapping[int, str], map_file: Path | None = None
) -> LabelMapping:
    """Combine the map file, the data's names and the table into one mapping.

    Raises InvalidInputError for an unreadable map file, a source it names that the data
    do not have, or a target that is not a structure key.
    """
    index = _structure_index(table)
    values: dict[int, int] = {0: 0}
    parts = []
    if map_file is not None:
        values.update(_from_file(read_label_map(map_file), names, index, map_file))
        parts.append(f"label map {map_file.name}")
    matched = {v: index[normalise(n)] for v, n in names.items()
               if v not in values and normalise(n) in index}
    if matched:
        values.update(matched)
        parts.append("dataset.json names")
    if not names and map_file is None:
        values.update({s.label: s.label for s in table})
        parts.append("label values as in the table")
    return LabelMapping(values=values, how=" + ".join(parts) or "none", names=dict(names))
