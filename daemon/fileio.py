"""Durable, atomic file writes and the quarantine.

A file is written to a temporary name in the same folder, fsynced, renamed over the
final name, and the folder fsynced: a reader never sees half a file, and a file that
was acknowledged survives a power cut.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from acqflow.daemon.redaction import scrub

__all__ = ["fsync_dir", "quarantine", "quarantine_files", "read_tokens", "remove_stale_temporaries",
           "safe_name", "token_name", "write_atomic"]


def fsync_dir(folder: Path) -> None:
    _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """fsync an existing file (its bytes and its inode: size, blocks)."""
    _fsync(path, os.O_RDONLY | os.O_CLOEXEC)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; with ``durable`` it is on disk on return."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


# write_atomic's temporary names: ".<name>.<pid>.<monotonic ns>.tmp"
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.\d+\.tmp$")


def remove_stale_temporaries(folder: Path) -> int:
    """Remove what :func:`write_atomic` left in ``folder`` when an earlier process was
    killed mid-write; returns how many. Temporaries of this process (a write in progress
    on another thread) are kept, and nothing but that naming pattern is touched."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


_UNSAFE = re.compile(r"[^\w.-]")  # \w: what str.isalnum() accepts, and "_"


def safe_name(text: str, limit: int = 120) -> str:
    """A file-system-safe version of ``text`` (keeps letters, digits, ``-_.``)."""
    cleaned = _UNSAFE.sub("_", text).strip("._")
    return cleaned[:limit] or "unnamed"


def quarantine(source: Path, quarantine_dir: Path, reason: str, keep_source: bool) -> Path:
    """Put ``source`` (a file or folder) into quarantine with a JSON note of why.

    Watched-folder inputs are copied (``keep_source``) because inputs are never moved or
    deleted; the daemon's own spool files are moved. Returns the quarantine entry.
    """
    entry = _quarantine_entry(quarantine_dir, source.name)
    target = entry / source.name
    if source.exists():
        if keep_source:
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        else:
            shutil.move(str(source), target)
    _quarantine_note(entry, str(source), reason)
    return entry


def quarantine_files(files: Sequence[Path], source: Path, quarantine_dir: Path, reason: str) -> Path:
    """Copy ``files`` (a DICOM series' instances, wherever they lie under ``source``) into
    one quarantine entry with a JSON note of why; files that are gone are counted as
    missing. The originals are never touched. Returns the entry."""
    entry = _quarantine_entry(quarantine_dir, source.name)
    target = entry / safe_name(source.name)
    target.mkdir()
    missing = 0
    for index, path in enumerate(files):
        try:
            shutil.copy2(path, target / f"{index:05d}_{safe_name(path.name)}")
        except FileNotFoundError:
            missing += 1
    _quarantine_note(entry, str(source), reason, {"instances": len(files), "missing": missing})
    return entry


def _quarantine_entry(quarantine_dir: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    entry = quarantine_dir / f"{stamp}_{time.monotonic_ns() % 1_000_000:06d}_{safe_name(name)}"
    entry.mkdir(parents=True, exist_ok=False)
    return entry


def _quarantine_note(entry: Path, source: str, reason: str, counts: dict[str, int] | None = None) -> None:
    note: dict[str, object] = {"source": source, "reason": scrub(reason), "quarantined_at": time.time(),
                               **(counts or {})}
    write_atomic(entry / "reason.json", json.dumps(note, indent=2).encode())


def read_tokens(path: Path, setting: str) -> dict[str, str]:
    """token -> name from a ``<name> <token>`` per line file (``#`` comments); raises
    ConfigError naming ``setting`` when it cannot be read or holds no token."""
    from acqflow.daemon.errors import ConfigError

    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    tokens = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{setting} {path}:{number}: expected '<name> <token>'")
        tokens[parts[1]] = parts[0]
    if not tokens:
        raise ConfigError(f"{setting} {path}: no tokens")
    return tokens


def token_name(tokens: dict[str, str], given: str) -> str | None:
    """The name ``given`` is the token of (from :func:`read_tokens`), None for none; every
    token is compared in constant time, so the answer's timing tells nothing."""
    import hmac

    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(token, given) and given:
            found = name
    return found
