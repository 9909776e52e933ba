"""Console logins: ``POST /auth/login``, ``POST /auth/logout``, ``GET /auth/me``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Principal, authenticator, bearer_token, viewer

router = APIRouter(prefix="/auth", tags=["auth"])


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


@router.post("/login")
async def login(body: Login, request: Request) -> dict[str, Any]:
    auth = authenticator(request)
    token, principal, expires_at = await auth.login(
        body.username, body.password, request.client.host if request.client else ""
    )
    request.state.principal = principal
    request.state.audit_detail = "login"
    return {
        "token": token,
        "username": principal.name,
        "role": principal.role,
        "expires_at": expires_at,
    }


@router.post("/logout", status_code=204)
async def logout(request: Request, who: Annotated[Principal, Depends(viewer)]) -> Response:
    auth = authenticator(request)
    token = bearer_token(request)
    if token is not None:
        auth.logout(token)
    return Response(status_code=204)


@router.get("/me")
async def me(who: Annotated[Principal, Depends(viewer)]) -> dict[str, str]:
    return {"name": who.name, "role": who.role, "kind": who.kind}
