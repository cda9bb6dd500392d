"""Delivering a folder case into a watched folder and observing what the daemon made of it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.reliability.corpus import Case, Outcome
from tests.reliability.folder_inputs import SECRET, FolderDelivery, good_tiff
from tests.reliability.harness import (
    DECISION_SECONDS,
    Observation,
    Snapshot,
    decide,
    jobs_of,
    judge,
    log_since,
    metric_delta,
    quarantine_entries,
    quarantine_files,
    wait_for,
)
from tests.support.daemon_proc import DaemonProcess, journal_rows

__all__ = ["RESCAN_SECONDS", "STABLE_SECONDS", "run_folder_case"]

STABLE_SECONDS = 0.5
RESCAN_SECONDS = 2.0


def _arrivals(daemon: DaemonProcess, marker: str) -> list[sqlite3.Row]:
    return journal_rows(daemon, "SELECT * FROM arrivals WHERE path LIKE ? ORDER BY id", (f"%/{marker}/%",))


def _observe(daemon: DaemonProcess, case: Case, delivery: FolderDelivery, observation: Observation) -> None:
    if case.outcome is Outcome.IGNORED:
        time.sleep(RESCAN_SECONDS + 1.5)  # a rescan has walked the folder since
    else:
        wait_for(lambda: bool(_arrivals(daemon, delivery.marker)), DECISION_SECONDS, 0.2)
    arrivals = _arrivals(daemon, delivery.marker)
    if not arrivals:
        observation.outcome = Outcome.IGNORED.value if case.outcome is Outcome.IGNORED else "undecided"
        return
    if len(arrivals) > 1:
        observation.failures.append(f"{len(arrivals)} arrivals for one file")
    if not wait_for(
        lambda: decide(daemon, _arrivals(daemon, delivery.marker)[-1], observation), DECISION_SECONDS, 0.2
    ):
        observation.outcome = "undecided"
        observation.error = (
            f"arrival {_arrivals(daemon, delivery.marker)[-1]['state']} after {DECISION_SECONDS:g} s"
        )
    if case.outcome is not Outcome.PROCESSED:
        time.sleep(RESCAN_SECONDS + 0.5)  # a rescan must not take or reject it again
        again = _arrivals(daemon, delivery.marker)
        if len(again) > 1 or (again and again[-1]["generation"] > arrivals[-1]["generation"]):
            observation.failures.append("taken again by a later rescan")


def _check_never_copied(delivery: FolderDelivery, entries: set[Path], observation: Observation) -> None:
    """The target of a symlink leaving the tree must not be copied into the quarantine."""
    if delivery.outside is None:
        return
    target = delivery.outside.read_bytes()
    for path in quarantine_files(entries):
        data = path.read_bytes()
        if data == target or SECRET in data:
            observation.failures.append(f"the symlink's target was copied into the quarantine: {path}")


def _entries_of(entries: set[Path], sources: tuple[Path, ...]) -> set[Path]:
    """The quarantine entries whose ``reason.json`` names a source at or under ``sources``."""
    kept = set()
    for entry in entries:
        try:
            source = Path(json.loads((entry / "reason.json").read_text())["source"])
        except (OSError, ValueError, KeyError):
            kept.add(entry)  # an entry without a readable note cannot be attributed: count it
            continue
        if any(source == root or root in source.parents for root in sources):
            kept.add(entry)
    return kept


def good_file_processed(daemon: DaemonProcess, inbox: Path, case: Case) -> bool:
    target = inbox / "good" / f"{case.id}.tif"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(good_tiff(99))

    def done() -> bool:
        rows = journal_rows(daemon, "SELECT id FROM arrivals WHERE path = ?", (str(target),))
        return bool(rows) and any(j["state"] == "done" for j in jobs_of(daemon, rows[0]["id"]))

    return wait_for(done, 30, 0.2)


def run_folder_case(
    daemon: DaemonProcess, inbox: Path, outside: Path, case: Case, write: object
) -> Observation:
    """Write ``case`` into its own folder of the inbox, observe, write a good file, judge."""
    observation = Observation(case.id)
    before = Snapshot.take(daemon)
    delivery: FolderDelivery = write(inbox / case.id, outside, STABLE_SECONDS)  # type: ignore[operator]
    _observe(daemon, case, delivery, observation)
    observation.metric_delta = metric_delta(daemon, before, case)
    logged = log_since(daemon, before.log_offset)
    observation.good_after = good_file_processed(daemon, inbox, case)
    new_entries = quarantine_entries(daemon) - before.quarantine
    # a case earlier in the run can still be quarantined late; count only this case's entries
    ours = _entries_of(new_entries, (inbox / case.id, inbox / "good" / f"{case.id}.tif"))
    if len(ours) != len(new_entries):
        observation.notes.append(f"{len(new_entries) - len(ours)} quarantine entries of other cases")
    observation.quarantined = len(ours)
    _check_never_copied(delivery, quarantine_entries(daemon), observation)
    mention_text = logged if case.outcome is Outcome.PROCESSED else observation.error
    observation.failures = judge(case, observation, mention_text)
    return observation
