"""``/healthz`` (the process answers) and ``/readyz`` (store, SIP, uppers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    sip = ctx.endpoint.port > 0
    store_ok = ctx.store.healthy()
    uppers: list[dict[str, Any]] = [
        {"id": uid, "state": "registered" if s.link.online else "offline"}
        for uid, s in ctx.uplink.sessions.items()
    ]
    ready = sip and store_ok
    body = {"ready": ready, "sip": sip, "store": store_ok, "uppers": uppers}
    return JSONResponse(body, status_code=200 if ready else 503)
