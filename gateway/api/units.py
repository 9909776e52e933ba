"""Social units: list, create, edit, delete, and each unit's credential sheet.

``GET /units`` (viewer) pages the units with their devices and channels, total and online:
devices from the registrar (``online``), channels from what each device reported to the catalog
(items of kind channel, ``Status`` ON), counted for the page's units only. Writes need
``operator``; the credential sheet too (it holds passwords, which a viewer never sees).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api._views import Views
from gateway.api.auth import Principal, operator, viewer
from gateway.api.context import ApiContext, Limit, Offset, ctx_of
from gateway.api.errors import ApiError
from gateway.api.sheets import (
    CSV_TYPE,
    SHEET_COLUMNS,
    XLSX_TYPE,
    disposition,
    stamp,
    to_csv,
    to_xlsx,
)
from gateway.directory import Account, DirectoryError, Unit
from gateway.manscdp import item_kind

router = APIRouter(tags=["units"])

Search = Annotated[str, Query(max_length=100)]


@contextmanager
def refused() -> Iterator[None]:
    """A change the directory refused becomes the API's error (status, message, field)."""
    try:
        yield
    except DirectoryError as exc:
        raise ApiError(exc.status, exc.message, exc.field) from None


def counts(ctx: ApiContext, device_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Devices (every node's) and their channels (catalog), total and online."""
    devices = online = channels = channels_on = 0
    for device_id in device_ids:
        devices += 1
        dev = ctx.device(device_id)
        if dev is not None and dev.online:
            online += 1
        for item in ctx.catalog.reported_by(device_id):
            if item.device_id != device_id and item_kind(item.device_id) == "channel":
                channels += 1
                if (item.status or "").upper() == "ON":
                    channels_on += 1
    return {
        "devices": {"total": devices, "online": online},
        "channels": {"total": channels, "online": channels_on},
    }


def unit_view(ctx: ApiContext, unit: Unit) -> dict[str, Any]:
    # The per-unit totals the API's views keep between changes: O(1) per unit on a page.
    t = Views.of(ctx).unit_totals().get(unit.id)
    if t is None:
        return {**asdict(unit), **counts(ctx, ctx.directory.members(unit.id))}
    return {
        **asdict(unit),
        "devices": {"total": t["devices_total"], "online": t["devices_online"]},
        "channels": {"total": t["channels_total"], "online": t["channels_online"]},
    }


class UnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=1000)
    kind: str = Field("other", max_length=50)
    address: str = Field("", max_length=1000)
    contact: str = Field("", max_length=1000)
    phone: str = Field("", max_length=1000)
    civil_code: str = Field("", max_length=50)


class UnitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=1000)
    kind: str | None = Field(None, max_length=50)
    address: str | None = Field(None, max_length=1000)
    contact: str | None = Field(None, max_length=1000)
    phone: str | None = Field(None, max_length=1000)
    civil_code: str | None = Field(None, max_length=50)


@router.get("/units")
async def list_units(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    q: Search = "",
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    needle = q.strip().casefold()
    found = [
        u
        for u in ctx.directory.units.values()
        if not needle or needle in u.id.casefold() or needle in u.name.casefold()
    ]
    found.sort(key=lambda u: (u.created_at, u.id))
    page = found[offset : offset + limit]
    return {"total": len(found), "items": [unit_view(ctx, u) for u in page]}


@router.post("/units", status_code=201)
async def create_unit(
    body: UnitIn, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    values = body.model_dump()
    with refused():
        unit = ctx.directory.add_unit(values.pop("name"), **values)
    request.state.audit_detail = f"unit {unit.id} {unit.name!r} created"
    return unit_view(ctx, unit)


@router.get("/units/{unit_id}")
async def get_unit(
    unit_id: str, request: Request, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    with refused():
        unit = ctx.directory.unit(unit_id)
    return unit_view(ctx, unit)


@router.patch("/units/{unit_id}")
async def patch_unit(
    unit_id: str,
    body: UnitPatch,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    values = body.model_dump(exclude_unset=True)
    with refused():
        unit = ctx.directory.update_unit(unit_id, **values)
    request.state.audit_detail = f"unit {unit_id} changed: {', '.join(sorted(values)) or '-'}"
    return unit_view(ctx, unit)


@router.delete("/units/{unit_id}", status_code=204)
async def delete_unit(
    unit_id: str,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
    force: bool = False,
) -> Response:
    ctx = ctx_of(request)
    with refused():
        members = len(ctx.directory.members(unit_id))
        ctx.directory.remove_unit(unit_id, force=force)
    request.state.audit_detail = f"unit {unit_id} removed ({members} devices unassigned)"
    return Response(status_code=204)


# -- the credential sheet ------------------------------------------------------------------------
def sip_host(ctx: ApiContext, request: Request) -> str:
    """Where devices must send their REGISTER: the advertised host, the host the SIP side is
    bound to, or (bound to every address) the host this request came to."""
    sip = ctx.config.sip
    host = sip.advertised_host or sip.host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = request.url.hostname or "127.0.0.1"
    return host


def sheet_rows(ctx: ApiContext, request: Request, accounts: Iterable[Account]) -> list[list[str]]:
    """One row per account, in :data:`SHEET_COLUMNS` order."""
    gw = ctx.config.gateway
    host = sip_host(ctx, request)
    port = str(ctx.endpoint.port or ctx.config.sip.port)
    rows = []
    for acc in sorted(accounts, key=lambda a: a.device_id):
        unit = ctx.directory.units.get(acc.unit_id) if acc.unit_id else None
        rows.append(
            [
                acc.device_id,
                acc.name,
                acc.password,
                gw.id,
                gw.domain,
                host,
                port,
                "UDP/TCP",
                unit.name if unit is not None else "",
            ]
        )
    return rows


def sheet_response(
    fmt: str, title: str, rows: list[list[str]], filename: str, fallback: str
) -> Response:
    if fmt == "xlsx":
        body = to_xlsx(title, SHEET_COLUMNS, rows, sheet="credentials")
        media = XLSX_TYPE
    else:
        body = to_csv(SHEET_COLUMNS, rows)
        media = CSV_TYPE
    return Response(
        body,
        media_type=media,
        headers={
            "Content-Disposition": disposition(f"{filename}.{fmt}", f"{fallback}.{fmt}"),
            "Cache-Control": "no-store",  # it holds passwords
        },
    )


@router.get("/units/{unit_id}/credentials.{fmt}")
async def credentials(
    unit_id: str,
    fmt: str,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
) -> Response:
    """The unit's credential sheet: one row per device (see :data:`SHEET_COLUMNS`)."""
    if fmt not in ("csv", "xlsx"):
        raise ApiError(404, f"no sheet format {fmt[:10]!r} (csv or xlsx)", "fmt")
    ctx = ctx_of(request)
    with refused():
        unit = ctx.directory.unit(unit_id)
    members = ctx.directory.members(unit_id)
    rows = sheet_rows(ctx, request, (ctx.directory.accounts[d] for d in members))
    title = f"{unit.name} — GB/T 28181 接入凭据 / device credentials ({len(rows)})"
    return sheet_response(
        fmt,
        title,
        rows,
        f"{unit.name}-credentials-{stamp()}",
        f"{unit.id}-credentials-{stamp()}",
    )
