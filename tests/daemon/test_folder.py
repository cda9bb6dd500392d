"""The folder watcher with real files, a real journal and real watchdog observers."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from prometheus_client import REGISTRY

from daemon.config import FolderMode, FolderSettings
from daemon.imageio import read_image
from daemon.journal import Arrival, ArrivalState, Journal
from daemon.sources.folder import FolderWatcher
from tests.support.waiting import poll_until

STABLE = 1.0  # seconds a file must be quiet; writers below pause well under it
DEADLINE = 15.0


class ReadyCounter:
    """The on_ready callback: counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def make_watcher(
    journal: Journal, inbox: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[FolderWatcher, ReadyCounter]]]:
    watchers: list[FolderWatcher] = []

    def make(start: bool = True, on_ready: Callable[[], None] | None = None,
             **settings: Any) -> tuple[FolderWatcher, ReadyCounter]:
        settings.setdefault("stable_seconds", STABLE)
        counter = ReadyCounter()
        folder = FolderSettings(path=inbox, **settings)
        watcher = FolderWatcher(folder, journal, tmp_path / "state" / "quarantine",
                                on_ready or counter)
        watchers.append(watcher)
        if start:
            watcher.start()
        return watcher, counter

    yield make
    for watcher in watchers:
        watcher.stop()


def tiff_bytes(shape: tuple[int, ...] = (256, 256), seed: int = 0) -> tuple[bytes, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data, photometric="minisblack")
    return buffer.getvalue(), data


def arrivals(journal: Journal) -> list[Arrival]:
    return [Arrival.from_row(r) for r in journal.query("SELECT * FROM arrivals ORDER BY id")]


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    poll_until(predicate, timeout, poll=0.05)


def counter_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def write_slowly(path: Path, data: bytes, chunks: int, pause: float, reopen: bool,
                 check: Callable[[], None]) -> None:
    """Write ``data`` in ``chunks`` partial writes with pauses; ``check`` runs in each pause."""
    size = -(-len(data) // chunks)
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    if reopen:
        for part in parts:
            with path.open("ab") as fh:
                fh.write(part)
            time.sleep(pause)
            check()
        return
    with path.open("wb") as fh:
        for part in parts[:-1]:
            fh.write(part)
            fh.flush()
            time.sleep(pause)
            check()
        fh.write(parts[-1])


def test_slow_copy_is_recorded_once_after_it_is_complete(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    _watcher, ready = make_watcher()
    data, pixels = tiff_bytes()
    path = inbox / "EXP1_B03_pos1_t005_phase.tif"

    def nothing_yet() -> None:
        assert arrivals(journal) == [], "recorded while still being written"

    write_slowly(path, data, chunks=5, pause=0.3, reopen=False, check=nothing_yet)
    wait_for(lambda: ready.calls == 1)
    time.sleep(STABLE * 1.5)  # more events or stability rounds must not record it again
    [arrival] = arrivals(journal)
    assert ready.calls == 1 and arrival.generation == 0 and arrival.state is ArrivalState.READY
    stat = path.stat()
    assert arrival.attrs["fingerprint"] == [stat.st_size, stat.st_mtime_ns]
    assert arrival.attrs["relative_path"] == path.name
    assert arrival.attrs["metadata"]["well"] == "B03"
    np.testing.assert_array_equal(read_image(arrival).array, pixels)


def test_writer_closing_between_partial_writes_is_not_rejected(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    _watcher, ready = make_watcher()
    before = counter_value("acqflow_input_errors_total", source="folder", reason="truncated")
    data, pixels = tiff_bytes(seed=1)
    path = inbox / "appended.tif"
    write_slowly(path, data, chunks=4, pause=0.3, reopen=True, check=lambda: None)
    wait_for(lambda: ready.calls == 1)
    time.sleep(STABLE * 1.5)
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.READY and arrival.generation == 0 and ready.calls == 1
    assert counter_value("acqflow_input_errors_total", source="folder", reason="truncated") == before
    np.testing.assert_array_equal(read_image(arrival).array, pixels)


def test_bad_inputs_are_rejected_quarantined_and_counted(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    _watcher, ready = make_watcher()
    good, _ = tiff_bytes()
    bad = {
        "empty.tif": (b"", "empty", "zero-byte"),
        "truncated.tif": (good[: len(good) // 2], "truncated", "truncated"),
        "notes.tif": (b"just some text, not an image\n", "not_image", "not a TIFF"),
    }
    before = {
        reason: counter_value("acqflow_input_errors_total", source="folder", reason=reason)
        for _, reason, _ in bad.values()
    }
    quarantined = counter_value("acqflow_quarantined_total", source="folder")
    for name, (content, _, _) in bad.items():
        (inbox / name).write_bytes(content)
    wait_for(lambda: len(arrivals(journal)) == 3)
    for arrival in arrivals(journal):
        content, reason, message = bad[arrival.path.name]
        assert arrival.state is ArrivalState.REJECTED
        assert arrival.error is not None and message in arrival.error and "\n" not in arrival.error
        assert counter_value("acqflow_input_errors_total", source="folder", reason=reason) == (
            before[reason] + 1
        )
        assert arrival.path.read_bytes() == content  # inputs are never modified or removed
    assert counter_value("acqflow_quarantined_total", source="folder") == quarantined + 3
    copies = sorted(p.name for p in (tmp_path / "state" / "quarantine").glob("*/*.tif"))
    assert copies == sorted(bad)
    # the watcher keeps running
    (inbox / "good.tif").write_bytes(good)
    wait_for(lambda: ready.calls == 1)
    assert ready.calls == 1


def test_hidden_temporary_and_excluded_files_are_ignored(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    watcher, ready = make_watcher()
    data, _ = tiff_bytes()
    (inbox / ".cache").mkdir()
    for name in (".hidden.tif", "~$lock.tif", "copy.tif.part", "x.tif.crdownload", "scan.tmp",
                 ".~lock.a.tif#", "notes.txt", ".cache/inside.tif"):
        (inbox / name).write_bytes(data)
    (inbox / "UPPER.TIF").write_bytes(data)  # include globs are case-insensitive
    wait_for(lambda: ready.calls == 1)
    time.sleep(STABLE * 1.5)
    assert [a.path.name for a in arrivals(journal)] == ["UPPER.TIF"]
    assert watcher.rescan() == 0 and watcher.pending_count == 0


def test_rescan_takes_files_that_arrived_while_stopped(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    watcher, ready = make_watcher(start=False)
    data, _ = tiff_bytes()
    (inbox / "sub").mkdir()
    old = time.time() - 3600
    for name in ("a.tif", "sub/b.tif"):
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (old, old))
    (inbox / "young.tif").write_bytes(data)  # not quiet long enough yet: left pending
    assert watcher.rescan() == 2
    assert watcher.rescan() == 0
    assert ready.calls == 2
    assert sorted(a.attrs["relative_path"] for a in arrivals(journal)) == ["a.tif", "sub/b.tif"]
    assert watcher.pending_count == 1
    watcher.start()  # the timer takes the young file once it is quiet
    wait_for(lambda: ready.calls == 3)


def test_non_recursive_folder_ignores_subfolders(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    watcher, _ = make_watcher(start=False, recursive=False, stable_seconds=0.0)
    data, _ = tiff_bytes()
    (inbox / "sub").mkdir()
    (inbox / "sub" / "b.tif").write_bytes(data)
    (inbox / "a.tif").write_bytes(data)
    assert watcher.rescan() == 1
    assert [a.path.name for a in arrivals(journal)] == ["a.tif"]


def test_rewritten_file_becomes_a_new_generation(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    _watcher, ready = make_watcher()
    first, _ = tiff_bytes(seed=1)
    second, pixels = tiff_bytes(seed=2)
    path = inbox / "field.tif"
    path.write_bytes(first)
    wait_for(lambda: ready.calls == 1)
    temporary = inbox / "field.tif.part"  # written aside, renamed into place
    temporary.write_bytes(second)
    os.replace(temporary, path)
    wait_for(lambda: ready.calls == 2)
    [arrival] = arrivals(journal)
    assert arrival.generation == 1 and arrival.state is ArrivalState.READY
    np.testing.assert_array_equal(read_image(arrival).array, pixels)


def test_polling_mode_uses_stability(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    _watcher, ready = make_watcher(mode=FolderMode.POLLING, poll_seconds=0.2, stable_seconds=0.6)
    data, pixels = tiff_bytes()
    (inbox / "deep").mkdir()
    path = inbox / "deep" / "share.tif"

    def nothing_yet() -> None:
        assert arrivals(journal) == []

    write_slowly(path, data, chunks=3, pause=0.2, reopen=False, check=nothing_yet)
    wait_for(lambda: ready.calls == 1)
    time.sleep(1.0)
    [arrival] = arrivals(journal)
    assert ready.calls == 1 and arrival.attrs["relative_path"] == "deep/share.tif"
    np.testing.assert_array_equal(read_image(arrival).array, pixels)


def test_callback_errors_are_counted_and_the_watcher_keeps_running(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    calls: list[str] = []

    def flaky() -> None:
        calls.append("x")
        if len(calls) == 1:
            raise RuntimeError("scheduler hiccup")

    make_watcher(on_ready=flaky)
    before = counter_value("acqflow_source_errors_total", source="folder", stage="process")
    data, _ = tiff_bytes()
    (inbox / "one.tif").write_bytes(data)
    wait_for(lambda: len(calls) == 1)
    wait_for(lambda: counter_value(
        "acqflow_source_errors_total", source="folder", stage="process") == before + 1)
    (inbox / "two.tif").write_bytes(data)
    wait_for(lambda: len(calls) == 2)
    assert len(arrivals(journal)) == 2


def test_quarantine_inside_the_watched_folder_is_not_watched(
    journal: Journal, inbox: Path
) -> None:
    watcher = FolderWatcher(FolderSettings(path=inbox, stable_seconds=0.0), journal,
                            inbox / "quarantine", lambda: None)
    (inbox / "quarantine").mkdir()
    (inbox / "empty.tif").write_bytes(b"")
    assert watcher.rescan() == 0
    assert watcher.rescan() == 0
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.REJECTED and len(list((inbox / "quarantine").iterdir())) == 1


def test_watching_resumes_after_the_folder_vanished_and_came_back(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    watcher, ready = make_watcher()
    data, _ = tiff_bytes()
    shutil.rmtree(inbox)  # e.g. a share unmounted
    time.sleep(0.3)
    assert watcher.rescan() == 0 and not inbox.exists()  # never recreated behind the user's back
    inbox.mkdir()
    assert watcher.rescan() == 0  # starts watching again
    (inbox / "after.tif").write_bytes(data)
    wait_for(lambda: ready.calls == 1)  # seen by events, not by a rescan
    assert [a.path.name for a in arrivals(journal)] == ["after.tif"]
