"""A worker refusing an input reached through a symbolic link never copies its target."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile

from acqflow.daemon.config import PipelineSettings, WorkerSettings
from acqflow.daemon.imageio import read_image
from acqflow.daemon.jobqueue import JobQueue, RouteDecision
from acqflow.daemon.journal import ArrivalState, JobState, Journal
from acqflow.daemon.registry import PipelineRegistry
from acqflow.daemon.sinks.results import ResultSink
from acqflow.daemon.workers import JobRunner
from acqflow.plugins.api import ImageItem, InputKind, PipelineResult, SeriesItem


class Mean:
    name = "mean"
    version = "1"
    input_kind = InputKind.IMAGE

    def load(self, context: object) -> None:
        pass

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        raise AssertionError("a truncated image must be refused before it runs")


def test_truncated_image_behind_a_followed_link_is_rejected_without_a_quarantine_copy(
    tmp_path: Path,
) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((64, 64, 4), np.uint16), photometric="minisblack",
                     planarconfig="separate")
    data = buffer.getvalue()
    target = tmp_path / "store" / "stack.tif"
    target.parent.mkdir()
    target.write_bytes(data[: len(data) - 100])  # the last plane is cut short
    link = tmp_path / "inbox" / "stack.tif"
    link.parent.mkdir()
    link.symlink_to(target)
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    try:
        registry = PipelineRegistry(PipelineSettings(), device="cpu")
        registry.register("mean", Mean)
        runner = JobRunner(
            journal=journal, jobs=JobQueue(journal), registry=registry,
            sink=ResultSink(tmp_path / "outputs"), loader=read_image,
            settings=WorkerSettings(), quarantine_dir=tmp_path / "quarantine",
        )
        arrival = journal.record_file_arrival(
            "folder", f"file:{link}", link, {"fingerprint": [1, 1], "relative_path": "stack.tif"}
        )
        assert arrival is not None
        runner.jobs.route(arrival.id, 0, [RouteDecision("mean", "r")])
        [job] = runner.jobs.claim(["mean"], 1)
        assert runner.run(job) is JobState.DEAD
        assert journal.arrival(arrival.id).state is ArrivalState.REJECTED
        quarantine = tmp_path / "quarantine"
        assert not quarantine.exists() or list(quarantine.iterdir()) == []
    finally:
        journal.close()
