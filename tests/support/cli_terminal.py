"""The ``acqflow`` CLI as a user sees it: the real entry point in a pseudo-terminal of a
given size, and a state folder prepared through the real journal API (a file arrival per
well, done and dead jobs, a virtual-staining output and its efficiency time course)."""

from __future__ import annotations

import csv
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from acqflow.daemon.jobqueue import JobQueue, OutputRow, RouteDecision
from acqflow.daemon.journal import Journal
from acqflow.plugins.virtual_staining.summary import CSV_COLUMNS
from tests.support.daemon_proc import REPO

__all__ = ["CliState", "TerminalRun", "cli_env", "in_terminal", "prepared_state"]

EXPERIMENT = "EXP1"
VERSION = "2.0.0"
#: (well, time point, elapsed hours, efficiency, forecast final, low, high, call)
COURSE = [
    ("A01", 0, 0.0, 0.052, 0.61, 0.48, 0.74, "sufficient"),
    ("A01", 1, 26.5, 0.183, 0.63, 0.52, 0.73, "sufficient"),
    ("A01", 2, 73.0, 0.421, 0.66, 0.59, 0.72, "sufficient"),
    ("B12", 0, 0.0, 0.031, 0.22, 0.10, 0.36, "insufficient"),
    ("B12", 1, 26.5, 0.064, 0.19, 0.11, 0.29, "insufficient"),
    ("B12", 2, 73.0, 0.097, 0.17, 0.12, 0.24, "insufficient"),
]
DEAD_ERROR = "the TIFF ended after 1024 of 65536 bytes (truncated while copying?)"


@dataclass(frozen=True)
class CliState:
    """A prepared settings file and what the journal holds."""

    config: Path
    inputs: list[Path]
    done_job: int
    dead_job: int
    csv_path: Path


@dataclass(frozen=True)
class TerminalRun:
    returncode: int
    output: str  # what the terminal showed (stdout and stderr), ANSI sequences removed

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()


def cli_env() -> dict[str, str]:
    """The environment for the ``acqflow`` subprocess: no ACQFLOW_* from outside, this
    checkout (and whatever PYTHONPATH the tests run with) importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["TERM"] = "xterm-256color"
    return env


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r", "", text)


def in_terminal(*args: str, columns: int = 80, rows: int = 24, timeout: float = 60.0) -> TerminalRun:
    """Run ``python -m acqflow.daemon ARGS`` with stdin, stdout and stderr on a pseudo-
    terminal of ``rows`` x ``columns`` (set with TIOCSWINSZ), as in tmux or a terminal."""
    import fcntl

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "acqflow.daemon", *args],
        stdin=follower, stdout=follower, stderr=follower, env=cli_env(), close_fds=True,
        start_new_session=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    return TerminalRun(returncode, _strip_ansi(b"".join(chunks).decode("utf-8", "replace")))


def _efficiency_csv() -> str:
    """The time course as the virtual-staining summary writes it (its column names)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for well, timepoint, hours, efficiency, final, low, high, call in COURSE:
        writer.writerow({
            "experiment": EXPERIMENT, "well": well, "timepoint": timepoint,
            "elapsed_s": f"{hours * 3600:.1f}", "elapsed_h": f"{hours:.3f}",
            "efficiency": f"{efficiency:.6f}", "mean_position_fraction": f"{efficiency:.6f}",
            "positions": 2, "blocks_positive": 40, "blocks_total": 400,
            "acquired_at": f"{1_790_000_000 + hours * 3600:.3f}", "mean_probability": "0.400000",
            "course_fraction": f"{hours / 73:.4f}", "forecast_final": f"{final:.6f}",
            "forecast_low": f"{low:.6f}", "forecast_high": f"{high:.6f}", "forecast_call": call,
        })
    return buffer.getvalue()


def prepared_state(root: Path) -> CliState:
    """Settings under ``root``, a journal with a done and a dead job (written through
    Journal and JobQueue, as the daemon writes them) and the efficiency time course."""
    state, outputs = root / "state", root / "outputs"
    config = root / "acqflow.toml"
    config.write_text(f'[paths]\nstate_dir = "{state}"\noutputs_dir = "{outputs}"\n')
    state.mkdir(parents=True)
    inbox = root / "inbox"
    inbox.mkdir()
    inputs = [inbox / f"{EXPERIMENT}_A01_pos1_t2_phase.tif", inbox / f"{EXPERIMENT}_B12_pos1_t2_phase.tif"]
    journal = Journal(state / "journal.sqlite3")
    queue = JobQueue(journal)
    job_ids = []
    for index, path in enumerate(inputs):
        path.write_bytes(b"II*\x00")
        arrival = journal.record_file_arrival("folder", f"file:{path}", path, {"fingerprint": [index, 1]})
        assert arrival is not None
        [job_id] = queue.route(arrival.id, arrival.generation, [RouteDecision("virtual-staining", "images")])
        job_ids.append(job_id)
    claimed = {job.id: job for job in queue.claim(["virtual-staining"], 10)}
    done = queue.start(claimed[job_ids[0]])
    dead = queue.start(claimed[job_ids[1]])
    assert done is not None and dead is not None
    version_root = outputs / "virtual-staining" / VERSION
    overlay = version_root / EXPERIMENT / "A01_pos1_t2_overlay.tif"
    assert queue.complete(done, [OutputRow("file", overlay)], []) is not None
    queue.fail(dead, DEAD_ERROR, retry_at=None)
    journal.close()
    summary = version_root / "_summary" / EXPERIMENT
    summary.mkdir(parents=True)
    csv_path = summary / "efficiency.csv"
    csv_path.write_text(_efficiency_csv())
    return CliState(config, inputs, job_ids[0], job_ids[1], csv_path)
