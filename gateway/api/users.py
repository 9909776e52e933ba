"""Console users (admin only): ``GET/POST /users``, ``PATCH/DELETE /users/{username}``.

A user logs in to the console with a name and a password (argon2id; never returned, never
audited). Names are 1-64 ASCII letters, digits or ``._-@``; passwords 8-256 characters. A new
role or disabling ends the user's open sessions at once; the last enabled admin cannot be
demoted, disabled or deleted (409). The first admin comes from the command line
(``gb28181-gateway user add NAME --role admin``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    NAME_PATTERN,
    Principal,
    admin,
    authenticator,
)
from gateway.settings import Role

router = APIRouter(prefix="/users", tags=["users"])


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: Role = "viewer"


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: Role | None = None
    disabled: bool | None = None


@router.get("")
async def list_users(
    request: Request,
    who: Annotated[Principal, Depends(admin)],
    q: Annotated[str, Query(max_length=200)] = "",
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    users = authenticator(request).list_users()
    if q:
        users = [u for u in users if q.lower() in u["username"].lower()]
    return {"total": len(users), "items": users[offset : offset + limit]}


@router.post("", status_code=201)
async def create_user(
    body: NewUser, request: Request, who: Annotated[Principal, Depends(admin)]
) -> dict[str, Any]:
    request.state.audit_detail = f"username={body.username} role={body.role}"
    return await authenticator(request).add_user(body.username, body.password, body.role)


@router.patch("/{username}")
async def change_user(
    username: str,
    body: UserChange,
    request: Request,
    who: Annotated[Principal, Depends(admin)],
) -> dict[str, Any]:
    given = (("role", body.role), ("disabled", body.disabled))
    changes = [f"{k}={v}" for k, v in given if v is not None]
    if body.password is not None:
        changes.append("password changed")
    request.state.audit_detail = " ".join(changes)
    return await authenticator(request).update_user(
        username, password=body.password, role=body.role, disabled=body.disabled
    )


@router.delete("/{username}", status_code=204)
async def delete_user(
    username: str, request: Request, who: Annotated[Principal, Depends(admin)]
) -> Response:
    authenticator(request).delete_user(username)
    return Response(status_code=204)
