from __future__ import annotations

import pytest

from plugins.api import RecordValue
from plugins.virtual_staining.summary import (
    efficiency_time_course,
    overlay_link,
    report_html,
    time_course_csv,
)


def test_records_without_time_point_or_acquisition_time() -> None:
    records: list[dict[str, RecordValue]] = [
        {"identity": "a", "well": None, "blocks_positive": 1, "blocks_total": 4, "recorded_at": 100.0},
        {"identity": "b", "well": None, "blocks_positive": 3, "blocks_total": 4, "recorded_at": 160.0},
    ]
    points = efficiency_time_course(records)
    assert [(p.well, p.timepoint, p.elapsed_s, p.efficiency) for p in points] == [
        ("unknown", None, 0.0, 0.25),
        ("unknown", None, 60.0, 0.75),
    ]
    csv_text = time_course_csv("E", points).decode()
    assert csv_text.splitlines()[1].startswith("E,unknown,,0.0,")


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
