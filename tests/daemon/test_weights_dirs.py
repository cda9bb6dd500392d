"""Per-pipeline weights folders: one pipeline's trained weights never stop another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from acqflow.daemon.config import load_settings
from acqflow.daemon.errors import ConfigError, PipelineLoadError
from acqflow.daemon.preflight import check_referenced_files
from acqflow.daemon.registry import PipelineRegistry
from acqflow.models.store import bundled_weights_dir


def _retrained_staining(folder: Path, version: str) -> Path:
    """A weights folder holding only virtual-staining weights, as after a training run."""
    folder.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(bundled_weights_dir() / f"virtual_staining{suffix}", folder)
    card = json.loads((folder / "virtual_staining.json").read_text())
    card["version"] = version
    (folder / "virtual_staining.json").write_text(json.dumps(card))
    return folder


def test_a_table_names_folders_per_pipeline_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "acqflow.toml"
    config.write_text('[pipelines.weights_dir]\nvirtual-staining = "trained/staining"\n')
    settings = load_settings(config, environ={})
    assert settings.pipelines.weights_for("virtual-staining") == tmp_path / "trained" / "staining"
    assert settings.pipelines.weights_for("ct-muscle") is None  # bundled weights
    single = load_settings(None, environ={}, overrides={"pipelines.weights_dir": str(tmp_path)})
    assert single.pipelines.weights_for("ct-muscle") == tmp_path


def test_trained_staining_weights_leave_ct_on_its_bundled_weights(tmp_path: Path) -> None:
    folder = _retrained_staining(tmp_path / "staining", "9.9.9")
    table = {"virtual-staining": str(folder)}
    settings = load_settings(None, environ={}, overrides={"pipelines.weights_dir": table})
    registry = PipelineRegistry(settings.pipelines, "cpu")
    registry.discover()
    staining = registry.get("virtual-staining")
    assert staining.card.version == "9.9.9"  # type: ignore[attr-defined]
    ct = registry.get("ct-muscle")
    assert ct.version and registry.describe()["ct-muscle"] == "loaded"


def test_one_folder_for_all_without_ct_weights_disables_only_ct(tmp_path: Path) -> None:
    folder = _retrained_staining(tmp_path / "all", "9.9.9")
    settings = load_settings(None, environ={}, overrides={"pipelines.weights_dir": str(folder)})
    registry = PipelineRegistry(settings.pipelines, "cpu")
    registry.discover()
    assert registry.get("virtual-staining").card.version == "9.9.9"  # type: ignore[attr-defined]
    with pytest.raises(PipelineLoadError, match="ct_muscle"):
        registry.get("ct-muscle")
    assert registry.describe()["virtual-staining"] == "loaded"


def test_preflight_names_the_pipeline_whose_folder_is_missing(tmp_path: Path) -> None:
    settings = load_settings(
        None, environ={}, overrides={"pipelines.weights_dir": {"ct-muscle": str(tmp_path / "nowhere")}}
    )
    with pytest.raises(ConfigError, match=r"pipelines\.weights_dir\.ct-muscle: not a folder"):
        check_referenced_files(settings)
