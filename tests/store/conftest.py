"""Fixtures of the store's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.redisrig import RedisServer


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own, which it may kill and wipe."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
