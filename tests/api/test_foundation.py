"""The HTTP server's foundation: health, offline docs, tokens and roles, logins, the error
shape, the body limit and the audit log."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import Api


async def test_health_docs_and_console_are_served(api: Api) -> None:
    c = api.anonymous
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    ready = await c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["sip"] is True
    spec = (await c.get("/api/v1/openapi.json")).json()
    assert "/api/v1/auth/login" in spec["paths"]
    docs = (await c.get("/api/v1/docs")).text
    assert "/api/v1/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    js = await c.get("/api/v1/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert (await c.get("/")).status_code == 200


async def test_tokens_roles_and_error_shape(api: Api) -> None:
    none = await api.anonymous.get("/api/v1/auth/me")
    assert none.status_code == 401 and none.json() == {
        "error": "missing or invalid bearer token",
        "field": None,
    }
    assert none.headers["www-authenticate"].startswith("Bearer")
    bad = await api.client("not-a-token").get("/api/v1/auth/me")
    assert bad.status_code == 401
    me = await api.operator.get("/api/v1/auth/me")
    assert me.json() == {"name": "operator-token", "role": "operator", "kind": "token"}
    assert api.gw.metrics.get("api.unauthenticated") == 2


async def test_login_logout_and_lockout(api: Api) -> None:
    assert api.gw.api is not None
    await api.gw.api.auth.add_user("alice", "correct horse", "operator")
    c = api.anonymous
    wrong = await c.post("/api/v1/auth/login", json={"username": "alice", "password": "nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "password"
    missing = await c.post("/api/v1/auth/login", json={"username": "alice"})
    assert missing.status_code == 422 and missing.json()["field"] == "password"
    assert "password" in missing.json()["error"]
    ok = await c.post("/api/v1/auth/login", json={"username": "alice", "password": "correct horse"})
    assert ok.status_code == 200 and ok.json()["role"] == "operator"
    session = api.client(ok.json()["token"])
    assert (await session.get("/api/v1/auth/me")).json()["name"] == "alice"
    assert (await session.post("/api/v1/auth/logout")).status_code == 204
    assert (await session.get("/api/v1/auth/me")).status_code == 401
    for _ in range(5):
        await c.post("/api/v1/auth/login", json={"username": "alice", "password": "nope"})
    locked = await c.post(
        "/api/v1/auth/login", json={"username": "alice", "password": "correct horse"}
    )
    assert locked.status_code == 429


async def test_body_limit(start_api) -> None:  # type: ignore[no-untyped-def]
    api = await start_api(http={"max_body_bytes": 4096})
    big = await api.admin.post("/api/v1/auth/logout", content=b"x" * 5000)
    assert big.status_code == 413 and "4096" in big.json()["error"]

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 1000

    # Chunked, no Content-Length: refused once the body read so far passes the limit.
    chunked = await api.anonymous.post("/api/v1/auth/login", content=chunks())
    assert chunked.status_code == 413


async def test_writes_are_audited_but_strangers_are_not_stored(api: Api) -> None:
    assert api.gw.api is not None
    await api.gw.api.auth.add_user("bob", "bobs password", "viewer")
    await api.anonymous.post(
        "/api/v1/auth/login", json={"username": "bob", "password": "bobs password"}
    )
    await api.viewer.post("/api/v1/auth/logout")
    for _ in range(20):
        await api.anonymous.post("/api/v1/auth/logout")
    entries = api.gw.store.load_audit()
    assert [(e.who, e.action, e.outcome) for e in entries] == [
        ("viewer-token", "POST /api/v1/auth/logout", "204"),
        ("bob", "POST /api/v1/auth/login", "200"),
    ]
    assert entries[0].source == "127.0.0.1"
    assert isinstance(api.base, str) and httpx.URL(api.base).port == api.gw.api.port


async def test_a_missing_body_is_named(api: Api) -> None:
    r = await api.anonymous.post("/api/v1/auth/login")
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert r.json()["error"].startswith("body: ")


async def test_an_unknown_name_costs_a_hash_like_a_known_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths verify an argon2 hash (the answer's timing does not reveal which names
    exist); counted as failed logins. The login's thread runs ``_check``, which looks up
    ``password_matches`` in the module, so the spy sees both."""
    import gateway.api.auth as auth_module

    calls: list[str] = []
    real = auth_module.password_matches

    def spy(stored: str, password: str) -> bool:
        calls.append(stored)
        return real(stored, password)

    monkeypatch.setattr(auth_module, "password_matches", spy)
    assert api.gw.api is not None
    await api.gw.api.auth.add_user("carol", "carols password", "viewer")
    for name in ("carol", "nobody"):
        r = await api.anonymous.post(
            "/api/v1/auth/login", json={"username": name, "password": "wrong one"}
        )
        assert r.status_code == 401
    assert len(calls) == 2 and all(c.startswith("$argon2") for c in calls)
    assert calls[0] != calls[1]  # the user's hash, then the stand-in for an unknown name
    assert api.gw.metrics.get("api.login.failed") == 2
