from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.sr.codedict import codes

from plugins.ct_muscle.structures import default_label_table, load_label_table

MUSCLES = {
    "adductor_muscles", "biceps_femoris", "gluteus_maximus", "gluteus_medius",
    "gluteus_minimus", "gracilis", "iliacus", "obturator_externus", "obturator_internus",
    "pectineus", "piriformis", "psoas_major", "rectus_femoris", "sartorius",
    "semimembranosus", "semitendinosus", "tensor_fasciae_latae",
    "vastus_lateralis_intermedius", "vastus_medialis",
}


def test_default_table_has_three_bones_and_nineteen_muscles() -> None:
    table = default_label_table()
    keys = [s.key for s in table]
    assert keys[:3] == ["pelvis", "femur", "sacrum"]
    assert set(keys[3:]) == MUSCLES
    assert [s.label for s in table] == list(range(1, 23))
    assert table.num_classes == 23


def test_codes_are_snomed_and_unique() -> None:
    table = default_label_table()
    assert len({s.type.value for s in table}) == len(table)
    for structure in table:
        assert structure.type.scheme == "SCT" and structure.type.value.isdigit()
        assert structure.category.value == codes.SCT.AnatomicalStructure.value
        assert structure.code_source


def test_bone_codes_match_the_dicom_code_dictionary() -> None:
    table = default_label_table()
    assert table.by_key("pelvis").type.value == codes.SCT.BoneStructureOfPelvis.value
    assert table.by_key("femur").type.value == codes.SCT.Femur.value
    assert table.by_key("sacrum").type.value == codes.SCT.Sacrum.value


def test_json_override_changes_codes_and_adds_structures(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"structures": {
        "iliacus": {"type": {"value": "123", "scheme": "SCT", "meaning": "Site code"},
                    "name": "Iliacus (site)"},
        "extra": {"label": 23, "name": "Extra", "category": {
            "value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
            "type": {"value": "99", "scheme": "99LOCAL", "meaning": "Extra"}},
    }}))
    table = load_label_table(path)
    assert table.by_key("iliacus").type.value == "123"
    assert table.by_key("iliacus").name == "Iliacus (site)"
    assert table.by_label(23).key == "extra"


def test_toml_override(tmp_path: Path) -> None:
    path = tmp_path / "labels.toml"
    path.write_text('[structures.femur]\nname = "Thigh bone"\ncolor = [1, 2, 3]\n')
    table = load_label_table(path)
    assert table.by_key("femur").name == "Thigh bone"
    assert table.by_key("femur").color == (1, 2, 3)


@pytest.mark.parametrize("content", [
    '{"structures": {"femur": {"label": 5}}}',
    '{"structures": {"new": {"label": 23}}}',
    "not json",
    '{"other": 1}',
])
def test_invalid_overrides_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_label_table(path)
