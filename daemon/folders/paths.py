"""Paths of a watched folder: where its symbolic links may lead, and paths as text.

:class:`LinkPolicy` says whether a path reaches its file through a symbolic link and
whether that link may be followed (``folders[].follow_symlinks``, ``symlink_roots``).
:func:`display_path` writes a path that the file system gave with bytes that are not
UTF-8 (``os.fsdecode`` carries them as lone surrogates, which SQLite, JSON consumers and
terminals refuse) with those bytes as ``\\xNN``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LinkPolicy", "display_path", "is_utf8"]


def display_path(path: Path) -> str:
    """``path`` as text a log, the journal or a terminal can hold: non-UTF-8 bytes as ``\\xNN``.

    The same text as ``str(path)`` for every path whose name is valid UTF-8.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: Path) -> bool:
    """Whether the bytes of ``path`` are valid UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # surrogates: bytes os.fsdecode could not decode
        return False
    return True


@dataclass(frozen=True)
class LinkPolicy:
    """Which symbolic links below ``root`` (resolved, like every path handed in) are followed.

    Without ``follow`` none is. With it, a link is followed when it leads inside the
    watched folder (its quarantine excepted) or inside one of ``roots``.
    """

    root: Path
    quarantine_dir: Path
    follow: bool = False
    roots: tuple[Path, ...] = ()

    @classmethod
    def resolved(cls, root: Path, quarantine_dir: Path, follow: bool, roots: tuple[Path, ...]) -> LinkPolicy:
        """A policy with every folder expanded and resolved (so links in them do not matter)."""
        return cls(root, quarantine_dir, follow, tuple(r.expanduser().resolve() for r in roots))

    @staticmethod
    def target(path: Path) -> Path | None:
        """Where ``path`` really leads when a symbolic link is on its way, else None."""
        real = Path(os.path.realpath(path))
        return None if real == path else real

    def inside(self, target: Path) -> bool:
        """Whether ``target`` lies in the watched folder, outside its quarantine."""
        return _within(target, self.root) and not _within(target, self.quarantine_dir)

    def may_follow(self, target: Path) -> bool:
        """Whether a link leading to ``target`` is followed."""
        if not self.follow:
            return False
        return self.inside(target) or any(_within(target, root) for root in self.roots)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
