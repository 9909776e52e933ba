"""``/healthz`` (the process answers) and ``/readyz`` (store, SIP, uppers, event-loop lag, and
in a cluster the node's view of it).

``/readyz`` is 503 while the store does not answer, SIP is not listening, or the event loop
was last seen more than :data:`MAX_LAG` seconds late (everything the gateway does waits behind
it). The uppers' states are reported but do not make the gateway unready: an upper that is
down is not fixed by restarting the gateway or sending its devices elsewhere.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])

MAX_LAG = 5.0
"""Seconds of event-loop lag past which the gateway says it is not ready."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    sip = ctx.endpoint.port > 0
    store_ok = ctx.store.healthy()
    uplink = ctx.uplink
    uppers: list[dict[str, Any]] = [
        {"id": uid, "state": uplink.state_of(uid)} for uid in list(uplink.platforms)
    ]
    lag_monitor = ctx.extras.get("lag")
    lag = lag_monitor.last if lag_monitor is not None else 0.0
    lag_ok = lag <= MAX_LAG
    ready = sip and store_ok and lag_ok
    body: dict[str, Any] = {
        "ready": ready,
        "sip": sip,
        "store": store_ok,
        "uppers": uppers,
        "loop_lag_seconds": round(lag, 4),
    }
    if not store_ok:
        trouble = getattr(ctx.store, "trouble", None)  # the Redis store says what is wrong
        detail = trouble() if trouble is not None else ""
        body["message"] = f"store: {detail or 'writes are failing'}"
    cluster_state = ctx.extras.get("cluster")
    if cluster_state is not None and (state := cluster_state()) is not None:
        # In a cluster: this node, whether Redis and the node-to-node bus answer, the nodes
        # alive and the uppers this node acts for. Redis down also shows as ``store``.
        body["cluster"] = state
    return JSONResponse(body, status_code=200 if ready else 503)
