"""The HTTP side against strangers and low roles: login cost and rate, the token gate before
any body is read, the audit budget for refused writes, security headers, concurrent adds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from argon2 import PasswordHasher
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

import gateway.api.auth as auth_module
from gateway.api import audit
from gateway.api.errors import ApiError
from tests.api.conftest import TOKENS, Api

LOGIN = "/api/v1/auth/login"


def test_passwords_hash_with_owasp_minimum_and_old_hashes_verify() -> None:
    hasher = auth_module._hasher
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (2, 19456, 1)
    assert "m=19456,t=2,p=1" in auth_module.hash_password("a password")
    old = PasswordHasher().hash("made with the defaults")  # 64 MiB, 3 passes, 4 lanes
    assert auth_module.password_matches(old, "made with the defaults")
    assert not auth_module.password_matches(old, "something else")


@pytest.mark.timeout(60)
async def test_one_address_cycling_names_is_throttled(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each name fails once only (no lockout), yet the sixth attempt from one address within
    a second is refused before any hash."""
    assert api.gw.api is not None
    # The clock stands still: on a busy machine five password hashes can take over a second,
    # and the address's bucket would have a token again.
    now = api.gw.api.auth.clock()
    monkeypatch.setattr(api.gw.api.auth, "clock", lambda: now)
    codes = []
    for i in range(6):
        r = await api.anonymous.post(LOGIN, json={"username": f"n{i}", "password": "guess"})
        codes.append(r.status_code)
    assert codes[:5] == [401] * 5
    assert codes[5] == 429 and "too many login attempts" in r.json()["error"]
    assert api.gw.metrics.get("api.login.throttled") >= 1


@pytest.mark.timeout(60)
async def test_all_addresses_together_are_throttled_and_users_read_once_a_second(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.gw.api is not None
    auth = api.gw.api.auth
    now = [1000.0]
    monkeypatch.setattr(auth, "clock", lambda: now[0])
    auth._users_read_at = now[0] - 10.0
    auth._login_bucket = auth_module.TokenBucket(
        auth_module.LOGIN_RATE, auth_module.LOGIN_BURST, now[0]
    )
    reads: list[str] = []
    real = auth.store.load_records

    def counted(kind: str) -> Any:
        reads.append(kind)
        return real(kind)

    monkeypatch.setattr(auth.store, "load_records", counted)
    outcomes = []
    for i in range(11):  # a fresh address each time: only the overall bucket can refuse
        try:
            await auth.login(f"name{i}", "guess", f"10.0.0.{i}")
        except ApiError as e:
            outcomes.append(e.status)
    assert outcomes == [401] * 10 + [429]
    # The clock stood still: ten attempts read the users from the store once.
    assert reads.count(auth_module.USER) == 1
    now[0] += 1.0  # a second later: five more attempts may come, the users are read again
    with pytest.raises(ApiError) as e:
        await auth.login("later", "guess", "10.0.1.1")
    assert e.value.status == 401 and reads.count(auth_module.USER) == 2
    # The table of addresses is bounded.
    monkeypatch.setattr(auth_module, "MAX_ADDRESSES", 3)
    for i in range(5):
        auth._throttled(f"10.9.0.{i}")
    assert list(auth._address_buckets) == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]


async def test_a_stranger_gets_401_before_the_body_is_parsed(api: Api) -> None:
    bad_json = b'{"name": "broken'
    for path in ("/api/v1/units", "/api/v1/users", "/api/v1/auth/logout"):
        r = await api.anonymous.post(
            path, content=bad_json, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401, path
        assert r.json() == {"error": "missing or invalid bearer token", "field": None}
        assert r.headers["www-authenticate"] == 'Bearer realm="gb28181-gateway"'
    wrong = api.client("not-a-token")
    assert (await wrong.post("/api/v1/units", content=bad_json)).status_code == 401
    # With a token the body is parsed as before (and the role still checked).
    r = await api.admin.post(
        "/api/v1/units", content=bad_json, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert (await api.viewer.post("/api/v1/users", json={})).status_code == 403
    # The login, the OpenAPI document and the docs stay open.
    r = await api.anonymous.post(
        LOGIN, content=bad_json, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert (await api.anonymous.get("/api/v1/openapi.json")).status_code == 200
    assert (await api.anonymous.get("/api/v1/docs")).status_code == 200


async def test_a_stranger_never_reaches_the_body(api: Api) -> None:
    """The gate answers without calling receive: the body is never read."""
    assert api.gw.api is not None
    gate = auth_module.AuthGate(api.gw.api.app)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/units",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "app": api.gw.api.app,
    }
    await gate(scope, receive, send)
    assert sent[0]["status"] == 401


def _request(api: Api, path: str, query: bytes) -> Request:
    assert api.gw.api is not None
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": path,
            "headers": [],
            "query_string": query,
            "app": api.gw.api.app,
        }
    )


async def test_access_token_in_the_query_only_on_the_events_path(api: Api) -> None:
    dependency = auth_module.require("viewer")
    query = f"access_token={TOKENS['viewer']}".encode()
    who = await dependency(_request(api, "/api/v1/events", query))
    assert who.name == "viewer-token"
    for path in ("/api/v1/units/x/events", "/api/v1/devices/events", "/events"):
        with pytest.raises(ApiError) as e:
            await dependency(_request(api, path, query))
        assert e.value.status == 401, path
    r = await api.anonymous.get(f"/api/v1/units/events?{query.decode()}")
    assert r.status_code == 401


async def test_refused_writes_are_stored_within_a_budget(api: Api) -> None:
    for _ in range(audit.REFUSED_PER_MINUTE + 5):
        r = await api.viewer.post("/api/v1/users", json={"username": "x", "password": "y" * 9})
        assert r.status_code == 403
    await api.admin.post("/api/v1/auth/logout")
    entries = api.gw.store.load_audit()
    refused = [e for e in entries if e.outcome == "403"]
    assert len(refused) == audit.REFUSED_PER_MINUTE
    assert all(e.who == "viewer-token" for e in refused)
    assert api.gw.metrics.get("api.audit.suppressed") == 5
    # Writes that went through are all stored.
    assert [e.outcome for e in entries if e.who == "admin-token"] == ["204"]


def test_the_refused_budget_forgets_the_oldest_principals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "MAX_PRINCIPALS", 2)
    writes = audit.AuditWrites(app=None)  # type: ignore[arg-type]
    for who in ("a", "b", "c"):
        assert writes._within_budget(who, 0.0)
    assert list(writes._refused) == ["b", "c"]


async def test_security_headers(api: Api) -> None:
    for path in ("/", "/index.html", "/api/v1/auth/me", "/metrics", "/api/v1/docs", "/healthz"):
        r = await api.viewer.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["referrer-policy"] == "no-referrer", path
    csp = (await api.anonymous.get("/")).headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp and "'unsafe-inline'" in csp.split("style-src")[1]
    for path in ("/api/v1/docs", "/api/v1/auth/me", "/metrics"):
        assert "content-security-policy" not in (await api.viewer.get(path)).headers, path
    # A refusal before the app (401 from the gate) carries them too.
    assert (await api.anonymous.get("/api/v1/units")).headers["x-frame-options"] == "DENY"


def test_audit_is_a_pure_asgi_middleware(api: Api) -> None:
    assert api.gw.api is not None
    classes = [m.cls for m in api.gw.api.app.user_middleware]
    assert audit.AuditWrites in classes
    assert BaseHTTPMiddleware not in classes


async def test_two_adds_of_one_name_at_once_make_one_user(api: Api) -> None:
    assert api.gw.api is not None
    auth = api.gw.api.auth
    results = await asyncio.gather(
        auth.add_user("twin", "first password", "viewer"),
        auth.add_user("twin", "second password", "admin"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, ApiError)]
    assert len(errors) == 1 and errors[0].status == 409
    assert sum(1 for r in results if isinstance(r, dict)) == 1
