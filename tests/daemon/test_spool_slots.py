"""Spool slots: instances made durable with one flush, and every crash state recovered."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from acqflow.daemon.dicom.recovery import recover_spool
from acqflow.daemon.dicom.slots import SEAL_BYTES, SLOTS, make_seal, read_seal
from acqflow.daemon.dicom.spool import InstanceSpool
from acqflow.daemon.journal import Journal
from tests.support.peers import SyntheticSeries, no_thread_leaks, storescu, write_synthetic_ct
from tests.support.scp import RunningScp

__all__ = ["no_thread_leaks"]

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

SLOT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """Three 32x32 slices (about 3 kB each: they fit a 64 KiB slot)."""
    folder = tmp_path_factory.mktemp("slots") / "ct"
    return write_synthetic_ct(folder, n_slices=3, seed="slots", rows=32, cols=32)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[InstanceSpool]:
    """A prepared spool with a full pool of four slots (its threads stopped again)."""
    spool = InstanceSpool(tmp_path / "spool", slots=4, slot_bytes=SLOT_BYTES)
    spool.prepare()
    spool.recover_slots()
    assert spool.slots is not None
    spool.slots.start()
    try:
        assert spool.slots.wait_filled(30)
        yield spool
    finally:
        spool.slots.stop()


def _slot_files(spool: InstanceSpool) -> list[Path]:
    return sorted((spool.root / SLOTS).iterdir())


def _receive(spool: InstanceSpool, data: bytes, split: int = 132 + 200) -> tuple[object, Path]:
    """Write ``data`` (a Part-10 file) as the SCP does; returns (incoming, its final place)."""
    incoming = spool.reserve()
    incoming.start(data[:split])
    incoming.append(memoryview(data)[split:])
    return incoming, spool.root / "series" / "sop.dcm"


def test_the_pool_is_written_ahead_with_names_that_carry_the_size(spool: InstanceSpool) -> None:
    files = _slot_files(spool)
    assert len(files) == 4
    for path in files:
        assert path.name.startswith(f"slot-{SLOT_BYTES}-")
        assert path.read_bytes() == bytes(SLOT_BYTES)


def test_an_instance_is_sealed_into_a_slot_and_put_in_place_cut_to_its_length(
    spool: InstanceSpool, small_ct: SyntheticSeries
) -> None:
    data = small_ct.paths[0].read_bytes()
    incoming, final = _receive(spool, data)
    assert incoming.in_slot  # type: ignore[attr-defined]
    incoming.commit(final)  # type: ignore[attr-defined]
    assert spool.slots is not None and spool.slots.settle(10)

    assert final.read_bytes() == data
    assert len(_slot_files(spool)) == 3  # the slot became the file


def test_an_instance_larger_than_its_slot_moves_to_a_new_file_and_the_slot_is_kept(
    spool: InstanceSpool, tmp_path: Path
) -> None:
    big = write_synthetic_ct(tmp_path / "big", n_slices=1, seed="big", rows=256, cols=256).paths[0]
    data = big.read_bytes()
    assert len(data) > SLOT_BYTES
    incoming, final = _receive(spool, data)
    assert not incoming.in_slot  # type: ignore[attr-defined]
    incoming.commit(final)  # type: ignore[attr-defined]

    assert final.read_bytes() == data
    assert spool.slots is not None and spool.slots.free == 4
    assert not list(spool.incoming.iterdir())


def test_a_discarded_instance_gives_its_slot_back(spool: InstanceSpool, small_ct: SyntheticSeries) -> None:
    incoming, _final = _receive(spool, small_ct.paths[0].read_bytes())
    assert spool.slots is not None and spool.slots.free == 3
    incoming.discard()  # type: ignore[attr-defined]
    assert spool.slots.free == 4 and len(_slot_files(spool)) == 4


def _sealed_in_slot(spool: InstanceSpool, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An instance sealed (durable) whose rename failed: the state a crash leaves."""
    incoming, final = _receive(spool, data)
    slot = incoming.path  # type: ignore[attr-defined]

    def no_rename(*_args: object) -> None:
        raise OSError("simulated crash before the rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_rename)
        with pytest.raises(OSError, match="simulated"):
            incoming.commit(final)  # type: ignore[attr-defined]
    assert not final.exists()
    return slot


def test_a_sealed_slot_left_by_a_crash_is_put_in_place_at_the_next_start(
    spool: InstanceSpool, small_ct: SyntheticSeries, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = small_ct.paths[0].read_bytes()
    slot = _sealed_in_slot(spool, data, monkeypatch)
    assert spool.slots is not None
    spool.slots.stop()

    again = InstanceSpool(spool.root, slots=4, slot_bytes=SLOT_BYTES)
    found = again.recover_slots()
    assert found is not None and (found.placed, found.torn, found.free) == (1, 0, 3)
    assert not slot.exists()
    assert (spool.root / "series" / "sop.dcm").read_bytes() == data


def test_a_torn_slot_is_not_taken_for_an_instance_and_is_reused(
    spool: InstanceSpool, small_ct: SyntheticSeries, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot = _sealed_in_slot(spool, small_ct.paths[0].read_bytes(), monkeypatch)
    with slot.open("r+b") as handle:  # a page of the bytes never reached the disk
        handle.seek(1000)
        handle.write(b"\0" * 100)
    assert spool.slots is not None
    spool.slots.stop()

    again = InstanceSpool(spool.root, slots=4, slot_bytes=SLOT_BYTES)
    found = again.recover_slots()
    assert found is not None and (found.placed, found.torn, found.free) == (0, 1, 4)
    assert not (spool.root / "series" / "sop.dcm").exists()
    assert read_seal(slot.read_bytes()[-SEAL_BYTES:]) is None  # unsealed: no later write can match it


def test_a_slot_cut_but_not_yet_in_place_is_put_in_place_from_its_header(
    spool: InstanceSpool, small_ct: SyntheticSeries
) -> None:
    data = small_ct.paths[1].read_bytes()
    cut = _slot_files(spool)[0]
    cut.write_bytes(data)  # what a crash leaves when the cut was durable and the rename not
    assert spool.slots is not None
    spool.slots.stop()

    again = InstanceSpool(spool.root, slots=4, slot_bytes=SLOT_BYTES)
    found = again.recover_slots()
    assert found is not None and (found.placed, found.free) == (1, 3)
    assert again.path_for(small_ct.series_uid, small_ct.sop_uids[1]).read_bytes() == data


def test_a_placed_file_still_sealed_is_cut_and_leftovers_are_removed(
    spool: InstanceSpool, small_ct: SyntheticSeries
) -> None:
    data = small_ct.paths[2].read_bytes()
    final = spool.path_for(small_ct.series_uid, small_ct.sop_uids[2])
    final.parent.mkdir(parents=True)
    place = final.relative_to(spool.root).as_posix()
    sealed = data + bytes(SLOT_BYTES - SEAL_BYTES - len(data)) + make_seal(len(data), 0, place)
    final.write_bytes(sealed.ljust(SLOT_BYTES, b"\0"))  # the rename was durable, the cut not
    (spool.root / SLOTS / "fill-0123456789abcdef").write_bytes(b"\0" * 100)  # a slot never finished
    (spool.root / SLOTS / f"slot-{2 * SLOT_BYTES}-0123456789abcdef").write_bytes(bytes(2 * SLOT_BYTES))
    assert spool.slots is not None
    spool.slots.stop()

    again = InstanceSpool(spool.root, slots=4, slot_bytes=SLOT_BYTES)
    found = again.recover_slots()
    assert found is not None and (found.removed, found.free) == (2, 4)
    assert final.read_bytes() == data


def test_recovery_registers_a_sealed_instance_whose_row_was_lost_with_the_machine(
    spool: InstanceSpool, small_ct: SyntheticSeries, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _sealed_in_slot(spool, small_ct.paths[0].read_bytes(), monkeypatch)
    assert spool.slots is not None
    spool.slots.stop()
    journal = Journal(tmp_path / "journal.sqlite3")  # a journal that never served this spool
    try:
        done = recover_spool(InstanceSpool(spool.root, slots=4, slot_bytes=SLOT_BYTES), journal)
        assert (done.slots_placed, done.registered) == (1, 1)
        (row,) = journal.query("SELECT * FROM instances")
        assert row["sop_instance_uid"] == small_ct.sop_uids[0]
    finally:
        journal.close()


def test_the_scp_stores_into_slots_then_new_files_when_they_run_out(
    tmp_path: Path, small_ct: SyntheticSeries
) -> None:
    running = RunningScp(tmp_path, spool_slots=2, spool_slot_bytes=SLOT_BYTES)
    try:
        running.wait_for_slots()
        slot_inodes = {p.stat().st_ino for p in (running.spool / SLOTS).iterdir()}
        assert storescu(running.receiver.port, small_ct.paths).returncode == 0
        assert running.receiver.settle()
        rows = {r["sop_instance_uid"]: r for r in running.journal.query("SELECT * FROM instances")}
        assert sorted(rows) == sorted(small_ct.sop_uids)
        for path, uid in zip(small_ct.paths, small_ct.sop_uids, strict=True):
            stored = Path(rows[uid]["path"])
            assert stored.stat().st_size == rows[uid]["size"]  # cut to the instance
            assert dcmread(stored).PixelData == dcmread(path).PixelData
        # the first two instances became the two slots, the third a new file
        assert [Path(rows[uid]["path"]).stat().st_ino in slot_inodes for uid in small_ct.sop_uids] == [
            True,
            True,
            False,
        ]
    finally:
        running.stop()
