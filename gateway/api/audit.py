"""The audit log: every write through the API (who, what, when, from where, the outcome).

A middleware records each POST, PUT, PATCH and DELETE under ``/api/v1`` once it is answered,
whether it succeeded or was refused (403 for a role too low), so no route can forget to. The
WHEP routes (``/whep/``) are audited the same way: a preview opened (who watched which channel,
the session, or why it was refused) and one ended by ``DELETE`` (whose, after how long). A
request without a valid token is not stored (a stranger could fill the log), only counted.
``action`` is the method and the route's path template (``PATCH /api/v1/units/{unit_id}``),
``target`` the path's values, ``detail`` what the route put in ``request.state.audit_detail``
(never a password). Entries go to the store (``Store.save_audit``) and to the log as
``api.audit`` (an audit event: never rate limited by the log; refused writes have their own
budget, see :class:`AuditWrites`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import structlog
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.model import AuditEntry

log = structlog.get_logger("gateway.api")

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED = ("/api/", "/whep/")
"""Path prefixes whose writes are audited."""
WHEP = "/whep/"
REFUSED_PER_MINUTE = 10
"""Refused writes (403; any 4xx/5xx on ``/whep/``) stored and logged per principal a minute;
the rest are counted."""
MAX_PRINCIPALS = 10_000
"""Principals whose refused writes are remembered for that budget."""


def _route_template(request: Request) -> tuple[str, dict[str, Any]]:
    """The answered route's path template with its prefixes, and the path's values. Routing
    left the route in the scope; FastAPI keeps a router's routes without the prefix it was
    included under, so the prefix is what the path has before the route's own part."""
    route = request.scope.get("route")
    template = getattr(route, "path_format", None)
    params = dict(request.scope.get("path_params") or {})
    path = request.scope.get("path", request.url.path)
    if isinstance(template, str):
        try:
            tail = template.format(**{k: str(v) for k, v in params.items()})
        except (KeyError, IndexError, ValueError):
            tail = None
        if tail is not None and path.endswith(tail):
            return path[: len(path) - len(tail)] + template, params
    for candidate in request.app.router.routes:
        match, child = candidate.matches(request.scope)
        if match is Match.FULL and isinstance(getattr(candidate, "path", None), str):
            return candidate.path, dict(child.get("path_params", {}))
    return path, params


class AuditWrites:
    """A pure ASGI middleware: a request that is not a write under ``/api/`` or ``/whep/``
    goes straight through (an SSE stream included); a write is stored once answered, its
    status taken from ``http.response.start``. Refused writes (403, and on ``/whep/`` any
    4xx/5xx: a viewer may POST there, and a player retrying a busy or unknown channel must
    not fill the log) are stored and logged at most :data:`REFUSED_PER_MINUTE` a minute per
    principal (the latest :data:`MAX_PRINCIPALS` principals are remembered); the rest are only
    counted (``api.audit.suppressed``), so a viewer looping refused writes cannot fill the
    store or the log. Writes that went through are all stored."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._refused: OrderedDict[str, list[float]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITES
            or not scope["path"].startswith(AUDITED)
        ):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        self._record(Request(scope), status)

    def _within_budget(self, who: str, now: float) -> bool:
        times = [t for t in self._refused.pop(who, []) if now - t < 60.0]
        ok = len(times) < REFUSED_PER_MINUTE
        if ok:
            times.append(now)
        self._refused[who] = times
        while len(self._refused) > MAX_PRINCIPALS:
            self._refused.popitem(last=False)
        return ok

    def _record(self, request: Request, status: int) -> None:
        ctx = request.app.state.ctx
        principal = getattr(request.state, "principal", None)
        who = getattr(request.state, "audit_who", None) or (
            principal.name if principal is not None else None
        )
        if who is None:
            # No valid token (refused with 401): a stranger may send any number of these, so
            # they are counted (``api.unauthenticated``) and never stored.
            return
        refused = status == 403 or (status >= 400 and request.url.path.startswith(WHEP))
        # The budget is the principal's, kind and name: a user and a token of one name are two.
        budget = f"{principal.kind}:{who}" if principal is not None else who
        if refused and not self._within_budget(budget, ctx.clock()):
            ctx.metrics.inc("api.audit.suppressed")
            return
        template, params = _route_template(request)
        entry = AuditEntry(
            at=ctx.clock(),
            who=who,
            role=principal.role if principal is not None else "-",
            action=f"{request.method} {template}",
            target=",".join(f"{k}={v}" for k, v in params.items())[:200],
            detail=str(getattr(request.state, "audit_detail", ""))[:500],
            source=request.client.host if request.client else "",
            outcome=str(status),
        )
        ctx.store.save_audit(entry)
        ctx.metrics.inc("api.audit")
        log.info(
            "api.audit",
            who=entry.who,
            role=entry.role,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            source=entry.source,
        )
