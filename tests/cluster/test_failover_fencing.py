"""In-process gateways on a real redis-server: a node acts for an upper only while it holds the
lease ``upper:{id}``, and stops at once (no un-REGISTER, no keepalive) when the lease is lost;
two nodes never register together; a clean shutdown hands the upper over at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance.peers.platform import SimPlatform
from gateway.app import Gateway
from gateway.manscdp import DeviceInfoQuery, encode
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, TimerConfig, build_request
from tests.conftest import make_config, wait_for
from tests.redisrig import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server is not installed"
)
GW = "34020000002000000001"
UP = "34010000002000000001"


@pytest.fixture
async def upper() -> AsyncIterator[SimPlatform]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    p = SimPlatform(ep, platform_id=UP, domain=UP[:10]).start()
    yield p
    p.stop()
    await ep.close()


def node_config(tmp_path: Path, name: str, redis: RedisServer, upper: SimPlatform) -> Any:
    folder = tmp_path / name
    folder.mkdir()
    return make_config(
        folder,
        gateway={"id": GW, "domain": GW[:10]},
        store={"backend": "redis", "url": redis.url, "path": str(folder / "gw.db")},
        cluster={"node_id": name, "lease_seconds": 1.0},
        http={"enabled": False},
        uplink={
            "platforms": [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": upper.endpoint.port,
                    "password": "12345678",
                    "keepalive_interval": 0.2,
                    "retry_interval": 0.2,
                }
            ]
        },
    )


@asynccontextmanager
async def started(*configs: Any) -> AsyncIterator[tuple[Gateway, ...]]:
    """The nodes of ``configs``, started in order, all closed on the way out."""
    nodes = tuple(Gateway(cfg) for cfg in configs)
    for node in nodes:
        await node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.close()


@pytest.mark.timeout(60)
async def test_lost_lease_stops_the_node_at_once(
    tmp_path: Path, redis_server: RedisServer, upper: SimPlatform
) -> None:
    a_cfg = node_config(tmp_path, "a", redis_server, upper)
    b_cfg = node_config(tmp_path, "b", redis_server, upper)
    async with started(a_cfg, b_cfg) as (a, b):
        await wait_for(lambda: GW in upper.lowers and upper.lowers[GW].registered, 10, "reg")
        nodes = {a.endpoint.port: a, b.endpoint.port: b}
        holder = nodes[upper.lowers[GW].peer.port]
        other = b if holder is a else a
        # (The upper records the registration as it answers; the node when the answer lands.)
        await wait_for(lambda: holder.uplink.state_of(UP) == "registered", 5, "holder online")
        assert other.uplink.state_of(UP) == "standby"
        assert not other.uplink.sessions[UP].link.online
        await wait_for(lambda: upper.lowers[GW].keepalives >= 2, 5, "keepalives")
        # A query sent to the standby node is not served there.
        query = build_request(
            "MESSAGE",
            f"sip:{GW}@127.0.0.1:{other.endpoint.port}",
            from_uri=f"sip:{UP}@{UP[:10]}",
            to_uri=f"sip:{GW}@{GW[:10]}",
            body=encode(DeviceInfoQuery(sn=7, device_id=GW)),
            content_type="Application/MANSCDP+xml",
        )
        resp = await upper.endpoint.request(query, Peer("udp", "127.0.0.1", other.endpoint.port))
        assert resp.status == 503, resp.status
        # So is an INVITE: 503 (retry elsewhere), not 403 (refused for good).
        sdp = (
            "v=0\r\no=34010000002000000001 0 0 IN IP4 127.0.0.1\r\ns=Play\r\n"
            "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 40000 RTP/AVP 96\r\n"
            "a=recvonly\r\na=rtpmap:96 PS/90000\r\ny=0100000001\r\n"
        )
        invite = build_request(
            "INVITE",
            f"sip:{GW}@127.0.0.1:{other.endpoint.port}",
            from_uri=f"sip:{UP}@{UP[:10]}",
            to_uri=f"sip:34020000001310000001@{GW[:10]}",
            body=sdp.encode(),
            content_type="application/sdp",
        )
        resp = await upper.endpoint.request(invite, Peer("udp", "127.0.0.1", other.endpoint.port))
        assert resp.status == 503, resp.status
        # Someone else's value in the lease (a split brain, an operator): the holder finds it
        # at its next renewal and stops acting for the upper then and there.
        client = holder.cluster.client
        assert client is not None
        await client.set(f"gb:lease:upper:{UP}", "z:99999", px=4000)
        foreign_until = time.monotonic() + 4.0
        link = holder.uplink.sessions[UP].link
        await wait_for(lambda: not link.online, 2, "holder stops")
        stopped = time.monotonic()
        assert holder.uplink.state_of(UP) == "standby"
        assert holder.metrics.get("cluster.lease_lost") == 1
        # Whatever was still under way (an answer, a NOTIFY) is not sent any more.
        messages = len(upper.messages)
        s = holder.uplink.sessions[UP]
        assert s.fenced
        assert not await holder.uplink.send(s, DeviceInfoQuery(sn=8, device_id=GW))
        assert len(upper.messages) == messages
        # When the foreign value expires, one of the two takes the upper again.
        await wait_for(
            lambda: (a.uplink.state_of(UP), b.uplink.state_of(UP)).count("registered") == 1,
            10,
            "one holder again",
        )
        # While the foreign value held, nothing came from the old holder: no keepalive (one
        # every 0.2 s before), no un-REGISTER (the next holder goes on with the registration).
        mark = f":{holder.endpoint.port};"

        def from_holder(r: Any) -> bool:
            return mark in (r.get_header("Via") or "")

        late = [
            t
            for t, _, r, *_ in upper.keepalive_log
            if from_holder(r) and stopped + 0.5 < t < foreign_until - 0.5
        ]
        assert late == []
        assert not [r for r in upper.registers if r.get_header("Expires") == "0"]


@pytest.mark.timeout(60)
async def test_clean_shutdown_hands_over_at_once(
    tmp_path: Path, redis_server: RedisServer, upper: SimPlatform
) -> None:
    """A node stopped cleanly gives its leases back and does not unregister: another node
    goes on with the same registration (same Call-ID) without waiting for the lease time."""
    a = Gateway(node_config(tmp_path, "a", redis_server, upper))
    await a.start()
    await wait_for(lambda: GW in upper.lowers and upper.lowers[GW].registered, 10, "reg")
    call_id = upper.lowers[GW].call_id
    b = Gateway(node_config(tmp_path, "b", redis_server, upper))
    await b.start()
    try:
        assert b.uplink.state_of(UP) == "standby"
        await a.close()
        await wait_for(lambda: upper.lowers[GW].peer.port == b.endpoint.port, 5, "b registers")
        assert upper.lowers[GW].call_id == call_id
        assert not [r for r in upper.registers if r.get_header("Expires") == "0"]
    finally:
        await b.close()


@pytest.mark.timeout(90)
async def test_redis_down_nobody_acts_then_one_resumes(
    tmp_path: Path, redis_server: RedisServer, upper: SimPlatform
) -> None:
    """Redis unreachable for every node: the holder stops at its lease's deadline (nobody
    serves the upper meanwhile) and Redis is reported down; Redis back: one node registers
    again with the same Call-ID, by itself."""
    a_cfg = node_config(tmp_path, "a", redis_server, upper)
    b_cfg = node_config(tmp_path, "b", redis_server, upper)
    async with started(a_cfg, b_cfg) as (a, b):
        await wait_for(lambda: GW in upper.lowers and upper.lowers[GW].registered, 10, "reg")
        call_id = upper.lowers[GW].call_id

        def states() -> tuple[str, str]:
            return a.uplink.state_of(UP), b.uplink.state_of(UP)

        await wait_for(lambda: sorted(states()) == ["registered", "standby"], 5, "one holder")
        # The holder writes its registration to Redis after the upper's 200: what was never
        # written cannot survive, so the outage starts once it is there.
        holder = a if a.uplink.state_of(UP) == "registered" else b
        assert holder.cluster.uppers is not None
        for _ in range(500):
            if "reg" in await holder.cluster.uppers.load(UP):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the registration never reached Redis")
        redis_server.kill()
        await wait_for(lambda: states() == ("standby", "standby"), 5, "nobody holds")
        await wait_for(lambda: not a.cluster.healthy() and not b.cluster.healthy(), 5, "down")
        assert a.metrics.get("cluster.redis_down") == 1
        redis_server.start()
        await wait_for(lambda: sorted(states()) == ["registered", "standby"], 15, "resumed")
        await wait_for(lambda: a.cluster.healthy() and b.cluster.healthy(), 5, "Redis back")
        assert a.metrics.get("cluster.redis_down") == 1, "one outage, told once"
        assert upper.lowers[GW].call_id == call_id


@pytest.mark.timeout(60)
async def test_readyz_shows_the_nodes_view_of_the_cluster(
    tmp_path: Path, redis_server: RedisServer, upper: SimPlatform
) -> None:
    """``/readyz`` of a node says which node it is, that Redis and the bus answer, which nodes
    are alive and which uppers this node acts for; with Redis gone it says so."""
    cfg_a = node_config(tmp_path, "a", redis_server, upper)
    cfg_a = cfg_a.model_copy(update={"http": cfg_a.http.model_copy(update={"enabled": True})})
    cfg_b = node_config(tmp_path, "b", redis_server, upper)
    cfg_b = cfg_b.model_copy(update={"http": cfg_b.http.model_copy(update={"enabled": True})})
    async with started(cfg_a, cfg_b) as (a, b):
        assert a.api is not None
        url = f"http://127.0.0.1:{a.api.port}/readyz"
        async with httpx.AsyncClient() as client:

            async def cluster() -> dict[str, Any]:
                body: dict[str, Any] = (await client.get(url)).json()
                return body["cluster"]  # type: ignore[no-any-return]

            await wait_for(lambda: GW in upper.lowers and upper.lowers[GW].registered, 10, "reg")
            for _ in range(300):
                state = await cluster()
                if state["nodes"] == ["a", "b"]:
                    break
                await asyncio.sleep(0.02)
            assert state["node"] == "a" and state["redis"] is True and state["bus"] is True
            assert state["nodes"] == ["a", "b"]
            held_by_a = a.uplink.state_of(UP) != "standby"
            assert state["uppers_held"] == ([UP] if held_by_a else [])
            # /metrics says the same: the holder's upper is registered, the other's standby.
            for node, holds in ((a, held_by_a), (b, not held_by_a)):
                assert node.api is not None
                text = (await client.get(f"http://127.0.0.1:{node.api.port}/metrics")).text
                want = "registered" if holds else "standby"
                assert f'gb_upper_state{{state="{want}",upper="{UP}"}} 1.0' in text, want
            redis_server.kill()
            for _ in range(300):
                state = await cluster()
                if state["redis"] is False and not state["uppers_held"]:
                    break  # the lease is given up at its deadline, after Redis went
                await asyncio.sleep(0.02)
            assert state["redis"] is False and state["uppers_held"] == []
            redis_server.start()
