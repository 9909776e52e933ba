"""Devices and channels: ``GET /devices``, ``GET /devices/{id}``, ``GET /devices/{id}/channels``,
``GET /channels``.

A device is every ID that registered (the registrar) or has an account (the directory), so an
NVR handed its credentials but never come shows up offline. Lists page with ``offset``/``limit``
and search ``q`` on the ID or the name, server side; see :mod:`gateway.api._views` for why
a page costs O(devices) at most, never O(channels).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.api._views import Views, is_on
from gateway.api.auth import Principal, viewer
from gateway.api.context import ApiContext, Limit, Offset, ctx_of
from gateway.api.errors import ApiError
from gateway.manscdp import CatalogItem

router = APIRouter(tags=["devices"])

Search = Annotated[str, Query(max_length=64)]


def device_item(ctx: ApiContext, views: Views, device_id: str) -> dict[str, Any]:
    dev = views.device(device_id)
    unit = ctx.directory.unit_of(device_id)
    total, online = views.counts(device_id)
    return {
        "id": device_id,
        "name": views.device_name(device_id),
        "unit": {"id": unit.id, "name": unit.name} if unit is not None else None,
        "online": bool(dev is not None and dev.online),
        "host": dev.host if dev is not None else "",
        "port": dev.port if dev is not None else 0,
        "transport": dev.transport if dev is not None else "",
        "charset": dev.charset if dev is not None else "",
        "manufacturer": dev.manufacturer if dev is not None else "",
        "model": dev.model if dev is not None else "",
        "firmware": dev.firmware if dev is not None else "",
        "last_keepalive": (dev.last_seen or None) if dev is not None else None,
        "registered_at": (dev.registered_at or None) if dev is not None else None,
        "expires_at": (dev.expires_at or None) if dev is not None else None,
        "channels": {"total": total, "online": online},
    }


def channel_item(owner: str, item: CatalogItem) -> dict[str, Any]:
    return {
        "id": item.device_id,
        "device_id": owner,
        "name": item.name or "",
        "online": is_on(item),
        "status": item.status,
        "parent_id": item.parent_id,
        "manufacturer": item.manufacturer,
        "model": item.model,
        "ptz_type": item.info.ptz_type if item.info is not None else None,
        "address": item.address,
        "longitude": item.longitude,
        "latitude": item.latitude,
    }


def known_device(ctx: ApiContext, views: Views, device_id: str) -> None:
    if not views.known(device_id) and device_id not in ctx.catalog.owners():
        raise ApiError(404, f"no device {device_id[:40]}", None)


@router.get("/devices")
async def list_devices(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    q: Search = "",
    unit: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    if unit is not None:
        if unit != "_unassigned" and unit not in ctx.directory.units:
            raise ApiError(404, f"no unit {unit}", "unit")
        ids = views.unit_devices(unit)
    else:
        ids = views.device_ids()
    if online is not None:
        ids = [d for d in ids if views.online(d) == online]
    if q:
        needle = q.lower()
        ids = [d for d in ids if needle in d or needle in views.device_name(d).lower()]
    page = ids[offset : offset + limit]
    return {"total": len(ids), "items": [device_item(ctx, views, d) for d in page]}


@router.get("/devices/{device_id}")
async def get_device(
    device_id: str, request: Request, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    known_device(ctx, views, device_id)
    body = device_item(ctx, views, device_id)
    dev = views.device(device_id)
    acc = ctx.directory.accounts.get(device_id)
    body.update(
        user_agent=dev.user_agent if dev is not None else "",
        gb_version=dev.gb_version if dev is not None else "",
        contact=dev.contact if dev is not None else "",
        synced_at=(dev.synced_at or None) if dev is not None else None,
        reported_channels=dev.channel_count if dev is not None else 0,
        quirks=ctx.quirks.of(device_id),
        account={"enabled": acc.enabled} if acc is not None else None,
    )
    return body


@router.get("/devices/{device_id}/channels")
async def device_channels(
    device_id: str,
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    q: Search = "",
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    known_device(ctx, views, device_id)
    owners = [device_id] if device_id in ctx.catalog.owners() else []
    total, page = views.all_channels(owners, q, offset, limit)
    return {"total": total, "items": [channel_item(o, c) for o, c in page]}


@router.get("/channels")
async def list_channels(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    q: Search = "",
    device: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    if device is not None:
        owners = [device] if device in ctx.catalog.owners() else []
    else:
        owners = views.owners()
    total, page = views.all_channels(owners, q, offset, limit)
    return {"total": total, "items": [channel_item(o, c) for o, c in page]}
