"""A dead node's floating SIP address taken over by a survivor (issue 18): the survivor that
wins the lease ``addr:{host}`` listens on the dead node's address and port, UDP and TCP; TCP
devices reconnect and register there; UDP devices whose registrations are in the shared store
go on with their keepalives without registering again. Real processes on 127.0.0.2-4."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import gateway.store
from conformance.peers.device import SimDevice
from gateway.sip import Endpoint, Peer
from tests.cluster.procrig import ClusterRig, Node
from tests.cluster.test_failover import _loopback_usable
from tests.conftest import wait_for
from tests.redisrig import REDIS_SERVER

pytestmark = [
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="redis-server is not installed"),
    pytest.mark.skipif(not _loopback_usable(), reason="127.0.0.2-4 cannot be bound here"),
]
SHARED_STORE = hasattr(gateway.store, "RedisStore")
TCP_NVR, UDP_NVR = "34020000001180000001", "34020000001180000002"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ClusterRig]:
    r = ClusterRig(tmp_path, nodes=3, lease_seconds=2.0)
    # The first node's address is the floating one devices are given.
    r.nodes[0].sections["cluster"] = {"floating_host": r.nodes[0].host}
    try:
        await r.start()
        yield r
    finally:
        await r.close()


async def _registered(ep: Endpoint, device_id: str, transport: str, node: Node) -> SimDevice:
    """A device with one channel, registered at ``node``'s address over ``transport``."""
    dev = SimDevice(ep, device_id, Peer(transport, node.host, node.port), channel_count=1)
    dev.install()
    assert (await dev.register()).status == 200
    return dev


async def _killed_and_taken_over(rig: ClusterRig, dead: Node) -> Node:
    """Kill ``dead``; the survivor that takes its address over (checked: that address)."""
    await dead.kill()

    def taker() -> Node | None:
        for n in rig.nodes:
            if n is not dead and n.proc is not None and n.proc.named("cluster.address_taken_over"):
                return n
        return None

    await wait_for(lambda: taker() is not None, 20, "a survivor takes the address over")
    survivor = taker()
    assert survivor is not None and survivor.proc is not None
    event = survivor.proc.named("cluster.address_taken_over")[0]
    assert (event["host"], event["port"]) == (dead.host, dead.port)
    # The address is bound first, then the dead node's devices are adopted from the store:
    # a device's next request is served once that is done.
    await survivor.proc.wait_event("cluster.devices_adopted")
    return survivor


@pytest.mark.timeout(120)
async def test_survivor_listens_on_the_dead_nodes_address(
    rig: ClusterRig, device_endpoint: Endpoint
) -> None:
    dead = rig.nodes[0]
    tcp = await _registered(device_endpoint, TCP_NVR, "tcp", dead)
    survivor = await _killed_and_taken_over(rig, dead)
    # Exactly one survivor took it.
    others = [n for n in rig.nodes if n not in (dead, survivor)]
    for n in others:
        assert n.proc is not None and not n.proc.named("cluster.address_taken_over")
    # The TCP device's connection died with the node: it reconnects to the same address and
    # registers, and the survivor answers (over the new connection, from that address).
    resp = await tcp.register()
    assert resp.status == 200
    assert (await tcp.keepalive()).status == 200
    # UDP on that address too (a device that registers anew there).
    await _registered(device_endpoint, UDP_NVR, "udp", dead)


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not SHARED_STORE, reason="needs the shared Redis store (gateway.store.RedisStore)"
)
async def test_udp_devices_keep_alive_without_registering_again(
    rig: ClusterRig, device_endpoint: Endpoint
) -> None:
    dead = rig.nodes[0]
    udp = await _registered(device_endpoint, UDP_NVR, "udp", dead)
    survivor = await _killed_and_taken_over(rig, dead)
    registers = survivor.proc.named("device.registered") if survivor.proc else []
    resp = await udp.keepalive()
    assert resp.status == 200
    assert survivor.proc is not None
    assert survivor.proc.named("device.registered") == registers  # no REGISTER was needed


async def _devnode_becomes(r: aioredis.Redis, expected: dict[str, str]) -> None:
    """Wait (the stores flush every 0.05 s) until ``P devnode`` is ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (nodes := await r.hgetall("gb:devnode")) != expected:
        assert loop.time() < deadline, f"devnode is {nodes}, not {expected}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not SHARED_STORE, reason="needs the shared Redis store (gateway.store.RedisStore)"
)
async def test_taker_adopts_only_the_dead_nodes_devices(
    rig: ClusterRig, device_endpoint: Endpoint
) -> None:
    """The survivor that takes the dead node's address adopts the devices ``devnode`` gives
    to the dead node, and saves them (``devnode`` names it from now on); a device registered
    at a surviving node stays that node's."""
    dead = rig.nodes[0]
    ids = {node.name: f"3402000000118000001{i}" for i, node in enumerate(rig.nodes)}
    devices = {n.name: await _registered(device_endpoint, ids[n.name], "udp", n) for n in rig.nodes}
    r = aioredis.Redis.from_url(rig.redis.url, decode_responses=True)
    try:
        expected = {ids[n.name]: n.name for n in rig.nodes}
        await _devnode_becomes(r, expected)
        survivor = await _killed_and_taken_over(rig, dead)
        other = next(n for n in rig.nodes if n is not dead and n is not survivor)
        assert survivor.proc is not None and other.proc is not None
        event = await survivor.proc.wait_event("cluster.devices_adopted")
        assert event["devices"] == 1
        await _devnode_becomes(r, {**expected, ids[dead.name]: survivor.name})
        # The other survivor's device is still served there: its keepalive is answered and
        # it was never set offline.
        assert (await devices[other.name].keepalive()).status == 200
        offline = [e.get("device_id") for e in other.proc.named("device.offline")]
        assert ids[other.name] not in offline
        assert await r.hget("gb:devnode", ids[other.name]) == other.name
    finally:
        await r.aclose()
