"""Commands to a device or channel (operator): PTZ, presets, record search, DeviceInfo,
DeviceStatus, catalog re-sync, TeleBoot.

They go out through the downlink (GB/T 28181-2022 §9.3 control, §9.5 queries; reference §3,
§4): the PTZCmd is built by :mod:`gateway.manscdp.ptz` (Appendix A.3). A device that is offline
is answered 409, one that does not answer in time 504, one that answers with a SIP error 502.
A control without an application answer (PTZ, TeleBoot) is 202 once the device said 200 OK.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Principal, operator
from gateway.api.context import ApiContext, ctx_of
from gateway.api.errors import ApiError
from gateway.downlink import DeviceUnavailable, QueryError, QueryRejected, QueryTimeout
from gateway.manscdp import (
    DeviceControl,
    Message,
    PtzCommand,
    RecordItem,
    preset_call,
    preset_delete,
    preset_set,
    ptz_move,
    ptz_stop,
)
from gateway.model import Device

router = APIRouter(tags=["commands"])

Direction = Literal[
    "left",
    "right",
    "up",
    "down",
    "upleft",
    "upright",
    "downleft",
    "downright",
    "zoomin",
    "zoomout",
    "stop",
]
# (pan, tilt, zoom) of each direction: pan +1 right, tilt +1 up, zoom +1 in (Appendix A.3.2).
MOTION: dict[str, tuple[int, int, int]] = {
    "left": (-1, 0, 0),
    "right": (1, 0, 0),
    "up": (0, 1, 0),
    "down": (0, -1, 0),
    "upleft": (-1, 1, 0),
    "upright": (1, 1, 0),
    "downleft": (-1, -1, 0),
    "downright": (1, -1, 0),
    "zoomin": (0, 0, 1),
    "zoomout": (0, 0, -1),
}
MAX_RECORDS = 500  # record items returned (a device may list thousands)


class Ptz(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Direction
    speed: int = Field(default=128, ge=1, le=255)


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["set", "goto", "delete"]
    index: int = Field(ge=1, le=255)


def ptz_command(command: str, speed: int) -> PtzCommand:
    """The PTZCmd of a direction at ``speed`` (1..255); zoom speed has 4 bits, so it is the
    speed's high nibble (at least 1)."""
    if command == "stop":
        return ptz_stop()
    pan, tilt, zoom = MOTION[command]
    return ptz_move(
        pan, tilt, zoom, pan_speed=speed, tilt_speed=speed, zoom_speed=max(speed >> 4, 1)
    )


def _target(ctx: ApiContext, device_id: str, channel_id: str | None = None) -> Device:
    """The online device behind the path, or 404/409."""
    dev = ctx.device(device_id)  # any node's: the downlink forwards to the holding node
    if dev is None:
        raise ApiError(404, f"no device {device_id[:40]}", None)
    if (
        channel_id is not None
        and channel_id != device_id
        and ctx.catalog.owner_of(channel_id) != device_id
    ):
        raise ApiError(404, f"no channel {channel_id[:40]} on device {device_id}", None)
    if not dev.online:
        raise ApiError(409, f"device {device_id} is offline", None)
    return dev


def _failed(exc: QueryError, what: str) -> ApiError:
    if isinstance(exc, DeviceUnavailable):
        return ApiError(409, f"{what}: {exc}", None)
    if isinstance(exc, QueryTimeout):
        return ApiError(504, f"{what}: the device did not answer ({exc})", None)
    if isinstance(exc, QueryRejected):
        return ApiError(502, f"{what}: the device answered {exc.status} {exc.reason}", None)
    return ApiError(502, f"{what}: {exc}", None)


def as_dict(msg: Message) -> dict[str, Any]:
    """A decoded MANSCDP message as JSON-ready fields (``None`` ones left out)."""
    raw = dataclasses.asdict(msg)
    return {k: v for k, v in raw.items() if v not in (None, (), [])}


def gb_time(value: str, ctx: ApiContext, field: str) -> str:
    """ISO 8601 or UNIX seconds -> the device's local ``yyyy-MM-ddTHH:mm:ss`` (§9.5)."""
    text = value.strip()
    try:
        try:
            seconds = float(text)
        except ValueError:
            when = datetime.fromisoformat(text)
            if when.tzinfo is not None:
                when = when.astimezone(ctx.registrar.tz)
        else:
            if not 0 <= seconds < 1e11:  # also NaN and infinities
                raise ValueError("out of range")
            when = datetime.fromtimestamp(seconds, ctx.registrar.tz)
        if not 1970 <= when.year <= 9998:
            raise ValueError("out of range")
    except (ValueError, OverflowError, OSError):
        raise ApiError(422, f"{field}: must be ISO 8601 or UNIX seconds", field) from None
    return when.strftime("%Y-%m-%dT%H:%M:%S")


@router.post("/devices/{device_id}/channels/{channel_id}/ptz", status_code=202)
async def ptz(
    device_id: str,
    channel_id: str,
    body: Ptz,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id, channel_id)
    cmd = ptz_command(body.command, body.speed)
    request.state.audit_detail = f"{body.command} {body.speed}"
    try:
        await ctx.downlink.ptz(channel_id, cmd)
    except QueryError as exc:
        raise _failed(exc, "PTZ") from None
    return {"ptz_cmd": cmd.encode()}


@router.post("/devices/{device_id}/channels/{channel_id}/preset", status_code=202)
async def preset(
    device_id: str,
    channel_id: str,
    body: Preset,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id, channel_id)
    build = {"set": preset_set, "goto": preset_call, "delete": preset_delete}[body.action]
    cmd = build(body.index)
    request.state.audit_detail = f"{body.action} {body.index}"
    try:
        await ctx.downlink.ptz(channel_id, cmd)
    except QueryError as exc:
        raise _failed(exc, "preset") from None
    return {"ptz_cmd": cmd.encode()}


def record_item(r: RecordItem) -> dict[str, Any]:
    return {
        "start": r.start_time,
        "end": r.end_time,
        "name": r.name,
        "file_path": r.file_path,
        "type": r.type,
        "secrecy": r.secrecy,
        "address": r.address,
        "file_size": r.file_size,
    }


@router.get("/devices/{device_id}/channels/{channel_id}/records")
async def records(
    device_id: str,
    channel_id: str,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
    start: Annotated[str, Query(min_length=1, max_length=40)],
    end: Annotated[str, Query(min_length=1, max_length=40)],
    type: Annotated[str, Query(max_length=16)] = "all",
) -> dict[str, Any]:
    ctx = ctx_of(request)
    start_time = gb_time(start, ctx, "start")
    end_time = gb_time(end, ctx, "end")
    if end_time < start_time:
        raise ApiError(422, "end: must not be before start", "end")
    _target(ctx, device_id, channel_id)
    try:
        res = await ctx.downlink.record_info(channel_id, start_time, end_time, type=type)
    except QueryError as exc:
        raise _failed(exc, "RecordInfo") from None
    found = [r for r in res.items if isinstance(r, RecordItem)]
    found.sort(key=lambda r: r.start_time or "")
    return {
        "total": len(found),
        "partial": res.partial,
        "items": [record_item(r) for r in found[:MAX_RECORDS]],
    }


@router.post("/devices/{device_id}/info")
async def device_info(
    device_id: str, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id)
    try:
        return as_dict(await ctx.downlink.device_info(device_id))
    except QueryError as exc:
        raise _failed(exc, "DeviceInfo") from None


@router.post("/devices/{device_id}/status")
async def device_status(
    device_id: str, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id)
    try:
        return as_dict(await ctx.downlink.device_status(device_id))
    except QueryError as exc:
        raise _failed(exc, "DeviceStatus") from None


@router.post("/devices/{device_id}/sync", status_code=202)
async def sync(
    device_id: str, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id)
    ctx.sync.schedule(device_id)
    return {"scheduled": True}


@router.post("/devices/{device_id}/teleboot", status_code=202)
async def teleboot(
    device_id: str, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    _target(ctx, device_id)
    try:
        await ctx.downlink.control(
            device_id, DeviceControl(sn=0, device_id=device_id, tele_boot="Boot")
        )
    except QueryError as exc:
        raise _failed(exc, "TeleBoot") from None
    return {"sent": True}
