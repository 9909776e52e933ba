"""What the Redis store adds to the protocol (issue 18): which node holds each device, records
of other nodes seen, atomic claims of recoded IDs (two nodes never hand out one), an outage
(queued writes, refused beyond the bound, one log line each way, nothing lost), and Redis
restarted empty (the node writes back what it holds, not other nodes' data). Real
``redis-server`` processes, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from gateway.manscdp import CatalogItem
from gateway.model import Device
from gateway.settings import UpperPlatform
from gateway.store import RedisStore, StoreUnavailable
from gateway.store import redis as redis_module
from gateway.uplink import IdMap
from tests.conftest import redis_prefix, wait_for
from tests.redisrig import RedisServer
from tests.sip.test_transport import LogRecorder

NVR1 = "34020000001180000001"
NVR2 = "34020000001180000002"
UPPER = "44010000002000000001"
GATEWAY = "34020000002000000001"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[tuple[str, dict[str, Any]]]]:
    recorder = LogRecorder()
    monkeypatch.setattr(redis_module, "log", recorder)
    return lambda name: [(level, f) for level, event, f in recorder.lines if event == name]


async def started(server: RedisServer, prefix: str, node: str, **kw: Any) -> RedisStore:
    store = RedisStore(server.url, prefix=prefix, node_id=node, flush_interval=0.02, **kw)
    await store.start()
    return store


def raw(server: RedisServer) -> redis_sync.Redis:
    return redis_sync.Redis(host=server.host, port=server.port, decode_responses=True)


@pytest.mark.timeout(30)
async def test_each_device_is_held_by_the_node_that_saved_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = redis_prefix(tmp_path)
    a = await started(redis_server, prefix, "a")
    b = await started(redis_server, prefix, "b")
    try:
        a.save_device(Device(NVR1, online=True))
        b.save_device(Device(NVR2, online=True))
        b.save_record("user", "bob", {"role": "viewer"})
        await asyncio.gather(a.flush(), b.flush())
        assert await a.node_of(NVR2) == "b" and await b.node_of(NVR1) == "a"
        assert await a.node_of("34020000001180000009") is None
        assert a.device_nodes() == {NVR1: "a"}  # as loaded and saved: b's comes with reload
        # A record another node wrote is seen (users log in on any node).
        await wait_for(lambda: bool(a.load_records("user")), 10, "b's user on a")
        await a.reload()
        assert a.device_nodes() == {NVR1: "a", NVR2: "b"}
        assert {d.device_id for d in a.load_devices()} == {NVR1, NVR2}
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
async def test_a_claim_never_takes_an_id_mapped_to_another_item(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = await started(redis_server, redis_prefix(tmp_path), "a")
    local1, local2 = "34020000001310000001", "34020000001310000002"
    up1, up2 = "44010000001310000001", "44010000001310000002"
    try:
        assert await store.claim_mapping(UPPER, local1, up1) == up1
        assert await store.claim_mapping(UPPER, local1, up1) == up1  # the same again: fine
        assert await store.claim_mapping(UPPER, local2, up1) == ""  # up1 is local1's
        assert await store.claim_mapping(UPPER, local1, up2) == up1  # local1 keeps up1
        assert store.metrics.get("store.idmap_conflicts") == 2
        r = raw(redis_server)
        prefix = redis_prefix(tmp_path)
        assert r.hgetall(f"{prefix}idmap:{UPPER}") == {local1: up1}
        assert r.hgetall(f"{prefix}idmapr:{UPPER}") == {up1: local1}
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_two_nodes_allocating_recoded_ids_at_once_never_collide(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two nodes (two stores, two ID maps for one upper) allocate for overlapping channels in
    different orders, starting from the same free serials, and write at the same time: Redis
    ends with a one-to-one mapping and each ID map agrees with it."""
    prefix = redis_prefix(tmp_path)
    upper = UpperPlatform(
        id=UPPER,
        domain=UPPER[:10],
        host="127.0.0.1",
        password="12345678",
        id_policy="recode",
        civil_code="440100",
    )
    a = await started(redis_server, prefix, "a")
    b = await started(redis_server, prefix, "b")
    try:
        map_a, map_b = IdMap(upper, a, GATEWAY), IdMap(upper, b, GATEWAY)
        channels = [f"3402000000131{n:07d}" for n in range(200)]
        mine_a = channels[:150]
        mine_b = channels[50:]
        random.Random(18).shuffle(mine_b)
        for round_ in range(5):
            for ch in mine_a:
                map_a.to_upper(ch)
            for ch in mine_b:
                map_b.to_upper(ch)
            await asyncio.gather(a.flush(), b.flush())
            if round_ == 0:
                assert a.metrics.get("store.idmap_conflicts") + b.metrics.get(
                    "store.idmap_conflicts"
                ), "the same serials were claimed by both: some claims must have lost"
            if not a.queued() and not b.queued():
                break
        assert not a.queued() and not b.queued()
        r = raw(redis_server)
        fwd = r.hgetall(f"{prefix}idmap:{UPPER}")
        rev = r.hgetall(f"{prefix}idmapr:{UPPER}")
        assert set(fwd) == set(channels)
        assert len(set(fwd.values())) == len(fwd)  # no upper ID given twice
        assert rev == {up: loc for loc, up in fwd.items()}
        for idmap, mine in ((map_a, mine_a), (map_b, mine_b)):
            assert {ch: idmap.known_upper(ch) for ch in mine} == {ch: fwd[ch] for ch in mine}
            assert all(idmap.to_local(fwd[ch]) == ch for ch in mine)
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(60)
async def test_redis_down_queues_writes_refuses_beyond_the_bound_and_recovers(
    own_redis: RedisServer,
    tmp_path: Path,
    logged: Callable[[str], list[tuple[str, dict[str, Any]]]],
) -> None:
    prefix = "o:"
    store = await started(own_redis, prefix, "a", max_queued_writes=20)
    try:
        store.save_device(Device(NVR1, online=True))
        await store.flush()
        own_redis.kill()
        await wait_for(lambda: not store.healthy(), 10, "the outage seen")
        assert "unreachable" in store.trouble()
        saved = [f"3402000000132{n:07d}" for n in range(20)]
        for did in saved:
            store.save_device(Device(did, online=True))
        waiting = store.committed()
        assert waiting is not None
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.save_device(Device("34020000001329999999", online=True))
        store.save_device(Device(saved[0], online=False))  # one already queued: replaced
        assert len(store.load_devices()) == 21  # loads still served from the view
        # Several failed attempts, one line and one count for the outage.
        await wait_for(lambda: store.metrics.get("store.write_failed") >= 3, 15, "retries")
        assert not waiting.done()
        assert len(logged("store.redis_down")) == 1
        assert store.metrics.get("store.redis.down") == 1
        assert len(logged("store.writes_refused")) == 1

        own_redis.start()
        await asyncio.wait_for(waiting, 15)
        await wait_for(store.healthy, 10, "healthy again")
        assert len(logged("store.redis_recovered")) == 1
        assert len(logged("store.redis_down")) == 1
        store.save_device(Device("34020000001329999999", online=True))  # accepted again
        await store.flush()
    finally:
        await store.close()
    again = await started(own_redis, prefix, "b")
    try:
        devices = {d.device_id: d for d in again.load_devices()}
        assert set(devices) == {NVR1, *saved, "34020000001329999999"}
        assert not devices[saved[0]].online
    finally:
        await again.close()


@pytest.mark.timeout(60)
async def test_redis_restarted_empty_gets_back_what_this_node_holds(
    own_redis: RedisServer,
    tmp_path: Path,
    logged: Callable[[str], list[tuple[str, dict[str, Any]]]],
) -> None:
    prefix = "w:"
    a = await started(own_redis, prefix, "a")
    b = await started(own_redis, prefix, "b")
    cam = "34020000001310000001"
    a.save_device(Device(NVR1, online=True, host="10.0.0.1"))
    a.save_item(NVR1, CatalogItem(device_id=cam, name="gate", parent_id=NVR1), 1.0)
    a.save_record("unit", "u1", {"name": "school"})
    a.save_mapping(UPPER, cam, "44010000001310000001", 1.0)
    b.save_device(Device(NVR2, online=True))
    await asyncio.gather(a.flush(), b.flush())
    await b.close()  # b is gone: nobody writes its data back
    a.save_device(Device(NVR1, online=True, host="10.0.0.2"))  # the latest value is the one
    await a.flush()
    try:
        own_redis.wipe()
        await wait_for(lambda: a.metrics.get("store.redis.restored") >= 1, 15, "write-back")
        assert logged("store.redis_emptied")
        assert a.healthy()
    finally:
        await a.close()
    c = await started(own_redis, prefix, "c")
    try:
        devices = {d.device_id: d for d in c.load_devices()}
        assert set(devices) == {NVR1} and devices[NVR1].host == "10.0.0.2"
        assert [(o, i.device_id, i.name) for o, i in c.load_items()] == [(NVR1, cam, "gate")]
        assert c.load_records("unit") == [("u1", {"name": "school"})]
        assert c.load_id_map(UPPER) == [(UPPER, cam, "44010000001310000001")]
        assert c.device_nodes() == {NVR1: "a"}
    finally:
        await c.close()


def _redis_devices(server: RedisServer, prefix: str) -> dict[str, tuple[str, str]]:
    """Device ID -> (its ``host`` as Redis holds it, the node ``devnode`` names)."""
    r = raw(server)
    nodes = r.hgetall(f"{prefix}devnode")
    return {
        did: (redis_module.device_from_json(text).host, nodes.get(did, ""))
        for did, text in r.hgetall(f"{prefix}devices").items()
    }


@pytest.mark.timeout(60)
async def test_redis_emptied_under_two_running_nodes_gets_back_both_nodes_data(
    own_redis: RedisServer,
) -> None:
    """Redis wiped while both nodes run: the first to notice writes its data back and sets a
    new epoch; the other sees an epoch that is not its own and writes back its data too."""
    prefix = "e:"
    a = await started(own_redis, prefix, "a")
    b = await started(own_redis, prefix, "b")
    cam1, cam2 = "34020000001310000001", "34020000001310000002"
    try:
        a.save_device(Device(NVR1, online=True, host="10.0.0.1"))
        a.save_item(NVR1, CatalogItem(device_id=cam1, name="gate", parent_id=NVR1), 1.0)
        a.save_record("unit", "ua", {"name": "school"})
        b.save_device(Device(NVR2, online=True, host="10.0.0.2"))
        b.save_item(NVR2, CatalogItem(device_id=cam2, name="yard", parent_id=NVR2), 1.0)
        b.save_record("unit", "ub", {"name": "hospital"})
        await asyncio.gather(a.flush(), b.flush())
        own_redis.wipe()
        for node in (a, b):
            await wait_for(
                lambda s=node: s.metrics.get("store.redis.restored") >= 1, 15, "both write back"
            )
        assert _redis_devices(own_redis, prefix) == {
            NVR1: ("10.0.0.1", "a"),
            NVR2: ("10.0.0.2", "b"),
        }
        r = raw(own_redis)
        assert set(r.hgetall(f"{prefix}items:{NVR1}")) == {cam1}
        assert set(r.hgetall(f"{prefix}items:{NVR2}")) == {cam2}
        assert set(r.hgetall(f"{prefix}rec:unit")) == {"ua", "ub"}
        # Each node took the new epoch: neither writes back again and again.
        assert a._epoch == b._epoch == r.get(f"{prefix}epoch")
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["a", "b"])
async def test_write_back_never_puts_a_moved_device_back_on_its_old_node(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A device saved by a, then re-registered at b (it moved): a still holds its old copy.
    Redis wiped; whichever node writes back first, Redis ends with b's copy, held by b, and
    each node's other devices back."""
    monkeypatch.setattr(redis_module, "HEALTH_INTERVAL", 3600.0)  # the writes find the wipe
    prefix = "m:"
    a = await started(own_redis, prefix, "a")
    b = await started(own_redis, prefix, "b")
    moved, only_a, only_b = "34020000001180000009", NVR1, NVR2
    try:
        a.save_device(Device(moved, online=True, host="10.0.0.1", registered_at=100.0))
        a.save_item(moved, CatalogItem(device_id="34020000001310000001", name="old"), 1.0)
        a.save_device(Device(only_a, online=True, host="10.0.0.3"))
        await a.flush()
        b.save_device(Device(moved, online=True, host="10.0.0.2", registered_at=200.0))
        b.save_item(moved, CatalogItem(device_id="34020000001310000002", name="new"), 2.0)
        b.save_device(Device(only_b, online=True, host="10.0.0.4"))
        await b.flush()
        own_redis.wipe()
        order = (a, b) if first == "a" else (b, a)
        for n, node in enumerate(order):
            node.save_record("unit", f"u{n}", {"name": str(n)})  # a write finds the wipe
            with contextlib.suppress(Exception):  # the first may meet a dropped connection
                await node.flush()
            await wait_for(
                lambda s=node: s.metrics.get("store.redis.restored") >= 1, 15, "the write-back"
            )
        assert _redis_devices(own_redis, prefix) == {
            moved: ("10.0.0.2", "b"),
            only_a: ("10.0.0.3", "a"),
            only_b: ("10.0.0.4", "b"),
        }
        r = raw(own_redis)
        assert set(r.hgetall(f"{prefix}items:{moved}")) == {"34020000001310000002"}
        assert set(r.hgetall(f"{prefix}rec:unit")) == {"u0", "u1"}
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(60)
async def test_a_node_that_reloads_stops_holding_a_device_another_node_saved_since(
    own_redis: RedisServer,
) -> None:
    """a saved a device and its catalog; b saved it since (it moved) and is gone. a's reload
    sees that: when Redis comes back empty, a writes back its other device, not that one."""
    prefix = "r:"
    a = await started(own_redis, prefix, "a")
    b = await started(own_redis, prefix, "b")
    moved, cam = "34020000001180000009", "34020000001310000001"
    try:
        a.save_device(Device(moved, online=True, host="10.0.0.1", registered_at=100.0))
        a.save_item(moved, CatalogItem(device_id=cam, name="old"), 1.0)
        a.save_device(Device(NVR1, online=True, host="10.0.0.3"))
        await a.flush()
        b.save_device(Device(moved, online=True, host="10.0.0.2", registered_at=200.0))
        await b.flush()
        await b.close()
        await a.reload()
        assert a.device_nodes()[moved] == "b"
        own_redis.wipe()
        await wait_for(lambda: a.metrics.get("store.redis.restored") >= 1, 15, "the write-back")
        assert _redis_devices(own_redis, prefix) == {NVR1: ("10.0.0.3", "a")}
        assert not raw(own_redis).exists(f"{prefix}items:{moved}")
    finally:
        await a.close()
