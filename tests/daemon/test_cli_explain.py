"""``acqflow config check --explain-names``: what the watcher would make of given files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from acqflow.daemon.cli import app, console


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 400)  # one table row per line


def _config(tmp_path: Path, watched: Path, naming: str = "auto") -> Path:
    config = tmp_path / "acqflow.toml"
    config.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[[folders]]\npath = "{watched}"\nnaming = "{naming}"\n'
    )
    return config


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    return path


def test_explain_names_shows_preset_and_fields_per_file(tmp_path: Path, wide_console: None) -> None:
    watched = tmp_path / "cytation"
    read = _image(watched / "scratch" / "241128_111010_Plate 1" / "B3_02_1_2_Phase Contrast_003.tif")
    elsewhere = _image(tmp_path / "loose" / "notes-scan.tif")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(_config(tmp_path, watched)),
                                      "--explain-names", str(read), str(elsewhere)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "B3_02_1_2" in line]
    for text in ("cytation", "scratch (layout folder)", "Plate 1", "B03", "2", "3",
                 "Phase Contrast", "2024-11-28 11:10:10", f"{watched} / auto"):
        assert text in row, text
    (loose,) = [line for line in result.output.splitlines() if "notes-scan" in line]
    assert "not watched: defaults" in loose and "nothing matched (naming = auto)" in loose
    assert "loose (watched folder)" in loose  # the defaults watch its own folder


def test_explain_names_json_lists_every_image_of_a_multi_image_file(tmp_path: Path) -> None:
    watched = tmp_path / "scope"
    path = watched / "stage.ome.tif"
    watched.mkdir()
    with tifffile.TiffWriter(path, ome=True) as writer:
        for i in range(2):
            writer.write(np.zeros((8, 8), np.uint8),
                         metadata={"Name": f"Pos{i}", "Channel": {"Name": ["BF"]}})
    result = CliRunner().invoke(app, ["config", "check", "--config", str(_config(tmp_path, watched)),
                                      "--explain-names", "--json", str(path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["series"], r["position"], r["channel"], r["scheme"]) for r in rows] == [
        (0, "Pos0", "BF", None), (1, "Pos1", "BF", None)]
    assert all(r["watched"] and r["experiment"] == "scope" and r["header"] == "read" for r in rows)


def test_explain_names_uses_the_folder_naming_setting(tmp_path: Path) -> None:
    watched = tmp_path / "in"
    path = _image(watched / "EXP1_B03_pos1_t005_phase.tif")
    result = CliRunner().invoke(app, ["config", "check", "--config",
                                      str(_config(tmp_path, watched, naming="incucyte")),
                                      "--explain-names", "--json", str(path)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["scheme"] is None and row["naming"] == "incucyte" and row["well"] is None
    assert "naming = incucyte" in row["note"]


def test_config_check_without_the_flag_is_unchanged(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "in")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "configuration valid" in result.output
    settings = json.loads(result.output[result.output.index("\n{") + 1:])
    assert settings["folders"][0]["naming"] == "auto"


@pytest.mark.parametrize(("arguments", "message"), [
    (["some.tif"], "only with --explain-names"),
    (["--explain-names"], "needs at least one FILE"),
    (["--explain-names", "missing.tif"], "missing.tif: no such file"),
])
def test_explain_names_errors_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    config = _config(tmp_path, tmp_path / "in")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(config), *arguments])
    assert result.exit_code == 2
    assert message in result.output
