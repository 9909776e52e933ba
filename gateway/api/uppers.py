"""Uppers and what each is shared: ``/uppers`` (API contract, "Uppers and sharing").

* ``GET /uppers``, ``GET /uppers/{id}`` (viewer): each upper's settings (never its password),
  its state (``registered``, ``registering``, ``offline``, ``disabled``), when it last answered
  a keepalive, the subscriptions it holds, what it is shared and how many channels it sees.
* ``POST /uppers``, ``PATCH /uppers/{id}``, ``DELETE /uppers/{id}`` (admin): validated as the
  TOML's ``[[uplink.platforms]]`` are (:class:`gateway.settings.UpperPlatform`); changes take
  effect at once (:meth:`gateway.uplink.Uplink.add_upper` and the rest) and are stored.
* ``GET /uppers/{id}/share`` (viewer), ``PUT /uppers/{id}/share`` (operator): ``{all, units,
  devices, channels}``; an upper holding a catalog subscription hears the difference.
* ``GET /uppers/{id}/id-map`` (viewer): the recoded IDs, paged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.api._views import Views, is_on
from gateway.api.auth import Principal, admin, operator, viewer
from gateway.api.context import ApiContext, ctx_of
from gateway.api.errors import ApiError
from gateway.manscdp import item_kind
from gateway.settings import UpperPlatform
from gateway.uplink import IdMap, Share, SharedView, Uplink, UpperError

router = APIRouter(prefix="/uppers", tags=["uppers"])

GbId = Annotated[str, StringConstraints(pattern=r"^[0-9]{20}$")]
UnitId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MAX_SHARED = 100_000


class ShareBody(BaseModel):
    """What an upper is shared: everything, or units, devices (all each reported), channels."""

    model_config = ConfigDict(extra="forbid")
    all: bool = False
    units: list[UnitId] = Field(default_factory=list, max_length=MAX_SHARED)
    devices: list[GbId] = Field(default_factory=list, max_length=MAX_SHARED)
    channels: list[GbId] = Field(default_factory=list, max_length=MAX_SHARED)


def _invalid(exc: ValidationError, prefix: str = "") -> ApiError:
    """422 naming the first bad field, as the API's own validation errors do."""
    errors = exc.errors()
    loc = [str(p) for p in errors[0]["loc"]] if errors else []
    field = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or None)
    message = str(errors[0]["msg"]) if errors else "invalid"
    return ApiError(422, f"{field}: {message}" if field else message, field)


def _refused(exc: UpperError) -> ApiError:
    return ApiError(exc.status, str(exc), exc.field)


def _share(ctx: ApiContext, body: ShareBody) -> Share:
    unknown = [u for u in body.units if u not in ctx.directory.units]
    if unknown:
        raise ApiError(422, f"units: no unit {unknown[0]}", "units")
    return Share(
        all=body.all,
        units=tuple(dict.fromkeys(body.units)),
        devices=tuple(dict.fromkeys(body.devices)),
        channels=tuple(dict.fromkeys(body.channels)),
    )


def _share_from(ctx: ApiContext, value: Any) -> Share:
    """``share`` in a POST or PATCH body: the contract's object, or the TOML's ``"all"`` or
    list of device and channel IDs."""
    if isinstance(value, dict):
        try:
            return _share(ctx, ShareBody.model_validate(value))
        except ValidationError as exc:
            raise _invalid(exc, "share.") from None
    try:
        return Share.seed(UpperPlatform.model_validate(_dummy(share=value)).share)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _dummy(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "00000000000000000000",
        "domain": "0",
        "host": "0",
        "password": "x",
    }
    base.update(kw)
    return base


def _view(uplink: Uplink, upper_id: str) -> SharedView:
    s = uplink.sessions.get(upper_id)
    if s is not None:
        return s.view
    # A disabled upper: what it would see.
    upper = uplink.platforms[upper_id]
    idmap = IdMap(upper, uplink.store, uplink.gw.id, uplink.clock)
    return SharedView(
        upper,
        uplink.gw,
        uplink.catalog,
        uplink.devices,
        idmap,
        uplink.shares[upper_id],
        uplink.directory,
    )


def _counts(ctx: ApiContext, upper_id: str) -> tuple[int, int]:
    """(channels the upper sees, how many ON), kept until something it depends on changes: the
    API views' version (any catalog change, a device on or offline, a directory change) or the
    upper's share."""
    uplink = ctx.uplink
    key = (Views.of(ctx).version, repr(uplink.shares[upper_id].as_dict()))
    cache: dict[str, tuple[Any, tuple[int, int]]] = ctx.extras.setdefault("upper_counts", {})
    hit = cache.get(upper_id)
    if hit is not None and hit[0] == key:
        return hit[1]
    counts = _visible_channels(ctx, _view(uplink, upper_id))
    cache[upper_id] = (key, counts)
    return counts


def _visible_channels(ctx: ApiContext, view: SharedView) -> tuple[int, int]:
    """(channels, ON) the upper sees, from the API's per-device views: a device shared whole
    (or everything shared) adds its totals, O(devices); a channel shared alone adds itself.
    Channels as everywhere in the API (items of a channel type)."""
    views = Views.of(ctx)
    total = online = 0
    for owner in views.owners():
        if view.channel_visible(owner, owner):  # the whole device is shared
            dv = views.view(owner)
            total += dv.total
            online += dv.online
    if view.share_all:
        return total, online
    catalog = ctx.catalog
    for item_id in view.shared:
        reporter = catalog.owner_of(item_id)
        if reporter is None or view.channel_visible(reporter, reporter):
            continue  # not reported, or counted with its device
        item = views.view(reporter).items.get(item_id)
        if item is not None and item_kind(item_id) == "channel":
            total += 1
            online += is_on(item)
    return total, online


def _describe(ctx: ApiContext, upper_id: str) -> dict[str, Any]:
    uplink = ctx.uplink
    upper = uplink.platforms.get(upper_id)
    if upper is None:
        raise ApiError(404, f"no upper {upper_id}")
    out = upper.model_dump(mode="json", exclude={"password", "share"})
    s = uplink.sessions.get(upper_id)
    total, online = _counts(ctx, upper_id)
    out.update(
        state=uplink.state_of(upper_id),
        last_keepalive=s.link.last_keepalive if s is not None else None,
        registered_at=s.link.registered_at or None if s is not None and s.link.online else None,
        subscriptions=[]
        if s is None
        else [
            {"kind": sub.kind, "target": sub.target, "expires_at": sub.notifier.expires_at}
            for sub in s.subs.values()
        ],
        share=uplink.shares[upper_id].as_dict(),
        channels={"total": total, "online": online},
        # The platform quirks seen from this upper (gateway.uplink.quirks), by name.
        quirks=dict(s.quirks.counts) if s is not None else {},
    )
    return out


@router.get("")
async def list_uppers(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    q: Annotated[str, Query(max_length=64)] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    uplink = ctx_of(request).uplink
    ids = sorted(
        uid
        for uid, up in uplink.platforms.items()
        if not q or q in uid or q.lower() in up.name.lower()
    )
    return {
        "total": len(ids),
        "items": [_describe(ctx_of(request), uid) for uid in ids[offset : offset + limit]],
    }


@router.post("", status_code=201)
async def create_upper(
    request: Request,
    who: Annotated[Principal, Depends(admin)],
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    data = dict(body)
    share = _share_from(ctx, data.pop("share")) if "share" in data else None
    try:
        upper = UpperPlatform.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    try:
        await ctx.uplink.add_upper(upper, share)
    except UpperError as exc:
        raise _refused(exc) from None
    request.state.audit_detail = f"upper {upper.id} at {upper.host}:{upper.port}"
    return _describe(ctx, upper.id)


@router.get("/{upper_id}")
async def get_upper(
    request: Request, upper_id: str, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    return _describe(ctx_of(request), upper_id)


@router.patch("/{upper_id}")
async def update_upper(
    request: Request,
    upper_id: str,
    who: Annotated[Principal, Depends(admin)],
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    uplink = ctx.uplink
    if upper_id not in uplink.platforms:
        raise ApiError(404, f"no upper {upper_id}")
    changes = dict(body)
    share = _share_from(ctx, changes.pop("share")) if "share" in changes else None
    try:
        new = await uplink.update_upper(upper_id, changes)
    except ValidationError as exc:
        raise _invalid(exc) from None
    except UpperError as exc:
        raise _refused(exc) from None
    if share is not None:
        try:
            await uplink.set_share(new.id, share)
        except UpperError as exc:  # removed (or renamed) by another request meanwhile
            raise _refused(exc) from None
    # Which settings changed, never their values (a password is among them).
    request.state.audit_detail = "changed: " + ", ".join(sorted(body))
    return _describe(ctx_of(request), new.id)


@router.delete("/{upper_id}", status_code=204)
async def delete_upper(
    request: Request, upper_id: str, who: Annotated[Principal, Depends(admin)]
) -> Response:
    try:
        await ctx_of(request).uplink.remove_upper(upper_id)
    except UpperError as exc:
        raise _refused(exc) from None
    return Response(status_code=204)


@router.get("/{upper_id}/share")
async def get_share(
    request: Request, upper_id: str, who: Annotated[Principal, Depends(viewer)]
) -> dict[str, Any]:
    uplink = ctx_of(request).uplink
    share = uplink.shares.get(upper_id)
    if share is None:
        raise ApiError(404, f"no upper {upper_id}")
    return share.as_dict()


@router.put("/{upper_id}/share")
async def put_share(
    request: Request,
    upper_id: str,
    body: ShareBody,
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    ctx = ctx_of(request)
    if upper_id not in ctx.uplink.platforms:
        raise ApiError(404, f"no upper {upper_id}")
    share = _share(ctx, body)
    try:
        await ctx.uplink.set_share(upper_id, share)
    except UpperError as exc:  # removed by another request meanwhile
        raise _refused(exc) from None
    request.state.audit_detail = (
        f"all={share.all} units={len(share.units)} devices={len(share.devices)}"
        f" channels={len(share.channels)}"
    )
    return share.as_dict()


@router.get("/{upper_id}/id-map")
async def id_map(
    request: Request,
    upper_id: str,
    who: Annotated[Principal, Depends(viewer)],
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    uplink = ctx_of(request).uplink
    upper = uplink.platforms.get(upper_id)
    if upper is None:
        raise ApiError(404, f"no upper {upper_id}")
    s = uplink.sessions.get(upper_id)
    if s is not None:
        pairs = s.idmap.pairs()
    else:
        # A disabled upper: its rows only (the store's index), not every upper's.
        pairs = sorted((local, up) for _, local, up in uplink.store.load_id_map(upper_id))
    return {
        "id_policy": upper.id_policy,
        "total": len(pairs),
        "items": [{"local_id": a, "upper_id": b} for a, b in pairs[offset : offset + limit]],
    }
