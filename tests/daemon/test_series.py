"""SeriesAssembler: quiet time, release-consistent completion, late instances."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acqflow.daemon import metrics
from acqflow.daemon.config import DicomSettings
from acqflow.daemon.dicom.scp import DicomReceiver
from acqflow.daemon.jobqueue import JobQueue, RouteDecision
from acqflow.daemon.journal import ArrivalState, Instance, JobState, Journal
from acqflow.daemon.series import SeriesAssembler, is_consistent
from tests.support.peers import no_thread_leaks, storescu, write_synthetic_ct

__all__ = ["no_thread_leaks"]

KEY = "series:1.2.3"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _add(journal: Journal, number: int | None, at: float, association: str = "a1",
         key: str = KEY) -> int:
    instance = Instance(f"{key}.{number}.{at}", 0, Path(f"/spool/{number}.dcm"), 10, "SCU",
                        association, at, number)
    arrival_id, _ = journal.record_instance(key, Path("/spool"), {"modality": "CT"}, instance)
    return arrival_id


def _completed(trigger: str) -> float:
    return float(metrics.SERIES_COMPLETED.labels(trigger)._value.get())


def test_is_consistent_needs_numbers_one_to_n() -> None:
    def make(numbers: list[int | None]) -> list[Instance]:
        return [Instance(str(i), 1, Path("x"), 1, "A", "a", 0.0, n) for i, n in enumerate(numbers)]

    assert is_consistent(make([3, 1, 2]))
    assert is_consistent(make([1]))
    assert not is_consistent(make([]))
    assert not is_consistent(make([1, 2, 4]))
    assert not is_consistent(make([1, 1, 2]))
    assert not is_consistent(make([2, 3]))
    assert not is_consistent(make([1, None]))


def test_quiet_time_completes_series(journal: Journal) -> None:
    wakes = Wakes()
    assembler = SeriesAssembler(journal, quiet_seconds=10, on_ready=wakes)
    journal.open_association("a1", "SCU")
    for number in (1, 2, 4):  # a gap: only the quiet timer can complete it
        arrival_id = _add(journal, number, at=100.0 + number)
    before = _completed("quiet")

    assert assembler.check(now=110.0) == 0
    assert journal.arrival(arrival_id).state is ArrivalState.RECEIVING and wakes.count == 0
    assert assembler.check(now=114.0) == 1

    assert journal.arrival(arrival_id).state is ArrivalState.READY
    assert wakes.count == 1 and _completed("quiet") == before + 1
    assert assembler.check(now=200.0) == 0 and wakes.count == 1


def test_release_completes_consistent_series(journal: Journal) -> None:
    wakes = Wakes()
    assembler = SeriesAssembler(journal, quiet_seconds=600, on_ready=wakes)
    journal.open_association("a1", "SCU")
    for number in (2, 1, 3):
        arrival_id = _add(journal, number, at=100.0)
    before = _completed("association")

    assembler.association_closed(journal.close_association("a1", "released"))

    assert journal.arrival(arrival_id).state is ArrivalState.READY
    assert wakes.count == 1 and _completed("association") == before + 1


def test_release_waits_for_gaps_and_other_associations(journal: Journal) -> None:
    assembler = SeriesAssembler(journal, quiet_seconds=600, on_ready=Wakes())
    journal.open_association("a1", "SCU")
    journal.open_association("a2", "SCU")
    arrival_id = _add(journal, 1, at=100.0, association="a1")
    _add(journal, 2, at=100.0, association="a2")

    assembler.association_closed(journal.close_association("a1", "released"))
    assert journal.arrival(arrival_id).state is ArrivalState.RECEIVING  # a2 still open

    _add(journal, 4, at=101.0, association="a2")
    assembler.association_closed(journal.close_association("a2", "aborted"))
    assert journal.arrival(arrival_id).state is ArrivalState.RECEIVING  # 1, 2, 4: a gap


def test_late_instance_reopens_and_supersedes(journal: Journal) -> None:
    assembler = SeriesAssembler(journal, quiet_seconds=5, on_ready=Wakes())
    journal.open_association("a1", "SCU")
    arrival_id = _add(journal, 1, at=100.0)
    assert assembler.check(now=106.0) == 1
    queue = JobQueue(journal)
    (job_id,) = queue.route(arrival_id, 0, [RouteDecision("test", "ct")])

    _add(journal, 2, at=107.0)

    arrival = journal.arrival(arrival_id)
    assert arrival.state is ArrivalState.RECEIVING and arrival.generation == 1
    job = queue.job(job_id)
    assert job is not None and job.state is JobState.SUPERSEDED
    assert assembler.check(now=113.0) == 1
    assert journal.arrival(arrival_id).generation == 1


def test_instance_between_read_and_mark_keeps_series_open(journal: Journal) -> None:
    journal.open_association("a1", "SCU")
    arrival_id = _add(journal, 1, at=100.0)
    stale = journal.arrival(arrival_id)
    _add(journal, 2, at=105.0)
    assert not journal.mark_series_ready_if_quiet(arrival_id, stale.generation,
                                                 stale.last_instance_at)
    assert journal.arrival(arrival_id).state is ArrivalState.RECEIVING


def test_failing_wake_callback_is_counted_not_raised(journal: Journal) -> None:
    def broken() -> None:
        raise RuntimeError("router down")

    assembler = SeriesAssembler(journal, quiet_seconds=0, on_ready=broken)
    _add(journal, 1, at=100.0)
    before = metrics.CALLBACK_ERRORS.labels("series")._value.get()
    assert assembler.check(now=100.0) == 1
    assert metrics.CALLBACK_ERRORS.labels("series")._value.get() == before + 1


@pytest.mark.integration
@pytest.mark.usefixtures("no_thread_leaks")
def test_storescu_release_completes_series_without_waiting(journal: Journal,
                                                           tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "ct", n_slices=4, seed="series", rows=32, cols=32)
    wakes = Wakes()
    assembler = SeriesAssembler(journal, quiet_seconds=3600, on_ready=wakes)
    receiver = DicomReceiver(DicomSettings(port=0, spool_slots=0), journal, tmp_path / "spool",
                             assembler.association_closed)
    receiver.start()
    try:
        assert storescu(receiver.port, series.paths).returncode == 0
        arrival = journal.arrival_by_key("series:" + series.series_uid)
        assert arrival is not None
        deadline = time.monotonic() + 10.0  # the close callback runs on the association thread
        while wakes.count == 0:
            assert time.monotonic() < deadline, "series not completed on release"
            time.sleep(0.02)
        assert journal.arrival(arrival.id).state is ArrivalState.READY and wakes.count == 1
    finally:
        receiver.stop()
