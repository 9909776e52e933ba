"""Who may do what through the HTTP API.

Three roles, ordered: ``viewer`` reads (never a device password), ``operator`` also writes
(units, device accounts, sharing, commands, sessions), ``admin`` also changes credentials, users,
tokens and uppers. Every request under ``/api/v1`` carries ``Authorization: Bearer <token>``,
where the token is one of:

* a token from the configuration (``[[http.tokens]]``: the token or its SHA-256);
* a token an admin created through the API (stored as its SHA-256 only, record kind ``token``);
* a console login (``POST /api/v1/auth/login`` with a user's name and password): a random
  token kept in memory for ``http.session_ttl`` seconds since its last use (a restart logs
  everyone out).

Users (record kind ``user``) have passwords hashed with argon2id. Hashing is slow on purpose, so
it runs in a thread, at most two at a time; a name that fails too often is refused for a while
(``LOGIN_FAILURES`` in ``LOGIN_WINDOW`` seconds) so a stranger cannot guess or burn the CPU.
Tokens are compared by their SHA-256, a dictionary lookup that reveals nothing about near misses.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Request

from gateway.api.errors import ApiError
from gateway.metrics import Metrics
from gateway.settings import HttpSection, Role
from gateway.store import Store

ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}
USER = "user"  # record kinds in the store
TOKEN = "token"
MAX_SESSIONS = 10_000
LOGIN_FAILURES = 5
LOGIN_WINDOW = 300.0
MAX_FAILURE_NAMES = 10_000

_hasher = PasswordHasher()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A bearer token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a user (console login) or a named token, with its role."""

    name: str
    role: Role
    kind: Literal["user", "token"]

    def may(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


@dataclass(slots=True)
class _Session:
    principal: Principal
    expires_at: float


class Authenticator:
    def __init__(
        self,
        settings: HttpSection,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._config_tokens: dict[str, Principal] = {}
        for t in settings.tokens:
            digest = t.token_sha256.lower() if t.token_sha256 else sha256_hex(t.token)
            self._config_tokens[digest] = Principal(t.name, t.role, "token")
        self.api_tokens: dict[str, dict[str, Any]] = {}  # name -> {role, sha256, created_at}
        self._by_digest: dict[str, Principal] = {}
        self.users: dict[str, dict[str, Any]] = {}  # username -> {role, hash, disabled, ...}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._hashing = asyncio.Semaphore(2)

    def load(self) -> None:
        self.users = dict(self.store.load_records(USER))
        self.api_tokens = dict(self.store.load_records(TOKEN))
        self._by_digest = {
            data["sha256"]: Principal(name, data["role"], "token")
            for name, data in self.api_tokens.items()
        }

    # -- tokens -----------------------------------------------------------------------------
    def config_token_names(self) -> list[tuple[str, Role]]:
        return [(p.name, p.role) for p in self._config_tokens.values()]

    def authenticate(self, token: str) -> Principal | None:
        digest = sha256_hex(token)
        found = self._config_tokens.get(digest) or self._by_digest.get(digest)
        if found is not None:
            return found
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self.clock()
        if session.expires_at <= now:
            del self._sessions[digest]
            return None
        user = self.users.get(session.principal.name)
        if user is None or user.get("disabled"):
            del self._sessions[digest]
            return None
        session.expires_at = now + self.settings.session_ttl
        self._sessions.move_to_end(digest)
        return session.principal

    def create_token(self, name: str, role: Role) -> str:
        token = new_token()
        digest = sha256_hex(token)
        data: dict[str, Any] = {"role": role, "sha256": digest, "created_at": self.clock()}
        self.api_tokens[name] = data
        self._by_digest[digest] = Principal(name, role, "token")
        self.store.save_record(TOKEN, name, data)
        return token

    def revoke_token(self, name: str) -> bool:
        data = self.api_tokens.pop(name, None)
        if data is None:
            return False
        self._by_digest.pop(data["sha256"], None)
        self.store.delete_record(TOKEN, name)
        return True

    # -- users and console logins ------------------------------------------------------------
    def _user(self, username: str) -> dict[str, Any] | None:
        user = self.users.get(username)
        if user is None:
            # Added by ``gb28181-gateway user add`` while the gateway runs: read the store again.
            self.users = dict(self.store.load_records(USER))
            user = self.users.get(username)
        return user

    def _locked(self, username: str) -> bool:
        now = self.clock()
        recent = [t for t in self._failures.get(username, ()) if now - t < LOGIN_WINDOW]
        return len(recent) >= LOGIN_FAILURES

    def _failed(self, username: str) -> None:
        now = self.clock()
        times = [t for t in self._failures.pop(username, []) if now - t < LOGIN_WINDOW]
        times.append(now)
        self._failures[username] = times[-LOGIN_FAILURES:]
        while len(self._failures) > MAX_FAILURE_NAMES:
            self._failures.popitem(last=False)

    async def login(self, username: str, password: str) -> tuple[str, Principal, float]:
        """A new session token for a user's name and password; ApiError 401/429 otherwise."""
        if self._locked(username):
            self.metrics.inc("api.login.locked_out")
            raise ApiError(429, f"too many failed logins for {username!r}; try again later")
        user = self._user(username)
        async with self._hashing:
            ok = user is not None and await asyncio.to_thread(
                password_matches, user["hash"], password
            )
        if not ok or user is None or user.get("disabled"):
            self._failed(username)
            self.metrics.inc("api.login.failed")
            raise ApiError(401, "wrong username or password", "password")
        self.metrics.inc("api.login.ok")
        token = new_token()
        principal = Principal(username, user["role"], "user")
        expires_at = self.clock() + self.settings.session_ttl
        self._sessions[sha256_hex(token)] = _Session(principal, expires_at)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, principal, expires_at

    def logout(self, token: str) -> None:
        self._sessions.pop(sha256_hex(token), None)

    def end_sessions_of(self, username: str) -> None:
        ended = [d for d, s in self._sessions.items() if s.principal.name == username]
        for digest in ended:
            del self._sessions[digest]

    async def add_user(self, username: str, password: str, role: Role) -> None:
        async with self._hashing:
            hashed = await asyncio.to_thread(hash_password, password)
        data = {"role": role, "hash": hashed, "disabled": False, "created_at": self.clock()}
        self.users[username] = data
        self.store.save_record(USER, username, data)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the request's principal, which must hold ``role`` or above."""

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.ctx.extras["auth"]
        token = bearer_token(request)
        if token is None and request.url.path.endswith("/events"):
            token = request.query_params.get("access_token")  # EventSource sends no headers
        principal = auth.authenticate(token) if token else None
        if principal is None:
            auth.metrics.inc("api.unauthenticated")
            raise ApiError(
                401,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="gb28181-gateway"'},
            )
        request.state.principal = principal
        if not principal.may(role):
            auth.metrics.inc("api.forbidden")
            raise ApiError(403, f"{principal.role} may not do this; {role} or above is needed")
        return principal

    return dependency


viewer = require("viewer")
operator = require("operator")
admin = require("admin")
