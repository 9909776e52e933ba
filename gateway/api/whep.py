"""Live preview over WHEP: ``POST /whep/channels/{channel_id}``, ``DELETE /whep/sessions/{id}``,
and ``GET /api/v1/previews``.

WHEP (the IETF's WebRTC-HTTP Egress Protocol, draft-ietf-wish-whep) takes its HTTP rules from
WHIP (RFC 9725): the player POSTs its SDP offer (``Content-Type: application/sdp``) with a bearer
token and gets ``201 Created``, the SDP answer and a ``Location`` naming the session
(§4.2); ``DELETE`` on that location ends it (§4.3). The gateway gathers its ICE candidates
before answering and does no trickle ICE and no ICE restart, so ``PATCH`` on a session is
answered 405 with ``Allow`` (§4.3.1); ``OPTIONS`` answers 204 with ``Allow`` (and
``Accept-Post: application/sdp`` on the channel endpoint). The STUN/TURN servers of
``[preview] ice_servers`` are given in the 201 as ``Link: <url>; rel="ice-server"`` headers,
with ``username``, ``credential`` and ``credential-type`` for a TURN server (§4.6).

Who may do what: a viewer token or above opens a preview; the session is owned by the
principal's name, and only that owner or an operator (or admin) may DELETE it. To anyone else
the session does not exist (404), so a session ID seen elsewhere tells nothing. The token is
checked before the body is read (the route reads the body itself, after the role dependency),
and the offer is cut at :data:`MAX_OFFER_BYTES` (413). ``[preview] enabled = false``: the WHEP
routes answer 404 saying preview is disabled (a setting, not a passing state, so not 503).

Errors from the preview service (:class:`~gateway.preview.PreviewError`) become the API's JSON
error body with their status (404 unknown channel, 409 device offline, 415 no H.264 the viewer
can take, 503 limit reached or the device did not deliver, with ``Retry-After`` when the
service gives one). Opens and ends are in the audit log (:mod:`gateway.api.audit`): who opened
which channel, the session, the outcome; who ended it and after how long.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from gateway.api.auth import Principal, viewer
from gateway.api.context import ApiContext, Limit, Offset, ctx_of
from gateway.api.errors import ApiError, error_body
from gateway.preview import PreviewError
from gateway.settings import IceServer

router = APIRouter(tags=["preview"])
"""The WHEP endpoints, included without a prefix (``/whep/...``)."""
api = APIRouter(tags=["preview"])
"""``/previews``, included under ``/api/v1``."""

SDP = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024
"""A browser's offer is a few KiB; anything bigger is refused (413) before it is kept."""
CHANNEL_ALLOW = "POST, OPTIONS"
SESSION_ALLOW = "DELETE, OPTIONS"
OTHER_METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "POST"]
DISABLED = "live preview is disabled on this gateway ([preview] enabled = false)"
# Characters a Link header's URI reference or quoted-string may not carry as they are.
_UNSAFE_URL = re.compile(r"[\x00-\x20<>\"\x7f-\uffff]")
_UNSAFE_VALUE = re.compile(r"[\x00-\x1f\x7f-\uffff]")


def _enabled(ctx: ApiContext) -> None:
    if not ctx.config.preview.enabled:
        raise ApiError(404, DISABLED)


def _quoted(value: str) -> str:
    """``value`` as an HTTP quoted-string (RFC 9110 §5.6.4)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(servers: tuple[IceServer, ...]) -> list[str]:
    """One ``Link`` value per STUN/TURN URL (RFC 9725 §4.6); a TURN URL carries the server's
    ``username`` and ``credential``. A URL or value that could not be written into a header
    as it is (control characters, ``<>"``, non-ASCII) is left out rather than mangled."""
    links: list[str] = []
    for server in servers:
        if _UNSAFE_VALUE.search(server.username) or _UNSAFE_VALUE.search(server.credential):
            continue
        for url in server.urls:
            if _UNSAFE_URL.search(url):
                continue
            link = f'<{url}>; rel="ice-server"'
            if url.startswith(("turn:", "turns:")) and (server.username or server.credential):
                link += (
                    f"; username={_quoted(server.username)}"
                    f"; credential={_quoted(server.credential)}"
                    '; credential-type="password"'
                )
            links.append(link)
    return links


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


async def _offer(request: Request) -> str:
    """The request's body, at most :data:`MAX_OFFER_BYTES`, as text (SDP is UTF-8, RFC 8866
    §5). ApiError 413 beyond the limit, 400 for an empty body or one that is not UTF-8."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > MAX_OFFER_BYTES
        except ValueError:
            raise ApiError(400, "Content-Length is not a number", "body") from None
        if too_big:
            raise ApiError(413, f"the SDP offer is over {MAX_OFFER_BYTES} bytes", "body")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_OFFER_BYTES:
                raise ApiError(413, f"the SDP offer is over {MAX_OFFER_BYTES} bytes", "body")
    except ClientDisconnect:
        # Not the gateway's failure (no api.error): the player went away mid-offer.
        raise ApiError(400, "the client went away before the offer arrived", "body") from None
    if not body.strip():
        raise ApiError(400, "the body must hold an SDP offer", "body")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the SDP offer is not UTF-8 text", "body") from None


def _refused(exc: PreviewError) -> ApiError:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    field = {404: "channel_id", 409: "channel_id", 400: "body", 415: "body"}.get(exc.status)
    return ApiError(exc.status, exc.message, field, headers=headers)


def _allow(allow: str, *, accept_post: bool = False) -> Response:
    headers = {"Allow": allow}
    if accept_post:
        headers["Accept-Post"] = SDP
    return Response(status_code=204, headers=headers)


def _not_allowed(allow: str) -> Response:
    return JSONResponse(
        error_body(f"method not allowed here; allowed: {allow}"),
        status_code=405,
        headers={"Allow": allow},
    )


# -- the WHEP endpoint: one per channel ---------------------------------------------------------
@router.options("/whep/channels/{channel_id}", status_code=204)
async def channel_options(channel_id: str, request: Request) -> Response:
    """What the endpoint takes: ``POST`` of ``application/sdp`` (RFC 9725 §4.2)."""
    _enabled(ctx_of(request))
    return _allow(CHANNEL_ALLOW, accept_post=True)


@router.post(
    "/whep/channels/{channel_id}",
    status_code=201,
    response_class=Response,
    responses={201: {"content": {SDP: {}}, "description": "the SDP answer"}},
)
async def open_preview(
    channel_id: str, request: Request, who: Annotated[Principal, Depends(viewer)]
) -> Response:
    """Open a preview of ``channel_id`` for the SDP offer in the body (non-trickle: the offer
    holds its candidates). 201 with the SDP answer and ``Location: /whep/sessions/{id}``."""
    ctx = ctx_of(request)
    _enabled(ctx)
    if _media_type(request) != SDP:
        raise ApiError(
            415, f"the body must be an SDP offer ({SDP})", "body", headers={"Accept-Post": SDP}
        )
    offer = await _offer(request)
    try:
        session_id, answer = await ctx.previews.open(channel_id, offer, owner=who.name)
    except PreviewError as exc:
        request.state.audit_detail = f"refused: {exc.message}"
        raise _refused(exc) from None
    request.state.audit_detail = f"session {session_id}"
    response = Response(
        content=answer,
        status_code=201,
        media_type=SDP,
        headers={"Location": f"/whep/sessions/{session_id}", "Cache-Control": "no-store"},
    )
    for link in ice_server_links(ctx.config.preview.ice_servers):
        response.headers.append("Link", link)
    return response


@router.api_route(
    "/whep/channels/{channel_id}",
    methods=[m for m in OTHER_METHODS if m != "POST"],
    include_in_schema=False,
)
async def channel_other(channel_id: str) -> Response:
    return _not_allowed(CHANNEL_ALLOW)


# -- the WHEP session ----------------------------------------------------------------------------
@router.options("/whep/sessions/{session_id}", status_code=204)
async def session_options(session_id: str, request: Request) -> Response:
    _enabled(ctx_of(request))
    return _allow(SESSION_ALLOW)


@router.delete("/whep/sessions/{session_id}", status_code=200, response_class=Response)
async def end_preview(
    session_id: str, request: Request, who: Annotated[Principal, Depends(viewer)]
) -> Response:
    """End a preview (RFC 9725 §4.3): its owner or an operator and above; 404 to anyone else."""
    ctx = ctx_of(request)
    _enabled(ctx)
    info = ctx.previews.session(session_id)
    if info is None or (info.get("owner") != who.name and not who.may("operator")):
        raise ApiError(404, "no such preview session")
    watched = max(0.0, ctx.clock() - float(info.get("started_at") or ctx.clock()))
    request.state.audit_detail = (
        f"channel {info.get('channel_id')} of {info.get('owner')}, watched {watched:.0f} s"
    )
    if not await ctx.previews.end(session_id, "deleted"):
        raise ApiError(404, "no such preview session")  # it ended meanwhile
    return Response(status_code=200)


@router.api_route(
    "/whep/sessions/{session_id}",
    methods=[m for m in OTHER_METHODS if m != "DELETE"],
    include_in_schema=False,
)
async def session_other(session_id: str) -> Response:
    """``PATCH`` (trickle ICE, ICE restart) and anything else: 405. The gateway gathers all
    its candidates before it answers, and a restart is a new POST (RFC 9725 §4.3.1)."""
    return _not_allowed(SESSION_ALLOW)


# -- the list for the console and operators -------------------------------------------------------
@api.get("/previews")
async def list_previews(
    request: Request,
    who: Annotated[Principal, Depends(viewer)],
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    """The open previews, oldest first: a viewer sees its own, an operator or admin all.
    ``active`` counts every open preview, ``max_sessions`` is the limit."""
    ctx = ctx_of(request)
    cfg = ctx.config.preview
    items = ctx.previews.sessions()
    if not who.may("operator"):
        items = [s for s in items if s.get("owner") == who.name]
    items.sort(key=lambda s: float(s.get("started_at") or 0.0))
    return {
        "enabled": cfg.enabled,
        "active": ctx.previews.active,
        "max_sessions": cfg.max_sessions,
        "total": len(items),
        "items": items[offset : offset + limit],
    }
