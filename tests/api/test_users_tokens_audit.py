"""Users, API tokens and the audit log through the HTTP API, and ``gb28181-gateway user``."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from gateway.api.auth import USERS_RELOAD
from gateway.cli import main
from tests.api.conftest import Api

USERS = "/api/v1/users"
TOKENS = "/api/v1/tokens"
AUDIT = "/api/v1/audit"


async def _login(api: Api, username: str, password: str) -> str:
    r = await api.anonymous.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def _is_error(body: object) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error", "field"}
        and isinstance(body["error"], str)
        and (body["field"] is None or isinstance(body["field"], str))
    )


async def test_roles_are_enforced(api: Api) -> None:
    for client in (api.viewer, api.operator):
        for method, path, body in (
            ("GET", USERS, None),
            ("POST", USERS, {"username": "eve", "password": "long enough", "role": "admin"}),
            ("PATCH", f"{USERS}/eve", {"role": "admin"}),
            ("DELETE", f"{USERS}/eve", None),
            ("GET", TOKENS, None),
            ("POST", TOKENS, {"name": "mine", "role": "admin"}),
            ("DELETE", f"{TOKENS}/admin-token", None),
            ("GET", AUDIT, None),
        ):
            r = await client.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert _is_error(r.json()) and "admin" in r.json()["error"]
    assert (await api.anonymous.get(USERS)).status_code == 401
    # Nothing was made by the refused requests.
    assert (await api.admin.get(USERS)).json() == {"total": 0, "items": []}
    names = [t["name"] for t in (await api.admin.get(TOKENS)).json()["items"]]
    assert names == ["admin-token", "operator-token", "viewer-token"]


async def test_users_create_change_delete_and_validation(api: Api) -> None:
    r = await api.admin.post(USERS, json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 201
    body = r.json()
    assert body["username"] == "alice" and body["role"] == "viewer" and not body["disabled"]
    assert "password" not in body and "hash" not in body and isinstance(body["created_at"], float)
    dup = await api.admin.post(USERS, json={"username": "alice", "password": "another one"})
    assert dup.status_code == 409 and dup.json()["field"] == "username"
    for bad, field in (
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "has space", "password": "long enough"}, "username"),
        ({"username": "x" * 65, "password": "long enough"}, "username"),
        ({"username": "", "password": "long enough"}, "username"),
        ({"username": "bob", "password": "long enough", "role": "root"}, "role"),
        ({"username": "bob", "password": "long enough", "admin": True}, "admin"),
    ):
        r = await api.admin.post(USERS, json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, (bad, r.text)
    listed = (await api.admin.get(USERS)).json()
    assert listed["total"] == 1 and listed["items"][0]["username"] == "alice"
    assert "hash" not in listed["items"][0]

    token = await _login(api, "alice", "correct horse")
    alice = api.client(token)
    assert (await alice.get("/api/v1/auth/me")).json()["role"] == "viewer"
    # A new password works at once and ends the sessions opened with the old one.
    r = await api.admin.patch(f"{USERS}/alice", json={"password": "battery staple"})
    assert r.status_code == 200 and "hash" not in r.json()
    assert (await alice.get("/api/v1/auth/me")).status_code == 401
    alice = api.client(await _login(api, "alice", "battery staple"))
    assert (await alice.get("/api/v1/auth/me")).status_code == 200
    # A role change ends her sessions; she logs in again with the new role.
    r = await api.admin.patch(f"{USERS}/alice", json={"role": "operator"})
    assert r.status_code == 200 and r.json()["role"] == "operator"
    assert (await alice.get("/api/v1/auth/me")).status_code == 401
    again = api.client(await _login(api, "alice", "battery staple"))
    assert (await again.get("/api/v1/auth/me")).json()["role"] == "operator"
    assert (await api.admin.patch(f"{USERS}/nobody", json={"role": "admin"})).status_code == 404
    short = await api.admin.patch(f"{USERS}/alice", json={"password": "1234567"})
    assert short.status_code == 422 and short.json()["field"] == "password"
    # Deleting her ends her session and her logins.
    assert (await api.admin.delete(f"{USERS}/alice")).status_code == 204
    assert (await again.get("/api/v1/auth/me")).status_code == 401
    gone = await api.anonymous.post(
        "/api/v1/auth/login", json={"username": "alice", "password": "battery staple"}
    )
    assert gone.status_code == 401
    assert (await api.admin.delete(f"{USERS}/alice")).status_code == 404
    # What the store holds has the argon2 hash, never the password.
    await api.gw.store.flush()
    assert api.gw.store.load_records("user") == []


async def test_disabling_a_user_ends_their_session(api: Api) -> None:
    await api.admin.post(
        USERS, json={"username": "carol", "password": "carols password", "role": "operator"}
    )
    carol = api.client(await _login(api, "carol", "carols password"))
    assert (await carol.get("/api/v1/auth/me")).status_code == 200
    r = await api.admin.patch(f"{USERS}/carol", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert (await carol.get("/api/v1/auth/me")).status_code == 401
    refused = await api.anonymous.post(
        "/api/v1/auth/login", json={"username": "carol", "password": "carols password"}
    )
    assert refused.status_code == 401
    await api.admin.patch(f"{USERS}/carol", json={"disabled": False})
    await _login(api, "carol", "carols password")


async def test_the_last_enabled_admin_is_kept(api: Api) -> None:
    r = await api.admin.post(
        USERS, json={"username": "root", "password": "root password", "role": "admin"}
    )
    assert r.status_code == 201
    root = api.client(await _login(api, "root", "root password"))
    for method, body in (
        ("PATCH", {"role": "operator"}),
        ("PATCH", {"disabled": True}),
        ("DELETE", None),
    ):
        for client in (root, api.admin):
            r = await client.request(method, f"{USERS}/root", json=body)
            assert r.status_code == 409 and "last enabled admin" in r.json()["error"], r.text
    # With a second admin the first may step down; then the second is the last one.
    second = {"username": "root2", "password": "root2 password", "role": "admin"}
    assert (await root.post(USERS, json=second)).status_code == 201
    assert (await root.patch(f"{USERS}/root", json={"role": "viewer"})).status_code == 200
    assert (await root.get("/api/v1/auth/me")).status_code == 401  # her session ended
    assert (await api.admin.delete(f"{USERS}/root2")).status_code == 409
    # A disabled admin does not count.
    await api.admin.patch(f"{USERS}/root", json={"role": "admin", "disabled": True})
    assert (await api.admin.patch(f"{USERS}/root2", json={"disabled": True})).status_code == 409
    assert (await api.admin.delete(f"{USERS}/root")).status_code == 204


async def test_tokens_create_use_and_revoke(api: Api) -> None:
    r = await api.admin.post(TOKENS, json={"name": "ci-bot", "role": "operator"})
    assert r.status_code == 201
    body = r.json()
    assert body["name"] == "ci-bot" and body["role"] == "operator" and body["source"] == "api"
    secret = body["token"]
    assert len(secret) >= 40
    bot = api.client(secret)
    assert (await bot.get("/api/v1/auth/me")).json() == {
        "name": "ci-bot",
        "role": "operator",
        "kind": "token",
    }
    assert (await bot.get(TOKENS)).status_code == 403  # operator: no credentials
    listed = (await api.admin.get(TOKENS)).json()["items"]
    mine = [t for t in listed if t["name"] == "ci-bot"]
    assert mine == [
        {"name": "ci-bot", "role": "operator", "source": "api", "created_at": body["created_at"]}
    ]
    assert {t["source"] for t in listed if t["name"] != "ci-bot"} == {"config"}
    assert all("token" not in t and "sha256" not in t for t in listed)
    # Stored hashed: the secret is nowhere in the store.
    await api.gw.store.flush()
    stored = dict(api.gw.store.load_records("token"))
    assert secret not in repr(stored) and len(stored["ci-bot"]["sha256"]) == 64
    for bad, status in (
        ({"name": "ci-bot", "role": "viewer"}, 409),
        ({"name": "admin-token", "role": "viewer"}, 409),
        ({"name": "a b", "role": "viewer"}, 422),
        ({"name": "x", "role": "god"}, 422),
    ):
        r = await api.admin.post(TOKENS, json=bad)
        assert r.status_code == status and _is_error(r.json()), (bad, r.text)
    conf = await api.admin.delete(f"{TOKENS}/operator-token")
    assert conf.status_code == 409 and "configuration" in conf.json()["error"]
    assert (await api.operator.get("/api/v1/auth/me")).status_code == 200
    assert (await api.admin.delete(f"{TOKENS}/ci-bot")).status_code == 204
    assert (await bot.get("/api/v1/auth/me")).status_code == 401  # at once
    assert (await api.admin.delete(f"{TOKENS}/ci-bot")).status_code == 404


async def test_audit_lists_writes_and_refusals(api: Api) -> None:
    await api.admin.post(USERS, json={"username": "dave", "password": "daves password"})
    await api.admin.patch(f"{USERS}/dave", json={"password": "daves new password"})
    await api.operator.post(TOKENS, json={"name": "sneaky", "role": "admin"})  # 403
    await api.viewer.delete(f"{USERS}/dave")  # 403
    await api.admin.get(USERS)  # a read: not audited
    r = await api.admin.get(AUDIT)
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 4
    got = [(e["who"], e["action"], e["outcome"], e["target"]) for e in page["items"]]
    assert got == [
        ("viewer-token", "DELETE /api/v1/users/{username}", "403", "username=dave"),
        ("operator-token", "POST /api/v1/tokens", "403", ""),
        ("admin-token", "PATCH /api/v1/users/{username}", "200", "username=dave"),
        ("admin-token", "POST /api/v1/users", "201", ""),
    ]
    newest = page["items"][0]
    assert newest["source"] == "127.0.0.1" and newest["role"] == "viewer"
    assert isinstance(newest["at"], float) and isinstance(newest["id"], int)
    assert page["items"][3]["detail"] == "username=dave role=viewer"
    assert page["items"][2]["detail"] == "password changed"
    assert "password" not in repr([e for e in page["items"]]).replace("password changed", "")
    # Filters and paging.
    refused = (await api.admin.get(AUDIT, params={"who": "TOKEN", "action": "users"})).json()
    assert refused["total"] == 3
    assert [e["who"] for e in refused["items"]] == ["viewer-token", "admin-token", "admin-token"]
    second = (await api.admin.get(AUDIT, params={"offset": 1, "limit": 2})).json()
    assert [e["id"] for e in second["items"]] == [e["id"] for e in page["items"][1:3]]
    filtered = (await api.admin.get(AUDIT, params={"who": "admin", "offset": 1})).json()
    assert filtered["total"] == 2 and [e["action"] for e in filtered["items"]] == [
        "POST /api/v1/users"
    ]
    assert (await api.admin.get(AUDIT, params={"offset": 100})).json()["items"] == []
    assert (await api.admin.get(AUDIT, params={"limit": 0})).status_code == 422


async def cli(args: list[str]) -> int:
    """``gb28181-gateway ARGS`` (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(main, args)


async def test_cli_user_add_then_login_over_http(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first admin comes from the command line, while the gateway runs."""
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "gw.db"}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("first admin pw\n"))
    args = ["user", "add", "boss", "--role", "admin", "--password-stdin", "--config", str(cfg)]
    assert await cli(args) == 0
    assert await cli(args) == 1  # exists
    assert api.gw.api is not None
    auth = api.gw.api.auth
    auth._users_read_at -= USERS_RELOAD  # a login re-reads the users at most once a second
    token = await _login(api, "boss", "first admin pw")
    boss = api.client(token)
    assert (await boss.get("/api/v1/auth/me")).json() == {
        "name": "boss",
        "role": "admin",
        "kind": "user",
    }
    r = await boss.post(USERS, json={"username": "helper", "password": "helper password"})
    assert r.status_code == 201
    await api.gw.store.flush()
    capsys.readouterr()
    assert await cli(["user", "list", "--json", "--config", str(cfg)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"]) for u in listed] == [
        ("boss", "admin"),
        ("helper", "viewer"),
    ]
    # A new password from the command line: the old one stops working, the new one works.
    monkeypatch.setattr("sys.stdin", io.StringIO("second admin pw\n"))
    assert await cli(["user", "passwd", "boss", "--password-stdin", "--config", str(cfg)]) == 0
    auth._users_read_at -= USERS_RELOAD
    bad = await api.anonymous.post(
        "/api/v1/auth/login", json={"username": "boss", "password": "first admin pw"}
    )
    assert bad.status_code == 401
    # The session opened with the old password has ended (the users were read again).
    assert (await boss.get("/api/v1/auth/me")).status_code == 401
    boss = api.client(await _login(api, "boss", "second admin pw"))
    # Disabled from the command line: logins are refused and open sessions end once the
    # gateway reads the users again (at most USERS_RELOAD seconds later).
    assert await cli(["user", "disable", "boss", "--config", str(cfg)]) == 0
    auth._users_read_at -= USERS_RELOAD
    bad = await api.anonymous.post(
        "/api/v1/auth/login", json={"username": "boss", "password": "second admin pw"}
    )
    assert bad.status_code == 401
    assert (await boss.get("/api/v1/auth/me")).status_code == 401
    assert await cli(["user", "passwd", "nobody", "--password-stdin", "--config", str(cfg)]) == 1
    assert await cli(["user", "add", "bad name", "--config", str(cfg)]) == 2


def test_cli_user_prompts_twice_and_refuses_what_it_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "users.db"}"\n')
    assert main(["user", "list", "--config", str(cfg)]) == 0
    assert "0 users" in capsys.readouterr().out
    assert not (tmp_path / "users.db").exists()  # listing creates no store
    typed = iter(["first try!", "second try"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert main(["user", "add", "erin", "--role", "operator", "--config", str(cfg)]) == 1
    assert "differ" in capsys.readouterr().err
    typed = iter(["same words", "same words"])
    assert main(["user", "add", "erin", "--role", "operator", "--config", str(cfg)]) == 0
    typed = iter(["short", "short"])
    assert main(["user", "passwd", "erin", "--config", str(cfg)]) == 2
    assert "at least 8" in capsys.readouterr().err
    assert main(["user", "disable", "erin", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["user", "list", "--config", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "erin" in table and "operator" in table and "disabled" in table
    assert main(["user", "enable", "erin", "--config", str(cfg)]) == 0
    assert main(["user", "list", "--json", "--config", str(cfg)]) == 0
    (erin,) = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert erin["username"] == "erin" and erin["disabled"] is False and "hash" not in erin
    memory = tmp_path / "memory.toml"
    memory.write_text('[store]\nbackend = "memory"\n')
    assert main(["user", "list", "--config", str(memory)]) == 2
