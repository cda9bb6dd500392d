from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from acqflow.plugins.ct_muscle.structures import default_label_table, load_label_table

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


# Structures whose earlier SNOMED CT identifiers named other concepts in DICOM PS3.16 and
# for which no verified SNOMED CT code was found: coded in acqflow's private scheme.
PRIVATELY_CODED = {"biceps_femoris", "iliacus", "rectus_femoris"}


def test_codes_are_snomed_or_flagged_private_and_unique() -> None:
    table = default_label_table()
    assert len({(s.type.scheme, s.type.value) for s in table}) == len(table)
    for structure in table:
        assert structure.category.value == codes.SCT.AnatomicalStructure.value
        assert structure.code_source
        if structure.key in PRIVATELY_CODED:
            assert structure.type.scheme == "99ACQFLOW"
            assert "private code" in structure.code_source
        else:
            assert structure.type.scheme == "SCT" and structure.type.value.isdigit()


@functools.cache
def _codedict_index(scheme: str) -> dict[str, set[str]]:
    """Code value -> code meanings of every concept pydicom's code dictionary has."""
    collection = getattr(codes, scheme, None)
    index: dict[str, set[str]] = {}
    if collection is None:
        return index
    for keyword in dir(collection):
        concept = getattr(collection, keyword)
        if not isinstance(concept, Code):
            continue
        index.setdefault(str(concept.value), set()).add(str(concept.meaning))
    return index


def _codedict_meanings(scheme: str, value: str) -> set[str]:
    return _codedict_index(scheme).get(value, set())


def test_every_code_known_to_the_dicom_code_dictionary_has_its_meaning() -> None:
    # A SNOMED identifier that DICOM PS3.16 uses must mean what the table says: this is
    # what caught 53840002 ("Structure of calf of leg") labelled as biceps femoris.
    table = default_label_table()
    for structure in table:
        for code in (structure.category, structure.type):
            meanings = _codedict_meanings(code.scheme, code.value)
            if meanings:
                assert code.meaning in meanings, (structure.key, code, meanings)


def test_codes_from_the_code_dictionary_equal_its_concepts() -> None:
    table = default_label_table()
    expected = {
        "pelvis": codes.SCT.BoneStructureOfPelvis,
        "femur": codes.SCT.Femur,
        "sacrum": codes.SCT.Sacrum,
    }
    for key, concept in expected.items():
        code = table.by_key(key).type
        assert (code.value, code.scheme, code.meaning) == (
            concept.value, concept.scheme_designator, concept.meaning)
        assert table.by_key(key).code_source.startswith("pydicom codedict")
    for structure in table:
        if structure.type.scheme == "SCT" and _codedict_meanings("SCT", structure.type.value):
            assert structure.key in expected, structure.key


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
