"""The web console ([web] enabled): a Starlette app with Jinja2 templates, served by uvicorn
in a thread of the daemon.

Views: the plates (per experiment: the plate map, each well coloured by its latest
efficiency with its forecast and call; a well's time course and its overlays), the
studies (processed CT/MR series, pseudonymised, structures and review flags, exports),
operations (pipelines, jobs, outbox; retry buttons with ``allow_actions``). Pages load
nothing from the network but the console itself; the plate polls ``/api/plates/<name>``
every ``refresh_seconds`` and recolours its wells without a reload.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from acqflow.daemon.config import Settings
from acqflow.daemon.errors import BindError, ConfigError
from acqflow.daemon.fileio import read_tokens, token_name
from acqflow.daemon.journal import Journal
from acqflow.daemon.router import Router

__all__ = ["WebConsole", "create_app"]

LOG = logging.getLogger(__name__)
TEMPLATES = Path(__file__).with_name("templates")
COOKIE = "acqflow_console"


def create_app(settings: Settings, journal: Journal, router: Router | None = None) -> Any:
    """The ASGI app; ``router`` (the daemon's) decides the pipelines a reprocess queues.
    Raises ConfigError when the tokens file cannot be read."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from acqflow.daemon.web import data

    web = settings.web
    tokens = read_tokens(web.tokens_file, "web.tokens_file") if web.tokens_file is not None else {}
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["percent"] = lambda v: "-" if v is None else f"{100 * float(v):.1f}%"
    env.filters["when"] = lambda t: "-" if not t else f"{datetime.fromtimestamp(float(t)):%Y-%m-%d %H:%M}"
    env.globals["row_letter"] = _row_letter

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = env.get_template(name).render(request=request, allow_actions=web.allow_actions,
                                             refresh=web.refresh_seconds, **context)
        return HTMLResponse(page, status_code=status)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return render(request, "error.html", 404, message=f"no {what}")

    async def index(request: Request) -> Response:
        return render(request, "index.html", experiments=data.experiments(journal))

    async def plate_page(request: Request) -> Response:
        name = request.path_params["experiment"]
        plate = data.plate(journal, settings, name)
        return not_found(request, f"experiment {name!r}") if plate is None else render(
            request, "plate.html", plate=plate)

    async def plate_json(request: Request) -> Response:
        plate = data.plate(journal, settings, request.path_params["experiment"])
        if plate is None:
            return JSONResponse({"error": "no such experiment"}, 404)
        return JSONResponse(plate.as_json())

    async def well_page(request: Request) -> Response:
        experiment, name = request.path_params["experiment"], request.path_params["well"]
        detail = data.well(journal, settings, experiment, name)
        return not_found(request, f"well {name!r} in {experiment!r}") if detail is None else render(
            request, "well.html", detail=detail, chart=_chart(detail.points))

    async def studies_page(request: Request) -> Response:
        return render(request, "studies.html", studies=data.studies(journal))

    async def ops_page(request: Request) -> Response:
        return render(request, "ops.html", ops=data.operations(journal, settings))

    async def retry(request: Request) -> Response:
        if not web.allow_actions:
            return JSONResponse({"error": "actions are off ([web] allow_actions)"}, 403)
        from acqflow.daemon.jobqueue import JobQueue

        job_id = request.path_params["job"]
        if not JobQueue(journal).retry(job_id):
            return JSONResponse({"error": f"job {job_id} is not dead"}, 409)
        LOG.info("web console: job %d queued again", job_id)
        return RedirectResponse("/ops", status_code=303)

    async def reprocess(request: Request) -> Response:
        if not web.allow_actions or router is None:
            return JSONResponse({"error": "actions are off ([web] allow_actions)"}, 403)
        from acqflow.daemon.jobqueue import JobQueue

        arrival_id = request.path_params["arrival"]
        rows = journal.query("SELECT id FROM arrivals WHERE id=?", (arrival_id,))
        if not rows:
            return JSONResponse({"error": f"no input {arrival_id}"}, 404)
        arrival = journal.arrival(arrival_id)
        decisions = router.decide(arrival)
        if not decisions:
            return JSONResponse({"error": "no route matches this input"}, 409)
        queue = JobQueue(journal)
        jobs = [queue.add_job(arrival.id, decision) for decision in decisions]
        LOG.info("web console: input %d queued again (jobs %s)", arrival.id, jobs)
        return RedirectResponse("/studies", status_code=303)

    async def file(request: Request) -> Response:
        path = data.output_file(journal, settings, request.path_params["output"])
        return JSONResponse({"error": "no such file"}, 404) if path is None else FileResponse(path)

    async def authenticate(request: Request, call_next: Any) -> Response:
        if not tokens:
            response: Response = await call_next(request)
            return response
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or \
            request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token_name(tokens, given) is None:
            return JSONResponse({"error": "a token is required ([web] tokens_file)"}, 401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response

    return Starlette(routes=[
        Route("/", index), Route("/plates/{experiment}", plate_page),
        Route("/plates/{experiment}/wells/{well}", well_page),
        Route("/api/plates/{experiment}", plate_json), Route("/studies", studies_page),
        Route("/ops", ops_page), Route("/ops/retry/{job:int}", retry, methods=["POST"]),
        Route("/studies/reprocess/{arrival:int}", reprocess, methods=["POST"]),
        Route("/files/{output:int}", file),
    ], middleware=[Middleware(BaseHTTPMiddleware, dispatch=authenticate)])


def _row_letter(row: int) -> str:
    """A, B, … Z, AA, AB, … (1536-well plates)."""
    return chr(64 + row) if row <= 26 else chr(64 + (row - 1) // 26) + chr(65 + (row - 1) % 26)


def _chart(points: list[dict[str, Any]], width: int = 640, height: int = 240) -> dict[str, Any]:
    """SVG coordinates of a well's time course and its forecast band (server-side: the page
    loads no plotting library)."""
    xs = [p.get("elapsed_h") if p.get("elapsed_h") is not None else p.get("timepoint") for p in points]
    pairs = [(float(x), float(p["efficiency"])) for x, p in zip(xs, points, strict=True)
             if x is not None and p.get("efficiency") is not None]
    if not pairs:
        return {"line": "", "band": "", "dots": [], "width": width, "height": height, "xmax": 0}
    xmax = max(x for x, _ in pairs) or 1.0
    pad = 30

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * x / xmax, height - pad - (height - 2 * pad) * max(0.0, min(1.0, y))

    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in (at(x, y) for x, y in pairs))
    band = ""
    last = points[-1]
    if last.get("forecast_low") is not None and last.get("forecast_high") is not None:
        x0, _ = at(pairs[-1][0], 0)
        _, top = at(0, float(last["forecast_high"]))
        _, bottom = at(0, float(last["forecast_low"]))
        band = " ".join(f"{x:.1f},{y:.1f}" for x, y in ((x0 - 6, top), (x0 + 6, top), (x0 + 6, bottom),
                                                         (x0 - 6, bottom)))
    return {"line": line, "band": band, "dots": [at(x, y) for x, y in pairs], "width": width,
            "height": height, "xmax": xmax,
            "unit": "h" if points[0].get("elapsed_h") is not None else "time point"}


class WebConsole:
    """uvicorn serving :func:`create_app` on ``[web] host:port`` in a background thread."""

    def __init__(self, settings: Settings, journal: Journal, router: Router | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings, journal, router)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = settings.web.port

    def start(self) -> None:
        """Bind and serve; raises BindError when the port is taken."""
        import socket

        import uvicorn

        web = self.settings.web
        family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((web.host, web.port))
        except OSError as exc:
            sock.close()
            raise BindError("web", web.host, web.port, exc) from None
        self.port = int(sock.getsockname()[1])
        tls: dict[str, Any] = {}
        if web.tls is not None:
            import ssl

            tls = {"ssl_certfile": str(web.tls.certificate), "ssl_keyfile": str(web.tls.private_key),
                   "ssl_ca_certs": str(web.tls.ca_certificates) if web.tls.ca_certificates else None,
                   "ssl_cert_reqs": (ssl.CERT_REQUIRED if web.tls.require_client_certificate
                                     else ssl.CERT_NONE)}
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", **tls)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="acqflow-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise ConfigError(f"web: the console did not start on {web.host}:{self.port}")
        LOG.info("web console on %s://%s:%d/", "https" if web.tls else "http", web.host, self.port)

    def _serve(self, sock: Any) -> None:
        asyncio.run(self._server.serve(sockets=[sock]))

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
