"""Soak: a real ``acqflow serve`` fed mixed arrivals for a bounded time, watched for leaks.

The daemon runs as a subprocess on a test-like configuration in a temporary folder
(loopback DICOM and metrics on free ports, one watched folder, the bundled pipelines and
demo weights on the CPU). Two feeders run side by side for ``--minutes``:

  * folder: synthetic phase-contrast TIFFs (``acqflow.plugins.virtual_staining.synthetic``),
    each written under a temporary name and renamed into the watched folder, one every
    ``--image-interval`` seconds → ``virtual-staining``;
  * DICOM: a synthetic CT phantom series (``acqflow.plugins.ct_muscle.phantoms``, a new seed and
    so new UIDs each time) sent over C-STORE in one association every
    ``--series-interval`` seconds → ``ct-muscle``.

Every ``--sample-seconds`` the daemon's resident memory, open file descriptors and
threads are sampled (psutil). After the feed the queue is drained (at most
``--drain-seconds``) and the daemon stopped with SIGTERM (exit code checked).

Reported, from the journal's timestamps: throughput (results per minute), arrival-to-
result p50/p95/p99 (job created = arrival complete → job finished, the definition of
``acqflow_arrival_to_result_seconds``) and end-to-end (arrival first recorded → result,
which adds the folder's stability wait and the series' quiet time), per pipeline. From
the samples: RSS and fds over time with a least-squares slope, and the baselines of the
same run: last third / first third (mean RSS, fds; p99 of arrivals in that third).
A flat run has ratios near 1 and slopes near 0.

    .venv/bin/python bench/soak.py [--minutes 10] [--image-interval 5] [--series-interval 60]
        [--image-size 512] [--slices 24] [--json results.json]

Exits non-zero when the soak itself fails: an arrival not processed, a job not done,
a refused C-STORE, the daemon dying or not stopping cleanly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemon_proc import DaemonProcess, journal_rows
from tests.support.peers import free_port

AE_TITLE = "ACQFLOW"
CALLING_AE = "SOAK_CT"
QUIET_SECONDS = 2.0
STABLE_SECONDS = 1.0


class SoakFailure(Exception):
    """The soak itself failed: lost work, refused instances, a dead daemon."""


@dataclass
class Sample:
    t: float  # seconds since the feed started
    rss_mb: float
    fds: int
    threads: int


@dataclass
class Feed:
    """What the feeders handed to the daemon."""

    images: int = 0
    series: int = 0
    instances: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


# --- the daemon ---------------------------------------------------------------------------


def _settings(root: Path) -> dict[str, Any]:
    return {
        "log_level": "WARNING",
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "dicom": {
            "ae_title": AE_TITLE,
            "host": "127.0.0.1",
            "port": free_port(),
            "series_quiet_seconds": QUIET_SECONDS,
            "spool_slots": 64,
            "spool_slot_bytes": 65536,
        },
        "folders": [{"path": str(root / "inbox"), "stable_seconds": STABLE_SECONDS, "rescan_seconds": 60.0}],
        "routes": [
            {"name": "microscopy", "kind": ["image"], "pipelines": ["virtual-staining"]},
            {"name": "ct", "kind": ["dicom-series"], "modality": ["CT"], "pipelines": ["ct-muscle"]},
        ],
    }


# --- feeders ------------------------------------------------------------------------------


def _image_pool(size: int, count: int) -> list[np.ndarray]:
    """Distinct phase-contrast fields, generated once (writing is the feed, not generating)."""
    from acqflow.plugins.virtual_staining.synthetic import SyntheticSpec, generate_series

    spec = SyntheticSpec(experiments=1, wells=count, positions=1, timepoints=1, shape=(size, size), seed=11)
    return [image.phase for image in generate_series(spec)]


def _write_image(folder: Path, staging: Path, data: np.ndarray, name: str) -> None:
    import tifffile

    temporary = staging / f".{name}.part"
    tifffile.imwrite(
        temporary, data, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"axes": "YX", "unit": "um"}
    )
    temporary.rename(folder / name)  # same file system: the file appears complete


def _send_series(port: int, datasets: Sequence[Any]) -> int:
    """One association, every instance C-STOREd; returns the number refused (-1: no association)."""
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    ae = AE(ae_title=CALLING_AE)
    ae.requested_contexts = [build_context(datasets[0].SOPClassUID)]
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return -1
    refused = 0
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            refused += int(getattr(status, "Status", 0xFFFF) != 0)
    finally:
        assoc.release()
    return refused


def _ct_series(seed: int, slices: int, size: int) -> list[Any]:
    from acqflow.plugins.ct_muscle.phantoms import PhantomOptions, demo_ct_series

    return demo_ct_series(seed=seed, options=PhantomOptions(shape=(slices, size, size)))


def _feed_images(
    folder: Path,
    staging: Path,
    pool: Sequence[np.ndarray],
    interval: float,
    stop: threading.Event,
    feed: Feed,
) -> None:
    index = 0
    while not stop.is_set():
        began = time.monotonic()
        well = f"B{index % len(pool) + 1:02d}"
        _write_image(
            folder, staging, pool[index % len(pool)], f"SOAK_{well}_pos1_t{index // len(pool):04d}_phase.tif"
        )
        feed.images += 1
        index += 1
        stop.wait(max(0.0, interval - (time.monotonic() - began)))


def _feed_series(
    port: int, slices: int, size: int, interval: float, stop: threading.Event, feed: Feed
) -> None:
    seed = 1000
    while not stop.is_set():
        began = time.monotonic()
        datasets = _ct_series(seed, slices, size)
        seed += 1
        refused = _send_series(port, datasets)
        if refused < 0:
            feed.errors.append(f"association for series {seed} refused")
        else:
            feed.refused += refused
            feed.instances += len(datasets)
            feed.series += 1
        stop.wait(max(0.0, interval - (time.monotonic() - began)))


def _warm_up(
    daemon: DaemonProcess, folder: Path, staging: Path, pool: Sequence[np.ndarray], args: argparse.Namespace
) -> None:
    """One image and one series processed before the clock starts: model loads and
    first-inference allocations are not part of the baseline."""
    _write_image(folder, staging, pool[0], "SOAK_A01_pos1_t0000_phase.tif")
    if _send_series(int(daemon.state["dicom_port"]), _ct_series(999, args.slices, args.ct_size)) != 0:
        raise SoakFailure("the warm-up series was refused")
    deadline = time.monotonic() + 300
    while len(journal_rows(daemon, "SELECT id FROM jobs WHERE state = 'done'")) < 2:
        if not daemon.alive() or time.monotonic() > deadline:
            raise SoakFailure(f"warm-up not processed:\n{daemon.log_tail()}")
        time.sleep(0.5)


# --- sampling and figures -----------------------------------------------------------------


def _sample(process: psutil.Process, t: float) -> Sample:
    with process.oneshot():
        return Sample(t, process.memory_info().rss / 1e6, process.num_fds(), process.num_threads())


def _slope_per_minute(ts: Sequence[float], values: Sequence[float]) -> float:
    if len(ts) < 2:
        return 0.0
    slope, _intercept = np.polyfit(np.asarray(ts), np.asarray(values, dtype=float), 1)
    return float(slope * 60.0)


def _thirds(samples: Sequence[Sample], attr: str, duration: float) -> tuple[float, float]:
    first = [getattr(s, attr) for s in samples if s.t < duration / 3]
    last = [getattr(s, attr) for s in samples if s.t >= 2 * duration / 3]
    return float(np.mean(first)) if first else float("nan"), float(np.mean(last)) if last else float("nan")


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"n": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": max(values)}


def _jobs(daemon: DaemonProcess, since: float) -> list[dict[str, Any]]:
    rows = journal_rows(
        daemon,
        "SELECT j.pipeline, j.state, j.created_at, j.finished_at, a.created_at AS arrived_at "
        "FROM jobs j JOIN arrivals a ON a.id = j.arrival_id WHERE a.created_at >= ?",
        (since,),
    )
    return [dict(row) for row in rows]


def _mean_job_seconds(text: str) -> dict[str, float]:
    """Mean pipeline run time per pipeline from acqflow_job_duration_seconds (warm-up included)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pipeline = sample.labels.get("pipeline", "")
            if sample.name == "acqflow_job_duration_seconds_sum":
                sums[pipeline] = sample.value
            elif sample.name == "acqflow_job_duration_seconds_count":
                counts[pipeline] = sample.value
    return {name: sums[name] / counts[name] for name in sums if counts.get(name)}


def _latencies(jobs: list[dict[str, Any]], start: float, duration: float) -> dict[str, Any]:
    """Throughput and latency per pipeline, from the journal's timestamps."""
    done = [j for j in jobs if j["state"] == "done" and j["finished_at"] is not None]
    figures: dict[str, Any] = {}
    for pipeline in sorted({j["pipeline"] for j in done}):
        mine = [j for j in done if j["pipeline"] == pipeline]
        in_feed = [j for j in mine if j["finished_at"] - start <= duration]

        def latency(job: dict[str, Any]) -> float:
            return float(job["finished_at"] - job["created_at"])

        early = [latency(j) for j in mine if j["created_at"] - start < duration / 3]
        late = [latency(j) for j in mine if j["created_at"] - start >= 2 * duration / 3]
        figures[pipeline] = {
            "results": len(mine),
            "results_per_minute": len(in_feed) / (duration / 60.0),
            "arrival_to_result_s": _percentiles([latency(j) for j in mine]),
            "end_to_end_s": _percentiles([j["finished_at"] - j["arrived_at"] for j in mine]),
            "p99_first_third_s": _percentiles(early).get("p99"),
            "p99_last_third_s": _percentiles(late).get("p99"),
        }
    return figures


def _trend(samples: list[Sample], attr: str, duration: float) -> dict[str, float]:
    """First, max, last, mean of the first and last third, their ratio and the slope per
    minute (over the whole feed and after its first third) of one sampled quantity."""
    values = [float(getattr(s, attr)) for s in samples]
    first_third, last_third = _thirds(samples, attr, duration)
    later = [s for s in samples if s.t >= duration / 3]
    return {
        "first": values[0],
        "max": max(values),
        "last": values[-1],
        "mean_first_third": first_third,
        "mean_last_third": last_third,
        "ratio_last_first_third": last_third / first_third,
        "slope_per_min": _slope_per_minute([s.t for s in samples], values),
        "slope_per_min_after_first_third": _slope_per_minute(
            [s.t for s in later], [float(getattr(s, attr)) for s in later]
        ),
    }


def _figures(
    jobs: list[dict[str, Any]], samples: list[Sample], start: float, duration: float
) -> dict[str, Any]:
    return {
        "pipelines": _latencies(jobs, start, duration),
        "rss_mb": _trend(samples, "rss_mb", duration),
        "fds": _trend(samples, "fds", duration),
        "threads": _trend(samples, "threads", duration),
    }


# --- the run ------------------------------------------------------------------------------


def _drain(daemon: DaemonProcess, feed: Feed, since: float, deadline: float) -> list[dict[str, Any]]:
    """Wait until every fed arrival has a finished job; returns the jobs."""
    while True:
        arrivals = journal_rows(
            daemon,
            "SELECT source, COUNT(*) AS n FROM arrivals WHERE created_at >= ? GROUP BY source",
            (since,),
        )
        counts = {row["source"]: row["n"] for row in arrivals}
        jobs = _jobs(daemon, since)
        unfinished = [j for j in jobs if j["state"] not in ("done", "dead")]
        taken = counts.get("folder", 0) >= feed.images and counts.get("dicom", 0) >= feed.series
        if taken and len(jobs) >= sum(counts.values()) and not unfinished:
            return jobs
        if not daemon.alive():
            raise SoakFailure(f"the daemon died while draining:\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            raise SoakFailure(
                f"not drained: arrivals {counts} of {feed.images} images and {feed.series} series, "
                f"{len(unfinished)} jobs unfinished"
            )
        time.sleep(1.0)


def _feed_and_sample(
    daemon: DaemonProcess, folder: Path, staging: Path, pool: Sequence[np.ndarray], args: argparse.Namespace
) -> tuple[Feed, list[Sample], float]:
    """Run both feeders for the soak's duration while sampling the daemon; returns what
    was fed, the samples and the wall-clock start of the feed."""
    duration = args.minutes * 60.0
    process = psutil.Process(daemon.pid)
    feed, stop, samples = Feed(), threading.Event(), []
    feeders = [
        threading.Thread(
            target=_feed_images,
            args=(folder, staging, pool, args.image_interval, stop, feed),
            name="feed-images",
        ),
        threading.Thread(
            target=_feed_series,
            args=(
                int(daemon.state["dicom_port"]),
                args.slices,
                args.ct_size,
                args.series_interval,
                stop,
                feed,
            ),
            name="feed-series",
        ),
    ]
    start, began = time.time(), time.monotonic()
    for feeder in feeders:
        feeder.start()
    try:
        while (elapsed := time.monotonic() - began) < duration:
            if not daemon.alive():
                raise SoakFailure(f"the daemon died after {elapsed:.0f} s:\n{daemon.log_tail()}")
            samples.append(_sample(process, elapsed))
            if len(samples) % max(1, int(60 / args.sample_seconds)) == 0:
                last = samples[-1]
                print(
                    f"  {elapsed / 60:5.1f} min: {feed.images} images, {feed.series} series fed; "
                    f"RSS {last.rss_mb:.0f} MB, {last.fds} fds, {last.threads} threads",
                    flush=True,
                )
            time.sleep(args.sample_seconds)
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join(timeout=300)
    return feed, samples, start


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="acqflow-soak-"))
    folder, staging = root / "inbox" / "SOAK", root / "staging"
    folder.mkdir(parents=True)
    staging.mkdir()
    daemon = DaemonProcess(root, _settings(root))
    load_before = psutil.getloadavg()[0]
    try:
        pool = _image_pool(args.image_size, 12)
        daemon.start(timeout=180.0)
        _warm_up(daemon, folder, staging, pool, args)
        feed, samples, start = _feed_and_sample(daemon, folder, staging, pool, args)
        jobs = _drain(daemon, feed, start, time.monotonic() + args.drain_seconds)
        run_seconds = _mean_job_seconds(daemon.metrics_text())
        code = daemon.terminate(timeout=120)
        if code != 0:
            raise SoakFailure(f"the daemon exited with {code} on SIGTERM:\n{daemon.log_tail()}")
        if feed.refused or feed.errors:
            raise SoakFailure(f"{feed.refused} C-STOREs refused; {feed.errors}")
        not_done = [j for j in jobs if j["state"] != "done"]
        if not_done:
            raise SoakFailure(f"{len(not_done)} jobs did not succeed:\n{daemon.log_tail()}")
        figures = _figures(jobs, samples, start, args.minutes * 60.0)
        for name, seconds in run_seconds.items():
            figures["pipelines"].setdefault(name, {})["mean_job_run_s"] = seconds
        figures.update(
            fed=asdict(feed),
            minutes=args.minutes,
            load_average=(load_before, psutil.getloadavg()[0]),
            samples=[asdict(s) for s in samples],
        )
        return figures
    finally:
        daemon.kill()  # no-op after a clean stop
        shutil.rmtree(root, ignore_errors=True)


def _report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    fed = figures["fed"]
    print(
        f"\nsoak of {args.minutes:g} min: fed {fed['images']} images ({args.image_size}²) and "
        f"{fed['series']} CT series ({fed['instances']} instances, {args.slices} x {args.ct_size}²); "
        f"load average {figures['load_average'][0]:.1f} before, {figures['load_average'][1]:.1f} after"
    )
    print(
        f"{'pipeline':18} {'results':>7} {'/min':>6} {'run s':>6}  arrival→result p50 / p95 / p99 (s)   "
        f"end-to-end p50 / p99 (s)   p99 first → last third"
    )
    for name, p in figures["pipelines"].items():
        a, e = p["arrival_to_result_s"], p["end_to_end_s"]
        first, last = p["p99_first_third_s"], p["p99_last_third_s"]
        ratio = f"{last / first:.2f}" if first and last else "n/a"
        print(
            f"{name:18} {p['results']:7d} {p['results_per_minute']:6.1f} {p.get('mean_job_run_s', 0):6.2f}  "
            f"{a['p50']:8.2f} / {a['p95']:6.2f} / {a['p99']:6.2f}            "
            f"{e['p50']:6.2f} / {e['p99']:6.2f}        "
            f"{first or float('nan'):.2f} → {last or float('nan'):.2f} s (x{ratio})"
        )
    rss, fds, threads = figures["rss_mb"], figures["fds"], figures["threads"]
    print(
        f"RSS MB: start {rss['first']:.0f}, max {rss['max']:.0f}, end {rss['last']:.0f}; "
        f"mean last/first third {rss['mean_last_third']:.0f}/{rss['mean_first_third']:.0f} = "
        f"x{rss['ratio_last_first_third']:.3f}; slope {rss['slope_per_min']:+.2f} MB/min "
        f"(after the first third {rss['slope_per_min_after_first_third']:+.2f})"
    )
    print(
        f"open fds: start {fds['first']:.0f}, max {fds['max']:.0f}, end {fds['last']:.0f}; "
        f"mean last/first third x{fds['ratio_last_first_third']:.3f}; slope {fds['slope_per_min']:+.3f}/min"
    )
    print(
        f"threads: start {threads['first']:.0f}, max {threads['max']:.0f}, end {threads['last']:.0f}; "
        f"mean last/first third x{threads['ratio_last_first_third']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="feed time (at least 1)")
    parser.add_argument("--image-interval", type=float, default=5.0, help="seconds between folder images")
    parser.add_argument("--series-interval", type=float, default=60.0, help="seconds between CT series")
    parser.add_argument("--image-size", type=int, default=512, help="phase image side in pixels")
    parser.add_argument("--slices", type=int, default=24, help="slices per CT series")
    parser.add_argument("--ct-size", type=int, default=128, help="CT slice side in pixels")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS/fd sampling period")
    parser.add_argument("--drain-seconds", type=float, default=300.0, help="longest wait for the queue")
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    try:
        figures = run(args)
    except SoakFailure as failure:
        print(f"soak failed: {failure}", file=sys.stderr)
        raise SystemExit(1) from None
    _report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
