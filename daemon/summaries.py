"""Where the pipelines' summaries are: the read path the CLI's reports and the web
console share."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from acqflow.daemon.config import Settings
from acqflow.daemon.fileio import safe_name
from acqflow.daemon.journal import Journal
from acqflow.daemon.sinks.results import SUMMARY_FOLDER

__all__ = ["efficiency_summary", "read_efficiency_csv"]




def efficiency_summary(journal: Journal, settings: Settings, experiment: str) -> Path | None:
    """``<outputs>/virtual-staining/<version>/_summary/<experiment>/`` of the newest
    virtual-staining results; None when there are none yet."""
    rows = journal.query(
        "SELECT o.path FROM outputs o WHERE o.pipeline='virtual-staining' AND o.kind='file'"
        " ORDER BY o.written_at DESC LIMIT 1"
    )
    if not rows:
        return None
    relative = Path(rows[0]["path"]).relative_to(settings.paths.outputs_dir)
    root = settings.paths.outputs_dir / relative.parts[0] / relative.parts[1]
    return root / SUMMARY_FOLDER / safe_name(experiment)


def read_efficiency_csv(folder: Path) -> list[dict[str, str]] | None:
    """The rows of ``folder/efficiency.csv``; None when there is none."""
    path = folder / "efficiency.csv"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return list(csv.DictReader(io.StringIO(text)))
