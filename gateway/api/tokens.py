"""API tokens (admin only): ``GET/POST /tokens``, ``DELETE /tokens/{name}``.

A created token is answered once (``token``) and kept only as its SHA-256; revoking it refuses
its next request (401). Tokens from the configuration file (``[[http.tokens]]``) are listed with
``source`` "config" and cannot be revoked here (409: remove them from the file).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import NAME_PATTERN, Principal, admin, authenticator
from gateway.api.errors import ApiError
from gateway.settings import Role

router = APIRouter(prefix="/tokens", tags=["tokens"])


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=64)
    role: Role = "viewer"


@router.get("")
async def list_tokens(
    request: Request,
    who: Annotated[Principal, Depends(admin)],
    q: Annotated[str, Query(max_length=200)] = "",
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    tokens = authenticator(request).list_tokens()
    if q:
        tokens = [t for t in tokens if q.lower() in t["name"].lower()]
    return {"total": len(tokens), "items": tokens[offset : offset + limit]}


@router.post("", status_code=201)
async def create_token(
    body: NewToken, request: Request, who: Annotated[Principal, Depends(admin)]
) -> dict[str, Any]:
    request.state.audit_detail = f"name={body.name} role={body.role}"
    auth = authenticator(request)
    token = auth.create_token(body.name, body.role)
    created = auth.api_tokens[body.name]
    return {
        "name": body.name,
        "role": body.role,
        "source": "api",
        "created_at": created["created_at"],
        "token": token,
    }


@router.delete("/{name}", status_code=204)
async def revoke_token(
    name: str, request: Request, who: Annotated[Principal, Depends(admin)]
) -> Response:
    if not authenticator(request).revoke_token(name):
        raise ApiError(404, f"no token {name!r}", "name")
    return Response(status_code=204)
