"""The raw TCP cases of the bad-input corpus, against the SCP of one real daemon.

A protocol violation must end the connection at once (A-ABORT, A-ASSOCIATE-RJ or
close), store nothing, quarantine nothing, be counted, and leave the SCP serving: a
dcmtk storescu series sent right after each case is processed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.corpus import Case, Channel, Outcome, cases_of, params_of
from tests.reliability.dicom_run import CALLING_AE
from tests.reliability.harness import (
    Observation,
    Snapshot,
    base_settings,
    good_series_processed,
    judge,
    metric_delta,
    quarantine_entries,
    record,
)
from tests.reliability.tcp_inputs import DRIVERS
from tests.support.daemon_proc import DaemonProcess, journal_rows
from tests.support.peers import free_port

pytestmark = pytest.mark.integration

CASES = cases_of(Channel.TCP)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tcp-corpus")


@pytest.fixture(scope="module")
def daemon(corpus_root: Path) -> Iterator[DaemonProcess]:
    settings = base_settings(corpus_root)
    settings.update(
        {
            "dicom": {
                "port": free_port(),
                "ae_title": "ACQFLOW",
                "series_quiet_seconds": 1.0,
                "allowed_calling_aes": ["STORESCU", CALLING_AE],
                "max_associations": 4,
                "network_timeout_seconds": 10.0,
            },
            "folders": [],
            "routes": [{"name": "series", "kind": ["dicom-series"], "pipelines": ["test-volume-seg"]}],
        }
    )
    process = DaemonProcess(corpus_root, settings)
    process.start()
    yield process
    if process.alive():
        assert process.terminate() == 0


def test_every_tcp_case_has_a_driver() -> None:
    assert {c.id for c in CASES} == set(DRIVERS)


@pytest.mark.parametrize("case", params_of(Channel.TCP))
def test_tcp_case(case: Case, daemon: DaemonProcess, corpus_root: Path) -> None:
    observation = Observation(case.id)
    before = Snapshot.take(daemon)
    result = DRIVERS[case.id](daemon.state["dicom_port"])
    observation.outcome = Outcome.ABORTED.value if result.ended else "connection kept open"
    observation.error = result.answer
    observation.notes.extend(result.notes)
    stored = {r["sop_instance_uid"] for r in journal_rows(daemon, "SELECT sop_instance_uid FROM instances")}
    observation.failures.extend(
        f"the partial instance {uid} is in the journal" for uid in result.stored_uids if uid in stored
    )
    observation.good_after = good_series_processed(daemon, corpus_root, case.id)
    observation.metric_delta = metric_delta(daemon, before, case)
    observation.quarantined = len(quarantine_entries(daemon) - before.quarantine)
    observation.failures = judge(case, observation, observation.error)
    record(observation)
    assert daemon.alive(), daemon.log_tail()
    assert not observation.failures, f"{case.id}: {observation.failures}\nnotes: {observation.notes}"
