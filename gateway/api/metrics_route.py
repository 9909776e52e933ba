"""``GET /metrics``: Prometheus text (``gateway/api/_prom.py`` says what is in it).

Served without a token by default so Prometheus can scrape it; ``[http] metrics_public =
false`` asks for a viewer token (``Authorization: Bearer``). The registry is the API server's
own (``ctx.extras["prometheus"]``). A rendering is reused for ``http.metrics_min_interval``
seconds and shared by scrapes that arrive while it is made, so however often /metrics is
asked, the gateway renders it at most once per interval.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.auth import viewer

router = APIRouter(tags=["metrics"])


@dataclass
class _Rendered:
    at: float = -1.0e18
    text: bytes = b""
    making: asyncio.Future[bytes] | None = field(default=None)


async def _render(ctx: Any) -> bytes:
    registry, collector = ctx.extras["prometheus"]
    await collector.refresh()
    return bytes(generate_latest(registry))


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    ctx = request.app.state.ctx
    if not ctx.config.http.metrics_public:
        await viewer(request)
    last: _Rendered = ctx.extras.setdefault("metrics_rendered", _Rendered())
    loop = asyncio.get_running_loop()
    if last.making is not None:
        text = await asyncio.shield(last.making)
    elif loop.time() - last.at < ctx.config.http.metrics_min_interval:
        ctx.metrics.inc("api.metrics.reused")
        text = last.text
    else:
        last.making = asyncio.ensure_future(_render(ctx))
        try:
            text = await asyncio.shield(last.making)
            last.text, last.at = text, loop.time()
        finally:
            last.making = None
    return Response(text, media_type=CONTENT_TYPE_LATEST)
