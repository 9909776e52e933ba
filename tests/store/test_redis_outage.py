"""Redis killed for :data:`OUTAGE_SECONDS` under a running gateway (issue 18, "killing Redis
for 30 s and bringing it back loses nothing that was acknowledged"), and what the gateway says
meanwhile.

A gateway process on Redis with devices registered and keeping alive: Redis is SIGKILLed; the
gateway logs the outage once, ``/readyz`` answers 503 with a message, the devices stay online
(no false offline: keepalives need no store), the API keeps acknowledging writes (queued).
Redis comes back (its AOF, ``appendfsync always``, keeps what it acknowledged): the queue lands
by itself, the recovery is logged once. Then the gateway is SIGKILLed and a fresh one on the
same Redis must hold everything acknowledged: the devices, the units and accounts made before
and during the outage.

In-process, with Redis down long enough that ``max_queued_writes`` are waiting: the API answers
503 naming the store, and a REGISTER gets no 200 (its binding could not be queued).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from conformance.peers.device import SimDevice
from gateway.app import Gateway
from gateway.sip import Endpoint, Peer
from gateway.store import RedisStore
from tests.conftest import make_config, sim, wait_for
from tests.gateway_process import GatewayProcess
from tests.redisrig import RedisServer

OUTAGE_SECONDS = 30.0
"""How long Redis stays down (the issue's figure)."""
ADMIN = "admin-token-0123456789"
DEVICES = [f"3402000000132000{n:04d}" for n in range(1, 6)]
PREFIX = "outage:"


def sections(server: RedisServer) -> dict[str, dict[str, Any]]:
    return {
        "store": {"backend": "redis", "url": server.url, "prefix": PREFIX, "flush_interval": 0.05},
        "cluster": {"node_id": "n1"},
        "keepalive": {"interval": 1.0, "timeout_count": 3, "check_interval": 0.2},
        "downlink": {"sync_on_register": False, "catalog_subscription": False},
        "http": {"port": 0, "tokens": [{"name": "admin", "role": "admin", "token": ADMIN}]},
        "overload": {"enabled": False},
    }


def client(gp: GatewayProcess) -> httpx.AsyncClient:
    started = next(e for e in gp.events if e.get("event") == "gateway.started")
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{started['http_port']}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10.0,
    )


async def make_unit(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """A unit and one account in it: (unit ID, device ID), both acknowledged (201)."""
    unit = await http.post(
        "/api/v1/units", json={"name": name, "kind": "school", "civil_code": "340211"}
    )
    assert unit.status_code == 201, unit.text
    acc = await http.post("/api/v1/accounts", json={"unit_id": unit.json()["id"], "name": name})
    assert acc.status_code == 201, acc.text
    return unit.json()["id"], acc.json()["device_id"]


@pytest.mark.timeout(150)
async def test_redis_killed_for_30_s_loses_nothing_acknowledged(
    tmp_path: Path, own_redis: RedisServer, device_endpoint: Endpoint
) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    gp = await GatewayProcess.start(tmp_path / "one", **sections(own_redis))
    fresh: GatewayProcess | None = None
    devices: list[SimDevice] = []
    try:
        async with client(gp) as http:
            for did in DEVICES:
                dev = SimDevice(device_endpoint, did, Peer("udp", "127.0.0.1", gp.port))
                assert (await dev.register()).status == 200
                dev.start_keepalive(0.5)
                devices.append(dev)
            before = await make_unit(http, "before")

            own_redis.kill()
            await gp.wait_event("store.redis_down", 10)
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert "unreachable" in ready.json()["message"], ready.text
            during = await make_unit(http, "during")  # queued, acknowledged
            deadline = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < deadline:
                assert not gp.named("device.offline"), "a device kept alive went offline"
                await asyncio.sleep(0.5)
            assert (await http.get("/readyz")).status_code == 503

            own_redis.start()
            await gp.wait_event("store.redis_recovered", 15)
            await wait_for_ready(http)
            assert len(gp.named("store.redis_down")) == 1
            assert len(gp.named("store.redis_recovered")) == 1
            assert not gp.named("device.offline")
        # The queue lands by itself; then the gateway dies without a chance to flush.
        r = redis_sync.Redis(host=own_redis.host, port=own_redis.port, decode_responses=True)
        await wait_for(
            lambda: r.hexists(f"{PREFIX}rec:account", during[1]), 15, "the queued writes"
        )
        await gp.kill()

        fresh = await GatewayProcess.start(tmp_path / "two", **sections(own_redis))
        async with client(fresh) as http:
            units = {u["id"] for u in (await http.get("/api/v1/units")).json()["items"]}
            assert {before[0], during[0]} <= units
            accounts = (await http.get("/api/v1/accounts")).json()["items"]
            assert {before[1], during[1]} <= {a["device_id"] for a in accounts}
            listed = (await http.get("/api/v1/devices", params={"limit": 100})).json()["items"]
            online = {d["id"] for d in listed if d["online"]}
            assert set(DEVICES) <= online, listed
    finally:
        for dev in devices:
            dev.stop()
        await gp.kill()
        if fresh is not None:
            await fresh.kill()


async def wait_for_ready(http: httpx.AsyncClient, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (await http.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError("/readyz did not come back")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_writes_refused_beyond_the_queue_bound_get_503_and_no_200(
    tmp_path: Path, own_redis: RedisServer, device_endpoint: Endpoint
) -> None:
    config = make_config(tmp_path, **sections(own_redis))
    gw = Gateway(config)
    assert isinstance(gw.store, RedisStore)
    await gw.start()
    try:
        assert gw.api is not None
        base = f"http://127.0.0.1:{gw.api.port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10.0
        ) as http:
            own_redis.kill()
            await wait_for(lambda: not gw.store.healthy(), 10, "the outage seen")
            gw.store.max_queued_writes = gw.store.queued() + 2
            refused = None
            for n in range(5):
                resp = await http.post(
                    "/api/v1/units",
                    json={"name": f"u{n}", "kind": "school", "civil_code": "340211"},
                )
                if resp.status_code != 201:
                    refused = resp
                    break
            assert refused is not None and refused.status_code == 503, refused
            assert "store unavailable" in refused.json()["error"]
            assert "unreachable" in refused.json()["error"]
            dev = sim(device_endpoint, gw, DEVICES[0])
            answer = await dev.register()
            assert answer.status != 200
            assert DEVICES[0] not in {d.device_id for d in gw.store.load_devices()}
    finally:
        own_redis.start()
        await gw.close()
