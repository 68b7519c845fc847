"""The admin listener: liveness, readiness and metrics over HTTP (aiohttp).

    GET /healthz   200 "ok": the event loop answers (a liveness probe)
    GET /readyz    200 "ready" while the listeners are bound and the proxy is not
                   draining; 503 "draining" (or "not listening") otherwise
    GET /metrics   the Prometheus text exposition of `Metrics`

With workers (``workers: N``), the supervisor serves these endpoints for the pod (its
`Endpoints` ask every worker) and each worker serves its own on a private unix socket.

Rules: read-only, no secrets on any page (the configuration is not served); no access log
of its own (probes every few seconds would drown the tunnel lines); it runs on the proxy's
event loop, so /healthz answering proves that loop is not stuck.

Bounds: probes and scrapes ask one short question and go, so the admin port holds at
most `MAX_CONNECTIONS` connections (more are closed at accept), each for at most
`LIFETIME` seconds, with a request head of at most 32 lines of 4 KiB: ~4.5 MiB in all
for a client that opens every slot and trickles bytes, and a stuck slot comes back
within `LIFETIME`, so kubelet's next probe gets through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ipv4proxy.config import parse_hostport
from ipv4proxy.log import lifecycle
from ipv4proxy.metrics import CONTENT_TYPE
from ipv4proxy.server import Proxy

__all__ = ["Admin", "Endpoints"]

log = logging.getLogger("ipv4proxy")


def _ours(record: logging.LogRecord) -> bool:
    """Keep aiohttp's error lines for our handlers' faults; a malformed or oversized request
    is the client's, gets its 400, and must not cost a log line (a flood would be many)."""
    return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


_handler_log = logging.getLogger("ipv4proxy.admin")
_handler_log.addFilter(_ours)


class Endpoints(Protocol):
    """What the admin app answers from: one proxy's state, or the supervisor's."""

    async def not_ready(self) -> str | None:
        """None when ready, else the 503 body's reason ("draining", ...)."""

    async def page(self) -> bytes:
        """The Prometheus text exposition."""


class _OneProxy:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def not_ready(self) -> str | None:
        if self.proxy.ready:
            return None
        return "draining" if self.proxy.draining else "not listening"

    async def page(self) -> bytes:
        return self.proxy.metrics.render()


_SOURCE: web.AppKey[Endpoints] = web.AppKey("source", Endpoints)

# Kubelet's liveness, readiness and startup probes and a scraper or two ask at once, on a
# busy node a few more: 32 leaves room, and bounds what one client can hold here.
MAX_CONNECTIONS = 32
# A probe or scrape is over in milliseconds; a connection older than this is closed,
# answered or not (a scraper that keeps connections alive simply opens a new one). Checked
# every LIFETIME / 3, so a connection lives at most 4/3 of it.
LIFETIME = 30.0


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    reason = await request.app[_SOURCE].not_ready()
    if reason is None:
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"{reason}\n")


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[_SOURCE].page()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class Admin:
    """The admin app of one Proxy (or of other `Endpoints`) on ``listen`` (``HOST:PORT``),
    or on the unix socket ``unix`` (a worker's private endpoint) when it is given."""

    def __init__(self, source: Proxy | Endpoints, listen: str = "", *, unix: str = "") -> None:
        self.unix = unix
        self.host, self.port = ("", 0) if unix else parse_hostport(listen, key="admin.listen")
        app = web.Application()
        app[_SOURCE] = _OneProxy(source) if isinstance(source, Proxy) else source
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/metrics", _metrics)
        # Probes and scrapes ask and go: an idle connection is closed after 10 s, not after
        # aiohttp's default hour, so idle admin sockets cannot pile up.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=10.0,
            max_line_size=4096,
            max_field_size=4096,
            max_headers=32,
            logger=_handler_log,
        )
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound address. Raises OSError."""
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None  # set by setup()
        loop = asyncio.get_running_loop()
        if self.unix:
            self._server = await loop.create_unix_server(
                lambda: _Gate(handlers), self.unix, backlog=64
            )
        else:
            self._server = await loop.create_server(
                lambda: _Gate(handlers), self.host, self.port, backlog=64
            )
            self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._sweeper = loop.create_task(_sweep(handlers), name="admin-sweep")
        where = f"unix:{self.unix}" if self.unix else f"{self.host}:{self.port}"
        url = f"unix:{self.unix}" if self.unix else f"http://{where}"
        lifecycle(
            log,
            "admin_listening",
            f"admin endpoints on {url} (/healthz /readyz /metrics)",
            address=where,
        )
        return self.host, self.port

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()


class _Gate(asyncio.Protocol):
    """Each accepted admin connection: closed at once when `MAX_CONNECTIONS` are open (the
    count is exact here: aiohttp registers a handler in its own connection_made), else
    handed to aiohttp's handler before any byte is read."""

    def __init__(self, handlers: web.Server) -> None:
        self._handlers = handlers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._handlers.connections) >= MAX_CONNECTIONS:
            transport.close()
            return
        handler = self._handlers()
        transport.set_protocol(handler)
        handler.connection_made(transport)


async def _sweep(handlers: web.Server) -> None:
    """Close every admin connection older than `LIFETIME` (seen open at two sweeps that far
    apart), answered or not."""
    loop = asyncio.get_running_loop()
    first_seen: dict[object, float] = {}
    while True:
        await asyncio.sleep(LIFETIME / 3)
        now = loop.time()
        first_seen = {handler: first_seen.get(handler, now) for handler in handlers.connections}
        for handler in handlers.connections:
            if now - first_seen[handler] >= LIFETIME:
                handler.force_close()
