"""The STOW-RS receiver: an HTTP(S) server (tornado) that takes studies by POST.

``POST <path>/studies`` (and ``<path>/studies/{study}``) with a ``multipart/related;
type="application/dicom"`` body. The body is streamed (tornado's
``stream_request_body``) into a :class:`~acqflow.daemon.dicomweb.stow.StowUpload` on a
small thread pool, so a slow disk never stalls the event loop and a request's memory
stays a chunk, whatever its size. Who may store: a bearer token from
``dicomweb.tokens_file`` (``<client> <token>`` per line) or a TLS client certificate
(its common name), filtered by ``dicomweb.allowed_clients``; without tokens or client
certificates every client may, named by its address.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from acqflow.daemon import metrics
from acqflow.daemon.config import DicomWebSettings
from acqflow.daemon.dicom.spool import InstanceSpool
from acqflow.daemon.dicomweb.stow import StowRejected, StowUpload
from acqflow.daemon.errors import BindError, ConfigError
from acqflow.daemon.fileio import read_tokens, token_name
from acqflow.daemon.journal import Journal

__all__ = ["StowReceiver"]

LOG = logging.getLogger(__name__)

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


class StowReceiver:
    """Serves STOW-RS on ``settings.host:port``; ``on_closed`` gets the series arrivals
    each finished request carried (the series assembler's early completion)."""

    def __init__(self, settings: DicomWebSettings, journal: Journal, spool: InstanceSpool,
                 on_closed: Callable[[list[int]], None]) -> None:
        self.settings, self.journal, self.spool, self.on_closed = settings, journal, spool, on_closed
        self._tokens = (read_tokens(settings.tokens_file, "dicomweb.tokens_file")
                        if settings.tokens_file is not None else {})
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="acqflow-stow")
        self._loop: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = settings.port

    def start(self) -> None:
        """Bind and serve in a background thread; raises BindError (port in use) and
        ConfigError (TLS files)."""
        from tornado.netutil import bind_sockets

        try:
            sockets = bind_sockets(self.settings.port, self.settings.host, reuse_port=False)
        except OSError as exc:
            raise BindError("dicomweb", self.settings.host, self.settings.port, exc) from None
        self.port = int(sockets[0].getsockname()[1])
        ssl_context = None
        if self.settings.tls is not None:
            from acqflow.daemon.dicom.scp import server_tls_context as tls_context

            try:
                ssl_context = tls_context(self.settings.tls)
            except OSError as exc:
                for sock in sockets:
                    sock.close()
                raise ConfigError(f"dicomweb.tls: {exc}") from None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sockets, ssl_context, ready),
                                        name="acqflow-stow-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        scheme = "https" if ssl_context else "http"
        LOG.info("STOW-RS receiver on %s://%s:%d%s/studies", scheme, self.settings.host, self.port,
                 self.settings.path)

    def _serve(self, sockets: list[Any], ssl_context: Any, ready: threading.Event) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop
        from tornado.web import Application

        asyncio.set_event_loop(asyncio.new_event_loop())
        self._loop = IOLoop.current()
        base = re.escape(self.settings.path)
        app = Application([(rf"{base}/studies(?:/([0-9.]+))?/?", _handler_class(), {"receiver": self})])
        # tornado's own limit (400 and the connection closed) only past ours (413); a single
        # HTTP chunk declared larger than that slack still meets tornado's first.
        self._server = HTTPServer(app, ssl_options=ssl_context,
                                  max_body_size=self.settings.max_request_bytes + (4 << 20),
                                  chunk_size=1 << 20,  # body pieces per hop to the pool (64 kB: more hops)
                                  idle_connection_timeout=self.settings.idle_seconds,
                                  body_timeout=self.settings.idle_seconds, xheaders=False)
        self._server.add_sockets(sockets)
        ready.set()
        self._loop.start()
        self._loop.close(all_fds=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end the event loop; requests in progress are cut off (their
        instances not yet answered are not acknowledged)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.add_callback(self._shutdown)
        thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _shutdown(self) -> None:
        self._server.stop()
        await asyncio.sleep(0)
        self._loop.stop()

    def client(self, authorization: str | None, certificate: Any, address: str) -> str | None:
        """The client's name, or None when it may not store."""
        name: str | None = address
        if self._tokens:
            header = authorization or ""
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            name = token_name(self._tokens, token)
        elif certificate:
            subject = dict(item[0] for item in certificate.get("subject", ()))
            name = str(subject.get("commonName", address))
        if name is None:
            return None
        if self.settings.allowed_clients and name not in self.settings.allowed_clients:
            return None
        return name


def _handler_class() -> type:
    from tornado.web import RequestHandler, stream_request_body

    @stream_request_body
    class Handler(RequestHandler):  # type: ignore[misc]
        receiver: StowReceiver

        def initialize(self, receiver: StowReceiver) -> None:
            self.receiver = receiver
            self.upload: StowUpload | None = None
            self.request_id = f"stow-{uuid.uuid4().hex}"
            self.opened = False
            self.received = 0

        async def prepare(self) -> None:
            if self.request.method != "POST":
                return
            receiver = self.receiver
            request = self.request
            certificate = request.get_ssl_certificate() if request.protocol == "https" else None
            client = receiver.client(request.headers.get("Authorization"), certificate,
                                     str(request.remote_ip))
            if client is None:
                self._refuse(401 if receiver._tokens else 403, "not allowed to store")
                return
            limit = receiver.settings.max_request_bytes
            if int(request.headers.get("Content-Length", "0") or 0) > limit:
                self._refuse(413, f"body larger than dicomweb.max_request_bytes ({limit})")
                return
            content_type = request.headers.get("Content-Type", "")
            boundary, part_type = _BOUNDARY.search(content_type), _TYPE.search(content_type)
            if not content_type.lower().startswith("multipart/related") or boundary is None or (
                    part_type is not None and part_type.group(1).lower() != "application/dicom"):
                self._refuse(415, 'expected multipart/related; type="application/dicom" with a boundary')
                return
            receiver.journal.open_association(self.request_id, client)
            self.opened = True
            self.upload = StowUpload(receiver, boundary.group(1).encode(), client, self.request_id,
                                     receiver.settings.max_instance_bytes)

        def _refuse(self, status: int, message: str) -> None:
            metrics.STOW_REQUESTS.labels(str(status)).inc()
            LOG.warning("STOW-RS from %s refused (%d): %s", self.request.remote_ip, status, message)
            self.set_status(status)
            self.finish({"error": message})

        async def data_received(self, chunk: bytes) -> None:
            if self.upload is None or self._finished:
                return
            self.received += len(chunk)
            limit = self.receiver.settings.max_request_bytes
            if self.received > limit:  # a chunked body that outgrew the limit
                self._reject_now(StowRejected(413, f"body larger than dicomweb.max_request_bytes ({limit})"))
                return
            try:
                await asyncio.get_running_loop().run_in_executor(self.receiver._pool, self.upload.feed, chunk)
            except StowRejected as rejected:
                self._reject_now(rejected)

        def _reject_now(self, rejected: StowRejected) -> None:
            """Answer before the body is over, and close the connection (the rest of the
            body is never read)."""
            if self.upload is not None:
                self.receiver._pool.submit(self.upload.abort)
            self._close_association("aborted")
            self._refuse(rejected.status, str(rejected))
            close = getattr(self.request.connection, "close", None)  # HTTP/1: the rest is never read
            if close is not None:
                close()

        async def post(self, study: str | None = None) -> None:
            upload = self.upload
            if upload is None or self._finished:
                return
            try:
                result = await asyncio.get_running_loop().run_in_executor(self.receiver._pool, upload.finish)
            except StowRejected as rejected:
                self._close_association("aborted")
                self._refuse(rejected.status, str(rejected))
                return
            self._close_association("released")
            metrics.STOW_REQUESTS.labels(str(result.status)).inc()
            self.set_status(result.status)
            self.set_header("Content-Type", "application/dicom+json")
            base = f"{self.request.protocol}://{self.request.host}{self.receiver.settings.path}"
            self.finish(_json(result.answer(f"{base}/studies" + (f"/{study}" if study else ""))))

        def on_connection_close(self) -> None:  # the client went away mid-request
            if self.upload is not None and self.opened:
                self.receiver._pool.submit(self.upload.abort)
                self._close_association("aborted")

        def _close_association(self, state: str) -> None:
            if not self.opened:
                return
            self.opened = False
            try:
                carried = self.receiver.journal.close_association(self.request_id, state)
                self.receiver.on_closed(carried)
            except Exception:  # the quiet timer still completes the series
                LOG.exception("STOW-RS request %s: closing its association failed", self.request_id)
                metrics.CALLBACK_ERRORS.labels("stow").inc()

    return Handler


def _json(answer: dict[str, Any]) -> str:
    import json

    return json.dumps(answer)
