"""Alarms the devices reported: ``GET /alarms?device&offset&limit``, newest first.

Read from the store (GB/T 28181-2022 §9.4 alarms are kept there as they come). At most
:data:`SCAN` of the newest alarms are looked at per request, so a filter by device over a
long history stays bounded; ``total`` counts within them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.api.auth import Principal, viewer
from gateway.api.context import Limit, Offset, ctx_of
from gateway.model import Alarm

router = APIRouter(tags=["alarms"])

SCAN = 10_000


def alarm_item(a: Alarm) -> dict[str, Any]:
    return {
        "id": a.id,
        "device_id": a.device_id,
        "channel_id": a.channel_id,
        "priority": a.priority,
        "method": a.method,
        "type": a.alarm_type,
        "event_type": a.event_type,
        "time": a.time,
        "description": a.description,
        "longitude": a.longitude,
        "latitude": a.latitude,
        "received_at": a.received_at,
    }


@router.get("/alarms")
async def list_alarms(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    device: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    alarms = ctx.store.load_alarms(limit=SCAN)
    if device is not None:
        alarms = [a for a in alarms if a.device_id == device or a.channel_id == device]
    page = alarms[offset : offset + limit]
    return {"total": len(alarms), "items": [alarm_item(a) for a in page]}
