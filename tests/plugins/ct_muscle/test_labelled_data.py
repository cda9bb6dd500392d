"""NIfTI, NRRD and nnU-Net labelled data: orientation, label mapping, errors, train/evaluate."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from acqflow.plugins.api import InvalidInputError
from acqflow.plugins.ct_muscle.labelled_data import DataLayout, detect_layout, load_labelled_data
from acqflow.plugins.ct_muscle.phantoms import Phantom, PhantomOptions, generate_phantom
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.ct_muscle.training import LabelledVolume

SMALL = PhantomOptions(shape=(6, 64, 64))
DX, DY, DZ = 3.0, 2.0, 5.0  # column, row, slice spacing (mm) written to the files
TABLE = default_label_table()


def _canonical(array: np.ndarray) -> np.ndarray:
    """(slices, rows, cols) -> voxel axes (col -> L, row -> P, slice -> S)."""
    return array.transpose(2, 1, 0)


def _nifti_ras(phantom_array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored as RAS+ (nibabel canonical): x to the right, y anterior, z superior."""
    _, nr, nc = phantom_array.shape
    affine = np.array([[DX, 0, 0, -(nc - 1) * DX], [0, DY, 0, -(nr - 1) * DY], [0, 0, DZ, 0],
                       [0, 0, 0, 1]])
    return np.ascontiguousarray(_canonical(phantom_array)[::-1, ::-1, :]), affine


def _nifti_slices_first(phantom_array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored (slice, row, col) with the first axis stepping to the feet."""
    ns = phantom_array.shape[0]
    affine = np.array([[0, 0, -DX, 0], [0, -DY, 0, 0], [-DZ, 0, 0, (ns - 1) * DZ], [0, 0, 0, 1]])
    return np.ascontiguousarray(phantom_array[::-1]), affine


def _save_nifti(path: Path, stored: tuple[np.ndarray, np.ndarray]) -> None:
    nib.save(nib.Nifti1Image(stored[0], stored[1]), path)  # type: ignore[no-untyped-call]


def _save_nrrd_lps(path: Path, phantom_array: np.ndarray, detached: bool = False) -> None:
    header = {"space": "left-posterior-superior", "space directions": np.diag([DX, DY, DZ]),
              "space origin": np.zeros(3)}
    nrrd.write(str(path), np.ascontiguousarray(_canonical(phantom_array)), header,
               detached_header=detached)


def _save_nrrd_ras_flipped(path: Path, phantom_array: np.ndarray) -> None:
    ns = phantom_array.shape[0]
    header = {"space": "RAS", "space directions": np.diag([-DX, -DY, -DZ]),
              "space origin": np.array([0.0, 0.0, (ns - 1) * DZ])}
    nrrd.write(str(path), np.ascontiguousarray(_canonical(phantom_array)[:, :, ::-1]), header)


def _phantom(seed: int) -> Phantom:
    return generate_phantom(seed, SMALL)


def _assert_case(volume: LabelledVolume, phantom: Phantom, labels: np.ndarray | None = None) -> None:
    np.testing.assert_array_equal(volume.labels, phantom.labels if labels is None else labels)
    np.testing.assert_allclose(volume.hu, phantom.hu, atol=1e-3)
    assert volume.spacing == pytest.approx((DY, DX))


def test_nifti_images_labels_folders_in_two_orientations(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir(parents=True)
    a, b = _phantom(1), _phantom(2)
    _save_nifti(tmp_path / "images" / "a.nii.gz", _nifti_ras(a.hu))
    _save_nifti(tmp_path / "labels" / "a.nii.gz", _nifti_ras(a.labels))
    # case b: image RAS-stored, label stored slice-first and flipped: both must land alike
    _save_nifti(tmp_path / "images" / "b.nii", _nifti_ras(b.hu))
    _save_nifti(tmp_path / "labels" / "b.nii.gz", _nifti_slices_first(b.labels))
    data = load_labelled_data(tmp_path, TABLE)
    assert data.layout is DataLayout.PAIRS and data.formats == ("nifti",)
    assert [c.name for c in data.cases] == ["a", "b"]
    _assert_case(data.cases[0].volume, a)
    _assert_case(data.cases[1].volume, b)
    assert [c.slice_spacing_mm for c in data.cases] == pytest.approx([DZ, DZ])
    assert data.mapping == "label values as in the table" and not data.unmapped


def test_nrrd_pairs_lps_ras_and_detached_header(tmp_path: Path) -> None:
    a, b = _phantom(3), _phantom(4)
    _save_nrrd_lps(tmp_path / "a_image.nrrd", a.hu)
    _save_nrrd_lps(tmp_path / "a_label.nhdr", a.labels, detached=True)
    _save_nrrd_ras_flipped(tmp_path / "b_image.nrrd", b.hu)
    _save_nrrd_ras_flipped(tmp_path / "b_label.nrrd", b.labels)
    assert detect_layout(tmp_path) is DataLayout.PAIRS
    data = load_labelled_data(tmp_path, TABLE)
    assert data.formats == ("nrrd",) and [c.name for c in data.cases] == ["a", "b"]
    _assert_case(data.cases[0].volume, a)
    _assert_case(data.cases[1].volume, b)


def _renumbered(labels: np.ndarray) -> np.ndarray:
    """Source values table label + 10 (background stays 0)."""
    return np.where(labels > 0, labels.astype(np.int16) + 10, 0).astype(np.int16)


def _nnunet(tmp_path: Path, seeds: list[int], labels: Mapping[str, object], **extra: object) -> list[Phantom]:
    (tmp_path / "imagesTr").mkdir(parents=True)
    (tmp_path / "labelsTr").mkdir(parents=True)
    phantoms = [_phantom(s) for s in seeds]
    for i, phantom in enumerate(phantoms):
        _save_nifti(tmp_path / "imagesTr" / f"case_{i:03d}_0000.nii.gz", _nifti_ras(phantom.hu))
        _save_nifti(tmp_path / "labelsTr" / f"case_{i:03d}.nii.gz",
                    _nifti_slices_first(_renumbered(phantom.labels)))
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(seeds),
            "file_ending": ".nii.gz", **extra}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return phantoms


def _spelled(name: str, i: int) -> str:
    """The table's names and keys, spelt the ways other data sets spell them."""
    return [name.upper(), name.replace(" ", "-"), name.lower().replace(" ", "_")][i % 3]


def test_nnunet_v2_labels_matched_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels: dict[str, object] = {"background": 0}
    labels.update({_spelled(s.name if i % 2 else s.key, i): s.label + 10 for i, s in enumerate(TABLE)})
    labels["bladder"] = 99
    labels["all bones"] = [11, 12, 13]  # a v2 region: names no single value
    phantoms = _nnunet(tmp_path, [5, 6], labels)
    caplog.set_level(logging.WARNING)
    data = load_labelled_data(tmp_path, TABLE)
    assert data.layout is DataLayout.NNUNET and data.formats == ("nifti",)
    for case, phantom in zip(data.cases, phantoms, strict=True):
        _assert_case(case.volume, phantom)
    assert data.mapping == "dataset.json names" and not data.unmapped  # 99 is in no case


def test_nnunet_v1_unmapped_warned_and_missing_structure_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    piriformis, gracilis = TABLE.by_key("piriformis").label, TABLE.by_key("gracilis").label
    labels = {"0": "background", **{str(s.label + 10): s.key for s in TABLE if s.key != "sartorius"}}
    (tmp_path / "imagesTr").mkdir(parents=True)
    (tmp_path / "labelsTr").mkdir(parents=True)
    truths = []
    for i, seed in enumerate([7, 8]):
        phantom = _phantom(seed)
        source = _renumbered(phantom.labels)
        source[phantom.labels == piriformis] = 0  # piriformis in no case
        if i == 0:
            source[phantom.labels == gracilis] = 0  # gracilis in one case only
        _save_nifti(tmp_path / "imagesTr" / f"c{i}_0000.nii.gz", _nifti_ras(phantom.hu))
        _save_nifti(tmp_path / "labelsTr" / f"c{i}.nii.gz", _nifti_ras(source))
        truth = np.where(np.isin(source - 10, [TABLE.by_key("sartorius").label]), 0,
                         np.where(source > 0, source - 10, 0))
        truths.append(truth.astype(np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "modality": {"0": "CT"}}))
    caplog.set_level(logging.WARNING)
    data = load_labelled_data(tmp_path, TABLE)
    for case, truth in zip(data.cases, truths, strict=True):
        np.testing.assert_array_equal(case.volume.labels, truth)
    sartorius = TABLE.by_key("sartorius").label + 10
    assert data.unmapped == {str(sartorius): 2}
    present = set(np.unique(np.concatenate([t.ravel() for t in truths]))) - {0}
    assert set(data.missing) == {s.key for s in TABLE if s.label not in present}
    assert "piriformis" in data.missing and "gracilis" not in data.missing
    assert "sartorius" in data.missing  # its label was unmapped, so no case has it
    assert data.summary()["missing_structures"] == list(data.missing)
    logged = caplog.text
    assert f"label {sartorius} in 2 of 2 cases maps to no structure" in logged
    assert "piriformis" in logged


def _pairs_renumbered(tmp_path: Path, seeds: list[int]) -> list[Phantom]:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir(parents=True)
    phantoms = [_phantom(s) for s in seeds]
    for i, phantom in enumerate(phantoms):
        _save_nifti(tmp_path / "images" / f"p{i}.nii.gz", _nifti_ras(phantom.hu))
        _save_nrrd_lps(tmp_path / "labels" / f"p{i}.nrrd", _renumbered(phantom.labels))
    return phantoms


def test_label_map_file_by_value_and_background(tmp_path: Path) -> None:
    phantoms = _pairs_renumbered(tmp_path / "data", [9])
    femur = TABLE.by_key("femur").label
    lines = ["[labels]"] + [f'{s.label + 10} = "{s.key}"' for s in TABLE if s.key != "femur"]
    lines.append(f'{femur + 10} = "background"')
    map_file = tmp_path / "map.toml"
    map_file.write_text("\n".join(lines) + "\n")
    data = load_labelled_data(tmp_path / "data", TABLE, map_file)
    expected = np.where(phantoms[0].labels == femur, 0, phantoms[0].labels)
    _assert_case(data.cases[0].volume, phantoms[0], expected)
    assert data.formats == ("nifti", "nrrd") and not data.unmapped
    assert "femur" in data.missing and data.mapping == "label map map.toml"


def test_label_map_names_in_json_and_unknown_key_refused(tmp_path: Path) -> None:
    labels = {"background": 0, **{s.key: s.label + 10 for s in TABLE}, "Gluteus Max": 50}
    _nnunet(tmp_path / "data", [10], labels)
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"labels": {"gluteus max": "gluteus_maximus"}}))
    data = load_labelled_data(tmp_path / "data", TABLE, good)
    assert data.mapping == "label map map.json + dataset.json names"
    bad = tmp_path / "bad.toml"
    bad.write_text('[labels]\n3 = "gluteus_maximum"\n')
    with pytest.raises(InvalidInputError, match="'gluteus_maximum', which is not a structure"):
        load_labelled_data(tmp_path / "data", TABLE, bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[labels]\n"kidney" = "femur"\n')
    with pytest.raises(InvalidInputError, match="'kidney' is neither a label value nor a label name"):
        load_labelled_data(tmp_path / "data", TABLE, unknown)


def test_bad_inputs_name_the_folder_or_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match=f"{empty}: no labelled data found; expected .*nnU-Net"):
        load_labelled_data(empty, TABLE)
    broken = tmp_path / "broken"
    _pairs_renumbered(broken, [11])
    (broken / "images" / "p0.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InvalidInputError, match=r"images/p0\.nii\.gz: not a NIfTI file"):
        load_labelled_data(broken, TABLE)
    truncated = tmp_path / "truncated"
    _pairs_renumbered(truncated, [11])
    whole = (truncated / "images" / "p0.nii.gz").read_bytes()
    (truncated / "images" / "p0.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInputError, match=r"images/p0\.nii\.gz: cannot read as nifti"):
        load_labelled_data(truncated, TABLE)
    shape = tmp_path / "shape"
    phantom = _phantom(12)
    shape.mkdir()
    _save_nifti(shape / "x_image.nii.gz", _nifti_ras(phantom.hu))
    _save_nifti(shape / "x_label.nii.gz", _nifti_ras(phantom.labels[:, :, :32]))
    with pytest.raises(InvalidInputError, match=r"x_label\.nii\.gz: label shape .* differs"):
        load_labelled_data(shape, TABLE)
    fractional = tmp_path / "fractional"
    fractional.mkdir()
    _save_nifti(fractional / "x_image.nii.gz", _nifti_ras(phantom.hu))
    _save_nifti(fractional / "x_label.nii.gz", _nifti_ras(phantom.labels * np.float32(0.5)))
    with pytest.raises(InvalidInputError, match=r"x_label\.nii\.gz: label map has non-integer values"):
        load_labelled_data(fractional, TABLE)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    _save_nifti(lonely / "x_image.nii.gz", _nifti_ras(phantom.hu))
    with pytest.raises(InvalidInputError, match="no label file for case 'x'"):
        load_labelled_data(lonely, TABLE)
    half = tmp_path / "half"
    (half / "images").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match=f"{half}: an images/ folder needs a labels/ folder"):
        load_labelled_data(half, TABLE)


def _app() -> typer.Typer:
    from acqflow.plugins.ct_muscle.commands import evaluate, train

    app = typer.Typer()
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    return app


def test_cases_split_whole_and_unknown_key_is_a_usage_error(tmp_path: Path) -> None:
    from acqflow.plugins.ct_muscle.commands import _training_sets

    phantoms = _pairs_renumbered(tmp_path / "data", [13, 14, 15])
    train_set, val_set, summary = _training_sets(TABLE, tmp_path / "data", None, 0, 1, 0)
    assert summary["train_cases"] == 2 and summary["validation_cases"] == 1
    assert len(val_set) == 1 and len(train_set) == 2
    # source values are +10: by table value most are out of range, so they stay unmapped
    assert summary["unmapped_labels"]
    np.testing.assert_allclose(val_set[0].hu, phantoms[0].hu, atol=1e-3)
    for volume, phantom in zip(train_set, phantoms[1:], strict=True):
        np.testing.assert_allclose(volume.hu, phantom.hu, atol=1e-3)
    bad = tmp_path / "bad.toml"
    bad.write_text('[labels]\n11 = "no_such_muscle"\n')
    result = CliRunner().invoke(_app(), ["train", "--data-dir", str(tmp_path / "data"),
                                         "--label-map", str(bad), "--validation", "1",
                                         "--output", str(tmp_path / "weights")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "no_such_muscle" in result.output and "--label-map" in result.output


def test_train_and_evaluate_on_nifti_cases(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for sub in ("images", "labels"):
        (data_dir / sub).mkdir(parents=True)
    for i, seed in enumerate([16, 17, 18]):
        phantom = _phantom(seed)
        _save_nifti(data_dir / "images" / f"case{i}.nii.gz", _nifti_ras(phantom.hu))
        _save_nifti(data_dir / "labels" / f"case{i}.nii.gz", _nifti_slices_first(phantom.labels))
    out = tmp_path / "weights"
    runner = CliRunner()
    result = runner.invoke(_app(), ["train", "--data-dir", str(data_dir), "--validation", "1",
                                    "--epochs", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "ct_muscle.safetensors").is_file()
    card = json.loads((out / "ct_muscle.json").read_text())
    data = card["training"]["data"]
    assert data["source"] == "nifti" and data["layout"] == "pairs" and data["cases"] == 3
    assert data["train_cases"] == 2 and data["validation_cases"] == 1
    present = set(np.unique(np.concatenate([_phantom(s).labels.ravel() for s in (16, 17, 18)])))
    assert data["missing_structures"] == [s.key for s in TABLE if s.label not in present]
    assert "phantoms" not in card["notes"]
    result = runner.invoke(_app(), ["evaluate", "--weights-dir", str(out), "--data-dir", str(data_dir),
                                    "--samples", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["volumes"] == 3 and report["data"]["source"] == "nifti"


def test_nifti_matches_the_dicom_loader_for_the_same_world_geometry(tmp_path: Path) -> None:
    from acqflow.plugins.common.volume import series_to_volume
    from acqflow.plugins.ct_muscle.phantoms import demo_ct_series

    dicom = series_to_volume(demo_ct_series(19, SMALL))
    phantom = generate_phantom(19, SMALL)
    _, nr, nc = SMALL.shape
    px, dz = SMALL.pixel_spacing_mm, SMALL.slice_spacing_mm
    x0, y0 = -nc * px / 2, -nr * px / 2  # the demo series' LPS origin; its slices step feet-wards
    affine = np.array([[-px, 0, 0, -x0], [0, -px, 0, -y0], [0, 0, -dz, 0], [0, 0, 0, 1]])  # RAS
    _save_nifti(tmp_path / "d_image.nii.gz", (np.ascontiguousarray(_canonical(phantom.hu)), affine))
    _save_nifti(tmp_path / "d_label.nii.gz", (np.ascontiguousarray(_canonical(phantom.labels)), affine))
    (case,) = load_labelled_data(tmp_path, TABLE).cases
    np.testing.assert_allclose(case.volume.hu, phantom.hu[::-1], atol=1e-3)
    # the DICOM series stores rounded integers from -1024 HU up
    np.testing.assert_allclose(np.clip(case.volume.hu, -1024, None), dicom.array, atol=0.51)
    np.testing.assert_array_equal(case.volume.labels, phantom.labels[::-1])
    assert case.volume.spacing == dicom.geometry.spacing[1:]
    assert case.slice_spacing_mm == pytest.approx(dicom.geometry.spacing[0])


def test_assumptions_and_unmapped_labels_are_printed(tmp_path: Path, tiny_weights: Path) -> None:
    data_dir = tmp_path / "nnunet"
    labels = {"background": 0, **{s.key: s.label + 10 for s in TABLE if s.key != "femur"}}
    _nnunet(data_dir, [20], labels, channel_names={"0": "noNorm"}, file_ending=".nrrd")
    with pytest.raises(InvalidInputError, match="no image/label pairs"):  # .nii.gz files, .nrrd ending
        load_labelled_data(data_dir, TABLE)
    phantom = _phantom(20)
    for sub in ("imagesTr", "labelsTr"):
        for path in (data_dir / sub).iterdir():
            path.unlink()
    # NRRD without a world frame: axes are taken as DICOM's columns, rows, slices
    nrrd.write(str(data_dir / "imagesTr" / "c_0000.nrrd"), np.ascontiguousarray(_canonical(phantom.hu)))
    nrrd.write(str(data_dir / "labelsTr" / "c.nrrd"),
               np.ascontiguousarray(_canonical(_renumbered(phantom.labels))))
    data = load_labelled_data(data_dir, TABLE)
    np.testing.assert_array_equal(data.cases[0].volume.labels,
                                  np.where(phantom.labels == TABLE.by_key("femur").label, 0, phantom.labels))
    assert data.cases[0].volume.spacing == (1.0, 1.0) and "femur" in data.missing
    result = CliRunner().invoke(_app(), ["evaluate", "--weights-dir", str(tiny_weights),
                                         "--data-dir", str(data_dir), "--samples", "1"])
    assert result.exit_code == 0, result.output
    printed = result.stderr
    assert "warning:" in printed and "'noNorm', not 'CT'" in printed
    assert "no 'space directions'" in printed
    femur = TABLE.by_key("femur").label + 10
    assert f"label {femur} in 1 of 1 cases maps to no structure" in printed
    assert "structures in no case" in printed and "femur" in printed
    report = json.loads(result.stdout)
    assert report["data"]["source"] == "nrrd" and report["data"]["missing_structures"] == list(data.missing)
