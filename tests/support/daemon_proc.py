"""Run ``acqflow serve`` as a real subprocess for end-to-end tests.

The daemon gets a TOML file written from a dict, binds 127.0.0.1 on free ports, and is
stopped by PID: SIGTERM for a graceful stop (its exit code is checked) or SIGKILL to
simulate a crash. The in-memory test pipelines of ``tests.support.pipelines`` are loaded
through ``pipelines.modules`` with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.waiting import poll_until

REPO = Path(__file__).resolve().parents[2]
TEST_PIPELINES = ["tests.support.pipelines:SeriesEcho", "tests.support.pipelines:ImageStats"]

__all__ = ["SPOOL_SLOTS", "TEST_PIPELINES", "DaemonProcess", "toml_dumps"]

SPOOL_SLOTS = 8  # dicom.spool_slots of test daemons


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Write settings as TOML: top-level scalars, tables, and arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"[{key}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    for key, items in arrays:
        for item in items:
            lines.append(f"[[{key}]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


@dataclass
class DaemonProcess:
    """One ``acqflow serve`` subprocess; ``start`` returns once it wrote daemon.json."""

    root: Path
    settings: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "acqflow.toml"

    @property
    def state_dir(self) -> Path:
        return Path(self.settings["paths"]["state_dir"])

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def start(self, timeout: float = 60.0) -> None:
        # A small slot pool unless a test sets one: the default (512 slots of 1 MiB) would
        # have every test daemon write half a gigabyte ahead.
        self.settings.setdefault("dicom", {}).setdefault("spool_slots", SPOOL_SLOTS)
        self.config_path.write_text(toml_dumps(self.settings))
        state_file = self.state_dir / "daemon.json"
        state_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "acqflow.daemon", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log_tail()}")
            if state_file.exists():
                self.state = json.loads(state_file.read_text())
                if self.state.get("pid") == self.process.pid:
                    return
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"daemon not ready after {timeout} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the graceful stop systemd uses. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is flushed or drained."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def state_file_pipelines(self) -> dict[str, str]:
        """Pipeline states in the daemon's ``daemon.json`` (name → state)."""
        state = json.loads((self.state_dir / "daemon.json").read_text())
        return dict(state.get("pipelines") or {})

    def metrics_text(self) -> str:
        port = self.state["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``acqflow ARGS --config <this daemon's config>``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "acqflow.daemon", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=self.root,
        )


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def journal_rows(daemon: DaemonProcess, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """Rows of a query on the daemon's journal, through a connection of our own."""
    db = sqlite3.connect(daemon.state_dir / "journal.sqlite3", timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    daemon: DaemonProcess,
    poll: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until true; fails with the daemon's log after ``timeout`` seconds.

    ``describe``, when given, adds what was seen at the end (journal states, say) to the failure.
    """
    try:
        poll_until(predicate, timeout, poll, what)
    except AssertionError as exc:
        seen = f"\nseen: {describe()}" if describe is not None else ""
        raise AssertionError(f"{exc}{seen}\n--- daemon log ---\n{daemon.log_tail()}") from None
