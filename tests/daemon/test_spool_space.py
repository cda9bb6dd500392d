"""The spool slot pool sized to free space: on a small file system it never takes the
space incoming instances need (the fault campaign: a 512 MiB pool filled a 40 MB state
folder two seconds after start; 2 instances got in, against 16 of 16 without slots)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acqflow.daemon.dicom.slots import SLOTS, SPACE_SHARE, SlotPool, free_bytes
from acqflow.daemon.dicom.spool import InstanceSpool
from tests.support.peers import SyntheticSeries, no_thread_leaks, storescu, write_synthetic_ct
from tests.support.scp import RunningScp
from tests.support.waiting import poll_until

__all__ = ["no_thread_leaks"]

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

MIB = 1 << 20
FS_BYTES = 40 * MIB


def _mount_tmpfs(folder: Path) -> None:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB file system of its own (a tmpfs), unmounted afterwards."""
    folder = tmp_path / "state"
    _mount_tmpfs(folder)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _slot_bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (folder / SLOTS).iterdir())


def test_pool_takes_at_most_its_share_of_a_small_file_system(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = InstanceSpool(small_fs / "spool", slots=512, slot_bytes=MIB)
    spool.prepare()
    free_at_start = free_bytes(small_fs)
    with caplog.at_level(logging.WARNING, logger="acqflow.daemon.dicom.slots"):
        spool.recover_slots()
    pool = spool.slots
    assert pool is not None
    assert pool.target == int(free_at_start * SPACE_SHARE) // MIB < 512
    assert any("room for" in r.getMessage() and "512 configured" in r.getMessage() for r in caplog.records)
    pool.start()
    try:
        assert pool.wait_filled(30)
        time.sleep(1.0)  # a few more rounds of the filling thread: it writes no more
        assert pool.free == pool.target
        assert _slot_bytes_on_disk(spool.root) <= free_at_start * SPACE_SHARE
        assert free_bytes(small_fs) >= free_at_start * (1 - SPACE_SHARE)
    finally:
        pool.stop()


def test_pool_gives_free_slots_back_when_the_disk_fills(small_fs: Path) -> None:
    spool = InstanceSpool(small_fs / "spool", slots=512, slot_bytes=MIB)
    spool.prepare()
    spool.recover_slots()
    pool = spool.slots
    assert pool is not None
    pool.start()
    try:
        assert pool.wait_filled(30)
        full = pool.free
        filler = small_fs / "other-data"
        with filler.open("wb") as handle:  # other data takes all but 4 MB of the free space
            handle.write(b"\1" * (free_bytes(small_fs) - 4 * MIB))
        poll_until(lambda: pool.free < full, timeout=5, what="free slots given back")
        held = pool.free * MIB
        assert held <= (free_bytes(small_fs) + held) * SPACE_SHARE
        filler.unlink()  # space again: the pool grows back once idle
        poll_until(lambda: pool.free == full, timeout=30, what="the pool refilled")
    finally:
        pool.stop()


def test_pool_size_follows_the_measured_space(tmp_path: Path) -> None:
    """The same rule with the free space measured by an injected function."""
    measured = {"free": 100 * MIB}
    pool = SlotPool(tmp_path, 64, MIB, free_space=lambda _path: measured["free"])
    assert pool.recover(lambda series, sop: tmp_path / series / sop).free == 0
    assert pool.target == 25
    measured["free"] = 10_000 * MIB
    pool.recover(lambda series, sop: tmp_path / series / sop)
    assert pool.target == 64


@pytest.fixture(scope="module")
def big_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """90 slices of 512 x 512 (about 0.5 MB each): more than a 40 MB file system holds."""
    return write_synthetic_ct(tmp_path_factory.mktemp("big"), n_slices=90, seed="space")


def _accepted_on_a_small_state_folder(tmp_path: Path, name: str, series: SyntheticSeries, slots: int) -> int:
    state = tmp_path / name
    _mount_tmpfs(state)
    try:
        running = RunningScp(state, spool_slots=slots, spool_slot_bytes=MIB)
        try:
            if slots:
                running.wait_for_slots()
            storescu(running.receiver.port, series.paths, extra=["--no-halt"])
            rows = running.journal.query("SELECT path FROM instances")
            committed = {str(p) for p in InstanceSpool(running.spool).committed_files()}
            assert committed == {str(r["path"]) for r in rows}  # journal and spool agree
            assert all(os.path.getsize(r["path"]) > 0 for r in rows)
            return len(rows)
        finally:
            running.stop()
    finally:
        subprocess.run(["umount", str(state)], check=True)


@pytest.mark.integration
def test_with_slots_a_small_state_folder_takes_as_many_instances(
    tmp_path: Path, big_ct: SyntheticSeries
) -> None:
    without = _accepted_on_a_small_state_folder(tmp_path, "plain", big_ct, slots=0)
    with_slots = _accepted_on_a_small_state_folder(tmp_path, "slots", big_ct, slots=512)
    assert 40 <= without < len(big_ct.paths)  # the file system did fill up
    assert with_slots >= without - 2
