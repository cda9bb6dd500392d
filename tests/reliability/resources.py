"""Measure PACS outages and full disks: figures for the resource rows of ``docs/reliability.md``.

Usage (from the repository root, as root: the full disks are small tmpfs mounts)::

    python -m tests.reliability.resources

Scenarios: a PACS that refuses the association, then accepts; a PACS that answers
C-STORE with a failure status (0xA700, out of resources) twice, then Success; the spool
(state) disk full while a series arrives; the outputs disk full while its job runs, then
space freed. Each prints one markdown row: sent, acknowledged, present after restart (or
after the condition cleared), duplicates, and what happened to the job, its export and
the quarantine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from tests.reliability.kill9 import _present, _settings
from tests.support.daemon_proc import DaemonProcess, journal_rows, wait_until
from tests.support.peers import LOOPBACK, PeerSet, free_port, storescu, write_synthetic_ct

__all__ = ["main"]

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # the test pipeline exports a derived CT image


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder``; returns the filler file (delete it to free space)."""
    filler = folder / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:  # ENOSPC: full, which is the point
            pass
    return filler


def _quarantined(daemon: DaemonProcess) -> int:
    folder = daemon.state_dir / "quarantine"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def _export_row(
    root: Path,
    settings_change: Callable[[dict[str, Any], int], None],
    before_start: Callable[[PeerSet], Callable[[], None]],
) -> dict[str, Any]:
    """A series exported to a PACS peer that misbehaves, then recovers (``before_start``)."""
    peers = PeerSet(root / "peers")
    try:
        port = free_port()
        settings = _settings(
            root, port, export={"retry_initial_seconds": 0.5, "retry_max_seconds": 1.0, "poll_seconds": 0.5}
        )
        settings_change(settings, port)
        settings["routes"][0]["export"] = ["pacs"]
        recover = before_start(peers)
        daemon = DaemonProcess(root, settings)
        daemon.start()
        series = write_synthetic_ct(root / "ct", n_slices=5, seed=f"pacs-{root.name}", rows=64, cols=64)
        sent = storescu(port, series.paths)
        wait_until(
            lambda: any(e["attempts"] >= 2 for e in journal_rows(daemon, "SELECT * FROM exports")),
            60,
            "two failed export attempts",
            daemon,
        )
        failed = journal_rows(daemon, "SELECT * FROM exports")[0]
        in_pacs = recover()
        wait_until(
            lambda: [e["state"] for e in journal_rows(daemon, "SELECT state FROM exports")] == ["done"],
            60,
            "the export once the PACS accepts",
            daemon,
        )
        landed = in_pacs()  # type: ignore[operator]
        present = _present(daemon, set(series.sop_uids))
        quarantined = _quarantined(daemon)
        daemon.terminate()
    finally:
        peers.stop_all()
    return {
        "sent": 5,
        "acknowledged": 5 if sent.returncode == 0 else 0,
        "present": present,
        "duplicates": max(0, landed - 1),
        "note": f"first error: {failed['error']}; then done; {landed} instance(s) in the PACS; "
        f"{quarantined} quarantined",
    }


def pacs_refusing(root: Path) -> dict[str, Any]:
    """Orthanc that does not know the calling AE (association rejected), then restarted knowing it."""
    peers = PeerSet(root / "orthanc-peers")
    orthanc = peers.orthanc(modalities={})
    ports: list[int] = []

    def change(settings: dict[str, Any], port: int) -> None:
        ports.append(port)
        settings["export"]["destinations"] = [
            {"name": "pacs", "ae_title": "ORTHANC", "host": LOOPBACK, "port": orthanc.dicom_port}
        ]

    def start(peers: PeerSet) -> Callable[[], Any]:
        def recover() -> Callable[[], int]:
            orthanc.stop()
            orthanc.modalities = {"acqflow": ("ACQFLOW", ports[0])}
            orthanc.start()
            return lambda: len(orthanc.instances())

        return recover

    try:
        return _export_row(root, change, start)
    finally:
        peers.stop_all()


def pacs_failure_status(root: Path) -> dict[str, Any]:
    """A pynetdicom SCP answering 0xA700 to the first two C-STOREs, then Success."""
    answers = {"calls": 0, "stored": 0}
    lock = threading.Lock()

    def handle(event: evt.Event) -> int:
        with lock:
            answers["calls"] += 1
            if answers["calls"] <= 2:
                return 0xA700
            answers["stored"] += 1
            return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    ae.add_supported_context(SEG_CLASS, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    pacs_port = free_port()
    server = ae.start_server((LOOPBACK, pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])

    def change(settings: dict[str, Any], port: int) -> None:
        settings["export"]["destinations"] = [
            {"name": "pacs", "ae_title": "PACS", "host": LOOPBACK, "port": pacs_port}
        ]

    try:
        return _export_row(root, change, lambda peers: lambda: lambda: answers["stored"])
    finally:
        server.shutdown()


def spool_full(root: Path) -> dict[str, Any]:
    """The state disk (spool and journal) full when a series arrives; then space freed."""
    with _tmpfs(root / "state", "24m") as state:
        port = free_port()
        settings = _settings(root, port)
        settings["dicom"]["spool_slots"] = 0
        daemon = DaemonProcess(root, settings)
        daemon.start()
        filler = _fill(state)
        series = write_synthetic_ct(root / "ct", n_slices=20, seed=f"spool-{root.name}", rows=256, cols=256)
        sent = storescu(port, series.paths)
        logged = daemon.log_tail(20000).splitlines()
        refused = next((line.split(" ", 3)[-1] for line in logged if "refused" in line or "No space" in line),
                       "no refusal logged")
        acked_before = len(journal_rows(daemon, "SELECT * FROM instances"))
        os.unlink(filler)
        resend = storescu(port, series.paths)
        wait_until(
            lambda: len(journal_rows(daemon, "SELECT * FROM instances")) == 20, 60, "the resend", daemon
        )
        present = _present(daemon, set(series.sop_uids))
        quarantined = _quarantined(daemon)
        daemon.terminate()
    return {
        "sent": 20,
        "acknowledged": acked_before,
        "present": present,
        "duplicates": 0,
        "note": f"disk full: {acked_before} acknowledged, storescu exit {sent.returncode} "
        f"; daemon: {refused[:140]}; after space freed the resend (exit "
        f"{resend.returncode}) stored all 20; {quarantined} quarantined",
    }


def outputs_full(root: Path) -> dict[str, Any]:
    """The outputs disk full while the job runs; space freed 10 s later."""
    with _tmpfs(root / "outputs", "4m") as outputs:
        port = free_port()
        settings = _settings(root, port)
        settings["workers"].update({"retry_initial_seconds": 1.0, "max_attempts": 3})
        daemon = DaemonProcess(root, settings)
        daemon.start()
        filler = _fill(outputs)
        series = write_synthetic_ct(root / "ct", n_slices=5, seed=f"outputs-{root.name}", rows=64, cols=64)
        sent = storescu(port, series.paths)
        wait_until(
            lambda: any(
                j["attempts"] >= 1 and j["state"] != "running"
                for j in journal_rows(daemon, "SELECT * FROM jobs")
            ),
            60,
            "an attempt",
            daemon,
        )
        time.sleep(10.0)
        [job] = journal_rows(daemon, "SELECT * FROM jobs")
        during = f"job {job['state']} after {job['attempts']} attempt(s): {job['error']}"
        os.unlink(filler)
        time.sleep(10.0)
        [job] = journal_rows(daemon, "SELECT * FROM jobs")
        present = _present(daemon, set(series.sop_uids))
        results = len(list(outputs.rglob("*.dcm")))
        quarantined = _quarantined(daemon)
        daemon.terminate()
    return {
        "sent": 5,
        "acknowledged": 5 if sent.returncode == 0 else 0,
        "present": present,
        "duplicates": 0,
        "note": f"while full: {during}; 10 s after space freed: job {job['state']}, {results} result "
        f"file(s); {quarantined} quarantined",
    }


def main() -> int:
    print("| case | sent | acknowledged | present after | duplicates | notes |")
    print("|---|---|---|---|---|---|")
    for name, scenario in (
        ("PACS refusing the association, then accepting", pacs_refusing),
        ("PACS answering 0xA700 twice, then Success", pacs_failure_status),
        ("spool (state) disk full, then freed", spool_full),
        ("outputs disk full, then freed", outputs_full),
    ):
        with tempfile.TemporaryDirectory(prefix="acqflow-resources-") as folder:
            try:
                figures = scenario(Path(folder))
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others' figures
                print(
                    f"| {name} | | | | | not measured: {type(exc).__name__}: {str(exc)[:200]} |", flush=True
                )
                continue
        print(
            f"| {name} | {figures['sent']} | {figures['acknowledged']} | {figures['present']} | "
            f"{figures['duplicates']} | {figures['note']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
