"""The CLI as a user reads it in an 80x24 terminal (a pseudo-terminal, the real
``acqflow`` entry point): every header word and every value whole, no line wider than 80."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from acqflow.plugins.virtual_staining.synthetic import FILE_NAME_PATTERN
from tests.support.cli_terminal import COURSE, DEAD_ERROR, CliState, in_terminal, prepared_state


@pytest.fixture
def state(tmp_path: Path) -> CliState:
    return prepared_state(tmp_path)


def _fits(lines: list[str], columns: int = 80) -> None:
    """No line wider than ``columns`` but a path alone on its line (the terminal wraps it;
    breaking it would spoil copying it), and nothing cut with an ellipsis."""
    wide = [line for line in lines if len(line) > columns and not Path(line).is_absolute()]
    assert not wide, wide
    assert not any("…" in line for line in lines), "a value was cut"


def _words(output: str) -> str:
    """The text without table rules, so that a value wrapped in its cell reads as words."""
    return " ".join(re.sub(r"[│┃┏┓┗┛┡┩└┘├┤┳┻╇╋━─┬┴┼]", " ", output).split())


def test_status_reads_whole_at_80_columns(state: CliState) -> None:
    run = in_terminal("status", "--config", str(state.config))
    assert run.returncode == 0, run.output
    _fits(run.lines)
    for word in ("daemon: not running", "arrival kind", "routed", "pipeline", "virtual-staining",
                 "dead", "done", "destination", "exports"):
        assert word in run.output, word


def test_jobs_shows_input_names_and_the_whole_error_at_80_columns(state: CliState) -> None:
    run = in_terminal("jobs", "--config", str(state.config))
    assert run.returncode == 0, run.output
    _fits(run.lines)
    for header in ("job", "pipeline", "state", "tries", "input"):
        assert header in run.lines[2], header
    for path in state.inputs:
        assert path.name in run.output  # on one line, never folded
    assert DEAD_ERROR in _words(run.output)


def test_report_efficiency_is_a_readable_table_at_80_columns(state: CliState) -> None:
    run = in_terminal("report", "efficiency", "EXP1", "--config", str(state.config))
    assert run.returncode == 0, run.output
    _fits(run.lines)
    words = _words(run.output)
    for header in ("well", "time", "point", "elapsed", "efficiency", "final-day", "forecast",
                   "interval", "call"):
        assert header in words, header
    rows = [line for line in run.lines if re.match(r"│ [A-P]\d\d ", line)]
    assert len(rows) == len(COURSE)
    for row, (well, timepoint, hours, efficiency, final, low, high, call) in zip(rows, COURSE, strict=True):
        elapsed = f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells == [well, str(timepoint), elapsed, f"{100 * efficiency:.1f}%", f"{100 * final:.1f}%",
                         f"{100 * low:.0f}-{100 * high:.0f}%", call]
    assert str(state.csv_path.parent) in run.lines
    assert "elapsed_s" not in run.output and "1790000000" not in run.output  # no raw CSV columns


def test_report_efficiency_json_and_csv(state: CliState) -> None:
    run = in_terminal("report", "efficiency", "EXP1", "--json", "--config", str(state.config))
    assert run.returncode == 0, run.output
    rows = json.loads(run.output)
    assert [(r["well"], r["timepoint"], r["efficiency"]) for r in rows] == [
        (c[0], c[1], pytest.approx(c[3])) for c in COURSE
    ]
    assert rows[0]["forecast_call"] == "sufficient" and rows[0]["elapsed_s"] == 0.0
    verbatim = in_terminal("report", "efficiency", "EXP1", "--csv", "--config", str(state.config))
    assert verbatim.output.replace("\n", "") == state.csv_path.read_text().replace("\n", "")


def test_models_shows_headline_metrics_of_nested_cards_at_80_columns(state: CliState) -> None:
    run = in_terminal("models", "--config", str(state.config))
    assert run.returncode == 0, run.output
    _fits(run.lines)
    for header in ("model", "version", "headline metrics", "sha256", "found through"):
        assert header in run.output, header
    (ct,) = [line for line in run.lines if line.startswith("│ ct_muscle ")]
    assert re.search(r"held_out\.mean_dice 0\.\d{3}", ct), ct  # nested in the card: metrics.held_out
    for text in ("virtual_staining", "f1 0.", "efficiency_forecast", "mr_to_ct", "mean_dice_translated",
                 "virtual-staining", "VirtualStainingPipeline", "acqflow.plugins.virtual_staining.pipeline:"):
        assert text in run.output, text


def test_json_of_status_jobs_models_has_stable_keys(state: CliState) -> None:
    status = json.loads(in_terminal("status", "--json", "--config", str(state.config)).output)
    assert set(status) == {"daemon", "arrivals", "jobs", "held", "exports"}
    assert status["daemon"]["running"] is False
    assert {(j["state"], j["count"]) for j in status["jobs"]} == {("dead", 1), ("done", 1)}
    jobs = json.loads(in_terminal("jobs", "--json", "--config", str(state.config)).output)
    assert [set(j) for j in jobs] == [{
        "id", "pipeline", "state", "attempts", "interrupted", "hold_reason", "arrival", "input",
        "input_kind", "created_at", "started_at", "finished_at", "error",
    }] * 2
    dead, done = jobs
    assert dead["input"] == str(state.inputs[1]) and dead["error"] == DEAD_ERROR
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"] >= done["created_at"]
    models = json.loads(in_terminal("models", "--json", "--config", str(state.config)).output)
    [ct] = [c for w in models["weights"] for c in w["cards"] if c["name"] == "ct_muscle"]
    assert set(ct) == {"card", "name", "version", "architecture", "sha256", "headline_metrics", "error"}
    assert 0 < ct["headline_metrics"]["held_out.mean_dice"] <= 1


def test_train_help_is_user_help_with_the_whole_default_pattern() -> None:
    run = in_terminal("train", "virtual-staining", "--help")
    assert run.returncode == 0, run.output
    assert not [line for line in run.lines if len(line) > 80]
    assert "Raises" not in run.output and "typer.BadParameter" not in run.output
    joined = "".join(line.strip(" │") for line in run.lines)  # undo rich's folding of the long regex
    assert FILE_NAME_PATTERN in joined
    assert "[default: (the regex shown above)]" in _words(run.output)
    assert "…" not in run.output  # no option name or word cut
    for command, evaluated in (("ct-muscle", "ct-muscle"), ("mr-to-ct", "mr-muscle"),
                               ("efficiency-forecast", "efficiency-forecast")):
        shown = in_terminal("evaluate", evaluated, "--help")
        assert shown.returncode == 0, shown.output
        assert "Raises" not in shown.output and "Returns" not in shown.output
        assert "…" not in shown.output
        trained = in_terminal("train", command, "--help")
        assert "--output" in trained.output and "[required]" in trained.output
        assert "…" not in trained.output
