"""The SCP's listening socket: connections wait in one selector until they speak.

A thread per connection from the moment of ``accept`` lets anyone who opens TCP
connections and says nothing hold a thread, a PDU buffer and an association slot each
(the fault campaign: 17 idle connections locked every modality out, 200 cost 218 threads
and 153 MB). Here one thread accepts and holds every connection that has not sent a
byte yet in a ``selectors`` set, at the cost of a file descriptor; only a connection
with data waiting gets a thread of its own (``on_ready``), which reads its
A-ASSOCIATE-RQ within what is left of ``association_request_timeout_seconds``. A
connection that stays silent that long is closed, and so is one from an address that
already holds ``max_connections_per_address`` connections (waiting or served), each
counted in ``acqflow_dicom_connections_refused_total{reason}``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from acqflow.daemon import metrics
from acqflow.daemon.dicom.upper_layer import ConnectionRefusal

__all__ = ["ConnectionListener", "ListenerLimits"]

LOG = logging.getLogger(__name__)

_POLL_SECONDS = 0.2  # how often stop() and expired connections are noticed


@dataclass(frozen=True)
class ListenerLimits:
    per_address: int  # open connections per peer address, waiting or served
    request_timeout: float  # seconds from accept to a whole A-ASSOCIATE-RQ


@dataclass
class _Waiting:
    address: str
    deadline: float


class ConnectionListener:
    """Accepts on ``address``; calls ``on_ready(sock, peer address, seconds left)`` in a
    new thread for each connection once it has data (the callee owns ``sock``)."""

    def __init__(
        self,
        address: tuple[str, int],
        limits: ListenerLimits,
        on_ready: Callable[[socket.socket, str, float], None],
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind(address)
            self._socket.listen(128)
            self._socket.setblocking(False)
        except OSError:
            self._socket.close()
            raise
        self.limits = limits
        self._on_ready = on_ready
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._socket, selectors.EVENT_READ)
        self._waiting: dict[socket.socket, _Waiting] = {}
        self._open: Counter[str] = Counter()  # per address: waiting + served
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._limit_logged = self._accept_logged = -60.0

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def accepting(self) -> bool:
        """True while the accepting thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="acqflow-dicom-accept")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting and close every connection still waiting; served ones are the
        caller's to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in list(self._waiting):
            self._drop(sock)
        self._selector.close()
        self._socket.close()

    def connections(self, address: str) -> int:
        """Open connections from ``address`` (waiting or served)."""
        with self._lock:
            return self._open[address]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(_POLL_SECONDS)
            except OSError as exc:  # EINTR is retried by selectors; anything else: log, go on
                LOG.error("DICOM listener: select failed: %s", exc)
                metrics.SOURCE_ERRORS.labels("dicom", "accept").inc()
                time.sleep(_POLL_SECONDS)
                continue
            try:
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)  # only sockets are registered
                    if sock is self._socket:
                        self._accept()
                    else:
                        self._hand_on(sock)
                self._expire(time.monotonic())
            except Exception:  # a bug must cost a connection at most, never the listener
                LOG.exception("DICOM listener: unexpected error")
                metrics.SOURCE_ERRORS.labels("dicom", "accept").inc()

    def _accept(self) -> None:
        """Accept every connection queued on the listening socket."""
        while True:
            try:
                sock, peer = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog waits for a free slot
                now = time.monotonic()
                if now - self._accept_logged >= 60.0:
                    self._accept_logged = now
                    LOG.warning("DICOM listener: accept failed (retried, logged once a minute): %s", exc)
                metrics.SOURCE_ERRORS.labels("dicom", "accept").inc()
                self._stop.wait(_POLL_SECONDS / 2)  # the socket stays readable: do not spin
                return
            address = str(peer[0])
            with self._lock:
                over = self._open[address] >= self.limits.per_address
                if not over:
                    self._open[address] += 1
            if over:
                self._log_address_limit(address)
                ConnectionRefusal.ADDRESS_LIMIT.counted()
                sock.close()
                continue
            sock.setblocking(False)
            self._waiting[sock] = _Waiting(address, time.monotonic() + self.limits.request_timeout)
            self._selector.register(sock, selectors.EVENT_READ)

    def _log_address_limit(self, address: str) -> None:
        """Log a refusal, at most once a minute (a flood is seen in the metric)."""
        now = time.monotonic()
        if now - self._limit_logged >= 60.0:
            self._limit_logged = now
            LOG.warning("connection from %s closed: %d connections open from it already "
                        "(further ones for a minute only counted)", address, self.limits.per_address)

    def _hand_on(self, sock: socket.socket) -> None:
        waiting = self._waiting.pop(sock)
        self._selector.unregister(sock)
        sock.setblocking(True)
        left = max(waiting.deadline - time.monotonic(), 0.001)
        thread = threading.Thread(
            target=self._serve, args=(sock, waiting.address, left), name=f"acqflow-dicom-{waiting.address}",
            daemon=True,  # the receiver aborts and joins served connections itself at stop
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: this connection waits no more
            LOG.error("connection from %s closed: no thread to serve it: %s", waiting.address, exc)
            metrics.SOURCE_ERRORS.labels("dicom", "accept").inc()
            self._release(waiting.address)
            sock.close()

    def _serve(self, sock: socket.socket, address: str, left: float) -> None:
        try:
            self._on_ready(sock, address, left)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self._release(address)

    def _expire(self, now: float) -> None:
        expired = [sock for sock, waiting in self._waiting.items() if waiting.deadline <= now]
        for sock in expired:
            LOG.info("connection from %s closed: no A-ASSOCIATE-RQ within %.0f s",
                     self._waiting[sock].address, self.limits.request_timeout)
            ConnectionRefusal.ASSOCIATION_TIMEOUT.counted()
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        waiting = self._waiting.pop(sock)
        with contextlib.suppress(KeyError, ValueError):  # the selector may be closed already
            self._selector.unregister(sock)
        sock.close()
        self._release(waiting.address)

    def _release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]
