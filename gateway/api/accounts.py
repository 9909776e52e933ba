"""Device accounts (who may register, with which password) and the unknown-devices policy.

Roles (the issue: "no write without operator; no credential or user change without admin"):

* ``viewer``: lists accounts, never with a password.
* ``operator``: onboarding: creates accounts (a generated password, or one the unit gives),
  renames them and moves them between units, imports files that create accounts or change
  names and units, downloads credential sheets and exports (which hold passwords).
* ``admin``: changes to a credential in use: a new password for an existing account, enabling
  or disabling it, removing it, and the ``unknown_devices`` policy. An import row that would
  change an existing password is refused for an operator (reported with its row number).

A disabled, removed or re-passworded account's device is taken offline at once (the registrar's
``revoke``); its next REGISTER meets the account as it is now. Nothing here ever puts a password
in the audit log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Principal, admin, operator, viewer
from gateway.api.context import ApiContext, Limit, Offset, ctx_of
from gateway.api.errors import ApiError
from gateway.api.sheets import SheetError, read_rows, stamp
from gateway.api.units import (
    Search,
    refused,
    sheet_response,
    sheet_rows,
)
from gateway.directory import Account

router = APIRouter(tags=["accounts"])
UNASSIGNED = "_unassigned"


def account_view(ctx: ApiContext, acc: Account, who: Principal) -> dict[str, Any]:
    dev = ctx.device(acc.device_id)
    out: dict[str, Any] = {
        "device_id": acc.device_id,
        "name": acc.name,
        "unit_id": acc.unit_id,
        "enabled": acc.enabled,
        "created_at": acc.created_at,
        "online": dev is not None and dev.online,
    }
    if who.may("operator"):
        out["password"] = acc.password
    return out


def _taken(ctx: ApiContext) -> Callable[[str], bool]:
    """IDs a new account must not get: devices the registrar knows (registered without an
    account under ``accept``)."""
    return lambda device_id: device_id in ctx.registrar


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str | None = Field(None, max_length=100)
    unit_id: str | None = Field(None, max_length=100)
    name: str = Field("", max_length=1000)
    password: str | None = Field(None, max_length=1000)
    enabled: bool = True


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=1000)
    unit_id: str | None = Field(None, max_length=100)
    password: str | None = Field(None, max_length=1000)
    enabled: bool | None = None


def _selected(ctx: ApiContext, unit: str, q: str) -> list[Account]:
    directory = ctx.directory
    if unit == UNASSIGNED:
        pool = [a for a in directory.accounts.values() if a.unit_id is None]
    elif unit:
        with refused():
            directory.unit(unit)
        pool = [directory.accounts[d] for d in directory.members(unit)]
    else:
        pool = list(directory.accounts.values())
    needle = q.strip().casefold()
    if needle:
        pool = [a for a in pool if needle in a.device_id or needle in a.name.casefold()]
    pool.sort(key=lambda a: a.device_id)
    return pool


@router.get("/accounts")
async def list_accounts(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    unit: Search = "",
    q: Search = "",
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    found = _selected(ctx, unit, q)
    page = found[offset : offset + limit]
    return {"total": len(found), "items": [account_view(ctx, a, who) for a in page]}


@router.get("/accounts/export.{fmt}")
async def export_accounts(
    fmt: str,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
    unit: Search = "",
) -> Response:
    """Every account (or a unit's, or ``_unassigned``) as the credential sheet's columns: the
    file imports back as it is."""
    if fmt not in ("csv", "xlsx"):
        raise ApiError(404, f"no export format {fmt[:10]!r} (csv or xlsx)", "fmt")
    ctx = ctx_of(request)
    rows = sheet_rows(ctx, request, _selected(ctx, unit, ""))
    name = f"accounts-{unit or 'all'}-{stamp()}"
    return sheet_response(fmt, f"GB/T 28181 device accounts ({len(rows)})", rows, name, name)


@router.get("/accounts/{device_id}")
async def get_account(
    device_id: str, request: Request, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    with refused():
        acc = ctx.directory.account(device_id)
    return account_view(ctx, acc, who)


@router.post("/accounts", status_code=201)
async def create_account(
    body: AccountIn, request: Request, who: Annotated[Principal, Depends(operator)]
) -> dict[str, Any]:
    ctx = ctx_of(request)
    with refused():
        acc = ctx.directory.add_account(
            body.device_id or None,
            password=body.password,
            name=body.name,
            unit_id=body.unit_id or None,
            enabled=body.enabled,
            taken=_taken(ctx),
        )
    how = "given" if body.password is not None else "generated"
    request.state.audit_detail = (
        f"account {acc.device_id} created in unit {acc.unit_id or '-'}, password {how}"
    )
    return account_view(ctx, acc, who)


@router.patch("/accounts/{device_id}")
async def patch_account(
    device_id: str,
    body: AccountPatch,
    request: Request,
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    values = body.model_dump(exclude_unset=True)
    if values.get("unit_id") == "":
        values["unit_id"] = None  # "" and null both take the device out of its unit
    with refused():
        acc = ctx.directory.account(device_id)
        if values.get("enabled", acc.enabled) is None:
            raise ApiError(422, "enabled: must be true or false", "enabled")
        for key in ("password", "enabled"):
            if key in values and values[key] != getattr(acc, key) and not who.may("admin"):
                raise ApiError(403, f"{key}: changing a device's credentials needs admin", key)
        acc = ctx.directory.update_account(device_id, **values)
    parts = [k if k != "enabled" else ("enabled" if acc.enabled else "disabled") for k in values]
    request.state.audit_detail = f"account {device_id} changed: {', '.join(parts) or '-'}"
    return account_view(ctx, acc, who)


@router.delete("/accounts/{device_id}", status_code=204)
async def delete_account(
    device_id: str, request: Request, who: Annotated[Principal, Depends(admin)]
) -> Response:
    ctx = ctx_of(request)
    with refused():
        ctx.directory.remove_account(device_id)
    request.state.audit_detail = f"account {device_id} removed"
    return Response(status_code=204)


@router.post("/accounts/import")
async def import_accounts(
    request: Request,
    who: Annotated[Principal, Depends(operator)],
    file: Annotated[UploadFile, File()],
) -> dict[str, Any]:
    """A CSV or XLSX file with a header row naming ``device_id`` and any of ``name``,
    ``password``, ``unit`` (a unit's ID or name; ``unit_id`` also works): an existing account
    is updated with the cells that are not empty, a new one created (its ID made when the cell
    is empty, its password generated likewise). Each bad row is reported with its row number
    in the file and the field; the good rows are applied."""
    ctx = ctx_of(request)
    data = await file.read()
    try:
        # Parsing a big workbook takes a while: not in the loop that serves SIP.
        rows = await asyncio.to_thread(read_rows, data)
    except SheetError as exc:
        raise ApiError(422, str(exc), "file") from None
    report = await ctx.directory.import_accounts_async(
        rows, may_change_password=who.may("admin"), taken=_taken(ctx)
    )
    request.state.audit_detail = (
        f"import {(file.filename or '')[:80]!r}: {len(report.created)} created, "
        f"{len(report.updated)} updated, {len(report.errors)} refused"
    )
    return {
        "created": len(report.created),
        "updated": len(report.updated),
        "created_ids": report.created,
        "errors": [{"row": e.row, "field": e.field, "error": e.error} for e in report.errors],
    }


# -- the unknown-devices policy -----------------------------------------------------------------
class RegistrationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unknown_devices: str = Field(max_length=20)


@router.get("/settings/registration")
async def get_registration(
    request: Request, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    return {"unknown_devices": ctx_of(request).directory.unknown_devices}


@router.put("/settings/registration")
async def put_registration(
    body: RegistrationSettings,
    request: Request,
    who: Annotated[Principal, Depends(admin)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    with refused():
        ctx.directory.set_unknown_devices(body.unknown_devices)
    request.state.audit_detail = f"unknown_devices = {body.unknown_devices}"
    return {"unknown_devices": ctx.directory.unknown_devices}
