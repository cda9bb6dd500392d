"""Ingest benchmark: acqflow's DICOM SCP against dcmtk's storescp, in one run.

The same synthetic CT series (default 300 slices of 512x512 16-bit, ~158 MB) is sent by
the same dcmtk ``storescu`` invocation (same max PDU, ``TCP_NODELAY=1`` in dcmtk's
environment) to

  (a) acqflow's DicomReceiver with its default settings: every instance streamed into
      a spool slot written ahead (512 of 1 MiB; the pool is full at the start of each
      round, as after any idle second of a running daemon), sealed and fdatasync'ed,
      and its journal row committed (SQLite WAL) before Success is returned — see the
      durability argument in docs/conformance.md §7. ``--slots 0`` measures new files
      instead (fdatasync, rename into the series folder, folder fsync);
  (b) dcmtk ``storescp`` writing into a temporary folder (no fsync: its default);
  (c) acqflow's STOW-RS receiver (``[dicomweb]``, on the same spool as (a), so with the
      same slots and durability), the series POSTed by ``curl --data-binary`` as one
      ``multipart/related`` body (``--skip-stow`` leaves it out);
  (d) with ``--console``: (a) again with the web console running on the same journal and
      a client fetching three of its pages every 0.2 s (15 requests/s, far more than a
      browser on the plate view), to show what the console costs ingest.

Rounds alternate between the two; the median round of each is reported as instances/s
and MB/s (10^6 bytes of Part-10 files sent), with the ratio acqflow / storescp of the
medians and, to show how much the machine moved, the ratio within each round. Exits
non-zero only when the benchmark itself fails (a transfer fails or files are missing);
missing the targets is reported, not an error.

Usage: ``python bench/ingest.py [--slices 300] [--max-pdu 131072] [--rounds 3] [--slots 512] [--console]
[--skip-stow]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acqflow.daemon import metrics
from acqflow.daemon.config import DicomSettings
from acqflow.daemon.dicom.scp import DicomReceiver
from acqflow.daemon.fileio import write_atomic
from acqflow.daemon.journal import Journal
from tests.support.peers import PeerSet, SyntheticSeries, storescu, write_synthetic_ct

TARGET_MB_S = 100.0
TARGET_RATIO = 0.5


@dataclass(frozen=True)
class Round:
    receiver: str
    seconds: float
    instances: int
    megabytes: float
    store_seconds: float = 0.0  # acqflow only: time completing C-STOREs (after the last fragment)

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds


class BenchFailure(Exception):
    """The benchmark itself failed (not a missed target)."""


def _send(port: int, series: SyntheticSeries, max_pdu: int, called_ae: str) -> float:
    started = time.perf_counter()
    result = storescu(port, series.paths, called_ae=called_ae, max_pdu=max_pdu, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchFailure(f"storescu to {called_ae} failed ({result.returncode}): {result.stderr[-500:]}")
    return elapsed


def run_acqflow(series: SyntheticSeries, workdir: Path, max_pdu: int, slots: int,
                console: bool = False) -> Round:
    """One transfer into a fresh journal + spool with durable writes; with ``console``
    the web console runs on the same journal with a client polling it every 0.2 s."""
    journal = Journal(workdir / "journal.sqlite3")
    stop_polling = _console_poller(journal, workdir) if console else None
    settings = DicomSettings(port=0, max_pdu=max_pdu, spool_slots=slots)
    receiver = DicomReceiver(settings, journal, workdir / "spool",
                             lambda _ids: None)
    receiver.start()
    slots = receiver.spool.slots
    if slots is not None and not slots.wait_filled(300):  # as after any idle second of a running daemon
        raise BenchFailure(f"spool slots not written: {slots.free} of {slots.target}")
    handler_before = _store_seconds()
    try:
        seconds = _send(receiver.port, series, max_pdu, "ACQFLOW")
        stored = journal.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    finally:
        if stop_polling is not None:
            stop_polling()
        receiver.stop()
        journal.close()
    if stored != len(series.paths):
        raise BenchFailure(f"acqflow journaled {stored} of {len(series.paths)} instances")
    name = "acqflow+console" if console else "acqflow"
    store_seconds = _store_seconds() - handler_before
    return Round(name, seconds, len(series.paths), series.total_bytes / 1e6, store_seconds)


def _console_poller(journal: Journal, workdir: Path) -> Callable[[], None]:
    """Start the web console on ``journal`` and a thread fetching its pages every 0.2 s
    (as a browser on the operations and plate views would); returns the stopper."""
    import threading
    import urllib.request

    from acqflow.daemon.config import Settings
    from acqflow.daemon.web.app import WebConsole

    paths = {"state_dir": str(workdir), "outputs_dir": str(workdir / "out")}
    settings = Settings.model_validate({"paths": paths, "web": {"enabled": True, "port": 0}})
    console = WebConsole(settings, journal)
    console.start()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            for page in ("/", "/ops", "/studies"):
                with urllib.request.urlopen(f"http://127.0.0.1:{console.port}{page}", timeout=10) as answer:
                    answer.read()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(10)
        console.stop()

    return stopper


BOUNDARY = "acqflow-bench"


def write_stow_body(series: SyntheticSeries, path: Path) -> None:
    """The series as one STOW-RS multipart/related body."""
    with path.open("wb") as body:
        for instance in series.paths:
            body.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(instance.read_bytes())
            body.write(b"\r\n")
        body.write(f"--{BOUNDARY}--\r\n".encode())


def run_stow(series: SyntheticSeries, body: Path, workdir: Path, slots: int) -> Round:
    """One POST of the whole series into acqflow's STOW-RS receiver (on the SCP's spool)."""
    import subprocess

    from acqflow.daemon.config import DicomWebSettings
    from acqflow.daemon.dicomweb.server import StowReceiver

    journal = Journal(workdir / "journal.sqlite3")
    receiver = DicomReceiver(DicomSettings(port=0, spool_slots=slots), journal, workdir / "spool",
                             lambda _ids: None)
    receiver.start()
    stow = StowReceiver(DicomWebSettings(enabled=True, port=0), journal, receiver.spool, lambda _ids: None)
    stow.start()
    pool = receiver.spool.slots
    if pool is not None and not pool.wait_filled(300):
        raise BenchFailure(f"spool slots not written: {pool.free} of {pool.target}")
    try:
        started = time.perf_counter()
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "600", "-o", "/dev/null", "-w", "%{http_code}", "-H",
             f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
             "--data-binary", f"@{body}", f"http://127.0.0.1:{stow.port}/dicom-web/studies"],
            capture_output=True, text=True, timeout=660)
        seconds = time.perf_counter() - started
        stored = journal.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    finally:
        stow.stop()
        receiver.stop()
        journal.close()
    if done.stdout != "200" or stored != len(series.paths):
        raise BenchFailure(f"STOW-RS answered {done.stdout} {done.stderr[-300:]}; {stored} instances"
                           " journaled")
    return Round("stow-rs", seconds, len(series.paths), series.total_bytes / 1e6)


def _store_seconds() -> float:
    """Total time acqflow spent completing C-STOREs so far (from its histogram)."""
    for family in metrics.DICOM_STORE_DURATION.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                return float(sample.value)
    return 0.0


def disk_probe(folder: Path, size: int = 525_000, count: int = 20) -> float:
    """Median milliseconds of one durable ``write_atomic`` of ``size`` bytes here."""
    data = os.urandom(size)
    times = []
    for index in range(count):
        started = time.perf_counter()
        write_atomic(folder / f"probe{index}.bin", data)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run_storescp(series: SyntheticSeries, workdir: Path, max_pdu: int) -> Round:
    """One transfer into a fresh dcmtk storescp (TCP_NODELAY=1, same max PDU)."""
    peers = PeerSet(workdir / "peers")
    try:
        _process, port = peers.storescp(workdir / "received", max_pdu=max_pdu)
        seconds = _send(port, series, max_pdu, "STORESCP")
    finally:
        lingering = peers.stop_all()
    if lingering:
        raise BenchFailure(f"storescp did not stop: {lingering}")
    stored = sum(1 for p in (workdir / "received").iterdir() if p.is_file())
    if stored != len(series.paths):
        raise BenchFailure(f"storescp wrote {stored} of {len(series.paths)} files")
    return Round("storescp", seconds, len(series.paths), series.total_bytes / 1e6)


def _median(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.seconds)[len(rounds) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--max-pdu", type=int, default=131072, help="max PDU of both receivers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="temp folder (same disk)")
    parser.add_argument("--slots", type=int, default=DicomSettings().spool_slots,
                        help="acqflow's dicom.spool_slots (0: every instance a new file)")
    parser.add_argument("--skip-stow", action="store_true", help="leave out the STOW-RS rounds")
    parser.add_argument("--console", action="store_true",
                        help="add C-STORE rounds with the web console running and polled")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="acqflow-bench-", dir=args.workdir))
    try:
        series = write_synthetic_ct(root / "series", n_slices=args.slices, seed="bench")
        print(f"series: {len(series.paths)} instances, {series.total_bytes / 1e6:.1f} MB, "
              f"max PDU {args.max_pdu}, {args.rounds} round(s) each, alternating; "
              f"acqflow spool slots: {args.slots}")
        print(f"disk: one durable 512 kB write_atomic takes {disk_probe(root):.2f} ms (median); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)")
        results: dict[str, list[Round]] = {"acqflow": [], "storescp": []}
        if not args.skip_stow:
            results["stow-rs"] = []
            write_stow_body(series, root / "stow-body")
        if args.console:
            results["acqflow+console"] = []
        for index in range(args.rounds):
            # Each round starts with no dirty pages: storescp leaves ~158 MB unflushed, and
            # acqflow's first fsync would pay for them. Received files are kept until the
            # end: deleting hundreds of files makes the next file creations slow for a
            # while (ext4 without a journal steps over recently freed inodes one by one).
            os.sync()
            results["storescp"].append(run_storescp(series, root / f"scp{index}", args.max_pdu))
            os.sync()
            results["acqflow"].append(run_acqflow(series, root / f"acq{index}", args.max_pdu, args.slots))
            if args.console:
                os.sync()
                results["acqflow+console"].append(
                    run_acqflow(series, root / f"con{index}", args.max_pdu, args.slots, console=True))
            if not args.skip_stow:
                os.sync()
                (root / f"stow{index}").mkdir()
                stow = run_stow(series, root / "stow-body", root / f"stow{index}", args.slots)
                results["stow-rs"].append(stow)
        report(results)
    except BenchFailure as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _print_ratio(label: str, these: list[Round], against: list[Round]) -> float:
    """Print (and return) the MB/s ratio of the medians, with the ratio round by round."""
    ratio = _median(these).mb_per_second / _median(against).mb_per_second
    paired = [a.mb_per_second / b.mb_per_second for a, b in zip(these, against, strict=True)]
    print(f"{label}: {ratio:.2f} (of the medians; round by round: {', '.join(f'{r:.2f}' for r in paired)})")
    return ratio


def report(results: dict[str, list[Round]]) -> None:
    for name, rounds in results.items():
        every = ", ".join(f"{r.mb_per_second:.0f}" for r in rounds)
        best = _median(rounds)
        print(f"{name:9s} median {best.instances_per_second:7.1f} instances/s "
              f"{best.mb_per_second:7.1f} MB/s  ({best.seconds:.2f} s; rounds MB/s: {every})")
    acq = _median(results["acqflow"])
    per_instance = 1000 * acq.seconds / acq.instances
    in_handler = 1000 * acq.store_seconds / acq.instances
    print(f"acqflow per instance: {per_instance:.2f} ms, of which {in_handler:.2f} ms completing the "
          "C-STORE (durable spool write, journal commit)")
    ratio = _print_ratio("ratio acqflow/storescp", results["acqflow"], results["storescp"])
    if results.get("stow-rs"):
        _print_ratio("ratio STOW-RS/C-STORE into acqflow", results["stow-rs"], results["acqflow"])
    if results.get("acqflow+console"):
        _print_ratio("ratio C-STORE with the console polled / without", results["acqflow+console"],
                     results["acqflow"])
    speed = "met" if acq.mb_per_second >= TARGET_MB_S else "NOT met"
    relative = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"target >= {TARGET_MB_S:.0f} MB/s durable: {speed}; target ratio >= {TARGET_RATIO}: {relative}")


if __name__ == "__main__":
    sys.exit(main())
