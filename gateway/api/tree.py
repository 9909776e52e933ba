"""The tree, loaded by parent: ``GET /tree?parent=``.

* no parent: the units (by name), then ``_unassigned`` (devices in no unit) when there are any;
* a unit (or ``_unassigned``): its devices, by ID;
* a device: the top of the tree it reported (civil regions, business groups 215, virtual
  organisations 216, channels whose ParentID names nothing else it reported);
* a tree node a device reported: the items whose ParentID names it (several parents joined
  by ``/``: the item is under each), or, with no such ParentID, whose business group it is.
  Region codes can be reported by several devices, so a node carries ``device_id`` and
  ``?device=`` says whose node is meant (default: the device that reported it last).

Every node says ``has_children`` and ``counts`` {total, online}: the channels at and below it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.api._views import TREE_KINDS, UNASSIGNED, Views, is_on
from gateway.api.auth import Principal, viewer
from gateway.api.context import Limit, Offset, ctx_of
from gateway.api.errors import ApiError
from gateway.manscdp import item_kind

router = APIRouter(tags=["tree"])


def _counts(total: int, online: int) -> dict[str, int]:
    return {"total": total, "online": online}


@router.get("/tree")
async def tree(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    parent: Annotated[str, Query(max_length=64)] = "",
    device: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    ctx = ctx_of(request)
    views = Views.of(ctx)
    units = ctx.directory.units
    nodes: list[dict[str, Any]]
    if not parent:
        nodes = []
        every = views.unit_totals()
        for unit in sorted(units.values(), key=lambda u: (u.name, u.id)):
            nodes.append(_group_node(unit.id, unit.name, "unit", every[unit.id]))
        if every[UNASSIGNED]["devices_total"]:
            nodes.append(_group_node(UNASSIGNED, "unassigned", "unit", every[UNASSIGNED]))
        return {"total": len(nodes), "items": nodes[offset : offset + limit]}
    if parent in units or parent == UNASSIGNED:
        ids = views.unit_devices(parent)
        page = ids[offset : offset + limit]
        return {"total": len(ids), "items": [_device_node(views, d) for d in page]}
    owners = ctx.catalog.owners()
    if parent in owners and device in (None, parent):
        owner, node = parent, ""
    elif device is None and views.known(parent):
        return {"total": 0, "items": []}  # a device that reported nothing (yet)
    else:
        owner = device or ctx.catalog.owner_of(parent) or ""
        if owner not in owners:
            raise ApiError(404, f"no tree node {parent}", "parent")
        node = parent
    view = views.view(owner)
    if node and node not in view.items:
        raise ApiError(404, f"no tree node {parent} reported by {owner}", "parent")
    kids = view.children.get(node, [])
    items = []
    for item_id in kids[offset : offset + limit]:
        item = view.items[item_id]
        kind = TREE_KINDS.get(item_kind(item_id), "channel")
        total, online = view.below.get(item_id, (0, 0))
        items.append(
            {
                "id": item_id,
                "name": item.name or "",
                "kind": kind,
                "device_id": owner,
                "has_children": bool(view.children.get(item_id)),
                "online": is_on(item) if kind in ("channel", "device") else online > 0,
                "counts": _counts(total, online),
            }
        )
    return {"total": len(kids), "items": items}


def _group_node(node_id: str, name: str, kind: str, t: dict[str, int]) -> dict[str, Any]:
    return {
        "id": node_id,
        "name": name,
        "kind": kind,
        "has_children": t["devices_total"] > 0,
        "online": t["devices_online"] > 0,
        "counts": _counts(t["channels_total"], t["channels_online"]),
        "devices": _counts(t["devices_total"], t["devices_online"]),
    }


def _device_node(views: Views, device_id: str) -> dict[str, Any]:
    total, online = views.counts(device_id)
    has = device_id in views.ctx.catalog.owners() and bool(views.view(device_id).children)
    return {
        "id": device_id,
        "name": views.device_name(device_id),
        "kind": "device",
        "device_id": device_id,
        "has_children": has,
        "online": views.online(device_id),
        "counts": _counts(total, online),
    }
