"""The forecast in the pipeline's summaries: CSV columns, plot band, report table, figures,
the threshold option, and summaries without a forecast model."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

from acqflow.models.store import WeightsError, bundled_weights_dir
from acqflow.plugins.api import PipelineContext, PipelineResult, RecordValue
from acqflow.plugins.virtual_staining.experiments import HELD_OUT_KINETICS, generate_experiments
from acqflow.plugins.virtual_staining.pipeline import VirtualStainingOptions, VirtualStainingPipeline
from acqflow.plugins.virtual_staining.summary import CSV_COLUMNS

FORECAST_COLUMNS = ["course_fraction", "forecast_final", "forecast_low", "forecast_high", "forecast_call"]


@pytest.fixture(scope="module")
def plate() -> tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]]:
    """The records of one held-out plate up to day 5 of 10, in acquisition order."""
    (experiment,) = generate_experiments(1, HELD_OUT_KINETICS, seed=4242, wells=6)
    first = min(float(r["acquired_at"] or 0) for r in experiment.records)
    early = [r for r in experiment.records if float(r["acquired_at"] or 0) - first <= 5.2 * 86400]
    return experiment.name, early, experiment.finals


def _pipeline(**options: object) -> VirtualStainingPipeline:
    loaded = VirtualStainingPipeline()
    loaded.load(PipelineContext(device="cpu", options=options))
    return loaded


def _rows(result: PipelineResult) -> list[dict[str, str]]:
    files = {f.name: f.data for f in result.files}
    return list(csv.DictReader(io.StringIO(files["efficiency.csv"].decode())))


def test_summary_carries_each_wells_forecast(
    plate: tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]]
) -> None:
    name, records, _ = plate
    result = _pipeline().summarize(name, records)
    rows = _rows(result)
    assert list(rows[0]) == list(CSV_COLUMNS) and all(c in CSV_COLUMNS for c in FORECAST_COLUMNS)
    assert all(r["forecast_call"] in ("sufficient", "insufficient") for r in rows)
    for row in rows:
        low, value, high = (float(row[c]) for c in ("forecast_low", "forecast_final", "forecast_high"))
        assert 0 <= low <= value <= high <= 1 and 0 <= float(row["course_fraction"]) <= 0.53
        assert float(row["mean_probability"]) > 0
    # the forecast is updated at every time point: a well's rows hold different forecasts
    a01 = [r for r in rows if r["well"] == "A01"]
    assert len({r["forecast_final"] for r in a01}) == len(a01) > 2
    figures = {(f.name, f.labels["well"], f.labels.get("estimate")): f.value for f in result.figures}
    wells = {r["well"] for r in rows}
    for well in wells:
        latest = [r for r in rows if r["well"] == well][-1]
        assert figures[("forecast_final_efficiency", well, "forecast")] == pytest.approx(
            float(latest["forecast_final"]), abs=1e-6)
        assert figures[("forecast_final_efficiency", well, "low")] <= figures[
            ("forecast_final_efficiency", well, "high")]
        insufficient = latest["forecast_call"] == "insufficient"
        assert figures[("forecast_insufficient", well, None)] == float(insufficient)
        # the latest point seen (a well may miss the latest time point)
        assert figures[("forecast_course_fraction", well, None)] == pytest.approx(
            float(latest["course_fraction"]), abs=1e-4)
    assert max(v for (n, _, _), v in figures.items() if n == "forecast_course_fraction") > 0.4
    assert {f.labels["experiment"] for f in result.figures} == {name}
    assert "forecast insufficient" in result.summary


def test_plot_and_report_show_the_forecast(
    plate: tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]]
) -> None:
    name, records, _ = plate
    with_forecast = _pipeline().summarize(name, records)
    without = _pipeline(forecast={"enabled": False}).summarize(name, records)
    files = {f.name: f.data for f in with_forecast.files}
    plain = {f.name: f.data for f in without.files}
    assert Image.open(io.BytesIO(files["efficiency.png"])).size == (640, 400)
    assert files["efficiency.png"] != plain["efficiency.png"]  # the band and the final-day line
    page = files["report.html"].decode()
    assert "Forecast of the final-day efficiency (day 10)" in page and "Sufficient from 30 %" in page
    assert page.count('<td class="insufficient">') + page.count('<td class="sufficient">') == 6
    assert "No efficiency forecast model is loaded" in plain["report.html"].decode()


def test_the_call_follows_the_threshold_option(
    plate: tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]]
) -> None:
    name, records, _ = plate
    base = _rows(_pipeline().summarize(name, records))
    value = float(base[-1]["forecast_final"])
    well = base[-1]["well"]
    calls = {}
    for threshold in (max(value - 0.02, 0.01), min(value + 0.02, 0.99)):
        result = _pipeline(forecast={"threshold": threshold}).summarize(name, records)
        calls[threshold] = _rows(result)[-1]["forecast_call"]
        gauge = [f for f in result.figures if f.name == "forecast_insufficient" and f.labels["well"] == well]
        assert gauge[0].value == float(calls[threshold] == "insufficient")
    assert list(calls.values()) == ["sufficient", "insufficient"]


def test_course_length_option_moves_the_course_position(
    plate: tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]]
) -> None:
    name, records, _ = plate
    longer = _rows(_pipeline(forecast={"course_days": 20}).summarize(name, records))
    assert max(float(r["course_fraction"]) for r in longer) < 0.27


def test_without_a_forecast_model_summaries_are_still_made(
    tmp_path: Path,
    plate: tuple[str, list[Mapping[str, RecordValue]], Mapping[str, float]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, records, _ = plate
    for file in ("virtual_staining.json", "virtual_staining.safetensors"):
        shutil.copy(bundled_weights_dir() / file, tmp_path / file)
    pipeline = VirtualStainingPipeline()
    with caplog.at_level(logging.WARNING):
        pipeline.load(PipelineContext(device="cpu", weights_dir=tmp_path))
    assert "no efficiency forecast model" in caplog.text
    result = pipeline.summarize(name, records)
    assert {f.name for f in result.files} == {"efficiency.csv", "efficiency.png", "report.html"}
    rows = _rows(result)
    assert rows and all(r[c] == "" for r in rows for c in FORECAST_COLUMNS)
    assert {f.name for f in result.figures} == {"differentiation_efficiency"}


def test_a_tampered_or_foreign_forecast_card_is_refused(tmp_path: Path) -> None:
    for file in ("virtual_staining.json", "virtual_staining.safetensors", "efficiency_forecast.json"):
        shutil.copy(bundled_weights_dir() / file, tmp_path / file)
    card_path = tmp_path / "efficiency_forecast.json"
    card = json.loads(card_path.read_text())
    card["arguments"]["bins"][5]["intercept"] += 0.1
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="sha256"):
        VirtualStainingPipeline().load(PipelineContext(device="cpu", weights_dir=tmp_path))
    card["architecture"] = "acqflow.models.tile_cnn.TileCNN"
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="not an efficiency forecaster"):
        VirtualStainingPipeline().load(PipelineContext(device="cpu", weights_dir=tmp_path))


@pytest.mark.parametrize(
    ("forecast", "message"),
    [
        ({"threshhold": 0.3}, "unknown forecast options"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"course_days": -1}, "course_days"),
        ({"final_timepoint": 0}, "final_timepoint"),
        ({"enabled": "yes"}, "enabled"),
        (0.3, "must be a table"),
    ],
)
def test_invalid_forecast_options(forecast: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VirtualStainingOptions.from_mapping({"forecast": forecast})
