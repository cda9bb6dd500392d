"""Liveness and readiness: heartbeats, the systemd watchdog, and ``/readyz``'s checks.

Each long-lived loop holds a :class:`Heartbeat` and marks it as it goes: ``beat`` on
every iteration of a loop, ``busy`` on entering work that may take long (a job, a model
load), ``idle`` while waiting for work (an idle worker is alive however long it waits).
The :class:`Watchdog` sends systemd ``WATCHDOG=1`` only while every heartbeat is within
its allowance and every source still listens; a stuck thread stops the keep-alives and
systemd restarts the service (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Heartbeat", "Readiness", "Watchdog", "WatchdogRules", "watchdog_interval"]

log = logging.getLogger(__name__)


class _Phase(enum.Enum):
    IDLE = "idle"
    LOOPING = "looping"
    BUSY = "busy"


class Heartbeat:
    """A thread's sign of progress: a monotonic timestamp and what the thread is doing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._at = time.monotonic()
        self._phase = _Phase.LOOPING

    def beat(self) -> None:
        """One more iteration of a loop: progress."""
        self._at, self._phase = time.monotonic(), _Phase.LOOPING

    def busy(self) -> None:
        """Entering long work (a job, a model load): the generous allowance applies."""
        self._at, self._phase = time.monotonic(), _Phase.BUSY

    def idle(self) -> None:
        """Waiting for work: alive however long the wait."""
        self._at, self._phase = time.monotonic(), _Phase.IDLE

    def stuck_for(self, now: float, loop_allowance: float, busy_allowance: float) -> float | None:
        """Seconds since the last sign of progress when past its allowance, else None."""
        if self._phase is _Phase.IDLE:
            return None
        allowance = busy_allowance if self._phase is _Phase.BUSY else loop_allowance
        silent = now - self._at
        return silent if silent > allowance else None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives (half of systemd's WATCHDOG_USEC), None when the
    watchdog is off or meant for another process (WATCHDOG_PID)."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


Probe = Callable[[], str | None]
"""A check returning None when fine, else what is wrong (one short phrase)."""


@dataclass(frozen=True)
class WatchdogRules:
    loop_allowance: float
    busy_allowance: float


class Watchdog:
    """Sends ``WATCHDOG=1`` every ``interval`` seconds while nothing is stuck, and a
    ``STATUS=`` line whenever the daemon's condition changes."""

    def __init__(
        self,
        notify: Callable[[str], None],
        interval: float,
        rules: WatchdogRules,
        status: Callable[[], str],
    ) -> None:
        self._notify = notify
        self._interval = interval
        self._rules = rules
        self._status = status
        self._heartbeats: list[Heartbeat] = []
        self._probes: list[tuple[str, Probe]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_status = ""

    def watch(self, heartbeats: Iterable[Heartbeat]) -> None:
        self._heartbeats.extend(heartbeats)

    def probe(self, name: str, check: Probe) -> None:
        self._probes.append((name, check))

    def problems(self) -> list[str]:
        """What is stuck or down now; empty while all make progress."""
        now = time.monotonic()
        found = []
        for beat in self._heartbeats:
            silent = beat.stuck_for(now, self._rules.loop_allowance, self._rules.busy_allowance)
            if silent is not None:
                found.append(f"{beat.name} stuck for {silent:.0f} s")
        for name, check in self._probes:
            problem = check()
            if problem is not None:
                found.append(f"{name}: {problem}")
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="acqflow-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def tick(self) -> None:
        """One round: keep-alive when nothing is stuck, STATUS= when it changed."""
        problems = self.problems()
        if problems:
            status = "stuck: " + "; ".join(problems)
        else:
            self._notify("WATCHDOG=1")
            status = self._status()
        if status != self._last_status:
            if problems:
                log.error("watchdog: %s; keep-alives stopped, systemd will restart acqflow", status)
            elif self._last_status.startswith("stuck"):
                log.warning("watchdog: progress again, keep-alives resumed")
            self._notify(f"STATUS={status}")
            self._last_status = status

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the watchdog thread must not die: its silence restarts the service
                log.exception("watchdog round failed")


class Readiness:
    """``/readyz``: every named check passes, else what is not ready."""

    def __init__(self, min_free_bytes: int) -> None:
        self._min_free = min_free_bytes
        self._checks: list[tuple[str, Probe]] = []

    def add(self, name: str, check: Probe) -> None:
        self._checks.append((name, check))

    def add_disk(self, name: str, path: Path) -> None:
        self.add(f"disk {name}", lambda: self._disk_problem(path))

    def _disk_problem(self, path: Path) -> str | None:
        try:
            free = shutil.disk_usage(path).free
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        if free < self._min_free:
            return f"{path}: {free} bytes free, below {self._min_free}"
        return None

    def failures(self) -> dict[str, str]:
        """Check name → what is wrong, for each check that does not pass."""
        failed = {}
        for name, check in self._checks:
            try:
                problem = check()
            except Exception as exc:  # noqa: BLE001  # a check that raises is a check that fails
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                failed[name] = problem
        return failed
