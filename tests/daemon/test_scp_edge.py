"""The SCP's network edge under raw TCP: idle connections, per-address limits, and
command sets and PDUs without end, each bounded, aborted and counted, while a real
peer (dcmtk echoscu/storescu) is still served."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from acqflow.daemon import metrics
from acqflow.daemon.config import TlsSettings
from tests.daemon.test_scp import _self_signed
from tests.daemon.test_scp_protocol import RawScu
from tests.support.peers import (
    LOOPBACK,
    SyntheticSeries,
    echoscu,
    no_thread_leaks,
    storescu,
    write_synthetic_ct,
)
from tests.support.scp import RunningScp
from tests.support.waiting import poll_until

__all__ = ["no_thread_leaks"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_thread_leaks")]


def _refused(reason: str) -> float:
    return float(metrics.CONNECTIONS_REFUSED.labels(reason)._value.get())


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the server closes or aborts ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data or data[0] == 0x07:  # EOF, or an A-ABORT
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=2, seed="edge", rows=32, cols=32)


@pytest.fixture
def idle() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_idle_connections_hold_no_thread_and_do_not_block_associations(
    tmp_path: Path, small_ct: SyntheticSeries, idle: list[socket.socket]
) -> None:
    running = RunningScp(tmp_path, max_connections_per_address=100, association_request_timeout_seconds=3.0)
    try:
        timeouts = _refused("association_timeout")
        threads, rss = threading.active_count(), _rss_bytes()
        idle.extend(socket.create_connection((LOOPBACK, running.receiver.port)) for _ in range(50))
        poll_until(lambda: running.receiver.open_connections(LOOPBACK) == 50, timeout=10)

        assert threading.active_count() - threads <= 1
        assert _rss_bytes() - rss < 8 << 20  # 50 connections: no thread nor PDU buffer each
        # more idle connections than max_associations (16): modalities are still served
        assert echoscu(running.receiver.port).returncode == 0
        assert storescu(running.receiver.port, small_ct.paths).returncode == 0
        assert len(running.instance_rows()) == 2

        assert all(_closed_by_peer(sock, within=10) for sock in idle)
        assert _refused("association_timeout") == timeouts + 50
        poll_until(lambda: running.receiver.open_connections(LOOPBACK) == 0, timeout=5)
    finally:
        running.stop()


def test_connections_beyond_the_per_address_limit_are_closed(
    tmp_path: Path, idle: list[socket.socket]
) -> None:
    running = RunningScp(tmp_path, max_connections_per_address=4)
    try:
        refused = _refused("address_limit")
        idle.extend(socket.create_connection((LOOPBACK, running.receiver.port)) for _ in range(3))
        poll_until(lambda: running.receiver.open_connections(LOOPBACK) == 3, timeout=10)
        assert echoscu(running.receiver.port).returncode == 0  # the fourth
        # echoscu has released; the receiver counts its connection until it sees the close
        poll_until(lambda: running.receiver.open_connections(LOOPBACK) == 3, timeout=10)

        extra = [socket.create_connection((LOOPBACK, running.receiver.port)) for _ in range(3)]
        idle.extend(extra)
        poll_until(lambda: running.receiver.open_connections(LOOPBACK) == 4, timeout=10)
        closed = [_closed_by_peer(sock, within=5) for sock in extra]
        assert closed.count(True) == 2 and not closed[0]  # the first of them is the fourth
        assert _refused("address_limit") == refused + 2
        assert not _closed_by_peer(idle[0], within=0.5)  # those within the limit stay open
    finally:
        running.stop()


def test_a_slow_association_request_is_cut_off(tmp_path: Path, idle: list[socket.socket]) -> None:
    running = RunningScp(tmp_path, association_request_timeout_seconds=1.0)
    try:
        timeouts = _refused("association_timeout")
        sock = socket.create_connection((LOOPBACK, running.receiver.port))
        idle.append(sock)
        sock.sendall(struct.pack(">BxL", 0x01, 200) + b"\x00\x01")  # a header, then silence
        assert _closed_by_peer(sock, within=10)
        assert _refused("association_timeout") == timeouts + 1
        assert echoscu(running.receiver.port).returncode == 0
    finally:
        running.stop()


def _endless_command_set(scu: RawScu, limit: int) -> int:
    """Send command-set fragments that are never the last, up to ``limit`` bytes; returns
    how many were sent before the SCP ended the association."""
    fragment = b"\x00" * 16000
    pdu = struct.pack(">BxLLBB", 0x04, 6 + len(fragment), 2 + len(fragment), 1, 0x01) + fragment
    sent = 0
    scu.sock.settimeout(10)
    try:
        while sent < limit:
            scu.sock.sendall(pdu)
            sent += len(fragment)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_endless_command_set_is_aborted_within_its_bound(tmp_path: Path) -> None:
    running = RunningScp(tmp_path, max_command_set_bytes=64 * 1024)
    try:
        refused, rss = _refused("command_too_large"), _rss_bytes()
        scu = RawScu(running.receiver.port)
        sent = _endless_command_set(scu, limit=300 << 20)
        assert sent < 16 << 20  # aborted long before 300 MB (kernel buffers take a few MB)
        scu.sock.close()
        poll_until(lambda: _refused("command_too_large") == refused + 1, timeout=10)
        assert _rss_bytes() - rss < 16 << 20
        assert echoscu(running.receiver.port).returncode == 0
    finally:
        running.stop()


@pytest.mark.parametrize(("pdu_type", "length"), [(0x01, 100 << 20), (0x04, 1 << 31)])
def test_pdu_longer_than_its_bound_is_aborted(
    tmp_path: Path, idle: list[socket.socket], pdu_type: int, length: int
) -> None:
    running = RunningScp(tmp_path)
    try:
        refused, rss = _refused("pdu_too_large"), _rss_bytes()
        if pdu_type == 0x01:
            sock = socket.create_connection((LOOPBACK, running.receiver.port))
        else:
            sock = RawScu(running.receiver.port).sock
        idle.append(sock)
        sock.sendall(struct.pack(">BxL", pdu_type, length) + b"\x00" * 1024)
        sock.settimeout(10)
        assert sock.recv(6)[:1] == b"\x07"  # A-ABORT
        assert _refused("pdu_too_large") == refused + 1
        assert _rss_bytes() - rss < 16 << 20
        assert echoscu(running.receiver.port).returncode == 0
    finally:
        running.stop()


def test_a_stalled_tls_handshake_is_cut_off(tmp_path: Path, idle: list[socket.socket]) -> None:
    cert, key = _self_signed(tmp_path)
    running = RunningScp(
        tmp_path, tls=TlsSettings(certificate=cert, private_key=key), association_request_timeout_seconds=1.0
    )
    try:
        timeouts = _refused("association_timeout")
        sock = socket.create_connection((LOOPBACK, running.receiver.port))
        idle.append(sock)
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then silence
        assert _closed_by_peer(sock, within=10)
        assert _refused("association_timeout") == timeouts + 1
    finally:
        running.stop()
