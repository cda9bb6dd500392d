"""Courses from acqflow's own efficiency.csv plus a finals CSV, and their validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.experiments import TRAINING_KINETICS, generate_experiments
from acqflow.plugins.virtual_staining.forecast_data import (
    CourseHorizon,
    courses_from_experiments,
    courses_from_points,
    read_courses,
)
from acqflow.plugins.virtual_staining.summary import efficiency_time_course, time_course_csv

HOURS = "experiment,well,efficiency,elapsed_h\n"
FINALS = "experiment,well,final_efficiency\n"


def _exported(tmp_path: Path, wells: int = 4) -> tuple[list[Path], Path, dict[tuple[str, str], float]]:
    """efficiency.csv of two generated plates as the daemon writes them, and a finals CSV."""
    files, finals = [], {}
    for plate in generate_experiments(2, TRAINING_KINETICS, seed=21, wells=wells):
        path = tmp_path / f"{plate.name}.csv"
        path.write_bytes(time_course_csv(plate.name, efficiency_time_course(plate.records)))
        files.append(path)
        finals.update({(plate.name, well): value for well, value in plate.finals.items()})
    table = tmp_path / "finals.csv"
    rows = [f"{e},{w},{v:.6f}" for (e, w), v in sorted(finals.items())]
    table.write_text(FINALS + "\n".join(rows) + "\n")
    return files, table, finals


def test_exported_time_courses_read_back_as_the_same_courses(tmp_path: Path) -> None:
    files, table, finals = _exported(tmp_path)
    courses, left_out = read_courses(files, table, CourseHorizon(course_days=10))
    assert left_out == []
    direct = {(c.experiment, c.well): c for c in
              courses_from_experiments(generate_experiments(2, TRAINING_KINETICS, seed=21, wells=4))}
    assert {(c.experiment, c.well) for c in courses} == set(direct) == set(finals)
    for course in courses:
        same = direct[(course.experiment, course.well)]
        np.testing.assert_allclose(course.fraction, same.fraction, atol=1e-5)  # elapsed_h has 3 decimals
        np.testing.assert_allclose(course.efficiency, same.efficiency, atol=1e-6)
        np.testing.assert_allclose(course.probability, same.probability, atol=1e-6)
        assert course.final == pytest.approx(same.final, abs=1e-6)


def test_wells_without_a_final_are_left_out_and_named(tmp_path: Path) -> None:
    files, table, _ = _exported(tmp_path)
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1]) + "\n")
    courses, left_out = read_courses(files, table, CourseHorizon())
    experiment, well, _ = lines[-1].split(",")
    assert left_out == [f"{experiment}/{well}"] and len(courses) == 7


@pytest.mark.parametrize(
    ("courses_csv", "finals_csv", "message"),
    [
        ("experiment,well,elapsed_h\nE,A01,0\n", FINALS + "E,A01,0.5\n",
         r"missing column\(s\) \['efficiency'\]"),
        (HOURS + "E,A01,0.1,0\n", "experiment,well,final\nE,A01,0.5\n",
         "final_efficiency"),
        (HOURS + "E,A01,0.1,0\n", FINALS + "E,A01,45\n",
         "percentages"),
        (HOURS + "E,A01,abc,0\n", FINALS + "E,A01,0.5\n",
         "courses.csv:2: efficiency 'abc' is not a number"),
        ("experiment,well,efficiency,timepoint\nE,A01,0.1,3\n", FINALS + "E,A01,0.5\n",
         "--final-timepoint"),
        (HOURS + "E,A01,0.1,\n", FINALS + "E,A01,0.5\n",
         "needs one of the columns"),
        (HOURS + "E,A01,0.1,0\n", FINALS + "F,B01,0.5\n",
         "no well of"),
        (HOURS + "E,A01,0.1,0\n",
         FINALS + "E,A01,0.5\nE,A01,0.4\n", "a second final efficiency"),
    ],
)
def test_invalid_csv_says_what_and_where(
    tmp_path: Path, courses_csv: str, finals_csv: str, message: str
) -> None:
    (tmp_path / "courses.csv").write_text(courses_csv)
    (tmp_path / "finals.csv").write_text(finals_csv)
    with pytest.raises(ValueError, match=message):
        read_courses([tmp_path / "courses.csv"], tmp_path / "finals.csv", CourseHorizon())


def test_time_points_place_rows_without_times(tmp_path: Path) -> None:
    (tmp_path / "courses.csv").write_text(
        "experiment,well,efficiency,timepoint\n" + "".join(f"E,A01,{0.05 * t:.2f},{t}\n" for t in (0, 5, 2))
    )
    (tmp_path / "finals.csv").write_text(FINALS + "E,A01,0.5\n")
    (course,), _ = read_courses([tmp_path / "courses.csv"], tmp_path / "finals.csv",
                                CourseHorizon(course_days=None, final_timepoint=10))
    np.testing.assert_allclose(course.fraction, [0.0, 0.2, 0.5])
    np.testing.assert_allclose(course.efficiency, [0.0, 0.1, 0.25])
    assert np.isnan(course.probability).all()


def test_points_without_time_or_index_have_no_course() -> None:
    records = [{"identity": "a", "well": "A01", "blocks_positive": 1, "blocks_total": 4}]
    assert courses_from_points("E", efficiency_time_course(records), CourseHorizon()) == {}
    with pytest.raises(ValueError, match="course_days"):
        CourseHorizon(course_days=0)
