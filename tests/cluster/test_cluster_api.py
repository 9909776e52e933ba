"""The HTTP API of any node shows every node's devices (issue 18): three gateway nodes on
127.0.0.2, .3 and .4 with one real redis-server between them, an NVR registered at each. The
first node's API lists the three with their online state, serves the detail of a device held
by another node, and sends that device a command (DeviceInfo, PTZ) through the node holding it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.rig import HOSTS, Cluster, nvr_id, start_cluster
from tests.conftest import wait_for
from tests.redisrig import RedisServer

pytestmark = pytest.mark.timeout(90)

TOKEN = "cluster-operator-token-0123456789"


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    c = await start_cluster(
        tmp_path, redis_server.url, token=TOKEN, token_role="operator", request_timeout=2
    )
    try:
        for i, host in enumerate(HOSTS):
            ep = await c.endpoint()
            dev = c.nvr(ep, c.node(host), nvr_id(i + 1), channel_count=2)
            assert (await dev.register()).status == 200
        for i, host in enumerate(HOSTS):
            await wait_for(lambda h=host, i=i: nvr_id(i + 1) in c.synced[h], 15, f"sync at {host}")
        x = c.node(HOSTS[0])
        want = {ch for d in c.devices for ch in d.channel_ids()}
        await wait_for(lambda: want <= set(x.catalog._owner), 10, "every channel at X")
        assert x.replica is not None
        await wait_for(lambda: {nvr_id(2), nvr_id(3)} <= set(x.replica.devices), 10, "replica")
        yield c
    finally:
        await c.close()


def _client(cluster: Cluster) -> httpx.AsyncClient:
    x = cluster.node(HOSTS[0])
    assert x.api is not None
    return httpx.AsyncClient(
        base_url=f"http://{HOSTS[0]}:{int(x.api.port)}/api/v1",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10.0,
    )


async def test_api_of_one_node_lists_and_serves_every_nodes_devices(cluster: Cluster) -> None:
    everyone = [nvr_id(1), nvr_id(2), nvr_id(3)]
    async with _client(cluster) as api:
        res = await api.get("/devices")
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["total"] == 3
        assert [d["id"] for d in body["items"]] == everyone
        assert all(d["online"] for d in body["items"])
        assert [d["channels"]["total"] for d in body["items"]] == [2, 2, 2]
        # The online filter sees the other nodes' devices online too.
        on = (await api.get("/devices", params={"online": "true"})).json()
        assert [d["id"] for d in on["items"]] == everyone
        off = (await api.get("/devices", params={"online": "false"})).json()
        assert off["total"] == 0

        # The detail of a device Y holds.
        res = await api.get(f"/devices/{nvr_id(2)}")
        assert res.status_code == 200, res.text
        detail = res.json()
        assert detail["online"] is True
        assert detail["host"] == "127.0.0.1"
        assert detail["manufacturer"] == "SimVision"

        # The totals (every unit's, computed in one pass) count them all, online.
        res = await api.get("/stats")
        assert res.status_code == 200, res.text
        stats = res.json()
        assert stats["devices"] == {"total": 3, "online": 3}
        assert stats["channels"] == {"total": 6, "online": 6}
        unassigned = (await api.get("/devices", params={"unit": "_unassigned"})).json()
        assert [d["id"] for d in unassigned["items"]] == everyone


async def test_command_through_one_node_for_a_device_on_another(cluster: Cluster) -> None:
    x, y, z = cluster.nodes
    nvr_y, nvr_z = cluster.devices[1], cluster.devices[2]
    before = y.metrics.get("query.sent.DeviceInfo")
    async with _client(cluster) as api:
        res = await api.post(f"/devices/{nvr_y.device_id}/info")
        assert res.status_code == 200, res.text
        assert res.json()["device_id"] == nvr_y.device_id
        assert res.json()["manufacturer"] == "SimVision"
        res = await api.post(
            f"/devices/{nvr_z.device_id}/channels/{nvr_z.channel_id(1)}/ptz",
            json={"command": "left", "speed": 64},
        )
        assert res.status_code == 202, res.text
        await wait_for(lambda: len(nvr_z.ptz_commands) == 1, 5, "PTZ at the NVR")
    # Asked of the holding node, which talked to its device.
    assert x.metrics.get("query.remote.DeviceInfo") == 1
    assert y.metrics.get("query.sent.DeviceInfo") == before + 1
    assert x.metrics.get("control.remote") == 1
    assert z.metrics.get("control.sent") == 1
