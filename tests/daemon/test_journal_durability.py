"""Journal commits without fsync (``durable=False``) for writers with their own durable record."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from acqflow.daemon.journal import Instance, Journal


def _synchronous(journal: Journal) -> int:
    return int(journal.query("PRAGMA synchronous")[0][0])


def test_non_durable_commit_uses_normal_and_restores_full(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        assert _synchronous(journal) == 2  # FULL
        with journal.transaction(durable=False) as db:
            assert int(db.execute("PRAGMA synchronous").fetchone()[0]) == 1  # NORMAL
        assert _synchronous(journal) == 2
        with pytest.raises(RuntimeError), journal.transaction(durable=False):
            raise RuntimeError("rolled back")
        assert _synchronous(journal) == 2

        instance = Instance("1.2.3.4", 0, tmp_path / "a.dcm", 10, "AE", "assoc", time.time(), 1)
        arrival_id, is_new = journal.record_instance("series:1.2.3", tmp_path, {}, instance, durable=False)
        assert is_new and _synchronous(journal) == 2
        assert journal.instance_arrival("1.2.3.4") == arrival_id
    finally:
        journal.close()
