"""Media sessions: ``GET /sessions``, ``POST /sessions``, ``DELETE /sessions/{id}``.

A session is a leg of the :class:`~gateway.media.SessionTable` (the gateway's INVITE to a
device, or to an upper for broadcast audio) with its outputs (uppers' sessions, broadcast audio
to a device, local sessions). The figures come from the relay: bytes and packets in, bitrate,
packets lost (RFC 3550 §6.4.1) and when the last key frame came (UNIX seconds). ``GET`` is paged
like every list (``offset``, ``limit`` at most 500, ``total``), oldest first; the page's figures
are asked of the relay all at once, each within :data:`STATS_TIMEOUT` (a session whose figures
do not come in time is listed with zeros).

``POST`` starts a live session of a channel sent to a given RTP address: the live leg of the
channel is shared when one runs (one INVITE per source stream), else the device is INVITEd,
exactly as for an upper (:meth:`gateway.uplink.Calls.start_local`). ``transport`` ``tcp`` means
the gateway connects to ``host:port`` (RFC 4571 framing). The answer is the session with ``id``
the local output's ID (``o…``); ``DELETE`` with it stops that output (the leg ends with its
last output). ``DELETE`` with a leg's ID (``s…``) ends the whole session and BYEs everyone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Principal, operator, viewer
from gateway.api.context import ApiContext, Limit, Offset, ctx_of
from gateway.api.errors import ApiError
from gateway.media import Leg, MediaError, RelayError, StreamStats, Transport, is_ready

router = APIRouter(tags=["sessions"])
STATS_TIMEOUT = 2.0  # seconds the relay has to give a session's figures


class NewSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel_id: str = Field(min_length=1, max_length=64)
    host: str = Field(min_length=1, max_length=64)
    port: int = Field(ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"


async def _stats(ctx: ApiContext, key: str) -> StreamStats | None:
    try:
        return await asyncio.wait_for(ctx.media.relay.stats(key), STATS_TIMEOUT)
    except (RelayError, OSError, TimeoutError):
        return None


async def session_item(ctx: ApiContext, leg: Leg[Any]) -> dict[str, Any]:
    return _item(ctx, leg, await _stats(ctx, leg.key))


def _item(ctx: ApiContext, leg: Leg[Any], st: StreamStats | None) -> dict[str, Any]:
    """The description of a leg with the relay's figures ``st`` (None: not known)."""
    bytes_in = packets_lost = 0
    bitrate = 0.0
    last_key: float | None = None
    if st is not None:
        bytes_in = st.input.bytes
        packets_lost = st.input.lost
        bitrate = st.input.bitrate
        if st.input.last_keyframe_at is not None:
            # The relay keeps monotonic times; shown as UNIX seconds.
            last_key = round(time.time() - (time.monotonic() - st.input.last_keyframe_at), 3)
    answer = leg.answer
    local = ctx.media.local
    return {
        "id": leg.key,
        "kind": leg.kind,
        "channel_id": leg.source_id,
        "device_id": leg.device_id,
        "upper_id": leg.upper_id,
        "transport": leg.transport,
        "ready": is_ready(leg),
        "device_leg": {
            "host": answer.host if answer is not None else None,
            "port": answer.port if answer is not None else None,
            "transport": leg.transport,
            "ssrc": leg.ssrc,
            "local_port": leg.port,
        },
        "outputs": [
            {
                "id": o.output_id,
                "host": o.remote[0] if o.remote is not None else None,
                "port": o.remote[1] if o.remote is not None else None,
                "transport": o.transport,
                "ssrc": o.ssrc,
                "upper_id": o.upper_id,
                "device_id": o.device_id,
                "local": o.output_id in local,
            }
            for o in leg.outputs.values()
        ],
        "bytes": bytes_in,
        "bitrate_bps": round(bitrate),
        "packets_lost": packets_lost,
        "last_key_frame": last_key,
        "started_at": leg.started_at,
    }


@router.get("/sessions")
async def list_sessions(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    legs = sorted(ctx.media.legs.values(), key=lambda x: x.started_at)
    page = legs[offset : offset + limit]
    stats = await asyncio.gather(*(_stats(ctx, leg.key) for leg in page))
    items = [_item(ctx, leg, st) for leg, st in zip(page, stats, strict=True)]
    return {"total": len(legs), "items": items}


@router.post("/sessions", status_code=201)
async def start_session(
    body: NewSession, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    try:
        ipaddress.ip_address(body.host)
    except ValueError:
        raise ApiError(422, "host: must be an IP address", "host") from None
    request.state.audit_detail = f"{body.channel_id} -> {body.transport}:{body.host}:{body.port}"
    dev = ctx.downlink.device(body.channel_id)
    if dev is None:
        raise ApiError(404, f"no channel {body.channel_id}", "channel_id")
    if not dev.online:
        raise ApiError(409, f"device {dev.device_id} is offline", "channel_id")
    transport: Transport = "udp" if body.transport == "udp" else "tcp-active"
    try:
        local = await ctx.calls.start_local(
            body.channel_id, (body.host, body.port), transport=transport
        )
    except MediaError as exc:
        status = {404: 404, 480: 409, 488: 422, 408: 504}.get(exc.status, 502)
        if exc.status == 486:
            status = 503
        field = "host" if exc.status == 488 else "channel_id"
        raise ApiError(status, f"the session could not start: {exc.reason}", field) from None
    out = ctx.media.local.get(local.output_id)
    if out is None:  # ended at once (the stream died while starting)
        raise ApiError(502, "the session ended while starting", "channel_id")
    item = await session_item(ctx, out.leg)
    item["session_id"] = item["id"]
    item["id"] = local.output_id
    return item


@router.delete("/sessions/{session_id}", status_code=204)
async def end_session(
    session_id: str, request: Request, who: Annotated[Principal, Depends(operator)]
) -> Response:
    ctx = ctx_of(request)
    if ctx.calls.stop_local(session_id):
        return Response(status_code=204)
    leg = ctx.media.legs.get(session_id)
    if leg is None:
        raise ApiError(404, f"no session {session_id[:40]}", None)
    ctx.media.end_leg(leg, "ended through the API")
    return Response(status_code=204)
