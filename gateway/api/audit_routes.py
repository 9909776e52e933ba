"""The audit log (admin only): ``GET /audit?offset&limit&who&action``.

Newest first. ``who`` and ``action`` keep the entries whose user/token name or action
(``"PATCH /api/v1/users/{username}"``) contains the given text, ignoring case. Entries are never
deleted and the store numbers them 1, 2, 3..., so without a filter a page is read directly by
id (``before``) and ``total`` is the newest id. With a filter the newest ``MAX_SCAN`` entries
are searched, page by page; when older ones exist ``truncated`` is true and ``total`` counts
only what was searched.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.api.auth import Principal, admin
from gateway.api.context import Limit, Offset
from gateway.model import AuditEntry
from gateway.store import Store

router = APIRouter(prefix="/audit", tags=["audit"])

MAX_SCAN = 100_000
PAGE = 1_000


def _view(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "who": e.who,
        "role": e.role,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
        "source": e.source,
        "outcome": e.outcome,
    }


def _search(
    store: Store, who: str, action: str, offset: int, limit: int
) -> tuple[int, list[AuditEntry], bool]:
    who, action = who.lower(), action.lower()
    matched = 0
    items: list[AuditEntry] = []
    before: int | None = None
    scanned = 0
    while scanned < MAX_SCAN:
        page = store.load_audit(limit=min(PAGE, MAX_SCAN - scanned), before=before)
        if not page:
            return matched, items, False
        scanned += len(page)
        for e in page:
            if who in e.who.lower() and action in e.action.lower():
                if offset <= matched < offset + limit:
                    items.append(e)
                matched += 1
        before = page[-1].id
    older = before is not None and bool(store.load_audit(limit=1, before=before))
    return matched, items, older


@router.get("")
async def list_audit(
    request: Request,
    who_: Annotated[Principal, Depends(admin)],
    offset: Offset = 0,
    limit: Limit = 50,
    who: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=200)] = "",
) -> dict[str, Any]:
    store: Store = request.app.state.ctx.store
    if who or action:
        total, found, truncated = _search(store, who, action, offset, limit)
        return {"total": total, "truncated": truncated, "items": [_view(e) for e in found]}
    newest = store.load_audit(limit=1)
    top = (newest[0].id or 0) if newest else 0
    page = store.load_audit(limit=limit, before=top + 1 - offset) if offset < top else []
    return {"total": top, "truncated": False, "items": [_view(e) for e in page]}
