from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.experiments import (
    DAY_S,
    HELD_OUT_KINETICS,
    TRAINING_KINETICS,
    Kinetics,
    generate_experiments,
    well_name,
)
from acqflow.plugins.virtual_staining.forecast_data import courses_from_experiments
from acqflow.plugins.virtual_staining.summary import efficiency_time_course


def test_same_seed_same_experiments_other_seed_other_ones() -> None:
    first = generate_experiments(2, TRAINING_KINETICS, seed=11, wells=6)
    again = generate_experiments(2, TRAINING_KINETICS, seed=11, wells=6)
    other = generate_experiments(2, TRAINING_KINETICS, seed=12, wells=6)
    assert first == again
    assert [e.records for e in first] != [e.records for e in other]
    # experiment i depends only on (seed, i): a longer run starts with the same plates
    assert generate_experiments(3, TRAINING_KINETICS, seed=11, wells=6)[:2] == first


def test_records_look_like_the_pipelines_and_courses_follow_the_kinetics() -> None:
    (plate,) = generate_experiments(1, TRAINING_KINETICS, seed=3, wells=24)
    record = plate.records[0]
    assert {"identity", "experiment", "well", "position", "timepoint", "acquired_at", "positive_fraction",
            "blocks_total", "blocks_positive", "mean_probability"} <= set(record)
    assert len({r["identity"] for r in plate.records}) == len(plate.records)
    assert set(plate.finals) == {well_name(i) for i in range(24)}
    assert all(0.0 <= v <= 0.9 for v in plate.finals.values())
    points = efficiency_time_course(plate.records)
    last_day = max(p.elapsed_s or 0.0 for p in points) / DAY_S
    assert 9.5 < last_day < 10.5  # the last images are taken on the final day
    courses = courses_from_experiments([plate])
    assert len(courses) == 24
    end = np.array([c.efficiency[-1] for c in courses if c.fraction[-1] > 0.95])
    finals = np.array([c.final for c in courses if c.fraction[-1] > 0.95])
    # on the final day the measurement is the final efficiency plus noise and the low-end bias
    assert np.corrcoef(end, finals)[0, 1] > 0.95 and np.abs(end - finals).mean() < 0.06
    start = np.array([c.efficiency[0] for c in courses])
    assert start.max() < 0.15  # nobody is positive on day 0 beyond the false-positive floor


def test_outcomes_are_bimodal_and_the_early_probability_carries_them() -> None:
    courses = courses_from_experiments(generate_experiments(6, TRAINING_KINETICS, seed=5))
    finals = np.array([c.final for c in courses])
    assert ((finals >= 0.4).mean() > 0.4) and ((finals < 0.25).mean() > 0.2)
    early = [c.until(0.3) for c in courses]
    rise = np.array([c.probability[-1] - c.probability[0] for c in early if c is not None])
    assert np.corrcoef(rise, finals)[0, 1] > 0.6  # the premise of an image-based early forecast


def test_held_out_kinetics_are_settings_training_never_sees() -> None:
    differs = [f.name for f in dataclasses.fields(Kinetics)
               if getattr(TRAINING_KINETICS, f.name) != getattr(HELD_OUT_KINETICS, f.name)]
    assert {"timepoints", "onset", "rate", "noise", "low_bias", "background", "positions"} <= set(differs)
    # no time point count in common
    train_counts = set(range(TRAINING_KINETICS.timepoints[0], TRAINING_KINETICS.timepoints[1] + 1))
    held_counts = set(range(HELD_OUT_KINETICS.timepoints[0], HELD_OUT_KINETICS.timepoints[1] + 1))
    assert not train_counts & held_counts
    plates = generate_experiments(4, HELD_OUT_KINETICS, seed=9)
    counts = {len({r["timepoint"] for r in p.records}) for p in plates}
    assert counts <= held_counts


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="onset"):
        dataclasses.replace(TRAINING_KINETICS, onset=(0.6, 0.3))
    with pytest.raises(ValueError, match="outcome shares"):
        dataclasses.replace(TRAINING_KINETICS, outcomes=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="timepoints"):
        dataclasses.replace(TRAINING_KINETICS, timepoints=(1, 3))
    with pytest.raises(ValueError, match="experiment"):
        generate_experiments(0)
    with pytest.raises(ValueError, match="96-well"):
        well_name(96)
