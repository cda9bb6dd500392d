"""An in-process DICOM receiver for the SCP tests."""

from __future__ import annotations

from pathlib import Path

from acqflow.daemon.config import DicomSettings
from acqflow.daemon.dicom.scp import DicomReceiver
from acqflow.daemon.dicom.slots import SLOTS
from acqflow.daemon.journal import Journal

__all__ = ["RunningScp"]


class RunningScp:
    """A started ``DicomReceiver`` with its own journal and spool under ``root``.

    ``closed`` collects the arrival ids of each association as it ends. Spool slots are
    off unless ``spool_slots`` is given (the slot tests turn them on): the protocol tests
    watch instances being written as new files.
    """

    def __init__(self, root: Path, **settings: object) -> None:
        settings.setdefault("spool_slots", 0)
        self.root = root
        self.spool = root / "spool"
        self.journal = Journal(root / "journal.sqlite3")
        self.closed: list[list[int]] = []
        self.receiver = DicomReceiver(
            DicomSettings(port=0, **settings),  # type: ignore[arg-type]
            self.journal,
            self.spool,
            self.closed.append,
        )
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()
        self.journal.close()

    def instance_rows(self) -> list[str]:
        return [r["sop_instance_uid"] for r in self.journal.query("SELECT * FROM instances")]

    def association_states(self) -> list[str]:
        return [r["state"] for r in self.journal.query("SELECT state FROM associations ORDER BY started_at")]

    def spool_files(self) -> list[Path]:
        """Instance files, partial (.incoming) or committed (series folders); not slots."""
        outside = (self.spool, self.spool / SLOTS)
        return sorted(p for p in self.spool.rglob("*") if p.is_file() and p.parent not in outside)

    def wait_for_slots(self, timeout: float = 30.0) -> None:
        """Block until the spool's slot pool is full."""
        pool = self.receiver.spool.slots
        assert pool is not None and pool.wait_filled(timeout), "spool slots were not written in time"
