"""A hand-driven DICOM peer on a raw TCP socket: any bytes, in any order, at any time.

Real SCUs (dcmtk, pynetdicom) refuse to send what the bad-input corpus needs to send: a
P-DATA before the association, a data set that is not DICOM, half a data set and an
A-ABORT, command fragments that never end. :class:`RawPeer` speaks just enough of the
upper layer (PS3.8) to associate with pynetdicom's PDU encoders and then lets a test
write whatever it wants; the replies are read back as (PDU type, body).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

__all__ = ["PduReply", "RawPeer", "command_set", "p_data", "pdu"]

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
_HEADER = struct.Struct(">BxL")


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """One PDU; ``length`` overrides the length field (to lie about it)."""
    return _HEADER.pack(pdu_type, len(body) if length is None else length) + body


def p_data(context_id: int, control: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (control: bit 0 command, bit 1 last fragment)."""
    item = struct.pack(">LBB", len(value) + 2, context_id, control) + value
    return pdu(P_DATA_TF, item)


def command_set(**elements: object) -> bytes:
    """A DIMSE command set, implicit VR little endian, with its group length first."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    assert body is not None
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


@dataclass(frozen=True)
class PduReply:
    """What the SCP answered: a PDU, or ``None`` for a closed connection."""

    pdu_type: int | None
    body: bytes = b""

    @property
    def closed(self) -> bool:
        return self.pdu_type is None


class RawPeer:
    """One TCP connection to an SCP, driven byte by byte."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.contexts: dict[str, int] = {}  # accepted abstract syntax -> context id

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Write ``data``; False when the SCP has closed or reset the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def read(self, timeout: float | None = None) -> PduReply:
        """The next PDU from the SCP; ``PduReply(None)`` when the connection ended.

        Raises TimeoutError when nothing (or only part of a PDU) came for ``timeout``.
        """
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            header = self._exactly(6)
            pdu_type, length = _HEADER.unpack(header)
            return PduReply(pdu_type, self._exactly(length))
        except TimeoutError:
            raise
        except (EOFError, OSError):
            return PduReply(None)

    def _exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                raise EOFError("connection closed")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def associate(
        self,
        contexts: Sequence[tuple[str, Sequence[str]]],
        calling_ae: str = "STORESCU",
        called_ae: str = "ACQFLOW",
        max_pdu: int = 16384,
    ) -> PduReply:
        """Send an A-ASSOCIATE-RQ; on A-ASSOCIATE-AC records the accepted contexts."""
        request = A_ASSOCIATE()
        request.application_context_name = APPLICATION_CONTEXT_NAME
        request.calling_ae_title = calling_ae
        request.called_ae_title = called_ae
        request.calling_presentation_address = AddressInformation("127.0.0.1", 0)
        request.called_presentation_address = AddressInformation("127.0.0.1", 104)
        built = []
        for index, (abstract, syntaxes) in enumerate(contexts):
            context = build_context(abstract, list(syntaxes))
            context.context_id = 2 * index + 1
            built.append(context)
        request.presentation_context_definition_list = built
        length = MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        request.user_information = [length]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(request)
        self.send(rq.encode())
        reply = self.read()
        if reply.pdu_type == ASSOCIATE_AC:
            ac = A_ASSOCIATE_AC()
            ac.decode(_HEADER.pack(ASSOCIATE_AC, len(reply.body)) + reply.body)
            by_id = {c.context_id: str(c.abstract_syntax) for c in built}
            for item in ac.to_primitive().presentation_context_definition_results_list:
                if item.result == 0:
                    self.contexts[by_id[item.context_id]] = int(item.context_id)
        return reply

    def store(
        self,
        sop_class: str,
        sop_uid: str,
        dataset: bytes,
        fragment: int = 16000,
        message_id: int = 1,
    ) -> Dataset | PduReply:
        """C-STORE ``dataset`` (already encoded) on the context of ``sop_class``.

        Returns the response command set (``Status``, maybe ``ErrorComment``), or the
        PDU reply that ended the exchange instead (an A-ABORT, a closed connection).
        """
        context_id = self.contexts[sop_class]
        command = command_set(
            AffectedSOPClassUID=sop_class,
            CommandField=0x0001,
            MessageID=message_id,
            Priority=0,
            CommandDataSetType=0x0000,
            AffectedSOPInstanceUID=sop_uid,
        )
        self.send(p_data(context_id, 0x03, command))
        chunks = [dataset[i : i + fragment] for i in range(0, len(dataset), fragment)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            if not self.send(p_data(context_id, 0x02 if last else 0x00, chunk)):
                break
        return self.response()

    def response(self, timeout: float | None = None) -> Dataset | PduReply:
        """Read one DIMSE response (its command set) or the PDU that came instead."""
        command = b""
        while True:
            reply = self.read(timeout)
            if reply.pdu_type != P_DATA_TF:
                return reply
            position = 0
            while position < len(reply.body):
                (length,) = struct.unpack_from(">L", reply.body, position)
                control = reply.body[position + 5]
                command += reply.body[position + 6 : position + 4 + length]
                position += 4 + length
                if control & 0x03 == 0x03:
                    decoded = decode(BytesIO(command), True, True)
                    assert decoded is not None
                    return decoded

    def release(self) -> PduReply:
        self.send(pdu(RELEASE_RQ, b"\0\0\0\0"))
        return self.read()

    def abort(self) -> None:
        self.send(pdu(ABORT, b"\0\0\0\0"))

    def ended_within(self, seconds: float) -> bool:
        """True when the SCP closed (or aborted) the connection within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                reply = self.read(max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if reply.closed or reply.pdu_type == ABORT:
                return True
        return False
