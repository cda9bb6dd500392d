"""Atomic writes and what a killed writer leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

from acqflow.daemon.fileio import remove_stale_temporaries, write_atomic


def test_write_atomic_leaves_only_the_final_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"{}"


def test_stale_temporaries_of_other_processes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    other_pid = os.getpid() + 1
    stale = tmp_path / f".overlay.tif.{other_pid}.123456789.tmp"
    own = tmp_path / f".overlay.tif.{os.getpid()}.5.tmp"  # a write in progress in this process
    kept = [tmp_path / "overlay.tif", tmp_path / "scan.tmp", tmp_path / ".hidden.1.tmp", own]
    for path in [stale, *kept]:
        path.write_bytes(b"x")
    (tmp_path / f".folder.{other_pid}.1.tmp").mkdir()  # not a file: left alone

    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists()
    assert all(p.exists() for p in kept)
    assert remove_stale_temporaries(tmp_path / "missing") == 0
