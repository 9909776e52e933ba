"""A real redis-server per test (tests/redisrig.py), never a system one: a test starts from an
empty Redis, whatever the tests before it left there (leases, upper state, devices)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redisrig import REDIS_SERVER, RedisServer


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists() and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
