"""The replica of the other nodes' devices and catalogs (gateway.cluster.replica) with real
catalogs and event buses and a real redis-server, without SIP: a node that starts late fetches
what the others hold (paged), changes arrive as events marked with their node and are never
stored or sent on again, a gap in a node's events makes the replica fetch that node again, the
events heard meanwhile are applied after it, and a lost node's devices go offline."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gateway.catalog import Catalog
from gateway.cluster import Bus, ClusterDevices, Replica
from gateway.cluster import replica as replica_module
from gateway.events import CatalogChange, DeviceOffline, DeviceOnline, EventBus
from gateway.manscdp import CatalogItem
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.store import MemoryStore
from tests.conftest import wait_for
from tests.redisrig import RedisServer

_prefixes = itertools.count()
GW = "34020000002000000001"


def nvr(n: int) -> str:
    return f"3402000000118{n:07d}"


def channel(dev: str, n: int) -> str:
    return f"{dev[:10]}131{dev[13:16]}{n:04d}"


def items_of(dev: str, count: int, status: str = "ON") -> list[CatalogItem]:
    return [
        CatalogItem(device_id=channel(dev, n), name=f"cam {n}", parent_id=dev, status=status)
        for n in range(1, count + 1)
    ]


class Registry:
    """The registrar's face (DeviceDirectory) over a dict."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}

    def get(self, device_id: str, /) -> Device | None:
        return self.devices.get(device_id)

    def __contains__(self, device_id: object, /) -> bool:
        return device_id in self.devices

    def values(self) -> Iterable[Device]:
        return self.devices.values()

    def release(self, device_id: str) -> None:
        self.devices[device_id].online = False


@dataclass
class Node:
    bus: Bus
    local: Registry
    catalog: Catalog
    events: EventBus
    store: MemoryStore
    replica: Replica
    heard: list[object] = field(default_factory=list)

    def register(self, device_id: str, *, online: bool = True) -> Device:
        dev = Device(device_id, host="10.0.0.1", port=5060, online=online, call_id=device_id)
        self.local.devices[device_id] = dev
        self.events.publish(DeviceOnline(device_id, "udp", dev.host, dev.port, True))
        return dev

    def offline(self, device_id: str) -> None:
        self.local.devices[device_id].online = False
        self.events.publish(DeviceOffline(device_id, "keepalive timeout"))

    def owned(self) -> Iterator[str]:
        for owner, item in self.catalog:
            yield f"{owner}/{item.device_id}/{item.status}"


async def two_nodes(make_node: Any) -> tuple[Node, Node]:
    """Nodes a and b, once b's replica has fetched what a holds."""
    a = await make_node("a")
    b = await make_node("b")
    await wait_for(b.replica.settled, 5)
    return a, b


async def share_nvr(a: Node, b: Node, channels: int) -> None:
    """a registers ``nvr(1)`` with ``channels`` channels; b's replica then holds them all."""
    a.register(nvr(1))
    a.catalog.apply_sync(nvr(1), items_of(nvr(1), channels), partial=False)
    await wait_for(lambda: len(list(b.owned())) == channels, 5)


@pytest.fixture
async def make_node(redis_server: RedisServer) -> AsyncIterator[object]:
    prefix = f"r{next(_prefixes)}:"
    made: list[Node] = []

    async def make(name: str) -> Node:
        bus = Bus(url=redis_server.url, prefix=prefix, node_id=name, request_timeout=3)
        events = EventBus()
        store = MemoryStore()
        metrics = Metrics()
        catalog = Catalog(store=store, events=events, metrics=metrics, gateway_id=GW)
        local = Registry()
        replica = Replica(
            bus=bus,
            local=local,
            catalog=catalog,
            events=events,
            metrics=metrics,
            release=local.release,
        )
        node = Node(bus, local, catalog, events, store, replica)
        for kind in (DeviceOnline, DeviceOffline, CatalogChange):
            events.subscribe(kind, node.heard.append)
        await bus.start()
        await replica.start()
        made.append(node)
        return node

    yield make
    for node in made:
        await node.replica.close()
        await node.bus.close()


async def test_a_late_node_fetches_everything_paged(make_node, monkeypatch) -> None:
    monkeypatch.setattr(replica_module, "PAGE_ITEMS", 7)
    a = await make_node("a")
    for n in range(1, 6):
        a.register(nvr(n))
        a.catalog.apply_sync(nvr(n), items_of(nvr(n), 5), partial=False)
    a.offline(nvr(5))
    a.catalog.set_device_status(nvr(5), "OFF")
    b = await make_node("b")
    await wait_for(b.replica.settled, 5, "b fetched a")
    assert sorted(b.owned()) == sorted(a.owned())
    assert b.replica.node_of == {nvr(n): "a" for n in range(1, 6)}
    # 25 items of 5 devices, whole devices a page until 7 items are reached: 3 pages.
    assert b.bus.metrics.get("cluster.bus.requests") == 3
    # Online devices come in as DeviceOnline marked with their node; nvr 5 stays offline.
    online = [e for e in b.heard if isinstance(e, DeviceOnline)]
    assert {(e.device_id, e.node) for e in online} >= {(nvr(n), "a") for n in range(1, 5)}
    # (b may also have read a's older events, nvr 5 registering before it went offline: what
    # counts is where it ends.)
    assert not b.replica.devices[nvr(5)].online
    # Nothing of a's in b's own store, and b's registrar never saw them.
    assert not list(b.store.load_items()) and not b.local.devices
    devices = ClusterDevices(b.local, b.replica)
    d = devices.get(nvr(1))
    assert nvr(1) in devices and d is not None and d.online
    assert {x.device_id for x in devices.values()} == {nvr(n) for n in range(1, 6)}


async def test_changes_arrive_marked_and_are_not_sent_on(make_node) -> None:
    a = await make_node("a")
    b = await make_node("b")
    c = await make_node("c")
    await wait_for(lambda: b.replica.settled() and c.replica.settled(), 5)
    a.register(nvr(1))
    a.catalog.apply_sync(nvr(1), items_of(nvr(1), 3), partial=False)
    for node in (b, c):
        await wait_for(lambda node=node: len(list(node.owned())) == 3, 5, "items replicated")
    changes = [e for e in b.heard if isinstance(e, CatalogChange)]
    assert {(e.event, e.node) for e in changes} == {("ADD", "a")}
    # b re-published nothing: only a wrote events (c heard each change once).
    assert b.bus.seq <= 1 and c.bus.seq <= 1  # their hellos only
    c_changes = [e for e in c.heard if isinstance(e, CatalogChange)]
    assert len(c_changes) == 3
    # A status change, then the device going offline.
    cam = items_of(nvr(1), 1)[0]
    a.catalog.apply_notify(nvr(1), [replace(cam, event="OFF", status=None, name=None)])
    await wait_for(lambda: b.catalog.get(cam.device_id).status == "OFF", 5)  # type: ignore[union-attr]
    a.offline(nvr(1))
    await wait_for(lambda: not b.replica.devices[nvr(1)].online, 5)
    offline = [e for e in b.heard if isinstance(e, DeviceOffline)]
    assert [(e.device_id, e.reason, e.node) for e in offline] == [
        (nvr(1), "keepalive timeout", "a")
    ]


async def test_a_gap_makes_the_replica_fetch_again(make_node) -> None:
    a, b = await two_nodes(make_node)
    await share_nvr(a, b, 4)
    # Changes a's events never carried (as if trimmed away), then a gap in a's seq.
    a.bus._outgoing.clear()
    a.catalog._by_owner[nvr(1)].pop(channel(nvr(1), 4))
    a.catalog._owner.pop(channel(nvr(1), 4))
    a.bus._dropped_events = 1
    a.register(nvr(2))  # one more event, after the gap
    await wait_for(lambda: b.bus.metrics.get("cluster.bus.gaps") == 1, 5, "gap seen")
    await wait_for(lambda: sorted(b.owned()) == sorted(a.owned()), 5, "b equal to a again")
    assert b.replica.metrics.get("cluster.replica.fetched") >= 2
    assert nvr(2) in b.replica.devices


async def test_events_heard_while_fetching_are_applied_after(make_node) -> None:
    a, b = await two_nodes(make_node)
    await share_nvr(a, b, 2)
    # b starts fetching a; an event of a arrives meanwhile: held, then applied after.
    b.replica._held["a"] = []
    cam = items_of(nvr(1), 1)[0]
    a.catalog.apply_notify(nvr(1), [replace(cam, event="UPDATE", name="renamed")])
    await wait_for(lambda: len(b.replica._held["a"]) == 1, 5, "held")
    assert b.catalog.get(cam.device_id).name == "cam 1"  # type: ignore[union-attr]
    b.replica._apply_snapshot("a", [a.local.devices[nvr(1)]], {nvr(1): items_of(nvr(1), 2)})
    assert b.catalog.get(cam.device_id).name == "renamed"  # type: ignore[union-attr]
    assert "a" not in b.replica._held


async def test_a_lost_node_takes_its_devices_offline(make_node) -> None:
    a, b = await two_nodes(make_node)
    await share_nvr(a, b, 2)
    b.replica.node_lost("a")
    assert not b.replica.devices[nvr(1)].online
    assert {i.status for _, i in b.catalog} == {"OFF"}
    offline = [e for e in b.heard if isinstance(e, DeviceOffline)]
    assert [(e.device_id, e.node) for e in offline] == [(nvr(1), "a")]


async def test_a_device_that_registers_here_is_this_nodes(make_node) -> None:
    a, b = await two_nodes(make_node)
    a.register(nvr(1))
    await wait_for(lambda: b.replica.holder(nvr(1)) == "a", 5)
    b.register(nvr(1))  # it moved: registered at b now
    assert b.replica.holder(nvr(1)) is None
    await wait_for(lambda: a.replica.holder(nvr(1)) == "b", 5, "a hears it moved")
    assert not a.local.devices[nvr(1)].online  # a's binding released: b judges it now
    assert a.replica.metrics.get("cluster.replica.moved") == 1


async def test_bad_events_are_counted_not_applied(make_node) -> None:
    a, b = await two_nodes(make_node)
    a.bus.publish("dev", {"device": {"no": "id"}})
    a.bus.publish("cat", {"owner": nvr(1)})
    a.bus.publish("alarm", "not a dict")  # type: ignore[arg-type]
    a.register(nvr(2))
    await wait_for(lambda: nvr(2) in b.replica.devices, 5)
    assert b.replica.metrics.get("cluster.replica.bad_event") == 3
    assert not list(b.owned())


class SharedStore(MemoryStore):
    """A store shared by the nodes, as RedisStore is: it knows which node holds each device."""

    def __init__(self, nodes: dict[str, str]) -> None:
        super().__init__()
        self.nodes = nodes

    def device_nodes(self) -> dict[str, str]:
        return dict(self.nodes)


async def test_a_shared_stores_devices_of_other_nodes_stay_theirs(
    redis_server: RedisServer, tmp_path
) -> None:
    """With a shared store every node loads every device: the registrar takes only this
    node's, so it never times out (or saves) another node's device."""
    import time

    from gateway.app import Gateway
    from gateway.settings import config_from_dict

    store = SharedStore({nvr(1): "other", nvr(2): "me"})
    now = time.time()
    for n in (1, 2):
        store.save_device(
            Device(nvr(n), host="127.0.0.1", port=5060, online=True, expires_at=now + 3600)
        )
    config = config_from_dict(
        {
            "sip": {"host": "127.0.0.1", "port": 0},
            "http": {"enabled": False},
            "store": {"backend": "redis", "url": redis_server.url, "prefix": "shared:"},
            "cluster": {"node_id": "me"},
            "log": {"level": "warning"},
        }
    )
    gw = Gateway(config, store=store)
    await gw.start()
    try:
        assert set(gw.registrar.devices) == {nvr(2)}
        assert gw.replica is not None
        assert gw.replica.holder(nvr(1)) == "other" and gw.replica.holder(nvr(2)) is None
    finally:
        await gw.close()
