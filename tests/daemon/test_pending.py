"""acqflow.daemon.folders.pending: when a file seen changing is due for a decision."""

from __future__ import annotations

import time
from pathlib import Path

from acqflow.daemon.folders.pending import PendingFiles

STABLE, GRACE = 0.3, 1.2


def _fingerprint(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _due_within(table: PendingFiles, seconds: float) -> list[Path]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = table.due()
        if found:
            return [path for path, _ in found]
        time.sleep(0.02)
    return []


def test_held_file_waits_for_the_grace_period_and_events_without_a_change_do_not_extend_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"II*\x00")
    table = PendingFiles(STABLE, GRACE)
    table.hold(path, _fingerprint(path), quiet_for=0.0)
    started = time.monotonic()
    assert _due_within(table, 0.7) == []
    table.note(path, closed=False)  # e.g. an attribute change: no new size or mtime
    assert _due_within(table, GRACE + 0.5 - (time.monotonic() - started)) == [path]
    assert time.monotonic() - started >= GRACE and path not in table


def test_held_file_that_changes_is_due_like_any_file_again(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"II*\x00")
    table = PendingFiles(STABLE, GRACE)
    table.hold(path, _fingerprint(path), quiet_for=0.0)
    with path.open("ab") as fh:
        fh.write(b"more")
    table.note(path, closed=True)  # written to and closed: due at once
    assert _due_within(table, 0.2) == [path]


def test_grace_is_never_shorter_than_stable_seconds_and_vanished_files_leave(tmp_path: Path) -> None:
    table = PendingFiles(stable_seconds=2.0, grace_seconds=0.5)
    assert table.grace_seconds == 2.0
    path = tmp_path / "gone.tif"
    path.write_bytes(b"x")
    table.note(path, closed=False)
    path.unlink()
    assert table.due() == [] and len(table) == 0
