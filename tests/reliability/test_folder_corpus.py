"""The folder cases of the bad-input corpus, written into the folder one real daemon watches.

Each case is judged against its row in ``corpus.CASES``: rejected with a journal error
and quarantined once, processed once, or ignored (never followed, never copied); the
counter that must move; and a good TIFF processed right after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.corpus import Case, Channel, cases_of, params_of
from tests.reliability.folder_inputs import WRITERS
from tests.reliability.folder_run import RESCAN_SECONDS, STABLE_SECONDS, run_folder_case
from tests.reliability.harness import base_settings, record
from tests.support.daemon_proc import DaemonProcess

pytestmark = pytest.mark.integration

CASES = cases_of(Channel.FOLDER)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder-corpus")
    (root / "inbox").mkdir()
    (root / "outside").mkdir()
    return root


@pytest.fixture(scope="module")
def daemon(corpus_root: Path) -> Iterator[DaemonProcess]:
    settings = base_settings(corpus_root)
    settings.update(
        {
            "dicom": {"enabled": False},
            "folders": [
                {
                    "path": str(corpus_root / "inbox"),
                    "stable_seconds": STABLE_SECONDS,
                    # a truncated file is held this long after its last change, then rejected
                    "incomplete_grace_seconds": 4 * STABLE_SECONDS,
                    "rescan_seconds": RESCAN_SECONDS,
                }
            ],
            "routes": [{"name": "images", "kind": ["image"], "pipelines": ["test-image"]}],
        }
    )
    settings["workers"]["max_attempts"] = 2
    process = DaemonProcess(corpus_root, settings)
    process.start()
    yield process
    _release_fifo_readers(corpus_root / "inbox")
    if process.alive():
        assert process.terminate() == 0


def _release_fifo_readers(inbox: Path) -> None:
    """A watcher thread blocked opening a FIFO gets its end-of-file, so the daemon can stop."""
    for path in inbox.rglob("*"):
        if path.is_fifo():
            with contextlib.suppress(OSError):  # OSError: no reader waiting, nothing blocked
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_every_folder_case_has_a_writer() -> None:
    assert {c.id for c in CASES} == set(WRITERS)


@pytest.mark.parametrize("case", params_of(Channel.FOLDER))
def test_folder_case(case: Case, daemon: DaemonProcess, corpus_root: Path) -> None:
    observation = run_folder_case(
        daemon, corpus_root / "inbox", corpus_root / "outside", case, WRITERS[case.id]
    )
    record(observation)
    assert daemon.alive(), daemon.log_tail()
    assert not observation.failures, f"{case.id}: {observation.failures}\nnotes: {observation.notes}"
