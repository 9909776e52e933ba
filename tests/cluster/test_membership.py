"""Membership against a real redis-server (tests/redisrig.py): every survivor hears, once, that a
node died, not only the first one to see its record gone (which takes it out of the set)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.cluster import Membership
from tests.cluster.test_leases import client
from tests.conftest import wait_for
from tests.redisrig import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server is not installed (make test installs it)"
)

LEASE = 1.0


def members(
    port: int, names: str
) -> tuple[list[aioredis.Redis], dict[str, Membership], dict[str, list[str]]]:
    clients = [client(port) for _ in names]
    nodes = {
        n: Membership(c, prefix="t:", node_id=n, lease_seconds=LEASE, info={"sip_port": i})
        for i, (n, c) in enumerate(zip(names, clients, strict=True), 1)
    }
    lost: dict[str, list[str]] = {n: [] for n in names}
    for n, m in nodes.items():
        m.on_node_lost(lambda node, info, seen=lost[n]: seen.append(node))
    return clients, nodes, lost


@pytest.mark.timeout(30)
async def test_every_survivor_hears_of_the_loss_once(redis_server: RedisServer) -> None:
    """Beats in turn, no timing: ``a`` sees ``c``'s record gone first and takes ``c`` out of the
    set; ``b`` beats after that and must still call its callbacks (``c`` was in its view)."""
    clients, nodes, lost = members(redis_server.port, "abc")
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    for m in (a, b, c):
        await m.beat()
    await a.beat()
    await b.beat()
    assert set(a.alive()) == set(b.alive()) == {"a", "b", "c"}
    # c dies without a word: its record expires.
    await clients[0].delete("t:node:c")
    await a.beat()
    assert lost["a"] == ["c"]
    assert await clients[0].sismember("t:nodes", "c") == 0
    await b.beat()
    assert lost["b"] == ["c"]
    # Once: later beats say nothing more.
    for _ in range(2):
        await a.beat()
        await b.beat()
    assert lost == {"a": ["c"], "b": ["c"], "c": []}
    assert set(a.alive()) == set(b.alive()) == {"a", "b"}
    for cl in clients:
        await cl.aclose()


@pytest.mark.timeout(60)
async def test_staggered_survivors_all_hear_of_a_dead_node(redis_server: RedisServer) -> None:
    """Three running nodes, started a sixth of the lease apart; one's task is killed and its
    record left to expire: both survivors' ``on_node_lost`` fire, once each."""
    clients, nodes, lost = members(redis_server.port, "abc")
    for m in nodes.values():
        m.start()
        await asyncio.sleep(LEASE / 6)  # staggered beats
    await wait_for(
        lambda: all(set(m.alive()) == {"a", "b", "c"} for m in nodes.values()), 5, "all see all"
    )
    task = nodes["c"]._task
    assert task is not None
    task.cancel()
    await wait_for(
        lambda: bool(lost["a"]) and bool(lost["b"]), 10 * LEASE, "both survivors hear c is lost"
    )
    # A few more beats of each survivor (at once, not waited for): still once.
    for _ in range(2):
        await nodes["a"].beat()
        await nodes["b"].beat()
    assert lost == {"a": ["c"], "b": ["c"], "c": []}
    for name in "ab":
        await nodes[name].close()
    for cl in clients:
        await cl.aclose()
