"""Shared fixtures: a gateway on 127.0.0.1 with an OS-picked port, and simulated devices."""

from __future__ import annotations

import asyncio
import atexit
import gc
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_timeout

from conformance.peers.device import SimDevice
from gateway.app import Gateway, configure_logging
from gateway.metrics import Metrics
from gateway.settings import Config, config_from_dict
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.redisrig import RedisServer

# Logs go to stderr (pytest shows them for failing tests); stdout stays for what CLIs print.
# Logging is configured once for the whole run, so the per-event-name rate limit is set as high
# as it goes: a failing test's captured log must not miss lines another test used up.
configure_logging(config_from_dict({"log": {"level": "info", "burst": 100_000}}))


HANG_DUMP_AFTER = 100.0  # seconds: before pytest-timeout's 120 s ends the run


def _dump_tasks() -> None:
    """A test (or its teardown) hangs: print every task of each running event loop, which
    pytest-timeout's thread stacks do not show (an idle loop shows only run_until_complete)."""
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():

            def dump(loop: asyncio.AbstractEventLoop = obj) -> None:
                print(f"--- tasks of {loop!r} after {HANG_DUMP_AFTER} s ---", file=sys.stderr)
                for task in asyncio.all_tasks(loop):
                    task.print_stack(file=sys.stderr)

            obj.call_soon_threadsafe(dump)


@pytest.fixture(autouse=True)
def _hang_dump() -> Any:
    timer = threading.Timer(HANG_DUMP_AFTER, _dump_tasks)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


STORE_ENV = "GB_TEST_STORE"
"""``GB_TEST_STORE=redis``: every gateway ``make_config`` builds keeps its store in Redis (one
``redis-server`` for the whole run, a key prefix per test folder) instead of SQLite, so the
same integration tests run on both backends (``make pytest-redis``)."""

_shared_redis: list[RedisServer] = []


def shared_redis() -> RedisServer:
    """One ``redis-server`` for the whole test run, started when first wanted, stopped at exit
    (tests that kill or wipe Redis start their own)."""
    if not _shared_redis:
        folder = Path(tempfile.mkdtemp(prefix="gb-test-redis-"))
        server = RedisServer(folder).start()
        _shared_redis.append(server)

        def stop() -> None:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
    return _shared_redis[0]


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    return shared_redis()


def redis_prefix(tmp_path: Path) -> str:
    """A key prefix of the test's own, the same for every gateway of one test (a restarted
    gateway finds what the first one stored), different between tests."""
    return f"t{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]}:"


def store_section(tmp_path: Path) -> dict[str, Any]:
    if os.environ.get(STORE_ENV, "sqlite") == "redis":
        return {
            "backend": "redis",
            "url": shared_redis().url,
            "prefix": redis_prefix(tmp_path),
            "path": str(tmp_path / "gw.db"),
            "flush_interval": 0.05,
        }
    return {"backend": "sqlite", "path": str(tmp_path / "gw.db"), "flush_interval": 0.05}


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "sip": {"host": "127.0.0.1", "port": 0},
        "store": store_section(tmp_path),
        "log": {"level": "warning"},
        "http": {"port": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def start(config: Config | None = None, **sections: dict[str, Any]) -> Gateway:
        gw = Gateway(config or make_config(tmp_path, **sections))
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.close()


@pytest.fixture
async def device_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


def sim(ep: Endpoint, gw: Gateway, device_id: str, transport: str = "udp", **kw: Any) -> SimDevice:
    return SimDevice(ep, device_id, Peer(transport, "127.0.0.1", gw.port), **kw)


class RawUdp(asyncio.DatagramProtocol):
    """A bare UDP socket for sending hand-made (or broken) bytes and reading the answers."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def recv(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


@pytest.fixture
async def raw_udp() -> AsyncIterator[RawUdp]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(RawUdp, local_addr=("127.0.0.1", 0))
    yield proto
    transport.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on the loop production uses (uvloop on Linux), not only on asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Linux
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


# -- parallel runs (pytest-xdist) -------------------------------------------------------------
# Each worker is a process of its own: it imports this file, so logging above is set up in every
# worker, and a test's captured log comes back with its report. What a worker writes to its own
# stdout is lost (execnet points it at /dev/null); its stderr is the run's stderr.


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool | None:
    """In an xdist worker, pytest-timeout's thread method prints the test's captured output
    (with the hang dump above) and every thread's stack to the terminal, which is the worker's
    lost stdout, then ends the worker (xdist reports the test as crashed and starts another).
    Point that stdout at stderr first, so the dump reaches the run's output."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None or settings.method != "thread":
        return None  # pytest-timeout's own timer

    def expire() -> None:
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(item)  # the real descriptors are back
        os.dup2(2, 1)
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        print(f"\n{item.nodeid} timed out in worker {worker}:", flush=True)
        pytest_timeout.timeout_timer(item, settings)  # prints, then os._exit(1)

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook
    timer.start()
    return True
