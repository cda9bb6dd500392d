"""Virtual staining end to end: a generated time series copied into a watched folder in
acquisition order gives overlays, the per-well time course and the efficiency gauge."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import tifffile

from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, write_series
from tests.support.daemon_proc import DaemonProcess, metric_value, wait_until
from tests.support.peers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _job_states(daemon: DaemonProcess) -> dict[str, int]:
    db = sqlite3.connect(daemon.state_dir / "journal.sqlite3", timeout=10)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    finally:
        db.close()


def _done(daemon: DaemonProcess) -> int:
    return _job_states(daemon).get("done", 0)


def _folder_daemon(tmp_path: Path, inbox: Path) -> DaemonProcess:
    """A daemon watching ``inbox``, DICOM off, state and outputs under ``tmp_path``."""
    return DaemonProcess(
        tmp_path,
        {
            "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
            "workers": {"device": "cpu", "poll_seconds": 0.2},
            "metrics": {"port": free_port()},
            "dicom": {"enabled": False},
            "folders": [{"path": str(inbox), "stable_seconds": 0.5}],
        },
    )


def _deliver(path: Path, folder: Path) -> None:
    """Write ``path`` into ``folder`` as acquisition software does: temporary name, then rename."""
    shutil.copy2(path, folder / f".{path.name}.part")
    (folder / f".{path.name}.part").rename(folder / path.name)


def test_time_series_in_acquisition_order_gives_overlays_time_course_and_gauge(tmp_path: Path) -> None:
    spec = SyntheticSpec(experiments=1, wells=2, positions=2, timepoints=3, shape=(256, 256), seed=11)
    staging = tmp_path / "staging"
    phase = [p for p in write_series(staging, spec) if p.name.endswith("_phase.tif")]
    inbox = tmp_path / "inbox"
    daemon = _folder_daemon(tmp_path, inbox)
    daemon.start()
    try:
        experiment = inbox / "EXP1"
        experiment.mkdir(parents=True)
        for path in phase:
            _deliver(path, experiment)
            time.sleep(0.2)
        # below pytest's own timeout, so that a failure shows the job states and the daemon's log
        wait_until(
            lambda: _done(daemon) == len(phase),
            200,
            f"{len(phase)} virtual-staining jobs done",
            daemon,
            describe=lambda: str(_job_states(daemon)),
        )

        root = next((tmp_path / "outputs" / "virtual-staining").iterdir())  # the model version
        overlays = sorted(root.rglob("overlay.png"))
        stains = sorted(root.rglob("virtual_stain.tif"))
        assert len(overlays) == len(stains) == len(phase)
        with tifffile.TiffFile(stains[0]) as tif:
            assert tif.is_imagej
            assert tif.series[0].axes == "CYX" and tif.series[0].shape == (2, 256, 256)
            x_resolution = tif.pages[0].tags["XResolution"].value
            assert x_resolution[0] / x_resolution[1] == pytest.approx(1 / spec.pixel_size_um, rel=1e-3)

        summary = root / "_summary" / "EXP1"

        def time_course() -> list[dict[str, str]]:
            if not (summary / "efficiency.csv").is_file():
                return []
            return list(csv.DictReader((summary / "efficiency.csv").read_text().splitlines()))

        # the summary is refreshed right after each job is recorded as done
        complete = lambda: len(time_course()) == spec.wells * spec.timepoints  # noqa: E731
        wait_until(
            lambda: complete() and all(r["positions"] == str(spec.positions) for r in time_course()),
            60,
            "the time course with every position",
            daemon,
        )
        rows = time_course()
        assert {(r["well"], r["timepoint"]) for r in rows} == {
            (w, str(t)) for w in {r["well"] for r in rows} for t in range(spec.timepoints)
        }
        assert len({r["well"] for r in rows}) == spec.wells
        assert all(r["positions"] == str(spec.positions) for r in rows)
        assert (summary / "efficiency.png").read_bytes().startswith(b"\x89PNG")
        assert (summary / "report.html").is_file()

        report = daemon.cli("report", "efficiency", "EXP1", "--csv")
        assert report.returncode == 0, report.stderr
        assert report.stdout == (summary / "efficiency.csv").read_text()
        table = daemon.cli("report", "efficiency", "EXP1")
        assert table.returncode == 0 and "efficiency.png" in table.stdout and str(summary) in table.stdout
        assert daemon.cli("report", "efficiency", "NOPE").returncode == 2

        text = daemon.metrics_text()
        for well in {r["well"] for r in rows}:
            latest = max((r for r in rows if r["well"] == well), key=lambda r: int(r["timepoint"]))
            gauge = metric_value(
                text, "acqflow_differentiation_efficiency", {"experiment": "EXP1", "well": well}
            )
            assert gauge == pytest.approx(float(latest["efficiency"]), abs=1e-6)
    finally:
        if daemon.alive():
            assert daemon.terminate() == 0


def _course(summary: Path) -> list[dict[str, str]]:
    if not (summary / "efficiency.csv").is_file():
        return []
    return list(csv.DictReader((summary / "efficiency.csv").read_text().splitlines()))


def test_time_course_follows_acquisition_not_processing_order_and_survives_reprocess(tmp_path: Path) -> None:
    spec = SyntheticSpec(experiments=1, wells=1, positions=1, timepoints=4, shape=(128, 128), seed=5)
    phase = [p for p in write_series(tmp_path / "staging", spec) if p.name.endswith("_phase.tif")]
    inbox = tmp_path / "inbox"
    daemon = _folder_daemon(tmp_path, inbox)
    daemon.start()
    try:
        experiment = inbox / "EXP1"
        experiment.mkdir(parents=True)
        for done, index in enumerate((2, 0, 3, 1), start=1):  # processed out of acquisition order
            _deliver(phase[index], experiment)
            wait_until(lambda n=done: _done(daemon) >= n, 120, "job", daemon)
        summary = next((tmp_path / "outputs" / "virtual-staining").iterdir()) / "_summary" / "EXP1"
        wait_until(lambda: len(_course(summary)) == spec.timepoints, 60, "the time course", daemon)
        hours = [f"{t * spec.interval_s / 3600:.3f}" for t in range(spec.timepoints)]
        before = [(r["timepoint"], r["elapsed_h"]) for r in _course(summary)]
        assert before == [(str(t), hours[t]) for t in range(spec.timepoints)]

        written = (summary / "efficiency.csv").stat().st_mtime_ns
        result = daemon.cli("reprocess", str(experiment))
        assert result.returncode == 0, result.stderr
        wait_until(lambda: _done(daemon) == 2 * spec.timepoints, 120, "reprocessed jobs", daemon)
        # a summary rewritten from the reprocessed records, not the one from before
        wait_until(lambda: (summary / "efficiency.csv").stat().st_mtime_ns > written, 60,
                   "the refreshed time course", daemon)
        after = [(r["timepoint"], r["elapsed_h"]) for r in _course(summary)]
        assert after == before
    finally:
        if daemon.alive():
            assert daemon.terminate() == 0
