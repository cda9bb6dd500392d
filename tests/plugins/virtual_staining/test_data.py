from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.data import (
    LabelledImage,
    load_pairs,
    pairs_from_manifest,
    pairs_from_pattern,
    split_images,
)
from acqflow.plugins.virtual_staining.labels import LabelOptions
from acqflow.plugins.virtual_staining.synthetic import FILE_NAME_PATTERN, SyntheticSpec, write_series

SPEC = SyntheticSpec(experiments=2, wells=2, positions=1, timepoints=2, shape=(48, 48), bit_depth=8)


def test_pairs_by_file_name_pattern(tmp_path: Path) -> None:
    write_series(tmp_path, SPEC)
    (tmp_path / "notes.txt").write_text("ignored")
    pairs = pairs_from_pattern(tmp_path, FILE_NAME_PATTERN)
    assert len(pairs) == 8
    assert all(p.phase.name.replace("_phase", "_gfp") == p.fluorescence.name for p in pairs)
    assert {p.experiment for p in pairs} == {"EXP1", "EXP2"}
    assert len({p.field for p in pairs}) == 4 and {p.timepoint for p in pairs} == {0, 1}
    images = load_pairs(pairs, LabelOptions())
    assert images[0].phase.dtype == np.uint8 and images[0].mask.dtype == bool


def test_pattern_needs_channel_group_and_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channel"):
        pairs_from_pattern(tmp_path, r"(?P<well>\w+)\.tif")
    with pytest.raises(ValueError, match="no phase/gfp pairs"):
        pairs_from_pattern(tmp_path, FILE_NAME_PATTERN)


def test_manifest(tmp_path: Path) -> None:
    write_series(tmp_path / "img", SPEC)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "phase,fluorescence,experiment,well,timepoint\n"
        "img/EXP1_A01_pos1_t000_phase.tif,img/EXP1_A01_pos1_t000_gfp.tif,E1,A01,0\n"
        "img/EXP1_A02_pos1_t001_phase.tif,img/EXP1_A02_pos1_t001_gfp.tif,E1,A02,\n"
    )
    pairs = pairs_from_manifest(manifest)
    assert [(p.experiment, p.timepoint) for p in pairs] == [("E1", 0), ("E1", None)]
    assert pairs[0].phase.is_file()
    manifest.write_text("phase,fluorescence\nmissing.tif,img/EXP1_A01_pos1_t000_gfp.tif\n")
    with pytest.raises(ValueError, match="no file"):
        pairs_from_manifest(manifest)
    manifest.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column for phase and fluorescence"):
        pairs_from_manifest(manifest)


def test_manifest_accepts_the_common_column_names(tmp_path: Path) -> None:
    write_series(tmp_path / "img", SPEC)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "Image,GFP,Plate,Well,Site,Time\n"
        "img/EXP1_A01_pos1_t000_phase.tif,img/EXP1_A01_pos1_t000_gfp.tif,P7,A01,2,3\n"
    )
    (pair,) = pairs_from_manifest(manifest)
    assert pair.phase.name == "EXP1_A01_pos1_t000_phase.tif"
    assert pair.fluorescence.name == "EXP1_A01_pos1_t000_gfp.tif"
    assert (pair.experiment, pair.field, pair.timepoint) == ("P7", "P7/A01/2", 3)


def test_unusable_pairs_are_skipped_with_their_reason(tmp_path: Path) -> None:
    write_series(tmp_path / "img", SPEC)
    pairs = pairs_from_pattern(tmp_path / "img", FILE_NAME_PATTERN)
    broken = pairs[0].fluorescence
    broken.write_bytes(broken.read_bytes()[:200])  # truncated TIFF
    skipped: list[tuple[str, str]] = []
    images = load_pairs(pairs, LabelOptions(), skipped=skipped)
    assert len(images) == len(pairs) - 1
    assert [name for name, _ in skipped] == [pairs[0].phase.name]
    with pytest.raises((OSError, ValueError)):
        load_pairs(pairs, LabelOptions())


def _image(experiment: str, field: str) -> LabelledImage:
    return LabelledImage(
        f"{experiment}{field}",
        experiment,
        f"{experiment}/{field}",
        np.zeros((8, 8)),
        np.zeros((8, 8), dtype=bool),
    )


def test_split_by_experiment_never_mixes_experiments() -> None:
    images = [_image(f"E{e}", f"f{f}") for e in range(5) for f in range(3) for _ in range(2)]
    split = split_images(images, seed=1)
    assert split.grouped_by == "experiment"
    sides = [{i.experiment for i in part} for part in (split.train, split.validation, split.test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(split.train) + len(split.validation) + len(split.test) == len(images)


def test_split_by_field_with_few_experiments() -> None:
    images = [_image("E1", f"f{f}") for f in range(6) for _ in range(3)]
    split = split_images(images, seed=1)
    assert split.grouped_by == "field"
    sides = [{i.field for i in part} for part in (split.train, split.validation, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    with pytest.raises(ValueError, match="at least 3"):
        split_images([_image("E1", "a"), _image("E1", "b")], seed=0)
