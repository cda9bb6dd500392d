"""Raw TCP cases of the corpus: bytes on a socket to the SCP, in orders no SCU would send.

Each driver takes the SCP's port and returns a :class:`TcpResult`: whether the SCP ended
the connection itself (A-ABORT, A-ASSOCIATE-RJ or close) within a bounded time, what it
answered, and the SOP Instance UID of any instance the case tried to store (which must
not be in the journal afterwards).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.reliability.corpus import COMMAND_SET_BOUND_BYTES, IDLE_CLOSE_BOUND_SECONDS
from tests.reliability.dicom_inputs import base_series, encoded
from tests.support.peers import storescu, write_synthetic_ct
from tests.support.raw_dicom import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    P_DATA_TF,
    RawPeer,
    command_set,
    p_data,
    pdu,
)

__all__ = ["DRIVERS", "END_SECONDS", "TcpResult"]

END_SECONDS = 5.0  # a protocol violation must end the connection within this time
_CT = [(CTImageStorage, (ExplicitVRLittleEndian,))]


@dataclass
class TcpResult:
    ended: bool
    answer: str
    stored_uids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _answer(peer: RawPeer, seconds: float = END_SECONDS) -> TcpResult:
    """Wait for the SCP to end the connection; name what it sent."""
    deadline = time.monotonic() + seconds
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            reply = peer.read(max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if reply.closed:
            return TcpResult(True, " ".join([*seen, "closed"]))
        name = {
            ABORT: "A-ABORT",
            ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
            ASSOCIATE_AC: "A-ASSOCIATE-AC",
            P_DATA_TF: "P-DATA-TF",
        }.get(reply.pdu_type or 0, f"PDU 0x{reply.pdu_type:02X}")
        seen.append(name)
        if reply.pdu_type in (ABORT, ASSOCIATE_RJ):
            return TcpResult(True, " ".join(seen))
    return TcpResult(False, " ".join([*seen, f"still open after {seconds:g} s"]))


def _first_bytes(data: bytes) -> Callable[[int], TcpResult]:
    def drive(port: int) -> TcpResult:
        with RawPeer(port) as peer:
            peer.send(data)
            return _answer(peer)

    return drive


def _truncated_rq(port: int) -> TcpResult:
    with RawPeer(port) as peer:
        peer.send(struct.pack(">BxL", ASSOCIATE_RQ, 300) + b"\x00\x01" + b"\0" * 38)
        return _answer(peer, IDLE_CLOSE_BOUND_SECONDS)


def _associated(port: int, then: Callable[[RawPeer], TcpResult]) -> TcpResult:
    with RawPeer(port) as peer:
        reply = peer.associate(_CT)
        if reply.pdu_type != ASSOCIATE_AC:
            return TcpResult(False, f"association not accepted (PDU {reply.pdu_type})")
        return then(peer)


def _after_association(*chunks: bytes) -> Callable[[int], TcpResult]:
    def then(peer: RawPeer) -> TcpResult:
        for chunk in chunks:
            if not peer.send(chunk):
                break
        return _answer(peer)

    return lambda port: _associated(port, then)


def _store_command(sop_uid: str) -> bytes:
    return command_set(
        AffectedSOPClassUID=CTImageStorage,
        CommandField=0x0001,
        MessageID=1,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_uid,
    )


def _half_data_set(ending: str) -> Callable[[int], TcpResult]:
    """A C-STORE whose data set stops half way: then A-ABORT or a plain close."""

    def then(peer: RawPeer) -> TcpResult:
        ds = base_series(f"tcp-half-{ending}")[0]
        data = encoded(ds)
        peer.send(p_data(1, 0x03, _store_command(str(ds.SOPInstanceUID))))
        peer.send(p_data(1, 0x00, data[: len(data) // 2]))
        time.sleep(0.2)
        if ending == "abort":
            peer.abort()
        peer.close()
        return TcpResult(
            True,
            f"peer sent {'A-ABORT' if ending == 'abort' else 'close'} mid data set",
            [str(ds.SOPInstanceUID)],
        )

    return lambda port: _associated(port, then)


def _never_ending_command(port: int) -> TcpResult:
    def then(peer: RawPeer) -> TcpResult:
        fragment = p_data(1, 0x01, b"\x00" * 16000)  # a command fragment, never the last
        sent = 0
        while sent < COMMAND_SET_BOUND_BYTES:
            if not peer.send(fragment):
                return TcpResult(True, f"aborted after {sent // 1024} KiB of command set")
            sent += len(fragment)
        result = _answer(peer, 2.0)
        result.notes.append(f"{sent // (1024 * 1024)} MiB of command set sent without an abort")
        result.ended = False
        return result

    return _associated(port, then)


def _idle_connections(port: int) -> TcpResult:
    """More idle connections than max_associations; a real SCU must still get through."""
    idle = [RawPeer(port) for _ in range(6)]
    try:
        time.sleep(0.5)
        series = write_synthetic_ct(
            Path(mkdtemp(prefix="idle-probe-")), n_slices=2, seed="idle-probe", rows=16, cols=16
        )
        sent = storescu(port, series.paths, calling_ae="STORESCU", timeout=60)
        notes = [f"storescu with 6 idle connections open: exit {sent.returncode}"]
        started = time.monotonic()
        closed = [
            p.ended_within(max(0.1, IDLE_CLOSE_BOUND_SECONDS - (time.monotonic() - started))) for p in idle
        ]
        notes.append(
            f"{sum(closed)} of {len(idle)} idle connections closed by the SCP within "
            f"{IDLE_CLOSE_BOUND_SECONDS:g} s"
        )
        ok = sent.returncode == 0 and all(closed)
        return TcpResult(ok, "; ".join(notes), notes=notes)
    finally:
        for peer in idle:
            peer.close()


def _calling_ae_refused(port: int) -> TcpResult:
    with RawPeer(port) as peer:
        reply = peer.associate(_CT, calling_ae="INTRUDER")
        if reply.pdu_type == ASSOCIATE_RJ:
            return TcpResult(True, "A-ASSOCIATE-RJ")
        return TcpResult(False, f"PDU {reply.pdu_type} instead of A-ASSOCIATE-RJ")


def _tls_hello() -> bytes:
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


DRIVERS: dict[str, Callable[[int], TcpResult]] = {
    "tcp-p-data-before-association": _first_bytes(p_data(1, 0x03, b"\0" * 64)),
    "tcp-unknown-pdu-type": _first_bytes(pdu(0x09, b"\0" * 32)),
    "tcp-associate-ac-to-scp": _first_bytes(pdu(ASSOCIATE_AC, b"\x00\x01" + b"\0" * 66)),
    "tcp-oversize-pdu-length": _first_bytes(pdu(ASSOCIATE_RQ, b"\x00\x01\x00\x00", length=0xFFFFFFF0)),
    "tcp-truncated-associate-rq": _truncated_rq,
    "tcp-garbage-associate-rq": _first_bytes(pdu(ASSOCIATE_RQ, os.urandom(200))),
    "tcp-http-request": _first_bytes(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    "tcp-tls-hello-on-plain-port": _first_bytes(_tls_hello()),
    "tcp-idle-connections": _idle_connections,
    "tcp-never-ending-command-set": _never_ending_command,
    "tcp-abort-mid-data-set": _half_data_set("abort"),
    "tcp-close-mid-data-set": _half_data_set("close"),
    "tcp-pdv-unaccepted-context": _after_association(p_data(7, 0x03, _store_command("1.2.3"))),
    "tcp-data-set-without-command": _after_association(p_data(1, 0x02, b"\0" * 64)),
    "tcp-undecodable-command-set": _after_association(p_data(1, 0x03, b"\xff" * 20)),
    "tcp-p-data-length-over-cap": _after_association(pdu(P_DATA_TF, b"\0" * 16, length=1 << 30)),
    "tcp-pdv-length-inconsistent": _after_association(
        pdu(P_DATA_TF, struct.pack(">LBB", 5000, 1, 0x03) + b"\0" * 30)
    ),
    "tcp-calling-ae-not-allowed": _calling_ae_refused,
}
