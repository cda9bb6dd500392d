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

from acqflow.daemon.config import FolderMode, FolderSettings
from acqflow.daemon.folders.watcher import FolderWatcher
from acqflow.daemon.imageio import read_image
from acqflow.daemon.journal import Arrival, ArrivalState, Journal
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
    _watcher, ready = make_watcher(incomplete_grace_seconds=STABLE)  # no writer to wait for
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
    settings = FolderSettings(path=inbox, stable_seconds=0.0, incomplete_grace_seconds=0.0)
    watcher = FolderWatcher(settings, journal, inbox / "quarantine", lambda: None)
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


def folder_input_errors() -> float:
    """All of ``acqflow_input_errors_total{source="folder"}``, whatever the reason."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name == "acqflow_input_errors":
            total += sum(s.value for s in family.samples
                         if s.name.endswith("_total") and s.labels.get("source") == "folder")
    return total


def quarantine_entries(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "state" / "quarantine"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_writer_pausing_past_stable_seconds_is_waited_for_not_rejected(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    _watcher, ready = make_watcher(incomplete_grace_seconds=10.0)
    errors = folder_input_errors()
    data, pixels = tiff_bytes((512, 512), seed=4)
    path = inbox / "EXP1_C02_pos1_t001_gfp.tif"
    halfway = threading.Event()

    def writer() -> None:  # half a TIFF, a pause well past stable_seconds, then the rest
        with path.open("wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            halfway.set()
            time.sleep(STABLE * 2.5)
            fh.write(data[len(data) // 2:])

    thread = threading.Thread(target=writer)
    thread.start()
    assert halfway.wait(5)
    try:
        time.sleep(STABLE * 2)  # past stable_seconds: the watcher has looked at it by now
        assert arrivals(journal) == [] and ready.calls == 0
        assert quarantine_entries(tmp_path) == []
    finally:
        thread.join()
    wait_for(lambda: ready.calls == 1)
    time.sleep(STABLE * 1.5)  # late events and stability rounds change nothing
    [arrival] = arrivals(journal)
    assert ready.calls == 1 and arrival.generation == 0 and arrival.state is ArrivalState.READY
    assert arrival.attrs["fingerprint"] == [path.stat().st_size, path.stat().st_mtime_ns]
    np.testing.assert_array_equal(read_image(arrival).array, pixels)
    assert quarantine_entries(tmp_path) == []
    assert folder_input_errors() == errors


def test_incomplete_file_is_rejected_once_it_stops_changing_for_the_grace_period(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    grace = 2.5
    _watcher, ready = make_watcher(incomplete_grace_seconds=grace)
    before = counter_value("acqflow_input_errors_total", source="folder", reason="truncated")
    data, _ = tiff_bytes(seed=5)
    path = inbox / "abandoned.tif"
    path.write_bytes(data[: len(data) // 3])  # the writer died half-way
    written = time.monotonic()
    wait_for(lambda: len(arrivals(journal)) == 1)
    assert time.monotonic() - written >= grace - 0.2  # held for the grace period, not stable_seconds
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.REJECTED and arrival.error and "truncated" in arrival.error
    assert counter_value("acqflow_input_errors_total", source="folder", reason="truncated") == before + 1
    assert len(quarantine_entries(tmp_path)) == 1
    time.sleep(STABLE * 1.5)
    assert len(quarantine_entries(tmp_path)) == 1 and ready.calls == 0
    # the writer comes back after all: the complete file supersedes the rejection
    with path.open("ab") as fh:
        fh.write(data[len(data) // 3:])
    wait_for(lambda: ready.calls == 1)
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.READY and arrival.generation == 1


def test_rescan_rejects_an_old_truncated_file_without_a_grace_period(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]], journal: Journal, inbox: Path
) -> None:
    watcher, _ = make_watcher(start=False, incomplete_grace_seconds=600.0)
    data, _ = tiff_bytes(seed=6)
    path = inbox / "left-over.tif"
    path.write_bytes(data[:100])
    old = time.time() - 3600  # e.g. written before the daemon was down for an hour
    os.utime(path, (old, old))
    assert watcher.rescan() == 0
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.REJECTED
    assert watcher.rescan() == 0 and len(arrivals(journal)) == 1


# --- symbolic links ------------------------------------------------------------------


def test_symlink_leaving_the_folder_is_refused_once_and_its_target_never_copied(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    watcher, ready = make_watcher(start=False, stable_seconds=0.0, incomplete_grace_seconds=0.0)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "secret.tif"
    secret.write_bytes(b"not for the quarantine " * 100)  # would be rejected (not_image) if followed
    (inbox / "link.tif").symlink_to(secret)
    before = counter_value("acqflow_input_errors_total", source="folder", reason="symlink_outside")
    for _ in range(3):
        assert watcher.rescan() == 0
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.REJECTED and arrival.path == inbox / "link.tif"
    assert arrival.error is not None and "symbolic link" in arrival.error and "\n" not in arrival.error
    assert arrival.attrs["reason"] == "symlink_outside" and "quarantine" not in arrival.attrs
    assert counter_value("acqflow_input_errors_total", source="folder",
                         reason="symlink_outside") == before + 1
    assert quarantine_entries(tmp_path) == []
    # re-pointed elsewhere: a new version of the link, refused (and counted) once more
    (inbox / "link.tif").unlink()
    (inbox / "link.tif").symlink_to(outside / "other.tif")
    (outside / "other.tif").write_bytes(b"x")
    assert watcher.rescan() == 0 and watcher.rescan() == 0
    assert counter_value("acqflow_input_errors_total", source="folder",
                         reason="symlink_outside") == before + 2
    assert quarantine_entries(tmp_path) == [] and ready.calls == 0


def test_symlink_seen_by_events_is_refused_like_one_found_by_a_rescan(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    data, _ = tiff_bytes()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.tif").write_bytes(data)
    _watcher, ready = make_watcher()
    (inbox / "a.tif").symlink_to(outside / "a.tif")
    wait_for(lambda: len(arrivals(journal)) == 1)
    assert arrivals(journal)[0].state is ArrivalState.REJECTED
    (inbox / "b.tif").write_bytes(data)  # the watcher goes on
    wait_for(lambda: ready.calls == 1)
    assert quarantine_entries(tmp_path) == []


def test_symlink_within_the_folder_is_skipped_its_target_is_taken_once(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    watcher, ready = make_watcher(start=False, stable_seconds=0.0)
    data, _ = tiff_bytes()
    (inbox / "real.tif").write_bytes(data)
    (inbox / "alias.tif").symlink_to(inbox / "real.tif")
    errors = folder_input_errors()
    assert watcher.rescan() == 1 and watcher.rescan() == 0
    assert [a.path.name for a in arrivals(journal)] == ["real.tif"] and ready.calls == 1
    assert folder_input_errors() == errors


def test_symlinked_folder_is_not_descended(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    watcher, _ = make_watcher(start=False, stable_seconds=0.0, follow_symlinks=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data, _ = tiff_bytes()
    (outside / "a.tif").write_bytes(data)
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    assert watcher.rescan() == 0 and arrivals(journal) == []


def test_follow_symlinks_takes_links_into_allowed_roots_only_and_never_copies_them(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    data, pixels = tiff_bytes(seed=7)
    (store / "good.tif").write_bytes(data)
    (store / "cut.tif").write_bytes(data[:200])
    (elsewhere / "other.tif").write_bytes(data)
    watcher, ready = make_watcher(start=False, stable_seconds=0.0, incomplete_grace_seconds=0.0,
                                  follow_symlinks=True, symlink_roots=(store,))
    for name, target in (("EXP1_B03_pos1_t001_phase.tif", store / "good.tif"),
                         ("cut.tif", store / "cut.tif"), ("other.tif", elsewhere / "other.tif")):
        (inbox / name).symlink_to(target)
    assert watcher.rescan() == 1 and watcher.rescan() == 0
    found = {a.path.name: a for a in arrivals(journal)}
    good = found["EXP1_B03_pos1_t001_phase.tif"]
    assert good.state is ArrivalState.READY and good.path == inbox / good.path.name
    assert good.attrs["metadata"]["well"] == "B03" and ready.calls == 1
    np.testing.assert_array_equal(read_image(good).array, pixels)
    assert found["cut.tif"].state is ArrivalState.REJECTED and found["cut.tif"].attrs["reason"] == "truncated"
    assert found["other.tif"].attrs["reason"] == "symlink_outside"
    assert quarantine_entries(tmp_path) == []  # the bad target's bytes were not copied


# --- file names that are not UTF-8 -----------------------------------------------------


def test_file_name_that_is_not_utf8_is_rejected_once_not_retried_forever(
    make_watcher: Callable[..., tuple[FolderWatcher, ReadyCounter]],
    journal: Journal, inbox: Path, tmp_path: Path,
) -> None:
    watcher, ready = make_watcher(start=False, stable_seconds=0.0)
    data, _ = tiff_bytes(seed=8)
    raw = os.fsencode(inbox) + b"/EXP1_B03_pos1_t001_Z\xe4hlung\xff.tif"  # Latin-1 ä, a stray 0xff
    with open(raw, "wb") as fh:
        fh.write(data)
    before = counter_value("acqflow_input_errors_total", source="folder", reason="name_not_utf8")
    failures = {stage: counter_value("acqflow_source_errors_total", source="folder", stage=stage)
                for stage in ("rescan", "process")}
    for _ in range(3):
        assert watcher.rescan() == 0
    [arrival] = arrivals(journal)
    assert arrival.state is ArrivalState.REJECTED and arrival.attrs["reason"] == "name_not_utf8"
    assert arrival.error is not None and "not valid UTF-8" in arrival.error
    assert "\\xe4" in arrival.error and "\\xff" in arrival.key  # the name, readable and escaped
    assert counter_value("acqflow_input_errors_total", source="folder",
                         reason="name_not_utf8") == before + 1
    for stage, value in failures.items():
        assert counter_value("acqflow_source_errors_total", source="folder", stage=stage) == value
    [entry] = quarantine_entries(tmp_path)
    [copy] = [p for p in entry.iterdir() if p.name != "reason.json"]
    assert os.fsencode(copy.name) == raw.rsplit(b"/", 1)[1] and copy.read_bytes() == data
    # a restarted watcher finds the decision in the journal: no second copy or count
    again = FolderWatcher(watcher.settings, journal, tmp_path / "state" / "quarantine", lambda: None)
    assert again.rescan() == 0
    assert len(quarantine_entries(tmp_path)) == 1 and len(arrivals(journal)) == 1
    assert counter_value("acqflow_input_errors_total", source="folder",
                         reason="name_not_utf8") == before + 1
    (inbox / "good.tif").write_bytes(data)  # and the folder goes on
    assert watcher.rescan() == 1 and ready.calls == 1
