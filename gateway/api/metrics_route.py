"""``GET /metrics``: Prometheus text (``gateway/api/_prom.py`` says what is in it).

Served without a token by default so Prometheus can scrape it; ``[http] metrics_public =
false`` asks for a viewer token (``Authorization: Bearer``). The registry is the API server's
own (``ctx.extras["prometheus"]``), read afresh on every scrape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.auth import viewer

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    ctx = request.app.state.ctx
    if not ctx.config.http.metrics_public:
        await viewer(request)
    registry, collector = ctx.extras["prometheus"]
    await collector.refresh()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
