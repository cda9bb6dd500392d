from __future__ import annotations

import pytest

from acqflow.plugins.api import RecordValue
from acqflow.plugins.virtual_staining.summary import (
    efficiency_time_course,
    overlay_link,
    report_html,
    time_axis,
    time_course_csv,
)


def test_records_without_time_point_or_acquisition_time() -> None:
    records: list[dict[str, RecordValue]] = [
        {"identity": "a", "well": None, "blocks_positive": 1, "blocks_total": 4, "recorded_at": 100.0},
        {"identity": "b", "well": None, "blocks_positive": 3, "blocks_total": 4, "recorded_at": 160.0},
    ]
    points = efficiency_time_course(records)
    assert [(p.well, p.timepoint, p.elapsed_s, p.efficiency) for p in points] == [
        ("unknown", None, None, 0.25),
        ("unknown", None, None, 0.75),
    ]
    # Processing time (recorded_at) is not an acquisition time: the CSV says there is none.
    csv_text = time_course_csv("E", points).decode()
    assert csv_text.splitlines()[1].startswith("E,unknown,,,,")
    # ... nor a mean block probability, a course position or a forecast (empty columns)
    assert csv_text.splitlines()[1].endswith(",1,1,4," + "," * 6)


def test_links_and_escaping() -> None:
    assert (
        overlay_link({"relative_path": "plate1/A01_t000.ome.tif"}) == "../../plate1/A01_t000.ome/overlay.png"
    )
    assert overlay_link({"relative_path": None}) is None
    both: dict[str, RecordValue] = {
        "relative_path": "x.ome.tif",
        "output_dir": "DEMO/EXP1_A01_pos1_t000_phase",
    }
    assert overlay_link(both) == "../../DEMO/EXP1_A01_pos1_t000_phase/overlay.png"
    records: list[dict[str, RecordValue]] = [
        {
            "identity": "x",
            "well": "<b>",
            "timepoint": 0,
            "blocks_positive": 1,
            "blocks_total": 2,
            "acquired_at": 5.0,
            "relative_path": "x.tif",
        }
    ]
    page = report_html("<E&1>", efficiency_time_course(records), b"png").decode()
    assert "&lt;E&amp;1&gt;" in page and "<b>" not in page and 'src="../../x/overlay.png"' in page
    assert "50.0" in page


def test_positions_pool_by_blocks_not_by_mean_of_fractions() -> None:
    records: list[dict[str, RecordValue]] = [
        {
            "identity": "p1",
            "well": "A01",
            "timepoint": 2,
            "blocks_positive": 10,
            "blocks_total": 10,
            "acquired_at": 0.0,
        },
        {
            "identity": "p2",
            "well": "A01",
            "timepoint": 2,
            "blocks_positive": 0,
            "blocks_total": 30,
            "acquired_at": 9.0,
        },
    ]
    (point,) = efficiency_time_course(records)
    assert point.efficiency == pytest.approx(0.25) and point.positions == 2 and point.elapsed_s == 0.0


def _tp_record(
    identity: str, timepoint: int, recorded_at: float, acquired_at: float | None
) -> dict[str, RecordValue]:
    return {
        "identity": identity,
        "well": "A01",
        "timepoint": timepoint,
        "blocks_positive": timepoint,
        "blocks_total": 10,
        "recorded_at": recorded_at,
        "acquired_at": acquired_at,
    }


def test_order_follows_time_points_not_processing_order() -> None:
    # Processed in shuffled order (recorded_at rising in the order t2, t0, t3, t1): the course
    # must still run t0..t3, and without acquisition times the axis is the time point.
    shuffled = [2, 0, 3, 1]
    records = [_tp_record(f"img{t}", t, 1000.0 + n, None) for n, t in enumerate(shuffled)]
    points = efficiency_time_course(records)
    assert [p.timepoint for p in points] == [0, 1, 2, 3]
    assert [p.efficiency for p in points] == [0.0, 0.1, 0.2, 0.3]
    assert all(p.elapsed_s is None and p.acquired_at is None for p in points)
    assert time_axis(points) == ("time point", [0.0, 1.0, 2.0, 3.0])


def test_reprocessing_keeps_the_acquisition_time_axis() -> None:
    day = 86400.0
    first = [_tp_record(f"img{t}", t, 5000.0 + t, 1.7e9 + t * day) for t in range(5)]
    # Re-processed a week later within 4 seconds: same identities, new recorded_at only.
    again = [_tp_record(f"img{t}", t, 5000.0 + 7 * day + t, 1.7e9 + t * day) for t in (4, 2, 0, 3, 1)]
    points = efficiency_time_course(first + again)
    assert [p.timepoint for p in points] == [0, 1, 2, 3, 4]
    assert [p.elapsed_s for p in points] == [t * day for t in range(5)]
    label, xs = time_axis(points)
    assert label == "time since first image (d)" and xs == [0.0, 1.0, 2.0, 3.0, 4.0]
    hours = time_axis(points[:3])
    assert hours == ("time since first image (h)", [0.0, 24.0, 48.0])
