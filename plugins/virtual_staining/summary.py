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
from typing import TYPE_CHECKING

from acqflow.plugins.api import RecordValue

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from acqflow.plugins.virtual_staining.forecast_summary import ForecastSummary

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
    "mean_probability",
    "course_fraction",
    "forecast_final",
    "forecast_low",
    "forecast_high",
    "forecast_call",
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
    probability_blocks: float = 0.0  # sum of mean block probability x blocks, over positions with one
    probability_total: int = 0  # blocks of the positions that recorded a mean block probability
    efficiency_blocks: float = 0.0  # sum of each position's (calibrated) efficiency x its blocks

    @property
    def efficiency(self) -> float:
        """Positions' efficiencies weighted by their blocks: the calibrated GFP area where
        the records carry it, else the pooled positive-block fraction."""
        return self.efficiency_blocks / self.blocks_total if self.blocks_total else 0.0

    @property
    def mean_probability(self) -> float | None:
        """Mean block probability of the pooled positions (weighted by blocks), None if unknown."""
        return self.probability_blocks / self.probability_total if self.probability_total else None

    @property
    def positions(self) -> int:
        return len(self.fractions)


def _number(value: RecordValue, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _number_or_none(value: RecordValue) -> float | None:
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
        when = _number_or_none(record.get("acquired_at"))
        well = str(record.get("well") or "unknown")
        timepoint = record.get("timepoint")
        tp = int(timepoint) if isinstance(timepoint, int) and not isinstance(timepoint, bool) else None
        key = (well, tp if tp is not None else ("at", when if when is not None else (name, number)))
        point = points.setdefault(key, TimePoint(well, tp, when))
        if when is not None:
            point.acquired_at = when if point.acquired_at is None else min(point.acquired_at, when)
        blocks = int(_number(record.get("blocks_total"), 0))
        positive = int(_number(record.get("blocks_positive"), 0))
        point.blocks_positive += positive
        point.blocks_total += blocks
        probability = _number_or_none(record.get("mean_probability"))
        if probability is not None and blocks > 0:
            point.probability_blocks += probability * blocks
            point.probability_total += blocks
        fraction = _number(record.get("positive_fraction"), positive / blocks if blocks else 0.0)
        point.fractions.append(fraction)
        point.efficiency_blocks += _number(record.get("efficiency"), fraction) * blocks
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


def time_axis(points: Sequence[TimePoint], horizon_s: float | None = None) -> tuple[str, list[float]]:
    """Label and x values: elapsed hours (days past 72 h, counting a forecast's final day
    ``horizon_s``), or the time point without times."""
    if points and all(p.elapsed_s is not None for p in points):
        elapsed = [p.elapsed_s or 0.0 for p in points]
        if max([*elapsed, horizon_s or 0.0]) > 72 * 3600:
            return "time since first image (d)", [e / 86400 for e in elapsed]
        return "time since first image (h)", [e / 3600 for e in elapsed]
    return "time point", [float(p.timepoint if p.timepoint is not None else n) for n, p in enumerate(points)]


def _optional(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def time_course_csv(
    group: str, points: Sequence[TimePoint], forecast: ForecastSummary | None = None
) -> bytes:
    """The time course as CSV (one row per well and time point).

    With ``forecast``, each row also holds the forecast of the final-day efficiency made
    from the well's points up to that row (empty where there is none).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    forecasts = forecast.by_point if forecast is not None else [None] * len(points)
    for p, made in zip(points, forecasts, strict=True):
        mean = sum(p.fractions) / len(p.fractions) if p.fractions else 0.0
        columns = ["", "", "", "", ""]
        if made is not None and forecast is not None:
            columns = [
                f"{made.fraction:.4f}", f"{made.value:.6f}", f"{made.low:.6f}", f"{made.high:.6f}",
                forecast.call(made).value,
            ]
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
                _optional(p.mean_probability, 6),
                *columns,
            ]
        )
    return buffer.getvalue().encode()


def _final_x(label: str, forecast: ForecastSummary) -> float | None:
    """Where the final day lies on the plot's x axis, or None when it cannot be placed."""
    days, index = forecast.horizon.course_days, forecast.horizon.final_timepoint
    if label.endswith("(d)") and days is not None:
        return days
    if label.endswith("(h)") and days is not None:
        return days * 24
    return float(index) if label == "time point" and index is not None else None


def _forecast_band(axes: Axes, label: str, points: Sequence[TimePoint], xs: Sequence[float],
                   forecast: ForecastSummary, colours: dict[str, str]) -> None:
    """Each well's latest forecast: a shaded cone from its last point to the interval on the
    final day, a marker at the forecast, the final day and the threshold as lines."""
    final = _final_x(label, forecast)
    latest = forecast.latest(points)
    if final is None or not latest:
        return
    from matplotlib.collections import PolyCollection

    last = {p.well: (x, p) for x, p in zip(xs, points, strict=True)}
    wells = sorted(latest)
    cones, tints = [], [colours.get(well, "0.5") for well in wells]
    for well in wells:  # one collection for all wells: a 96-well plate stays fast to draw
        x0, point = last[well]
        made, y0 = latest[well], 100 * point.efficiency
        cones.append([(x0, y0), (final, 100 * made.high), (final, 100 * made.low)])
    axes.add_collection(PolyCollection(cones, facecolors=tints, alpha=0.15, edgecolors="none"))
    lows, highs = [100 * latest[w].low for w in wells], [100 * latest[w].high for w in wells]
    axes.vlines([final] * len(wells), lows, highs, colors=tints, linewidth=2)
    axes.scatter([final] * len(wells), [100 * latest[w].value for w in wells], c=tints, marker="D", zorder=3)
    axes.axvline(final, color="0.4", linestyle="--", linewidth=1, label="final day")
    threshold = 100 * forecast.threshold
    label = f"sufficient from {threshold:.0f} %"
    axes.axhline(threshold, color="0.4", linestyle=":", linewidth=1, label=label)


def time_course_plot(
    group: str, points: Sequence[TimePoint], forecast: ForecastSummary | None = None
) -> bytes:
    """PNG of efficiency versus elapsed time (or time point), one line per well (matplotlib Agg).

    With ``forecast``: each well's latest forecast of the final day as a shaded band.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)  # no pyplot: no global state, safe in worker threads
    axes = figure.add_subplot()
    horizon_s = None
    if forecast is not None and forecast.horizon.course_days is not None:
        horizon_s = forecast.horizon.course_days * 86400
    label, xs = time_axis(points, horizon_s)
    colours: dict[str, str] = {}
    for well in sorted({p.well for p in points}):
        mine = [(x, p) for x, p in zip(xs, points, strict=True) if p.well == well]
        ys = [100 * p.efficiency for _, p in mine]
        (line,) = axes.plot([x for x, _ in mine], ys, marker="o", label=well)
        colours[well] = to_hex(line.get_color())
    if forecast is not None:
        _forecast_band(axes, label, points, xs, forecast, colours)
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


def _forecast_section(points: Sequence[TimePoint], forecast: ForecastSummary | None) -> str:
    """The report's forecast table (or why there is none)."""
    if forecast is None:
        return "<h2>Forecast</h2>\n<p>No efficiency forecast model is loaded.</p>"
    latest = forecast.latest(points)
    if not latest:
        return f"<h2>Forecast</h2>\n<p>{html.escape(forecast.note or 'No forecast yet.')}</p>"
    rows = []
    for well, made in sorted(latest.items()):
        call = forecast.call(made).value
        rows.append(
            f"<tr><td>{html.escape(well)}</td><td>{100 * made.fraction:.0f}</td>"
            f"<td>{100 * made.value:.1f}</td><td>{100 * made.low:.1f} - {100 * made.high:.1f}</td>"
            f'<td class="{call}">{call}</td></tr>'
        )
    days = forecast.horizon.course_days
    final = f"day {days:g}" if days is not None else f"time point {forecast.horizon.final_timepoint}"
    return (
        f"<h2>Forecast of the final-day efficiency ({html.escape(final)})</h2>\n"
        f"<p>Sufficient from {100 * forecast.threshold:.0f} %; interval: {100 * forecast.coverage:.0f} % "
        f"prediction interval (nominal); model {html.escape(forecast.version)}.</p>\n"
        "<table><tr><th>well</th><th>course seen (%)</th><th>forecast (%)</th><th>interval (%)</th>"
        f"<th>call</th></tr>\n{chr(10).join(rows)}\n</table>"
    )


def provenance(records: Sequence[Mapping[str, RecordValue]], pipeline_version: str) -> dict[str, str]:
    """What made a summary: model and pipeline versions, thresholds, block size, model
    pixel size and the input folders, from the records (each value once)."""
    def values(key: str) -> str:
        return ", ".join(sorted({str(r[key]) for r in records if r.get(key) is not None})) or "-"

    folders = sorted({str(r["relative_path"]).rsplit("/", 1)[0] for r in records
                      if "/" in str(r.get("relative_path") or "")})
    return {"pipeline": f"virtual-staining {pipeline_version}", "model version": values("model_version"),
            "block threshold": values("threshold"), "block size (px)": values("block_size"),
            "model pixel size (um)": values("model_pixel_size_um"),
            "input folders": ", ".join(folders) or "-", "images": str(len(records))}


def _provenance_section(made_by: Mapping[str, str] | None) -> str:
    if not made_by:
        return ""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in made_by.items())
    return f"<h2>Provenance</h2>\n<table class=\"provenance\">{rows}</table>"


def report_html(
    group: str, points: Sequence[TimePoint], plot_png: bytes, forecast: ForecastSummary | None = None,
    made_by: Mapping[str, str] | None = None,
) -> bytes:
    """A self-contained HTML page: the plot inline, the latest value and overlays per well,
    with ``forecast`` each well's latest forecast of the final day, and with ``made_by``
    (:func:`provenance`) what made it."""
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
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}.insufficient{{color:#b00}}
figure{{display:inline-block;margin:4px}}img{{width:240px}}</style></head><body>
<h1>Differentiation efficiency: {esc(group)}</h1>
<img style="width:640px" alt="efficiency over time" src="data:image/png;base64,{plot}">
<h2>Latest time point per well</h2>
<table><tr><th>well</th><th>time point</th><th>elapsed (h)</th><th>efficiency (%)</th>
<th>positions</th></tr>
{chr(10).join(rows)}
</table>
{_forecast_section(points, forecast)}
<h2>Latest overlays</h2>
{chr(10).join(images) or "<p>No overlay paths recorded.</p>"}
<p>Time course as CSV: <a href="efficiency.csv">efficiency.csv</a></p>
{_provenance_section(made_by)}
</body></html>
"""
    return page.encode()
