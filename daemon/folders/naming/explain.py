"""What the watcher would make of given files: ``acqflow config check --explain-names``.

Each file is explained with the settings of the watched folder it lies in (the first
configured folder that contains it), else with the defaults (``naming = "auto"``, no
patterns) and its own folder as the watched one, as ``acqflow reprocess`` does for files
outside every watched folder. The header is read as the watcher reads it, so a
multi-image OME-TIFF is explained image by image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.errors import InputRejected
from acqflow.daemon.folders.naming.parse import NameExplanation, check_naming, explain_name
from acqflow.daemon.imageio import TiffHeader, read_tiff_header

__all__ = ["ExplainedInput", "explain_file", "folder_for"]


@dataclass(frozen=True)
class ExplainedInput:
    """One input of a file and how its metadata comes about.

    ``watched`` is False when no configured folder holds the file (defaults apply);
    ``series`` is the OME image of a multi-image file, None for a one-input file;
    ``header_note`` says why the header could not be read ("" when it was).
    """

    path: Path
    folder: FolderSettings
    watched: bool
    series: int | None
    header_note: str
    explanation: NameExplanation

    def as_json(self) -> dict[str, Any]:
        """The explanation as a JSON-friendly dict."""
        md = self.explanation.metadata
        match = self.explanation.match
        return {
            "file": str(self.path),
            "folder": str(self.folder.path),
            "watched": self.watched,
            "naming": self.folder.naming,
            "series": self.series,
            "relative_path": self.explanation.relative,
            "scheme": match.scheme if match else None,
            "groups": dict(match.groups) if match else {},
            "experiment": md.experiment,
            "experiment_from": self.explanation.experiment_from,
            "plate": md.plate,
            "well": md.well,
            "position": md.position,
            "timepoint": md.timepoint,
            "channel": md.channel,
            "acquired_at": md.acquired_at,
            "acquired": _local_time(md.acquired_at),
            "pixel_size_um": list(md.pixel_size_um) if md.pixel_size_um else None,
            "stage_position_um": list(md.stage_position_um) if md.stage_position_um else None,
            "note": self.explanation.note,
            "header": self.header_note or "read",
        }


def folder_for(folders: Sequence[FolderSettings], path: Path) -> tuple[FolderSettings, bool]:
    """The watched folder holding ``path`` (resolved) and True, else defaults rooted at its
    parent and False."""
    for folder in folders:
        root = folder.path.expanduser().resolve()
        if path.is_relative_to(root):
            return folder.model_copy(update={"path": root}), True
    return FolderSettings(path=path.parent), False


def explain_file(path: Path, folders: Sequence[FolderSettings]) -> list[ExplainedInput]:
    """How the watcher would name each input of the file at ``path``.

    Raises ConfigError for a folder's unknown ``naming`` or pattern group, and
    FileNotFoundError when there is no such file.
    """
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    folder, watched = folder_for(folders, resolved)
    check_naming(folder)
    header: TiffHeader | None
    try:
        header, note = read_tiff_header(resolved), ""
    except (OSError, InputRejected) as exc:
        header, note = None, f"unreadable, name only: {exc}"
    inputs = header.inputs() if header is not None else (None,)
    split = header is not None and bool(header.split)
    return [
        ExplainedInput(resolved, folder, watched, one.series if split and one else None, note,
                       explain_name(resolved, folder, one))
        for one in inputs
    ]


def _local_time(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    try:
        return datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None
