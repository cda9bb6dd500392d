"""Running corpus cases against a real ``acqflow serve`` and judging what happened.

One daemon serves a whole channel (module-scoped fixtures in the test modules). For
each case the harness snapshots the metrics, the quarantine and the log, delivers the
input, waits for the daemon's decision, and fills an :class:`Observation`;
:func:`judge` compares it with the case's row in ``corpus.CASES`` and returns every
broken expectation. A good input on the same channel follows every case.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.corpus import Case, Outcome
from tests.support.daemon_proc import DaemonProcess, journal_rows, metric_value
from tests.support.peers import free_port, storescu, write_synthetic_ct

__all__ = [
    "Observation",
    "Snapshot",
    "base_settings",
    "good_series_processed",
    "judge",
    "record",
    "wait_for",
]

REPORT_ENV = "ACQFLOW_CORPUS_REPORT"  # a JSON-lines file each case's observation is appended to
DECISION_SECONDS = 30.0  # how long a case may take to be decided


@dataclass
class Observation:
    """What the daemon did with one case (the report's row)."""

    case: str
    outcome: str = "undecided"
    error: str = ""
    metric_delta: float = 0.0
    quarantined: int = 0
    good_after: bool = False
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """The daemon's counters, quarantine and log before a case."""

    metrics: str
    quarantine: set[Path]
    log_offset: int
    instances: int

    @classmethod
    def take(cls, daemon: DaemonProcess) -> Snapshot:
        return cls(
            daemon.metrics_text(), quarantine_entries(daemon), log_size(daemon), instance_count(daemon)
        )


def base_settings(root: Path) -> dict[str, Any]:
    """Settings shared by the corpus daemons: fast polling, quick retries, test pipelines."""
    return {
        "log_level": "INFO",
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {
            "device": "cpu",
            "poll_seconds": 0.2,
            "max_attempts": 3,
            "retry_initial_seconds": 0.2,
            "retry_max_seconds": 0.5,
        },
        "metrics": {"port": free_port()},
        "pipelines": {
            "modules": ["tests.support.pipelines:ImageStats", "tests.support.seg_pipeline:VolumeSegmentation"]
        },
    }


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """True once ``condition()`` holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def quarantine_entries(daemon: DaemonProcess) -> set[Path]:
    folder = daemon.state_dir / "quarantine"
    return set(folder.iterdir()) if folder.is_dir() else set()


def quarantine_files(entries: set[Path]) -> Iterator[Path]:
    for entry in entries:
        yield from (p for p in entry.rglob("*") if p.is_file())


def log_size(daemon: DaemonProcess) -> int:
    try:
        return daemon.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(daemon: DaemonProcess, offset: int) -> str:
    with daemon.log_path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def instance_count(daemon: DaemonProcess) -> int:
    try:
        return int(journal_rows(daemon, "SELECT COUNT(*) AS n FROM instances")[0]["n"])
    except sqlite3.OperationalError:
        return 0


def metric_delta(daemon: DaemonProcess, before: Snapshot, case: Case) -> float:
    now = daemon.metrics_text()
    return metric_value(now, case.metric, case.labels) - metric_value(
        before.metrics, case.metric, case.labels
    )


def jobs_of(daemon: DaemonProcess, arrival_id: int) -> list[sqlite3.Row]:
    return journal_rows(daemon, "SELECT * FROM jobs WHERE arrival_id = ? ORDER BY id", (arrival_id,))


_ENDED = frozenset({"done", "dead", "superseded"})  # a job in any other state may still run


def decide(daemon: DaemonProcess, arrival: sqlite3.Row, observation: Observation) -> bool:
    """Fill outcome and error from one arrival's journal rows; False while undecided."""
    if arrival["state"] == "rejected":
        observation.outcome, observation.error = Outcome.REJECTED.value, str(arrival["error"] or "")
        return True
    jobs = [j for j in jobs_of(daemon, arrival["id"]) if j["generation"] == arrival["generation"]]
    if arrival["state"] != "routed" or not jobs or any(j["state"] not in _ENDED for j in jobs):
        return False
    dead = [j for j in jobs if j["state"] == "dead"]
    if dead:
        observation.outcome, observation.error = Outcome.REJECTED.value, str(dead[0]["error"] or "")
        observation.notes.append(f"job dead after {dead[0]['attempts']} attempt(s)")
        if dead[0]["attempts"] > 1:
            observation.failures.append(
                f"a bad input was retried: dead after {dead[0]['attempts']} attempts, not on its first"
            )
    else:
        observation.outcome = Outcome.PROCESSED.value
    return True


def good_series_processed(daemon: DaemonProcess, root: Path, seed: str, timeout: float = 60.0) -> bool:
    """dcmtk storescu sends a valid 3-slice CT series; True once its job is done."""
    series = write_synthetic_ct(root / "good" / seed, n_slices=3, seed=f"good-{seed}", rows=32, cols=32)
    sent = storescu(daemon.state["dicom_port"], series.paths, calling_ae="STORESCU")
    if sent.returncode != 0:
        return False

    def done() -> bool:
        rows = journal_rows(daemon, "SELECT id FROM arrivals WHERE key = ?", ("series:" + series.series_uid,))
        return bool(rows) and any(j["state"] == "done" for j in jobs_of(daemon, rows[0]["id"]))

    return wait_for(done, timeout, 0.2)


def judge(case: Case, observation: Observation, mention_text: str) -> list[str]:
    """Every expectation of ``case`` that ``observation`` breaks (empty: contained)."""
    failures = list(observation.failures)
    if observation.outcome != case.outcome.value:
        failures.append(
            f"outcome {observation.outcome!r}, expected {case.outcome.value!r}"
            + (f" ({observation.error})" if observation.error else "")
        )
    # stored under distinct names with nothing refused: no error to name, nothing to count
    all_stored = case.outcome is Outcome.DISTINCT and not observation.error
    if (
        case.mentions
        and not all_stored
        and not any(word.lower() in mention_text.lower() for word in case.mentions)
    ):
        where = "log warning" if case.outcome is Outcome.PROCESSED else "error"
        failures.append(f"{where} mentions none of {list(case.mentions)}: {mention_text[-300:]!r}")
    labels = ",".join(f'{k}="{v}"' for k, v in case.labels.items())
    if case.increases and not all_stored and observation.metric_delta < 1:
        failures.append(f"{case.metric}{{{labels}}} did not increase")
    if not case.increases and observation.metric_delta != 0:
        failures.append(f"{case.metric}{{{labels}}} changed by {observation.metric_delta:g}, expected 0")
    if case.quarantined and observation.quarantined < 1:
        failures.append("nothing quarantined for a rejected input")
    if not case.quarantined and observation.quarantined:
        failures.append(f"{observation.quarantined} quarantine entries for a {case.outcome.value} input")
    if not observation.good_after:
        failures.append("the good input sent right after it was not processed")
    return failures


def record(observation: Observation) -> None:
    """Append the observation to the report file when ``ACQFLOW_CORPUS_REPORT`` names one."""
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(observation)) + "\n")
