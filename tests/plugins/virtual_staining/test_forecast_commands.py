"""``train efficiency-forecast`` / ``evaluate efficiency-forecast`` on tiny data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acqflow.models.store import read_card
from acqflow.plugins.virtual_staining.experiments import TRAINING_KINETICS, generate_experiments
from acqflow.plugins.virtual_staining.forecast import ARCHITECTURE, arguments_digest
from acqflow.plugins.virtual_staining.forecast_commands import app
from acqflow.plugins.virtual_staining.summary import efficiency_time_course, time_course_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("forecast")
    result = runner.invoke(app, ["train", "--generator", "synthetic", "--experiments", "8", "--wells", "12",
                                 "--held-out-experiments", "2", "--seed", "7", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_card_that_records_how_to_rebuild_it(trained: Path) -> None:
    card = read_card(trained, "efficiency_forecast")
    assert card.architecture == ARCHITECTURE and card.sha256 == arguments_digest(card.arguments)
    assert card.training["command"] == (
        f"acqflow train efficiency-forecast --generator synthetic --experiments 8 --wells 12 "
        f"--held-out-experiments 2 --seed 7 --output {trained}"
    )
    assert card.training["seed"] == 7 and card.training["threshold"] == 0.3
    assert card.training["data"]["kinetics"]["name"] == "training"
    assert card.metrics["held_out_seed"] == 8 and card.metrics["wells"] == 24
    fractions = [row["fraction"] for row in card.metrics["per_fraction"]]
    assert fractions == [0.2, 0.3, 0.5, 0.7]


def test_evaluate_reports_the_forecaster_and_both_baselines_as_json(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["evaluate", "--weights", str(trained), "--generator", "synthetic",
                                 "--experiments", "2", "--wells", "12", "--fractions", "0.3,0.5",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "evaluating per observed fraction" in result.output  # plain progress lines, not a TTY
    report = json.loads(out.read_text())
    assert report["threshold"] == 0.3 and report["data"]["kinetics"]["name"] == "held-out"
    assert report["data"]["seed"] == 5_000_000
    for row in report["fractions"]:
        assert row["wells"] == 24
        for method in ("forecaster", "last_value", "logistic"):
            assert 0 <= row[f"{method}_accuracy"] <= 1 and row[f"{method}_mae"] >= 0


def _exported(folder: Path) -> tuple[list[Path], Path]:
    """Two plates as the daemon exports them (efficiency.csv) and their measured finals."""
    files, rows = [], []
    for plate in generate_experiments(3, TRAINING_KINETICS, seed=77, wells=8):
        path = folder / f"{plate.name}.csv"
        path.write_bytes(time_course_csv(plate.name, efficiency_time_course(plate.records)))
        files.append(path)
        rows += [f"{plate.name},{well},{value:.4f}" for well, value in plate.finals.items()]
    finals = folder / "finals.csv"
    finals.write_text("experiment,well,final_efficiency\n" + "\n".join(rows) + "\n")
    return files, finals


def test_train_and_evaluate_on_your_own_exported_experiments(tmp_path: Path) -> None:
    files, finals = _exported(tmp_path)
    sources = [arg for path in files for arg in ("--courses", str(path))]
    out = tmp_path / "model"
    trained = runner.invoke(app, ["train", *sources, "--finals", str(finals), "--no-image-features",
                                  "--threshold", "0.4", "--output", str(out), "--quiet"])
    assert trained.exit_code == 0, trained.output
    card = read_card(out, "efficiency_forecast")
    assert card.training["data"]["source"] == "csv" and card.training["data"]["wells"] == 24
    assert card.training["threshold"] == 0.4 and card.metrics == {}
    assert not any(name.startswith("probability") for name in card.arguments["features"])
    evaluated = runner.invoke(app, ["evaluate", "--weights", str(out), *sources, "--finals", str(finals),
                                    "--fractions", "0.5", "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--experiments", "2"], "either --generator synthetic or --courses"),
        (["train", "--generator", "synthetic", "--courses", "x.csv"], "either --generator"),
        (["train", "--courses", "x.csv"], "needs --finals"),
        (["evaluate", "--generator", "synthetic", "--fractions", "0.5,1.5"], "--fractions must lie"),
        (["train", "--generator", "synthetic", "--experiments", "1", "--wells", "4"], "at least 8 wells"),
    ],
)
def test_bad_options_are_one_clear_message(arguments: list[str], message: str, tmp_path: Path) -> None:
    output = ["--output", str(tmp_path)] if arguments[0] == "train" else []
    result = runner.invoke(app, [*arguments, *output])
    assert result.exit_code != 0
    assert message in _said(result.output), result.output


def _said(output: str) -> str:
    """The text of a CLI message without rich's box and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_a_bad_csv_names_the_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.csv").write_text("experiment,well,efficiency,elapsed_h\nE,A01,1.7,0\n")
    Path("f.csv").write_text("experiment,well,final_efficiency\nE,A01,0.5\n")
    result = runner.invoke(app, ["train", "--courses", "c.csv", "--finals", "f.csv", "--output", "w"])
    assert result.exit_code != 0 and "c.csv:2: efficiency 1.7 is outside 0-1" in _said(result.output)
