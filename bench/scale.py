"""Scale benchmark: dispatch cost against journal size, and local threads against Dask.

(a) **Dispatch cost per job** with 1k, 10k and 100k finished arrivals (and their done
    jobs) already in the journal (simulated rows): the time to route 200 new READY
    arrivals and claim their jobs, per job, and its ratio to the 1k case. Routing and
    claiming read only READY arrivals and pending jobs (indexed by state), so the cost
    should stay flat as the journal grows.
(b) **Import rate** of trees of small DICOM files (8 x 8 CT slices, 100 per series, in
    nested folders with two series per folder and one non-DICOM file in ten): files/s and
    peak RSS of ``acqflow import`` (run in a child process, so the peak is its own) at
    2,500 and 10,000 files, then the second run over the 10,000 (nothing new: reads no
    header), with the ratios to the smaller tree.
(c) **Throughput** of N small CT series (32 x 32 x 6, the ``test-series`` pipeline with a
    fixed CPU load per job, ``torch_busy_seconds``) through the in-process daemon with
    the local executor (``workers.count`` 1) and with a Dask ``LocalCluster`` of 1 and 2
    worker processes, in one run: series/s and the ratios to the local executor.

Usage: ``python bench/scale.py [--series 12] [--busy 0.5] [--files 10000] [--skip-dask]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from acqflow.daemon.config import load_settings  # noqa: E402
from acqflow.daemon.jobqueue import JobQueue, RouteDecision  # noqa: E402
from acqflow.daemon.journal import ArrivalState, Journal  # noqa: E402


def _fill(journal: Journal, count: int) -> None:
    """``count`` routed arrivals, each with one done job (bulk SQL: simulated history)."""
    now = time.time()
    with journal.transaction() as db:
        db.executemany(
            "INSERT INTO arrivals(source, kind, key, path, state, attrs, created_at, updated_at)"
            " VALUES('dicom', 'dicom-series', ?, ?, 'routed', '{}', ?, ?)",
            ((f"old-{i}", f"/spool/old-{i}", now, now) for i in range(count)),
        )
        db.execute(
            "INSERT INTO jobs(arrival_id, generation, pipeline, state, export, route, created_at,"
            " finished_at)"
            " SELECT id, generation, 'test-series', 'done', '[]', 'ct', ?, ? FROM arrivals",
            (now, now),
        )


def dispatch_cost(history: int, new: int = 200) -> float:
    """Seconds per job to route ``new`` READY arrivals and claim their jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite3")
        jobs = JobQueue(journal)
        _fill(journal, history)
        now = time.time()
        with journal.transaction() as db:
            db.executemany(
                "INSERT INTO arrivals(source, kind, key, path, state, attrs, created_at, updated_at)"
                " VALUES('dicom', 'dicom-series', ?, ?, 'ready', '{}', ?, ?)",
                ((f"new-{i}", f"/spool/new-{i}", now, now) for i in range(new)),
            )
        started = time.perf_counter()
        for arrival in journal.arrivals_in_state(ArrivalState.READY):
            jobs.route(arrival.id, arrival.generation, [RouteDecision("test-series", "ct")])
        claimed = 0
        while claimed < new:
            batch = jobs.claim(["test-series"], 8)  # the dispatcher's queue room
            if not batch:
                break
            claimed += len(batch)
        elapsed = time.perf_counter() - started
        journal.close()
        if claimed != new:
            raise RuntimeError(f"claimed {claimed} of {new} jobs")
        return elapsed / new


def write_tree(root: Path, files: int, per_series: int = 100) -> None:
    """``files`` small CT instances (and a text file per ten) in nested folders."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    for index in range(files):
        series, number = divmod(index, per_series)
        folder = root / f"site{series % 7}" / f"batch{series // 2}"
        folder.mkdir(parents=True, exist_ok=True)
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid(entropy_srcs=[str(index)])
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(series // 3)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(series)])
        ds.Modality, ds.InstanceNumber, ds.PatientName = "CT", number + 1, "BENCH^IMPORT"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes(128)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"IM{index:06d}", enforce_file_format=True)
        if index % 10 == 0:
            (folder / f"notes{index}.txt").write_text("scanner log")


_IMPORT_CHILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from acqflow.daemon.dicom.importing import DicomImport
from acqflow.daemon.journal import Journal
journal = Journal(Path({journal!r}))
started = time.perf_counter()
summary = DicomImport(journal).run([Path({tree!r})])
seconds = time.perf_counter() - started
print(json.dumps({{"files": summary.files, "instances": summary.instances, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def import_rate(tree: Path, journal: Path) -> dict[str, float]:
    """One ``acqflow import`` of ``tree`` in a child process: files/s and its peak RSS."""
    import subprocess

    code = _IMPORT_CHILD.format(repo=str(REPO), journal=str(journal), tree=str(tree))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return {"files_per_s": result["files"] / result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
            "instances": result["instances"], "files": result["files"]}


def bench_import(files: int) -> dict[str, dict[str, float]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (files // 4, files):
            tree = Path(tmp) / f"tree{count}"
            write_tree(tree, count)
            out[f"first_{count}"] = import_rate(tree, Path(tmp) / f"journal{count}.sqlite3")
        out[f"again_{files}"] = import_rate(Path(tmp) / f"tree{files}", Path(tmp) / f"journal{files}.sqlite3")
    return out


def _daemon_settings(root: Path, busy: float, workers: dict[str, Any]) -> Path:
    from tests.support.daemon_proc import TEST_PIPELINES, toml_dumps

    settings = {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.05, **workers},
        "metrics": {"enabled": False},
        "dicom": {"enabled": False},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES, "options": {"test-series": {"torch_busy_seconds": busy}},
                      "preload": False},
    }
    path = root / "acqflow.toml"
    path.write_text(toml_dumps(settings))
    return path


def throughput(series: int, busy: float, workers: dict[str, Any], scheduler: str | None = None) -> float:
    """Series per second through the in-process daemon (arrivals recorded directly)."""
    from acqflow.daemon.dicom.part10 import read_part10
    from acqflow.daemon.journal import Instance
    from acqflow.daemon.service import Daemon
    from tests.support.peers import write_synthetic_ct

    if scheduler is not None:
        workers = {**workers, "executor": "dask", "dask": {"scheduler": scheduler, "in_flight": 8}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        daemon = Daemon(load_settings(_daemon_settings(root, busy, workers)))
        daemon.start()
        try:
            assert daemon.journal is not None
            inputs = [write_synthetic_ct(root / "in" / str(index), n_slices=6, seed=f"scale-{index}",
                                         rows=32, cols=32) for index in range(series)]
            started = time.perf_counter()
            for written in inputs:
                key = written.series_uid
                for path in written.paths:
                    ds = read_part10(path)
                    daemon.journal.record_instance(
                        key, path.parent,
                        {"series_uid": key, "study_uid": written.study_uid, "modality": "CT"},
                        Instance(str(ds.SOPInstanceUID), 0, path, path.stat().st_size, "BENCH", "bench",
                                 time.time()),
                    )
                [row] = daemon.journal.query("SELECT id, generation FROM arrivals WHERE key=?", (key,))
                daemon.journal.mark_series_ready(row["id"], row["generation"])
            daemon.pool.wake()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                rows = daemon.journal.query("SELECT state, COUNT(*) n FROM jobs GROUP BY 1")
                counts = {r["state"]: r["n"] for r in rows}
                if counts.get("done", 0) == series:
                    break
                if counts.get("dead"):
                    raise RuntimeError(f"jobs died: {counts}")
                time.sleep(0.05)
            else:
                raise TimeoutError("jobs did not finish")
            return series / (time.perf_counter() - started)
        finally:
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=12)
    parser.add_argument("--busy", type=float, default=0.5, help="CPU seconds per job")
    parser.add_argument("--files", type=int, default=10_000, help="files in the larger import tree")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run, e.g. 'b'")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if "a" in args.parts:
        report["dispatch_us_per_job"] = dispatch = {}
        for history in (1_000, 10_000, 100_000):
            dispatch[history] = round(dispatch_cost(history) * 1e6, 1)
        print("(a) dispatch cost per job (route + claim of 200 new jobs):")
        for history, cost in dispatch.items():
            print(f"    {history:>7} arrivals in the journal: {cost:8.1f} us/job"
                  f"  ({cost / dispatch[1_000]:.2f}x the 1k case)")
    if "b" in args.parts:
        report["import"] = _print_import(bench_import(args.files), args.files)
    if "c" in args.parts:
        report["throughput_series_per_s"] = _throughput_report(args.series, args.busy, args.skip_dask)
    print(json.dumps(report))
    return 0


def _print_import(imports: dict[str, dict[str, float]], files: int) -> dict[str, dict[str, float]]:
    small, large, again = imports[f"first_{files // 4}"], imports[f"first_{files}"], imports[f"again_{files}"]
    print("(b) acqflow import (headers read, series registered; child process):")
    runs = ((f"{files // 4} files", small), (f"{files} files", large), (f"{files} files again", again))
    for name, run in runs:
        rate, rss = run["files_per_s"], run["peak_rss_mb"]
        print(f"    {name:>18}: {rate:7.0f} files/s ({rate / small['files_per_s']:.2f}x),"
              f" peak RSS {rss:.0f} MB ({rss / small['peak_rss_mb']:.2f}x),"
              f" {run['instances']:.0f} instances registered")
    return imports


def _throughput_report(series: int, busy: float, skip_dask: bool) -> dict[str, float]:
    local = throughput(series, busy, {"count": 1})
    out = {"local_1_thread": round(local, 3)}
    print(f"(c) {series} series, {busy} s of CPU each:")
    print(f"    local executor, 1 thread:  {local:.2f} series/s")
    if not skip_dask:
        from distributed import LocalCluster

        for n_workers in (1, 2):
            with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address="127.0.0.1:0") as cluster:
                rate = throughput(series, busy, {"count": 1}, cluster.scheduler_address)
            out[f"dask_{n_workers}_workers"] = round(rate, 3)
            print(f"    Dask, {n_workers} worker process(es): {rate:.2f} series/s"
                  f" ({rate / local:.2f}x local)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
