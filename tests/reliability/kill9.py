"""Measure what ``kill -9`` costs: figures for the crash rows of ``docs/reliability.md``.

Usage (from the repository root; takes about a minute per receive round)::

    python -m tests.reliability.kill9 [--rounds 3]

Each scenario starts a real ``acqflow serve``, kills it with SIGKILL at the named moment,
restarts it on the same state and counts: sent, acknowledged (by the sender: dcmtk
storescu's Success responses), present after the restart (journal row and a spool file
holding that SOP Instance UID), and duplicates (instances stored twice after the sender
retries everything, or results written or exported more than once). Prints one markdown
row per scenario. The asserting tests of the same promise are
``tests/e2e/test_dicom_flow.py::test_kill_9_*`` and ``tests/daemon/test_scp.py::test_kill_9_*``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import tifffile

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, journal_rows, wait_until
from tests.support.peers import (
    DCMTK_STORESCU,
    LOOPBACK,
    OrthancPeer,
    PeerSet,
    SyntheticSeries,
    free_port,
    nodelay_env,
    storescu,
    write_synthetic_ct,
)
from tests.support.pipelines import padding_pattern

__all__ = [
    "kill_during_export",
    "kill_during_file_write",
    "kill_during_inference",
    "kill_during_receive",
    "main",
]


def _settings(root: Path, dicom_port: int, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2, "retry_initial_seconds": 0.5},
        "metrics": {"port": free_port()},
        "dicom": {
            "port": dicom_port,
            "series_quiet_seconds": 1.0,
            "allowed_calling_aes": ["STORESCU", "ORTHANC"],
        },
        "folders": [],
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    settings.update(extra)
    return settings


def _present(daemon: DaemonProcess, uids: set[str]) -> int:
    rows = {r["sop_instance_uid"]: r["path"] for r in journal_rows(daemon, "SELECT * FROM instances")}
    return sum(
        1
        for uid in uids
        if uid in rows
        and Path(rows[uid]).exists()
        and pydicom.dcmread(rows[uid], stop_before_pixels=True).SOPInstanceUID == uid
    )


def _acknowledged(log_text: str, series: SyntheticSeries) -> set[str]:
    index = {str(p): uid for p, uid in zip(series.paths, series.sop_uids, strict=True)}
    acked: set[str] = set()
    current = None
    for line in log_text.splitlines():
        sending = re.search(r"Sending file: (\S+)", line)
        if sending:
            current = sending.group(1)
        elif "Received Store Response (Success)" in line and current in index:
            acked.add(index[current])
    return acked


def _jobs_done(daemon: DaemonProcess) -> bool:
    jobs = journal_rows(daemon, "SELECT state FROM jobs")
    return bool(jobs) and all(j["state"] in ("done", "superseded") for j in jobs)


def kill_during_receive(root: Path, after: int = 40) -> dict[str, Any]:
    """SIGKILL ~10 ms after the ``after``-th acknowledgement of a 400-slice series."""
    series = write_synthetic_ct(root / "ct", n_slices=400, seed=f"kill9-{root.name}", rows=256, cols=256)
    port = free_port()
    daemon = DaemonProcess(root, _settings(root, port))
    daemon.start()
    log_path = root / "storescu.log"
    with log_path.open("w") as log:
        sender = subprocess.Popen(
            [
                DCMTK_STORESCU,
                "-v",
                "-aec",
                "ACQFLOW",
                "-aet",
                "STORESCU",
                "-to",
                "10",
                "-ta",
                "10",
                "-td",
                "10",
                LOOPBACK,
                str(port),
                *map(str, series.paths),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=nodelay_env(),
        )
    wait_until(
        lambda: log_path.read_text().count("Store Response (Success)") >= after, 60, "acks", daemon, poll=0.01
    )
    daemon.kill()
    sender.wait(30)
    acked = _acknowledged(log_path.read_text(), series)
    daemon.start()
    present = _present(daemon, acked)
    resend = storescu(port, series.paths)
    wait_until(
        lambda: len(journal_rows(daemon, "SELECT * FROM instances")) == 400 and _jobs_done(daemon),
        120,
        "the resent series",
        daemon,
    )
    rows = journal_rows(daemon, "SELECT sop_instance_uid FROM instances")
    results = list((root / "outputs" / "test-series").rglob("*.dcm"))
    daemon.terminate()
    return {
        "sent": len(series.paths),
        "acknowledged": len(acked),
        "present": present,
        "duplicates": (len(rows) - len({r["sop_instance_uid"] for r in rows})) + max(0, len(results) - 1),
        "note": f"resend exit {resend.returncode}; {len(results)} result file(s)",
    }


def kill_during_inference(root: Path) -> dict[str, Any]:
    """SIGKILL while the series' job runs (a pipeline that takes 3 s), then restart."""
    series = write_synthetic_ct(root / "ct", n_slices=5, seed=f"kill9-inf-{root.name}", rows=64, cols=64)
    port = free_port()
    daemon = DaemonProcess(
        root,
        _settings(
            root,
            port,
            pipelines={"modules": TEST_PIPELINES, "options": {"test-series": {"delay_seconds": 3.0}}},
        ),
    )
    daemon.start()
    sent = storescu(port, series.paths)
    wait_until(
        lambda: [j["state"] for j in journal_rows(daemon, "SELECT state FROM jobs")] == ["running"],
        60,
        "the running job",
        daemon,
    )
    daemon.kill()
    daemon.start()
    wait_until(lambda: _jobs_done(daemon), 60, "the job after restart", daemon)
    present = _present(daemon, set(series.sop_uids))
    results = list((root / "outputs" / "test-series").rglob("*.dcm"))
    outputs = journal_rows(daemon, "SELECT * FROM outputs WHERE kind = 'dicom'")
    [job] = journal_rows(daemon, "SELECT * FROM jobs")
    daemon.terminate()
    return {
        "sent": len(series.paths),
        "acknowledged": len(series.paths) if sent.returncode == 0 else 0,
        "present": present,
        "duplicates": max(0, len(results) - 1) + max(0, len(outputs) - 1),
        "note": f"job re-run after restart: done, attempts {job['attempts']}",
    }


def kill_during_file_write(root: Path, padding_bytes: int = 256 << 20) -> dict[str, Any]:
    """SIGKILL while a folder image's job writes its results (a ``padding_bytes`` output
    file half-written under its temporary name), then restart on the same state."""
    inbox, outputs = root / "inbox", root / "outputs"
    inbox.mkdir(parents=True)
    settings = _settings(root, free_port())
    settings.update(
        dicom={"enabled": False},
        folders=[{"path": str(inbox), "stable_seconds": 0.3}],
        routes=[{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        pipelines={"modules": TEST_PIPELINES, "options": {"test-image": {"padding_bytes": padding_bytes}}},
    )
    daemon = DaemonProcess(root, settings)
    daemon.start()
    tifffile.imwrite(inbox / "well_A01.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))

    def partial() -> bool:
        return any(p.stat().st_size > 0 for p in outputs.rglob(".padding.bin.*.tmp"))

    wait_until(partial, 60, "a result file half-written", daemon, poll=0.002)
    daemon.kill()
    left = len(list(outputs.rglob(".padding.bin.*.tmp")))
    daemon.start()
    wait_until(lambda: _jobs_done(daemon), 60, "the job after restart", daemon)
    written = list(outputs.rglob("padding.bin"))
    whole = sum(1 for p in written if p.read_bytes() == padding_pattern(padding_bytes))
    stale = list(outputs.rglob("*.tmp"))
    rows = journal_rows(daemon, "SELECT path FROM outputs")
    [job] = journal_rows(daemon, "SELECT * FROM jobs")
    daemon.terminate()
    return {
        "sent": 1,
        "acknowledged": 1,
        "present": whole,
        "duplicates": max(0, len(written) - 1) + (len(rows) - len({r["path"] for r in rows})),
        "stale": len(stale),
        "note": (
            f"{left} partial file(s) after the kill, {len(stale)} after the re-run; "
            f"{whole} complete {padding_bytes >> 20} MiB result;"
            f" job {job['state']}, attempts {job['attempts']}"
        ),
    }


def kill_during_export(root: Path) -> dict[str, Any]:
    """SIGKILL while the result's export to a PACS (Orthanc, down) is outstanding."""
    peers = PeerSet(root / "peers")
    try:
        port = free_port()
        orthanc_http, orthanc_dicom = free_port(), free_port()
        destination = {"name": "pacs", "ae_title": "ORTHANC", "host": LOOPBACK, "port": orthanc_dicom}
        settings = _settings(
            root,
            port,
            export={
                "destinations": [destination],
                "retry_initial_seconds": 0.5,
                "retry_max_seconds": 1.0,
                "poll_seconds": 0.5,
            },
        )
        settings["routes"][0]["export"] = ["pacs"]
        series = write_synthetic_ct(root / "ct", n_slices=5, seed=f"kill9-exp-{root.name}", rows=64, cols=64)
        daemon = DaemonProcess(root, settings)
        daemon.start()
        sent = storescu(port, series.paths)
        wait_until(
            lambda: any(e["attempts"] >= 1 for e in journal_rows(daemon, "SELECT * FROM exports")),
            60,
            "an export attempt",
            daemon,
        )
        daemon.kill()
        orthanc = OrthancPeer(
            peers,
            aet="ORTHANC",
            modalities={"acqflow": ("ACQFLOW", port)},
            http_port=orthanc_http,
            dicom_port=orthanc_dicom,
        )
        orthanc.start()
        daemon.start()
        wait_until(
            lambda: [e["state"] for e in journal_rows(daemon, "SELECT state FROM exports")] == ["done"],
            60,
            "the export after restart",
            daemon,
        )
        time.sleep(2.0)  # a repeated export would show as a second instance
        in_pacs = len(orthanc.instances())
        present = _present(daemon, set(series.sop_uids))
        daemon.terminate()
    finally:
        peers.stop_all()
    return {
        "sent": len(series.paths),
        "acknowledged": len(series.paths) if sent.returncode == 0 else 0,
        "present": present,
        "duplicates": max(0, in_pacs - 1),
        "note": f"{in_pacs} result instance(s) in the PACS after the restart",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="kill -9 figures for docs/reliability.md")
    parser.add_argument("--rounds", type=int, default=3, help="kill -9 rounds during receive")
    args = parser.parse_args()
    print("| case | rounds | sent | acknowledged | present after restart | duplicates | notes |")
    print("|---|---|---|---|---|---|---|")
    scenarios = [("kill -9 during receive (DICOM, after 40 acks)", kill_during_receive)] * args.rounds
    scenarios += [
        ("kill -9 during inference", kill_during_inference),
        ("kill -9 during file write (a 256 MiB result of a folder image)", kill_during_file_write),
        ("kill -9 with an export outstanding (PACS down, then up)", kill_during_export),
    ]
    for name, scenario in scenarios:
        with tempfile.TemporaryDirectory(prefix="acqflow-kill9-") as folder:
            figures = scenario(Path(folder))
        print(
            f"| {name} | 1 | {figures['sent']} | {figures['acknowledged']} | {figures['present']} | "
            f"{figures['duplicates']} | {figures['note']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
