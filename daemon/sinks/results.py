"""Writing a pipeline's results: files, DICOM objects, records, figures.

Outputs are named deterministically from the input's identity, the pipeline and its
version: ``<outputs>/<pipeline>/<version>/<source>/<input path>/<name>`` (image N > 0 of
a multi-image OME-TIFF: ``<input path>.seriesN/``), where
``<source>`` names the watched folder the file came from (its name and a short hash of
its full path, e.g. ``scope1-3f2a9c``), so two folders holding the same relative name
never share outputs (nor, keyed by path, journal output rows); summaries go to
``<outputs>/<pipeline>/<version>/_summary/<group>/<name>``. A re-run replaces its
outputs rather than adding new ones.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from prometheus_client import Gauge
from pydicom import dcmwrite

from acqflow.daemon import metrics
from acqflow.daemon.fileio import remove_stale_temporaries, safe_name, write_atomic
from acqflow.daemon.jobqueue import OutputRow, RecordRow
from acqflow.daemon.journal import Arrival
from acqflow.plugins.api import Figure, FileOutput, PipelineResult

__all__ = ["NamedPipeline", "ResultSink", "input_folder"]

log = logging.getLogger(__name__)

SUMMARY_FOLDER = "_summary"


class NamedPipeline(Protocol):
    """What the sink uses of a pipeline: its name and version (a loaded pipeline, or the
    identity of one that ran on another machine)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


def input_folder(arrival: Arrival) -> PurePosixPath:
    """The input's folder inside a pipeline's output tree, stable across re-runs."""
    if arrival.kind == "dicom-series":
        attrs = arrival.attrs
        return PurePosixPath(
            safe_name(str(attrs.get("study_uid", "study"))),
            safe_name(str(attrs.get("series_uid", arrival.key))),
        )
    relative = PurePosixPath(str(arrival.attrs.get("relative_path") or arrival.path.name))
    name = relative.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    parents = [safe_name(p) for p in relative.parent.parts if p not in ("", ".", "..", "/")]
    series = arrival.attrs.get("series")
    if isinstance(series, int) and not isinstance(series, bool) and series > 0:
        name = f"{name}.series{series}"  # the further images of a multi-image OME-TIFF
    return PurePosixPath(*source_folder(arrival), *parents, safe_name(name))


def source_folder(arrival: Arrival) -> tuple[str, ...]:
    """The watched folder's part of an output path: ``<name>-<hash>``, or none without one.

    The name alone is not unique (``/mnt/a/data`` and ``/mnt/b/data``); the hash of the
    resolved path is, and stays the same across restarts and re-runs.
    """
    folder = arrival.attrs.get("folder")
    if not isinstance(folder, str) or not folder:
        return ()
    digest = hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return (f"{safe_name(PurePosixPath(folder).name or 'root')}-{digest}",)


# Figures with a metric of their own: name → (metric, its label names in order).
WELL_FIGURES: dict[str, tuple[Gauge, tuple[str, ...]]] = {
    "differentiation_efficiency": (metrics.DIFFERENTIATION_EFFICIENCY, ("experiment", "well")),
    "forecast_final_efficiency": (metrics.FORECAST_FINAL_EFFICIENCY, ("experiment", "well", "estimate")),
    "forecast_insufficient": (metrics.FORECAST_INSUFFICIENT, ("experiment", "well")),
    "forecast_course_fraction": (metrics.FORECAST_COURSE_SEEN, ("experiment", "well")),
}


def publish_figure(pipeline: str, figure: Figure) -> None:
    """Map a pipeline figure onto a metric defined in acqflow.daemon.metrics (the per-well ones by
    name, every other figure onto ``acqflow_pipeline_figure``)."""
    if figure.name in WELL_FIGURES:
        metric, names = WELL_FIGURES[figure.name]
        metric.labels(*(figure.labels.get(name, "") for name in names)).set(figure.value)
        return
    label = ",".join(f"{k}={v}" for k, v in sorted(figure.labels.items()))
    metrics.PIPELINE_FIGURE.labels(pipeline, figure.name, label).set(figure.value)


def _sweep(folder: Path) -> None:
    """A run cut off by a kill mid-write left a temporary name; the re-run clears it."""
    removed = remove_stale_temporaries(folder)
    if removed:
        log.info("removed %d partial file(s) a killed run left in %s", removed, folder)


class ResultSink:
    """Writes results under ``outputs_dir``; returns the rows for the journal."""

    def __init__(self, outputs_dir: Path) -> None:
        self.outputs_dir = outputs_dir

    def pipeline_root(self, pipeline: NamedPipeline) -> Path:
        return self.outputs_dir / safe_name(pipeline.name) / safe_name(pipeline.version)

    def write(
        self,
        pipeline: NamedPipeline,
        arrival: Arrival,
        result: PipelineResult,
        export: Sequence[str],
    ) -> tuple[list[OutputRow], list[RecordRow]]:
        """Write files and DICOM objects durably; the caller commits the returned rows."""
        folder = input_folder(arrival)
        base = self.pipeline_root(pipeline) / folder
        _sweep(base)
        outputs = [self._write_file(base, f) for f in result.files]
        for item in result.dicom:
            buffer = io.BytesIO()
            dcmwrite(buffer, item.dataset, enforce_file_format=True)
            name = safe_name(item.name)
            path = base / (name if name.lower().endswith(".dcm") else f"{name}.dcm")
            write_atomic(path, buffer.getbuffer())
            outputs.append(OutputRow("dicom", path, str(item.dataset.SOPInstanceUID), tuple(export)))
        records = [
            RecordRow(
                kind=r.kind,
                group=r.group,
                identity=f"{arrival.key}#{index}",
                fields={**r.fields, "output_dir": str(folder)},
            )
            for index, r in enumerate(result.records)
        ]
        for figure in result.figures:
            publish_figure(pipeline.name, figure)
        if result.review_required:
            metrics.REVIEW_FLAGS.labels(pipeline.name).inc()
        return outputs, records

    def write_summary(self, pipeline: NamedPipeline, group: str, result: PipelineResult) -> None:
        """Write a summary's files (replaced on every refresh, so not journaled) and figures."""
        base = self.pipeline_root(pipeline) / SUMMARY_FOLDER / safe_name(group)
        _sweep(base)
        for figure in result.figures:
            publish_figure(pipeline.name, figure)
        for output in result.files:
            self._write_file(base, output)

    @staticmethod
    def _write_file(base: Path, output: FileOutput) -> OutputRow:
        path = base / output.name
        write_atomic(path, output.data)
        return OutputRow("file", path)
