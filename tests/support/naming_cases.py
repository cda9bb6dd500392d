"""Shared by the naming tests: a watched folder at /data/inbox and the check that a
name is recognised by a preset and parses to given fields."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from acqflow.daemon.config import FolderSettings
from acqflow.daemon.folders.naming import match_name, parse_metadata

__all__ = ["ROOT", "assert_preset_parses", "folder", "local"]

ROOT = Path("/data/inbox")


def folder(**kwargs: Any) -> FolderSettings:
    """Settings of the watched folder ROOT."""
    return FolderSettings(path=ROOT, **kwargs)


def local(*parts: int) -> float:
    """Seconds since the epoch of a local date and time."""
    return datetime(*parts).timestamp()  # type: ignore[arg-type]


def assert_preset_parses(relative: str, scheme: str, expected: dict[str, Any]) -> None:
    """``relative`` is matched by ``scheme`` in auto mode and alone, and parses to ``expected``."""
    found = match_name(relative, folder())
    assert found is not None and found.scheme == scheme
    assert match_name(relative, folder(naming=scheme)) is not None
    metadata = parse_metadata(ROOT / relative, folder())
    for key, value in expected.items():
        assert getattr(metadata, key) == value, key
