"""An in-process DICOM receiver for the SCP tests."""

from __future__ import annotations

from pathlib import Path

from daemon.config import DicomSettings
from daemon.journal import Journal
from daemon.sources.scp import DicomReceiver

__all__ = ["RunningScp"]


class RunningScp:
    """A started ``DicomReceiver`` with its own journal and spool under ``root``.

    ``closed`` collects the arrival ids of each association as it ends.
    """

    def __init__(self, root: Path, **settings: object) -> None:
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
        """Instance files, partial (.incoming) or committed (series folders)."""
        return sorted(p for p in self.spool.rglob("*") if p.is_file() and p.parent != self.spool)
