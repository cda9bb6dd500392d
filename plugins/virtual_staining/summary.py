"""Per-experiment differentiation-efficiency time course from efficiency records.

Records (one per image, as :meth:`VirtualStainingPipeline.run` returns them) are
aggregated per well and time point: positions are pooled (positive blocks over all
blocks). Points are ordered by time point, then acquisition time (``acquired_at``, from
the image's metadata or name), never by when the daemon processed them; the elapsed
time is measured from the experiment's first acquisition and is None when no image has
an acquisition time (the daemon's ``recorded_at`` is a processing time, so re-processing
would collapse the axis). A re-processed image (same ``identity``) replaces its earlier
record. Records without a time point are each their own point.

The HTML report links the latest overlays relative to the summary folder: the daemon
writes summaries to ``<outputs>/virtual-staining/<version>/_summary/<group>/`` and
per-image files to ``<outputs>/virtual-staining/<version>/<output_dir>/overlay.png``,
where ``output_dir`` is the field it adds to each stored record, so a link is
``../../<output_dir>/overlay.png`` (without ``output_dir``: the record's
``relative_path`` without its last extension).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from plugins.api import RecordValue

__all__ = [
    "TimePoint",
    "efficiency_time_course",
    "report_html",
    "time_axis",
    "time_course_csv",
    "time_course_plot",
]

CSV_COLUMNS = (
    "experiment",
    "well",
    "timepoint",
    "elapsed_s",
    "elapsed_h",
    "efficiency",
    "mean_position_fraction",
    "positions",
    "blocks_positive",
    "blocks_total",
    "acquired_at",
)


@dataclass
class TimePoint:
    """Efficiency of one well at one time point, positions pooled."""

    well: str
    timepoint: int | None
    acquired_at: float | None
    elapsed_s: float | None = None
    blocks_positive: int = 0
    blocks_total: int = 0
    fractions: list[float] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return self.blocks_positive / self.blocks_total if self.blocks_total else 0.0

    @property
    def positions(self) -> int:
        return len(self.fractions)


def _number(value: RecordValue, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _time(value: RecordValue) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def overlay_link(record: Mapping[str, RecordValue]) -> str | None:
    """Link from the summary folder to the record's overlay, or None without a path.

    Uses ``output_dir`` (the image's output folder below the pipeline's version folder,
    which the daemon adds to every record it stores) and falls back to the record's
    ``relative_path`` without its last extension.
    """
    folder = record.get("output_dir")
    if isinstance(folder, str) and folder:
        return str(PurePosixPath("../..") / PurePosixPath(folder) / "overlay.png")
    relative = record.get("relative_path")
    if not isinstance(relative, str) or not relative:
        return None
    return str(PurePosixPath("../..") / PurePosixPath(relative).with_suffix("") / "overlay.png")


def efficiency_time_course(records: Sequence[Mapping[str, RecordValue]]) -> list[TimePoint]:
    """Time points sorted by well, then elapsed time; raises ValueError without records."""
    if not records:
        raise ValueError("no efficiency records")
    latest: dict[object, Mapping[str, RecordValue]] = {}
    for number, record in enumerate(records):
        latest[record.get("identity") or number] = record
    points: dict[tuple[str, object], TimePoint] = {}
    for number, (name, record) in enumerate(latest.items()):
        when = _time(record.get("acquired_at"))
        well = str(record.get("well") or "unknown")
        timepoint = record.get("timepoint")
        tp = int(timepoint) if isinstance(timepoint, int) and not isinstance(timepoint, bool) else None
        key = (well, tp if tp is not None else ("at", when if when is not None else (name, number)))
        point = points.setdefault(key, TimePoint(well, tp, when))
        if when is not None:
            point.acquired_at = when if point.acquired_at is None else min(point.acquired_at, when)
        point.blocks_positive += int(_number(record.get("blocks_positive"), 0))
        point.blocks_total += int(_number(record.get("blocks_total"), 0))
        point.fractions.append(_number(record.get("positive_fraction"), 0.0))
        link = overlay_link(record)
        if link:
            point.overlays.append(link)
    known = [p.acquired_at for p in points.values() if p.acquired_at is not None]
    for point in points.values():
        point.elapsed_s = None if point.acquired_at is None else point.acquired_at - min(known)
    return sorted(points.values(), key=_order)


def _order(point: TimePoint) -> tuple[str, bool, int, bool, float]:
    """Well, then time point (points without one last), then acquisition time."""
    return (
        point.well,
        point.timepoint is None,
        point.timepoint or 0,
        point.acquired_at is None,
        point.acquired_at or 0.0,
    )


def time_axis(points: Sequence[TimePoint]) -> tuple[str, list[float]]:
    """Label and x values: elapsed hours (days past 72 h), or the time point without times."""
    if points and all(p.elapsed_s is not None for p in points):
        elapsed = [p.elapsed_s or 0.0 for p in points]
        if max(elapsed) > 72 * 3600:
            return "time since first image (d)", [e / 86400 for e in elapsed]
        return "time since first image (h)", [e / 3600 for e in elapsed]
    return "time point", [float(p.timepoint if p.timepoint is not None else n) for n, p in enumerate(points)]


def time_course_csv(group: str, points: Sequence[TimePoint]) -> bytes:
    """The time course as CSV (one row per well and time point)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points:
        mean = sum(p.fractions) / len(p.fractions) if p.fractions else 0.0
        writer.writerow(
            [
                group,
                p.well,
                "" if p.timepoint is None else p.timepoint,
                "" if p.elapsed_s is None else f"{p.elapsed_s:.1f}",
                "" if p.elapsed_s is None else f"{p.elapsed_s / 3600:.3f}",
                f"{p.efficiency:.6f}",
                f"{mean:.6f}",
                p.positions,
                p.blocks_positive,
                p.blocks_total,
                "" if p.acquired_at is None else f"{p.acquired_at:.3f}",
            ]
        )
    return buffer.getvalue().encode()


def time_course_plot(group: str, points: Sequence[TimePoint]) -> bytes:
    """PNG of efficiency versus elapsed time (or time point), one line per well (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)  # no pyplot: no global state, safe in worker threads
    axes = figure.add_subplot()
    label, xs = time_axis(points)
    for well in sorted({p.well for p in points}):
        mine = [(x, p) for x, p in zip(xs, points, strict=True) if p.well == well]
        axes.plot([x for x, _ in mine], [100 * p.efficiency for _, p in mine], marker="o", label=well)
    axes.set_xlabel(label)
    axes.set_ylabel("virtual-stain positive blocks (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"Differentiation efficiency - {group}")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncol=2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def latest_per_well(points: Sequence[TimePoint]) -> dict[str, TimePoint]:
    """The last time point of every well (``points`` in :func:`efficiency_time_course` order)."""
    latest: dict[str, TimePoint] = {}
    for point in sorted(points, key=_order):
        latest[point.well] = point
    return latest


def report_html(group: str, points: Sequence[TimePoint], plot_png: bytes) -> bytes:
    """A self-contained HTML page: the plot inline, the latest value and overlays per well."""
    esc = html.escape
    rows, images = [], []
    for well, point in sorted(latest_per_well(points).items()):
        hours = "" if point.elapsed_s is None else f"{point.elapsed_s / 3600:.1f}"
        rows.append(
            f"<tr><td>{esc(well)}</td><td>{'' if point.timepoint is None else point.timepoint}</td>"
            f"<td>{hours}</td><td>{100 * point.efficiency:.1f}</td>"
            f"<td>{point.positions}</td></tr>"
        )
        for link in point.overlays:
            images.append(
                f'<figure><a href="{esc(link)}"><img src="{esc(link)}" alt="overlay {esc(well)}">'
                f"</a><figcaption>{esc(well)}</figcaption></figure>"
            )
    plot = base64.b64encode(plot_png).decode()
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Virtual staining - {esc(group)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
figure{{display:inline-block;margin:4px}}img{{width:240px}}</style></head><body>
<h1>Differentiation efficiency: {esc(group)}</h1>
<img style="width:640px" alt="efficiency over time" src="data:image/png;base64,{plot}">
<h2>Latest time point per well</h2>
<table><tr><th>well</th><th>time point</th><th>elapsed (h)</th><th>efficiency (%)</th>
<th>positions</th></tr>
{chr(10).join(rows)}
</table>
<h2>Latest overlays</h2>
{chr(10).join(images) or "<p>No overlay paths recorded.</p>"}
<p>Time course as CSV: <a href="efficiency.csv">efficiency.csv</a></p>
</body></html>
"""
    return page.encode()
