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
(``LOGIN_FAILURES`` in ``LOGIN_WINDOW`` seconds) so a stranger cannot guess or burn the CPU, and
login attempts are rate limited before any hash, all together and per client address (429).
A session remembers its user's hash: a new password (API or command line) ends it.
Tokens are compared by their SHA-256, a dictionary lookup that reveals nothing about near misses.

Users and API tokens are managed by an admin (``users.py``, ``tokens.py``) or, for users, from the
command line (``gb28181-gateway user ...``, which writes the store directly, running gateway or
not). The users are therefore read from the store again by logins (at most once a second) and,
for open sessions, at most every ``USERS_RELOAD`` seconds: a user disabled (or given a new
password) from the command line loses their sessions within that time. Changing a user's
password or role or disabling them ends their sessions at once when done through the API; the
last enabled admin user can be neither demoted, disabled nor deleted (409), so the console
always has someone who can manage it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import ApiError, error_body
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
MAX_USERS = 10_000
MAX_API_TOKENS = 1_000
USERS_RELOAD = 5.0  # seconds between re-reads of the users while sessions are used
MIN_PASSWORD = 8
MAX_PASSWORD = 256
# User and token names: 1-64 ASCII letters, digits and ``._-@``.
NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)

# Explicit argon2id parameters: OWASP's minimum (19 MiB, 2 passes, one lane) costs a few
# times less CPU than the library's defaults (64 MiB, 3 passes, 4 lanes); hashes made with other
# parameters still verify, since argon2 keeps them in the hash.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Login attempts (before any hash): all together, and per client address.
LOGIN_RATE = 5.0  # a second, all addresses
LOGIN_BURST = 10.0
ADDRESS_RATE = 1.0  # a second, one address
ADDRESS_BURST = 5.0
MAX_ADDRESSES = 10_000
USERS_REREAD = 1.0  # seconds: a login re-reads the users from the store at most this often
# Logins hash one at a time (argon2 is slow on purpose: two at once would take both cores of a
# small machine from the SIP side); beyond this many waiting, a login is refused with 503.
MAX_LOGINS_WAITING = 16
_DUMMY: list[str] = []


def _check(stored_hash: str | None, password: str) -> bool:
    """In a thread: the password against the user's hash, or (no such user) against a hash
    made once, so that both cost the same; the latter is always False."""
    if stored_hash is None:
        if not _DUMMY:
            _DUMMY.append(_hasher.hash(secrets.token_hex(16)))
        password_matches(_DUMMY[0], password)
        return False
    return password_matches(stored_hash, password)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def valid_name(name: str) -> bool:
    """Whether ``name`` may name a user or an API token (1-64 of ``A-Za-z0-9._-@``)."""
    return _NAME.fullmatch(name) is not None


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be a user's password, or None."""
    if len(password) < MIN_PASSWORD:
        return f"must be at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"must be at most {MAX_PASSWORD} characters"
    if "\x00" in password:
        return "must not contain NUL"
    return None


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
    password_hash: str  # the user's hash at login: a new password ends the session


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` spends one if there is one."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def user_view(username: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a user: never the password hash."""
    return {
        "username": username,
        "role": data.get("role"),
        "disabled": bool(data.get("disabled")),
        "created_at": data.get("created_at"),
    }


class Authenticator:
    # What ``gb28181-gateway user`` needs to write users as the API does (it reaches this
    # module only through ``gateway.api``'s public face).
    USER_KIND = USER
    valid_name = staticmethod(valid_name)
    password_problem = staticmethod(password_problem)
    user_view = staticmethod(user_view)

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
        self._hashing = asyncio.Semaphore(1)
        self._logins_waiting = 0
        self._users_read_at = -USERS_RELOAD
        self._login_bucket = TokenBucket(LOGIN_RATE, LOGIN_BURST, clock())
        self._address_buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def load(self) -> None:
        self.reload_users()
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
        if now - self._users_read_at >= USERS_RELOAD:
            self.reload_users()  # the command line may have disabled someone
        user = self.users.get(session.principal.name)
        if (
            user is None
            or user.get("disabled")
            or user.get("role") != session.principal.role
            or user.get("hash") != session.password_hash
        ):
            del self._sessions[digest]
            return None
        session.expires_at = now + self.settings.session_ttl
        self._sessions.move_to_end(digest)
        return session.principal

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token by name: the configured ones (``source`` "config") then the API's."""
        items: list[dict[str, Any]] = [
            {"name": name, "role": role, "source": "config", "created_at": None}
            for name, role in sorted(self.config_token_names())
        ]
        items += [
            {"name": name, "role": d["role"], "source": "api", "created_at": d.get("created_at")}
            for name, d in sorted(self.api_tokens.items())
        ]
        return items

    def create_token(self, name: str, role: Role) -> str:
        """A new API token named ``name`` (shown once; only its SHA-256 is kept). ApiError 409
        when the name is taken (by a configured token too) or there are too many."""
        if not valid_name(name):
            raise ApiError(422, "name: 1-64 letters, digits or ._-@", "name")
        if name in self.api_tokens or name in {n for n, _ in self.config_token_names()}:
            raise ApiError(409, f"name: a token named {name!r} exists", "name")
        if len(self.api_tokens) >= MAX_API_TOKENS:
            raise ApiError(409, f"name: at most {MAX_API_TOKENS} API tokens", "name")
        token = new_token()
        digest = sha256_hex(token)
        data: dict[str, Any] = {"role": role, "sha256": digest, "created_at": self.clock()}
        self.api_tokens[name] = data
        self._by_digest[digest] = Principal(name, role, "token")
        self.store.save_record(TOKEN, name, data)
        return token

    def revoke_token(self, name: str) -> bool:
        """Forget an API token at once (its next request gets 401). ApiError 409 for a token
        from the configuration file (remove it there); False when there is no such token."""
        if name not in self.api_tokens and name in {n for n, _ in self.config_token_names()}:
            raise ApiError(409, f"name: token {name!r} is in the configuration file", "name")
        data = self.api_tokens.pop(name, None)
        if data is None:
            return False
        self._by_digest.pop(data["sha256"], None)
        self.store.delete_record(TOKEN, name)
        return True

    # -- users and console logins ------------------------------------------------------------
    def reload_users(self) -> None:
        """Read the users from the store (the command line writes there while we run)."""
        self.users = dict(self.store.load_records(USER))
        self._users_read_at = self.clock()

    def _user(self, username: str) -> dict[str, Any] | None:
        # Added, disabled or given a new password by ``gb28181-gateway user ...`` while the
        # gateway runs: read the store again, but at most once every USERS_REREAD seconds (a
        # stranger's attempts must not each cost a read of every user).
        if self.clock() - self._users_read_at >= USERS_REREAD:
            self.reload_users()
        return self.users.get(username)

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

    def _throttled(self, address: str) -> bool:
        """Whether a login attempt from ``address`` is over the rate: its own bucket (kept for
        the :data:`MAX_ADDRESSES` latest addresses) or the one of all addresses together."""
        now = self.clock()
        bucket = self._address_buckets.get(address)
        if bucket is None:
            bucket = self._address_buckets[address] = TokenBucket(ADDRESS_RATE, ADDRESS_BURST, now)
            while len(self._address_buckets) > MAX_ADDRESSES:
                self._address_buckets.popitem(last=False)
        else:
            self._address_buckets.move_to_end(address)
        return not (bucket.take(now) and self._login_bucket.take(now))

    async def login(
        self, username: str, password: str, address: str = ""
    ) -> tuple[str, Principal, float]:
        """A new session token for a user's name and password; ApiError 401/429 otherwise."""
        if self._throttled(address):
            self.metrics.inc("api.login.throttled")
            raise ApiError(429, "too many login attempts; try again in a few seconds")
        if self._locked(username):
            self.metrics.inc("api.login.locked_out")
            raise ApiError(429, f"too many failed logins for {username!r}; try again later")
        if self._logins_waiting >= MAX_LOGINS_WAITING:
            self.metrics.inc("api.login.busy")
            raise ApiError(503, "too many logins at once; try again in a moment")
        self._logins_waiting += 1
        try:
            async with self._hashing:
                user = self._user(username)
                # An unknown name costs the same hash as a known one: the answer's timing
                # does not tell which names exist.
                stored = user["hash"] if user is not None else None
                ok = await asyncio.to_thread(_check, stored, password)
        finally:
            self._logins_waiting -= 1
        if not ok or user is None or user.get("disabled"):
            self._failed(username)
            self.metrics.inc("api.login.failed")
            raise ApiError(401, "wrong username or password", "password")
        self.metrics.inc("api.login.ok")
        token = new_token()
        principal = Principal(username, user["role"], "user")
        expires_at = self.clock() + self.settings.session_ttl
        self._sessions[sha256_hex(token)] = _Session(principal, expires_at, user["hash"])
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, principal, expires_at

    def logout(self, token: str) -> None:
        self._sessions.pop(sha256_hex(token), None)

    def end_sessions_of(self, username: str) -> None:
        ended = [d for d, s in self._sessions.items() if s.principal.name == username]
        for digest in ended:
            del self._sessions[digest]

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(hash_password, password)

    def list_users(self) -> list[dict[str, Any]]:
        """Every user by name: {username, role, disabled, created_at} (never the hash)."""
        self.reload_users()
        return [user_view(name, data) for name, data in sorted(self.users.items())]

    def _enabled_admins(self) -> set[str]:
        return {
            n for n, d in self.users.items() if d.get("role") == "admin" and not d.get("disabled")
        }

    def _keep_an_admin(self, username: str, role: str, disabled: bool) -> None:
        """ApiError 409 when ``username`` is the last enabled admin and would stop being one."""
        admins = self._enabled_admins()
        if admins == {username} and (role != "admin" or disabled):
            raise ApiError(409, f"{username!r} is the last enabled admin", "username")

    async def add_user(self, username: str, password: str, role: Role) -> dict[str, Any]:
        """Create a user; ApiError 422 for a bad name or password, 409 when the name is taken."""
        if not valid_name(username):
            raise ApiError(422, "username: 1-64 letters, digits or ._-@", "username")
        problem = password_problem(password)
        if problem is not None:
            raise ApiError(422, f"password: {problem}", "password")
        self.reload_users()
        if username in self.users:
            raise ApiError(409, f"username: user {username!r} exists", "username")
        if len(self.users) >= MAX_USERS:
            raise ApiError(409, f"username: at most {MAX_USERS} users", "username")
        hashed = await self._hash(password)
        self.reload_users()  # another add of this name may have finished while we hashed
        if username in self.users:
            raise ApiError(409, f"username: user {username!r} exists", "username")
        if len(self.users) >= MAX_USERS:
            raise ApiError(409, f"username: at most {MAX_USERS} users", "username")
        data = {"role": role, "hash": hashed, "disabled": False, "created_at": self.clock()}
        self.users[username] = data
        self.store.save_record(USER, username, data)
        return user_view(username, data)

    async def update_user(
        self,
        username: str,
        *,
        password: str | None = None,
        role: Role | None = None,
        disabled: bool | None = None,
    ) -> dict[str, Any]:
        """Change a user's password, role or disabled flag. A new password, a new role or
        disabling ends their sessions. ApiError 404 (no such user), 409 (the last enabled
        admin), 422 (password)."""
        hashed: str | None = None
        if password is not None:
            problem = password_problem(password)
            if problem is not None:
                raise ApiError(422, f"password: {problem}", "password")
            if username not in self.users:
                self.reload_users()
            if username not in self.users:
                raise ApiError(404, f"no user {username!r}", "username")
            hashed = await self._hash(password)
        # From here on nothing awaits: the checks and the change see the same users.
        self.reload_users()
        current = self.users.get(username)
        if current is None:
            raise ApiError(404, f"no user {username!r}", "username")
        new_role = role if role is not None else current["role"]
        new_disabled = disabled if disabled is not None else bool(current.get("disabled"))
        self._keep_an_admin(username, new_role, new_disabled)
        data = dict(current)
        if hashed is not None:
            data["hash"] = hashed
        data["role"] = new_role
        data["disabled"] = new_disabled
        self.users[username] = data
        self.store.save_record(USER, username, data)
        if (
            new_role != current["role"]
            or (new_disabled and not current.get("disabled"))
            or hashed is not None
        ):
            self.end_sessions_of(username)
        return user_view(username, data)

    def delete_user(self, username: str) -> None:
        """Remove a user and end their sessions; ApiError 404, or 409 for the last admin."""
        self.reload_users()
        if username not in self.users:
            raise ApiError(404, f"no user {username!r}", "username")
        self._keep_an_admin(username, "-", True)
        del self.users[username]
        self.store.delete_record(USER, username)
        self.end_sessions_of(username)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


UNAUTHENTICATED = "missing or invalid bearer token"
WWW_AUTHENTICATE = 'Bearer realm="gb28181-gateway"'
EVENTS_PATH = "/api/v1/events"
"""The one path where the token may come as ``?access_token=`` (a browser's EventSource
sends no headers)."""


def request_token(scope_path: str, header_token: str | None, query_token: str | None) -> str | None:
    """The request's token: its bearer token, or on :data:`EVENTS_PATH` only ``access_token``."""
    if header_token is None and scope_path == EVENTS_PATH:
        return query_token
    return header_token


def authenticator(request: Request) -> Authenticator:
    """The API server's :class:`Authenticator` (``ctx.extras["auth"]``)."""
    auth: Authenticator = request.app.state.ctx.extras["auth"]
    return auth


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the request's principal, which must hold ``role`` or above."""

    async def dependency(request: Request) -> Principal:
        auth = authenticator(request)
        # Under /api/v1/ the gate has authenticated the request already; elsewhere (a private
        # /metrics) it is done here.
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            token = request_token(
                request.url.path, bearer_token(request), request.query_params.get("access_token")
            )
            principal = auth.authenticate(token) if token else None
        if principal is None:
            auth.metrics.inc("api.unauthenticated")
            raise ApiError(401, UNAUTHENTICATED, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        request.state.principal = principal
        if not principal.may(role):
            auth.metrics.inc("api.forbidden")
            raise ApiError(403, f"{principal.role} may not do this; {role} or above is needed")
        return principal

    return dependency


viewer = require("viewer")
operator = require("operator")
admin = require("admin")


_OPEN_PATHS = ("/api/v1/openapi.json",)


def _needs_token(method: str, path: str) -> bool:
    """Whether the gate asks this request for a token: everything under ``/api/v1/`` but the
    login, the OpenAPI document and the docs."""
    if not path.startswith("/api/v1/"):
        return False
    if path == "/api/v1/auth/login" and method == "POST":
        return False
    return not (path in _OPEN_PATHS or path.startswith("/api/v1/docs"))


class AuthGate:
    """A pure ASGI middleware: a request under ``/api/v1/`` without a token the
        :class:`Authenticator` accepts is answered 401 before its body is read (FastAPI parses a
        body before the route's dependencies run, so a stranger's 5 MB JSON would cost a parse and
        bad JSON would get 422). The principal it found is left in the request's state for the
    route's role dependency, which checks the role."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _needs_token(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        header: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    header = rest.strip()
                break
        query: str | None = None
        if header is None and scope["path"] == EVENTS_PATH:
            found = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token")
            query = found[-1] if found else None
        token = request_token(scope["path"], header, query)
        auth: Authenticator = scope["app"].state.ctx.extras["auth"]
        principal = auth.authenticate(token) if token else None
        if principal is not None:
            # The route's role dependency takes it from here instead of authenticating again.
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)
            return
        auth.metrics.inc("api.unauthenticated")
        response = JSONResponse(
            error_body(UNAUTHENTICATED),
            status_code=401,
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
        await response(scope, receive, send)
