"""The dashboard's aiohttp routes, on the same app as Socket.IO: the page, its read-only event stream, past
sessions, the session's files, and ``/metrics``.

Every route is GET: nothing here reaches the round loop, which the dashboard sees only through ``LiveSession``
(a read-only observer). Live updates are server-sent events (``/dashboard/events``): each client gets the
latest snapshot when it changed, at most every ``PUSH_INTERVAL_S``; a slow client skips versions instead of
queueing them, a client that does not read for ``WRITE_TIMEOUT_S`` is disconnected, and at most
``MAX_STREAMS`` streams are open (others get 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path

from aiohttp import web

from common.ratelog import RateLimitedLog
from fl_server.dashboard.access import presented_token, refusal
from fl_server.dashboard.runs import PastRuns
from fl_server.dashboard.state import LiveSession
from fl_server.metrics import CONTENT_TYPE_LATEST, ServerMetrics

logger = logging.getLogger(__name__)

MAX_STREAMS = 32
PUSH_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0
WRITE_TIMEOUT_S = 10.0
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_text(name: str) -> bytes:
    return resources.files("fl_server.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """The routes; ``files`` maps ``history``/``model`` to the session's files once they exist."""

    def __init__(self, live: LiveSession, metrics: ServerMetrics, *, listen_host: str, token: str | None,
                 history_dir: Path, files: Callable[[], dict[str, Path | None]] | None = None) -> None:
        self.live = live
        self.metrics = metrics
        self.listen_host = listen_host
        self._token = token
        self.runs = PastRuns(history_dir)
        self._files = files or (lambda: {})
        self._wakers: set[asyncio.Event] = set()
        self._closing = False
        self._static = {name: static_text(name) for name in STATIC_FILES}
        self._frame: tuple[int, bytes] = (-1, b"")
        self._log = RateLimitedLog(logger)
        self.refused_by_reason: dict[str, int] = {}
        live.listeners.append(self._wake)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._redirect)
        app.router.add_get("/dashboard", self._redirect)
        app.router.add_get("/dashboard/", self._page)
        app.router.add_get("/dashboard/static/{name}", self._asset)
        app.router.add_get("/dashboard/api/state", self._guarded(self._state))
        app.router.add_get("/dashboard/api/runs", self._guarded(self._runs))
        app.router.add_get("/dashboard/api/runs/{name}", self._guarded(self._run))
        app.router.add_get("/dashboard/files/{what}", self._guarded(self._file))
        app.router.add_get("/dashboard/events", self._guarded(self._events))
        app.router.add_get("/metrics", self._guarded(self._metrics))
        app.on_shutdown.append(self._close_streams)

    # ------------------------------------------------------------ access

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            reason = refusal(listen_host=self.listen_host, peer=request.remote, token=self._token,
                             presented=presented_token(request.headers.get("Authorization"),
                                                       request.query.get("token")))
            if reason is not None:
                self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
                self._log.warning(f"dashboard:{reason}", "refused a dashboard request for %s from %s (%s)",
                                  request.path, request.remote, reason)
                hint = ("set --dashboard-token on the server and present it (Authorization: Bearer, or ?token=)"
                        if self._token is None else "present the server's --dashboard-token")
                if self._token is None:
                    return web.json_response({"error": reason, "hint": hint}, status=403)
                return web.json_response({"error": reason, "hint": hint}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="fl-server"'})
            return await handler(request)

        return guarded

    # ------------------------------------------------------------ pages

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/dashboard/")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._static_response("index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES or name == "index.html":
            raise web.HTTPNotFound()
        return self._static_response(name)

    def _static_response(self, name: str) -> web.Response:
        return web.Response(body=self._static[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer",  # links may carry ?token=
                                     "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                     "style-src 'self'; script-src 'self'; connect-src 'self'"})

    # ------------------------------------------------------------ data

    async def _state(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.live.snapshot(), headers={"Cache-Control": "no-store"})

    async def _runs(self, request: web.Request) -> web.StreamResponse:
        rows = await asyncio.get_running_loop().run_in_executor(None, self.runs.listing)
        own = f"{self.live.session_id}.json"
        rows = [row for row in rows if row["name"] != own]  # this session is the live one, not a past one
        return web.json_response({"runs": rows}, headers={"Cache-Control": "no-store"})

    async def _run(self, request: web.Request) -> web.StreamResponse:
        curve = await asyncio.get_running_loop().run_in_executor(None, self.runs.curve, request.match_info["name"])
        if curve is None:
            return web.json_response({"error": "no usable history file of that name"}, status=404)
        return web.json_response(curve, headers={"Cache-Control": "no-store"})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        what = request.match_info["what"]
        path = self._files().get(what)
        if what not in ("history", "model") or path is None or not path.is_file():
            return web.json_response({"error": f"no {what} file (yet)"}, status=404)
        kind = "application/json" if what == "history" else "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-store",
                                               "Content-Disposition": f'attachment; filename="{path.name}"'})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------ the event stream

    def _wake(self) -> None:
        for waker in self._wakers:
            waker.set()

    def _current_frame(self) -> tuple[int, bytes]:
        """The latest snapshot as one SSE frame, built once per version and shared by every client."""
        version = self.live.version
        if self._frame[0] != version:
            data = json.dumps(self.live.snapshot(), separators=(",", ":"), allow_nan=False)
            self._frame = (version, f"event: state\nid: {version}\ndata: {data}\n\n".encode())
        return self._frame

    @property
    def token_configured(self) -> bool:
        return bool(self._token)

    @property
    def streams(self) -> int:
        return len(self._wakers)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._wakers) >= MAX_STREAMS or self._closing:
            return web.json_response({"error": "too many dashboard streams"}, status=503,
                                     headers={"Retry-After": "10"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        waker = asyncio.Event()
        self._wakers.add(waker)
        sent = -1
        try:
            await asyncio.wait_for(response.write(b"retry: 2000\n\n"), WRITE_TIMEOUT_S)
            while not self._closing:
                version, frame = self._current_frame()
                if version != sent:
                    await asyncio.wait_for(response.write(frame), WRITE_TIMEOUT_S)
                    sent = version
                try:
                    await asyncio.wait_for(waker.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await asyncio.wait_for(response.write(b": keep-alive\n\n"), WRITE_TIMEOUT_S)
                waker.clear()
                await asyncio.sleep(PUSH_INTERVAL_S)  # a burst of changes goes out as one frame
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("dashboard stream from %s closed: %r", request.remote, exc)
        finally:
            self._wakers.discard(waker)
        return response

    async def _close_streams(self, app: web.Application) -> None:
        self._closing = True
        self._wake()


def dashboard_url(host: str, port: int, tls: bool) -> str:
    """Where a browser on this machine finds the dashboard."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}/dashboard/"


class ConnectionsPoller:
    """Keeps the dashboard's node list and refusal counts in step with the frontend: wakes on every connect or
    disconnect (``wait_changed``), and at least every ``POLL_S`` for the refusal counters."""

    POLL_S = 1.0

    def __init__(self, live: LiveSession, *, nodes: Callable[[], list[str]],
                 refused: Callable[[], Mapping[str, int]],
                 wait_changed: Callable[[float], Awaitable[None]]) -> None:
        self.live, self._nodes, self._refused, self._wait_changed = live, nodes, refused, wait_changed
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: web.Application | None = None) -> None:
        self.poll()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def poll(self) -> None:
        self.live.set_connected(self._nodes(), self._refused())

    async def _run(self) -> None:
        while True:
            await self._wait_changed(self.POLL_S)
            self.poll()

    async def stop(self, app: web.Application | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add_to(self, app: web.Application) -> None:
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
