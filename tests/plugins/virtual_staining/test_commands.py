from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acqflow.models.store import read_card
from acqflow.plugins.virtual_staining.__main__ import app
from acqflow.plugins.virtual_staining.evaluation import ACCEPTANCE

runner = CliRunner()


def test_demo_data_then_evaluate_bundled_weights_on_files(tmp_path: Path) -> None:
    """Files matched by name pattern, 8-bit, weights from the package; metrics as JSON."""
    folder = tmp_path / "acq"
    written = runner.invoke(
        app,
        [
            "demo-data",
            "--output",
            str(folder),
            "--experiments",
            "1",
            "--wells",
            "4",
            "--positions",
            "2",
            "--timepoints",
            "2",
            "--size",
            "256",
            "--bit-depth",
            "8",
            "--seed",
            "99",
        ],
    )
    assert written.exit_code == 0, written.output
    assert len(list(folder.glob("*_phase.tif"))) == 16 and len(list(folder.glob("*_gfp.tif"))) == 16
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", "--data", str(folder), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 16
    assert all(metrics[key] >= minimum for key, minimum in ACCEPTANCE.items()), metrics


def test_evaluate_with_manifest(tmp_path: Path) -> None:
    runner.invoke(
        app,
        [
            "demo-data",
            "--output",
            str(tmp_path),
            "--wells",
            "2",
            "--positions",
            "1",
            "--timepoints",
            "2",
            "--size",
            "128",
        ],
    )
    manifest = tmp_path / "pairs.csv"
    rows = [f"{p.name},{p.name.replace('_phase', '_gfp')}" for p in sorted(tmp_path.glob("*_phase.tif"))]
    manifest.write_text("phase,fluorescence\n" + "\n".join(rows) + "\n")
    result = runner.invoke(
        app, ["evaluate", "--manifest", str(manifest), "--threshold", "0.5", "--stride", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output


def test_exactly_one_data_source() -> None:
    result = runner.invoke(app, ["evaluate", "--synthetic", "1", "--data", "."])
    assert result.exit_code != 0 and "exactly one" in result.output


@pytest.mark.slow
def test_train_command_writes_weights_card_and_resumes(tmp_path: Path) -> None:
    args = [
        "train",
        "--synthetic",
        "3",
        "--synthetic-size",
        "128",
        "--trials",
        "2",
        "--max-epochs",
        "2",
        "--block-sizes",
        "32",
        "--blocks-per-epoch",
        "1024",
        "--seed",
        "4",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "model"),
        "--work-dir",
        str(tmp_path / "work"),
        "--quiet",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    card = read_card(tmp_path / "model", "virtual_staining")
    assert card.architecture == "acqflow.models.tile_cnn.TileCNN" and card.sha256
    assert card.training["command"] == (
        f"acqflow train virtual-staining --output {tmp_path / 'model'} --synthetic 3"
        " --synthetic-size 128 --block-sizes 32 --trials 2 --max-epochs 2"
        " --blocks-per-epoch 1024 --seed 4 --threads 1"
    )
    assert card.training["search"]["completed"] == 2
    assert {"f1", "accuracy", "precision", "recall", "roc_auc", "efficiency_pearson_r", "dice"} <= set(
        card.metrics
    )
    again = runner.invoke(app, [*args[:6], "3", *args[7:]])  # one more trial on the same study
    assert again.exit_code == 0, again.output
    assert read_card(tmp_path / "model", "virtual_staining").training["search"]["completed"] == 3
