"""The HTTP side (floor 5): the REST API under ``/api/v1``, the console, health and metrics.

``ApiServer`` is built by the composition root with an :class:`ApiContext` (the parts it may
use) and started after the SIP endpoint. Authentication and roles are in ``auth.py``, the audit
log in ``audit.py``, the error shape in ``errors.py``; each router module serves one area.
"""

from __future__ import annotations

from gateway.api._logbridge import route_uvicorn_logs
from gateway.api._prom import LoopLag, make_registry
from gateway.api.auth import Authenticator, Principal, hash_password
from gateway.api.context import ApiContext
from gateway.api.factory import build_app
from gateway.api.server import HttpServer
from gateway.api.stats import sampler_of


class ApiServer:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        http = ctx.config.http
        self.auth = Authenticator(http, ctx.store, ctx.metrics, ctx.clock)
        ctx.extras["auth"] = self.auth
        # The event-loop lag monitor (read by /metrics and /readyz) and this server's own
        # Prometheus registry: nothing shared between two gateways in one process.
        self.lag = LoopLag(ctx.metrics)
        ctx.extras["lag"] = self.lag
        ctx.extras["prometheus"] = make_registry(ctx, self.lag)
        self.app = build_app(ctx)
        self.stats = sampler_of(ctx)
        self.server = HttpServer(self.app, http.host, http.port)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        self.auth.load()
        route_uvicorn_logs()
        self.lag.start()
        await self.server.start()
        self.stats.start()

    async def close(self) -> None:
        await self.stats.close()
        await self.server.close()
        await self.lag.close()


__all__ = [
    "ApiContext",
    "ApiServer",
    "Authenticator",
    "HttpServer",
    "Principal",
    "build_app",
    "hash_password",
]
