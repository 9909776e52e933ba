"""The ``Store`` protocol, the same on every backend: what is saved is loaded back (at once from
the view, and after a restart from what was written), deletes stick, IDs of alarms and audit
entries are given at save and ordered, queued writes are visible, ``committed`` waits for the
write. Redis runs as a real ``redis-server`` (``tests/redisrig.py``), each test under a key
prefix of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.manscdp import CatalogItem
from gateway.model import Alarm, AuditEntry, Device
from gateway.store import MemoryStore, RedisStore, SqliteStore, Store
from tests.conftest import redis_prefix
from tests.redisrig import RedisServer

NVR = "34020000001180000001"
CAMS = [f"3402000000131000000{n}" for n in range(1, 4)]

Open = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Open]]:
    """``(backend, open)``: ``await open()`` gives a started store on the same data each time
    (the memory store: the same object, as nothing of it survives a restart)."""
    backend = str(request.param)
    opened: list[Store] = []
    memory = MemoryStore()

    async def open_store() -> Store:
        store: Store
        if backend == "memory":
            store = memory
        elif backend == "sqlite":
            store = SqliteStore(tmp_path / "s.db", flush_interval=0.02)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(
                server.url, prefix=redis_prefix(tmp_path), node_id="n1", flush_interval=0.02
            )
        await store.start()
        opened.append(store)
        return store

    yield backend, open_store
    for store in opened:
        await store.close()


async def restart(store: Store, open_store: Open) -> Store:
    await store.close()
    return await open_store()


def item(item_id: str, name: str, parent: str = NVR) -> CatalogItem:
    return CatalogItem(device_id=item_id, name=name, parent_id=parent, status="ON")


async def test_devices_saved_deleted_and_loaded_after_a_restart(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    store.save_device(Device(NVR, host="10.0.0.1", port=5060, online=True, name="gate"))
    store.save_device(Device(CAMS[0]))
    store.delete_device(CAMS[0])
    await store.flush()
    store = await restart(store, open_store)
    got = store.load_devices()
    assert [(d.device_id, d.host, d.port, d.online, d.name) for d in got] == [
        (NVR, "10.0.0.1", 5060, True, "gate")
    ]


async def test_catalog_items_replaced_deleted_and_kept(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    for n, cam in enumerate(CAMS):
        store.save_item(NVR, item(cam, f"cam {n}"), 1.0)
    store.save_item(NVR, item(CAMS[0], "renamed 北门"), 2.0)
    store.delete_item(NVR, CAMS[2])
    await store.flush()
    store = await restart(store, open_store)
    got = {(owner, it.device_id): it for owner, it in store.load_items()}
    assert set(got) == {(NVR, CAMS[0]), (NVR, CAMS[1])}
    assert got[(NVR, CAMS[0])].name == "renamed 北门"
    assert got[(NVR, CAMS[1])] == item(CAMS[1], "cam 1")


async def test_alarms_newest_first_with_ids(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    for n in range(5):
        store.save_alarm(Alarm(NVR, CAMS[0], priority=1, description=f"a{n}", received_at=n))
    await store.flush()
    store = await restart(store, open_store)
    got = store.load_alarms(limit=3)
    assert [a.description for a in got] == ["a4", "a3", "a2"]
    ids = [a.id for a in got]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 3
    assert ids == sorted(ids, reverse=True)  # type: ignore[type-var]


async def test_id_map_by_upper_never_changed(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    store.save_mapping("U1", CAMS[0], "44010000001310000001", 1.0)
    store.save_mapping("U1", CAMS[1], "44010000001310000002", 2.0)
    store.save_mapping("U2", CAMS[0], "45010000001310000001", 3.0)
    await store.flush()
    store = await restart(store, open_store)
    assert sorted(store.load_id_map("U1")) == [
        ("U1", CAMS[0], "44010000001310000001"),
        ("U1", CAMS[1], "44010000001310000002"),
    ]
    assert len(store.load_id_map()) == 3


async def test_upper_registration_replaced(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    store.save_upper_registration("U1", "call-1", "tag-1", 1, 1.0)
    store.save_upper_registration("U1", "call-1", "tag-1", 7, 2.0)
    await store.flush()
    store = await restart(store, open_store)
    assert store.load_upper_registrations() == {"U1": ("call-1", "tag-1", 7)}


async def test_records_visible_when_queued_and_after_a_restart(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    store.save_record("user", "bob", {"role": "viewer", "hash": "$argon2id$x"})
    store.save_record("user", "alice", {"role": "admin"})
    store.save_record("unit", "u1", {"name": "学校"})
    store.delete_record("user", "bob")
    data = {"role": "operator"}
    store.save_record("user", "carol", data)
    data["role"] = "changed after the save"  # a copy was taken
    assert [k for k, _ in store.load_records("user")] == ["alice", "carol"]  # queued, visible
    await store.flush()
    store = await restart(store, open_store)
    assert store.load_records("user") == [
        ("alice", {"role": "admin"}),
        ("carol", {"role": "operator"}),
    ]
    assert store.load_records("unit") == [("u1", {"name": "学校"})]
    assert store.load_records("nothing") == []


async def test_audit_ids_given_at_save_newest_first_and_paged(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    for n in range(5):
        store.save_audit(AuditEntry(at=n, who="alice", role="admin", action=f"act{n}"))
    queued = store.load_audit(limit=10)
    assert [e.action for e in queued] == [f"act{n}" for n in range(4, -1, -1)]
    ids = [e.id for e in queued]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 5
    await store.flush()
    store = await restart(store, open_store)
    page = store.load_audit(limit=2, before=ids[1])
    assert [e.action for e in page] == ["act2", "act1"]
    assert [e.id for e in store.load_audit(limit=10)] == ids


async def test_committed_waits_for_the_write(opener: tuple[str, Open]) -> None:
    _, open_store = opener
    store = await open_store()
    store.save_device(Device(NVR, online=True))
    fut = store.committed()
    if fut is not None:
        await asyncio.wait_for(fut, 5)
    assert store.healthy()
    # Durable now: a second store on the same data sees it without any flush of the first.
    other = await open_store()
    assert NVR in {d.device_id for d in other.load_devices()}
