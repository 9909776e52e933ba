"""A gateway with its HTTP API on an OS-picked port, and clients holding each role's token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from tests.conftest import make_config

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789",
}
HTTP_TOKENS = [{"name": f"{role}-token", "role": role, "token": t} for role, t in TOKENS.items()]


@dataclass
class Api:
    """The gateway under test and HTTP clients for it: ``api.viewer``, ``api.operator``,
    ``api.admin`` (bearer tokens of those roles) and ``api.anonymous`` (none)."""

    gw: Gateway
    base: str
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30.0)
        self.clients[f"extra{len(self.clients)}"] = c
        return c

    @property
    def viewer(self) -> httpx.AsyncClient:
        return self.clients["viewer"]

    @property
    def operator(self) -> httpx.AsyncClient:
        return self.clients["operator"]

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.clients["admin"]

    @property
    def anonymous(self) -> httpx.AsyncClient:
        return self.clients["anonymous"]


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """``await start_api(**sections)``: a gateway (sections as in ``make_config``) with the
    three role tokens configured, started, with its clients."""
    started: list[Api] = []

    async def start(**sections: dict[str, Any]) -> Api:
        # Scrapes see each change at once (no reuse of the last rendering).
        http = {
            "port": 0,
            "tokens": HTTP_TOKENS,
            "metrics_min_interval": 0,
            **sections.pop("http", {}),
        }
        # These tests are not about overload: on a busy machine the load guard would shed the
        # simulated devices' new REGISTERs with 503 (a test asks for shedding by its section).
        sections.setdefault("overload", {"enabled": False})
        gw = Gateway(make_config(tmp_path, http=http, **sections))
        await gw.start()
        assert gw.api is not None
        api = Api(gw, f"http://127.0.0.1:{gw.api.port}")
        for role, token in TOKENS.items():
            api.clients[role] = httpx.AsyncClient(
                base_url=api.base, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
            )
        api.clients["anonymous"] = httpx.AsyncClient(base_url=api.base, timeout=30.0)
        started.append(api)
        return api

    yield start
    for api in started:
        for c in api.clients.values():
            await c.aclose()
        await api.gw.close()


@pytest.fixture
async def api(start_api: Callable[..., Awaitable[Api]]) -> Api:
    return await start_api()
