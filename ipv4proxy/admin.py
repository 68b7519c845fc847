"""The admin listener: liveness, readiness and metrics over HTTP (aiohttp).

    GET /healthz   200 "ok": the event loop answers (a liveness probe)
    GET /readyz    200 "ready" while the listeners are bound and the proxy is not
                   draining; 503 "draining" (or "not listening") otherwise
    GET /metrics   the Prometheus text exposition of `Metrics`

Rules: read-only, no secrets on any page (the configuration is not served); no access log
of its own (probes every few seconds would drown the tunnel lines); it runs on the proxy's
event loop, so /healthz answering proves that loop is not stuck.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ipv4proxy.config import parse_hostport
from ipv4proxy.log import lifecycle
from ipv4proxy.metrics import CONTENT_TYPE
from ipv4proxy.server import Proxy

__all__ = ["Admin"]

log = logging.getLogger("ipv4proxy")

_PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    proxy = request.app[_PROXY]
    if proxy.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="draining\n" if proxy.draining else "not listening\n")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_PROXY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class Admin:
    """The admin app of one Proxy on ``listen`` (``HOST:PORT``)."""

    def __init__(self, proxy: Proxy, listen: str) -> None:
        self.host, self.port = parse_hostport(listen, key="admin.listen")
        app = web.Application()
        app[_PROXY] = proxy
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/metrics", _metrics)
        # Probes and scrapes ask and go: an idle connection is closed after 10 s, not after
        # aiohttp's default hour, so idle admin sockets cannot pile up.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=10.0
        )

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound address. Raises OSError."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=64)
        await site.start()
        for address in self._runner.addresses:
            self.host, self.port = address[0], address[1]
        url = f"http://{self.host}:{self.port}"
        lifecycle(
            log,
            "admin_listening",
            f"admin endpoints on {url} (/healthz /readyz /metrics)",
            address=f"{self.host}:{self.port}",
        )
        return self.host, self.port

    async def close(self) -> None:
        await self._runner.cleanup()
