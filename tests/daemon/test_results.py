"""Pipeline figures reach the metrics acqflow.daemon.metrics defines for them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from acqflow.daemon.sinks.results import publish_figure
from acqflow.plugins.api import Figure

PIPELINE = "virtual-staining"


def test_forecast_figures_map_onto_their_own_gauges() -> None:
    well = {"experiment": "EXPF", "well": "B07"}
    publish_figure(PIPELINE, Figure("forecast_final_efficiency", 0.42, {**well, "estimate": "forecast"}))
    publish_figure(PIPELINE, Figure("forecast_final_efficiency", 0.3, {**well, "estimate": "low"}))
    publish_figure(PIPELINE, Figure("forecast_insufficient", 1.0, well))
    publish_figure(PIPELINE, Figure("forecast_course_fraction", 0.5, well))
    sample = REGISTRY.get_sample_value
    assert sample("acqflow_forecast_final_efficiency", {**well, "estimate": "forecast"}) == 0.42
    assert sample("acqflow_forecast_final_efficiency", {**well, "estimate": "low"}) == 0.3
    assert sample("acqflow_forecast_insufficient", well) == 1.0
    assert sample("acqflow_forecast_course_seen_ratio", well) == 0.5
    generic = {"pipeline": PIPELINE, "figure": "forecast_insufficient", "label": "experiment=EXPF,well=B07"}
    assert sample("acqflow_pipeline_figure", generic) is None


def test_other_figures_stay_generic() -> None:
    publish_figure("ct-muscle", Figure("structure_uncertainty", 0.2, {"structure": "gmed_l"}))
    labels = {"pipeline": "ct-muscle", "figure": "structure_uncertainty", "label": "structure=gmed_l"}
    assert REGISTRY.get_sample_value("acqflow_pipeline_figure", labels) == 0.2
