"""What the other nodes hold, kept here: their devices and their catalogs, so every node serves
one complete catalog and hears every node's changes.

Each node publishes on the bus (:class:`~gateway.cluster.bus.Bus`) what happens to the devices
it holds: a device on or offline (with its record), every catalog change (the item before and
after), the end of a sync, an alarm. Every other node applies these to its replica: the remote
devices here (:attr:`Replica.devices`, device ID → record and the node holding it), their items
in the local catalog (:meth:`CatalogMirror.mirror_change`: in memory only, never written to this
node's store, since the holding node stores them). Each is re-published on this node's
:class:`~gateway.events.EventBus` marked with the holding ``node``, so the uplink's NOTIFYs and
the console's live updates see every node's changes, while this node's catalog sync and
subscriptions leave them alone, and the replica does not send them on again.

The replica does not depend on a shared store: it fills itself from the others. At start and
whenever a node's events may have been lost (a gap in its ``seq``, Redis away, a node new or
restarted: its ``hello``) it asks that node for everything it holds (``replica.snapshot``,
paged by device) and makes the replica equal to it; the events of that node heard meanwhile are
held and applied after, in order, so the replica ends at the node's latest state.

A remote device's liveness is judged by its own node only: the records live here, not in the
registrar, whose keepalive and expiry checks never see them. :class:`ClusterDevices` is the
directory the floors above read: this node's registrar first, the replica's records for the
devices held elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

import structlog

from gateway.cluster.bus import Bus, ClusterError
from gateway.cluster.wire import (
    alarm_from_wire,
    alarm_to_wire,
    device_from_wire,
    device_to_wire,
    item_from_wire,
    item_to_wire,
)
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    CatalogSynced,
    DeviceOffline,
    DeviceOnline,
    EventBus,
)
from gateway.manscdp import CatalogItem
from gateway.metrics import Metrics
from gateway.model import Device, DeviceDirectory

log = structlog.get_logger("gateway.cluster.replica")

PAGE_ITEMS = 20_000
"""Catalog items in one page of a snapshot answer."""
MAX_HELD = 1_000_000
"""Events of one node held while its snapshot is fetched; beyond, the fetch starts again."""


class CatalogMirror(Protocol):
    """What the replica needs of the catalog (``gateway.catalog.Catalog``)."""

    def mirror(self, owner: str, items: Iterable[CatalogItem], node: str) -> object: ...

    def mirror_change(
        self, owner: str, item_id: str, event: str, after: CatalogItem | None, node: str
    ) -> bool: ...

    def reported_by(self, owner_id: str) -> Iterable[CatalogItem]: ...

    def owners(self) -> Iterable[str]: ...


class Replica:
    """The devices and catalogs of the other nodes, kept current from the bus."""

    def __init__(
        self,
        *,
        bus: Bus,
        local: DeviceDirectory,
        catalog: CatalogMirror,
        events: EventBus,
        metrics: Metrics,
        peers: Callable[[], Awaitable[Iterable[str]]] | None = None,
        snapshot_timeout: float | None = None,
        release: Callable[[str], object] | None = None,
    ) -> None:
        self.bus = bus
        self.node_id = bus.node_id
        self.local = local
        self.catalog = catalog
        self.events = events
        self.metrics = metrics
        self._peers = peers if peers is not None else bus.nodes
        self.snapshot_timeout = snapshot_timeout
        # Drops this node's binding of a device that registered at another node since.
        self._release = release
        # device ID -> its record and the node that holds it (devices held elsewhere only).
        self.devices: dict[str, Device] = {}
        self.node_of: dict[str, str] = {}
        # node -> the events heard while its snapshot is being fetched.
        self._held: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._started = False

    # -- what the other parts read ------------------------------------------------------------
    def holder(self, device_id: str) -> str | None:
        """The node that holds ``device_id`` when another node does; None when it is this
        node's (or unknown)."""
        node = self.node_of.get(device_id)
        if node is None:
            return None
        dev = self.local.get(device_id)
        if dev is not None and dev.online:
            return None  # it registered here since: this node holds it now
        return node

    def seed(self, device_nodes: dict[str, str]) -> int:
        """Take the store's word on which node holds which device (a shared store's
        ``device_nodes()``): those held elsewhere are not this node's, before their node's
        snapshot comes. Returns how many."""
        n = 0
        for device_id, node in device_nodes.items():
            if node and node != self.node_id:
                self.node_of[device_id] = node
                n += 1
        return n

    def held_elsewhere(self, device_id: str) -> bool:
        return self.holder(device_id) is not None

    def of_node(self, node: str) -> list[str]:
        return [d for d, n in self.node_of.items() if n == node]

    def settled(self) -> bool:
        """Every snapshot asked for so far has been applied."""
        return self._started and not self._fetching

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Hear the others, serve snapshots, publish this node's changes, say hello (the others
        fetch this node's state) and fetch each live node's state (in the background:
        :meth:`settled` says when it is done)."""
        bus = self.bus
        bus.handle("replica.snapshot", self._snapshot)
        bus.on_event("dev", self._heard_device)
        bus.on_event("cat", self._heard_change)
        bus.on_event("synced", self._heard_synced)
        bus.on_event("alarm", self._heard_alarm)
        bus.on_event("hello", lambda node, body: self.refetch(node))
        bus.on_event("bye", lambda node, body: self.node_lost(node, "node stopped"))
        bus.on_gap(self.refetch)
        ev = self.events
        ev.subscribe(DeviceOnline, self._device_online)
        ev.subscribe(DeviceOffline, self._device_offline)
        ev.subscribe(CatalogChange, self._catalog_change)
        ev.subscribe(CatalogSynced, self._catalog_synced)
        ev.subscribe(AlarmReceived, self._alarm)
        bus.publish("hello", {})
        try:
            peers = [p for p in await self._peers() if p != self.node_id]
        except (ClusterError, OSError, Exception) as exc:
            log.warning("replica.peers_unknown", error=str(exc))
            peers = []
        self._started = True
        for node in peers:
            self.refetch(node)

    async def close(self) -> None:
        """Say goodbye (the others take this node's devices offline at once, rather than when
        its membership runs out) and stop fetching."""
        if self._started:
            self.bus.publish("bye", {})
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancellation lost inside redis-py must not hang the shutdown.
            await asyncio.wait(tasks, timeout=2.0)

    def node_lost(self, node: str, reason: str = "node lost") -> None:
        """``node`` is gone (its membership ran out): its devices go offline here and their
        channels OFF, until another node takes them over and says so."""
        task = self._fetching.pop(node, None)
        if task is not None:
            task.cancel()
        self._held.pop(node, None)
        for device_id in self.of_node(node):
            dev = self.devices[device_id]
            for item in list(self.catalog.reported_by(device_id)):
                if item.status == "ON":
                    self.catalog.mirror_change(
                        device_id, item.device_id, "OFF", _with_status(item, "OFF"), node
                    )
            if dev.online:
                dev.online = False
                self.events.publish(DeviceOffline(device_id, reason, node))

    # -- this node's changes, out ------------------------------------------------------------
    def _local(self, device_id: str) -> bool:
        return self.holder(device_id) is None

    def _device_online(self, event: DeviceOnline) -> None:
        if event.node:
            return
        dev = self.local.get(event.device_id)
        if dev is None:
            return
        # A device that moved here is no longer another node's.
        self.node_of.pop(event.device_id, None)
        self.devices.pop(event.device_id, None)
        self.bus.publish(
            "dev", {"device": device_to_wire(dev), "first": event.first_time, "reason": ""}
        )

    def _device_offline(self, event: DeviceOffline) -> None:
        if event.node:
            return
        dev = self.local.get(event.device_id)
        if dev is None or not self._local(event.device_id):
            return
        self.bus.publish("dev", {"device": device_to_wire(dev), "reason": event.reason})

    def _catalog_change(self, event: CatalogChange) -> None:
        if event.node or not self._local(event.owner_id):
            return
        self.bus.publish(
            "cat",
            {
                "owner": event.owner_id,
                "item": event.item_id,
                "event": event.event,
                "after": item_to_wire(event.after),
            },
        )

    def _catalog_synced(self, event: CatalogSynced) -> None:
        if event.node:
            return
        dev = self.local.get(event.device_id)
        if dev is not None and self._local(event.device_id):
            # What the sync learnt of the device itself (DeviceInfo: name, maker, model).
            self.bus.publish("dev", {"device": device_to_wire(dev), "reason": ""})
        self.bus.publish(
            "synced",
            {
                "device_id": event.device_id,
                "total": event.total,
                "added": event.added,
                "removed": event.removed,
                "changed": event.changed,
                "partial": event.partial,
            },
        )

    def _alarm(self, event: AlarmReceived) -> None:
        if event.node:
            return
        self.bus.publish("alarm", alarm_to_wire(event.alarm))

    # -- the others' changes, in -------------------------------------------------------------
    def _hold(self, node: str, event: str, body: dict[str, Any]) -> bool:
        """While ``node``'s snapshot is fetched its events wait (applied after it)."""
        held = self._held.get(node)
        if held is None:
            return False
        if len(held) >= MAX_HELD:
            self._again.add(node)
            held.clear()
        held.append((event, body))
        return True

    def _heard_device(self, node: str, body: dict[str, Any]) -> None:
        if not self._hold(node, "dev", body):
            self._apply_device(node, body)

    def _apply_device(self, node: str, body: dict[str, Any]) -> None:
        try:
            dev = device_from_wire(body.get("device"))
        except ClusterError as exc:
            self.metrics.inc("cluster.replica.bad_event")
            log.warning("replica.bad_event", node=node, error=str(exc))
            return
        device_id = dev.device_id
        mine = self.local.get(device_id)
        if mine is not None and mine.online:
            if not dev.online or dev.registered_at < mine.registered_at:
                return  # an older word of that node's about a device registered here since
            # Registered there after here: that node holds it now, and judges its liveness.
            self.metrics.inc("cluster.replica.moved")
            log.info("replica.device_moved", device_id=device_id, node=node)
            if self._release is not None:
                self._release(device_id)
        old = self.devices.get(device_id)
        was_online = old is not None and old.online
        self.devices[device_id] = dev
        self.node_of[device_id] = node
        self.metrics.inc("cluster.replica.devices")
        if dev.online and (not was_online or (old is not None and old.call_id != dev.call_id)):
            self.events.publish(
                DeviceOnline(
                    device_id, dev.transport, dev.host, dev.port, bool(body.get("first")), node
                )
            )
        elif not dev.online and was_online:
            self.events.publish(DeviceOffline(device_id, str(body.get("reason", "")), node))

    def _heard_change(self, node: str, body: dict[str, Any]) -> None:
        if not self._hold(node, "cat", body):
            self._apply_change(node, body)

    def _apply_change(self, node: str, body: dict[str, Any]) -> None:
        try:
            owner, item_id, event = str(body["owner"]), str(body["item"]), str(body["event"])
            after = item_from_wire(body.get("after"))
        except (KeyError, ClusterError) as exc:
            self.metrics.inc("cluster.replica.bad_event")
            log.warning("replica.bad_event", node=node, error=str(exc))
            return
        mine = self.local.get(owner)
        if mine is not None and mine.online and self.holder(owner) is None:
            return  # the device is this node's now: its catalog is this node's to change
        self.node_of.setdefault(owner, node)
        if self.catalog.mirror_change(owner, item_id, event, after, node):
            self.metrics.inc("cluster.replica.changes")

    def _heard_synced(self, node: str, body: dict[str, Any]) -> None:
        try:
            event = CatalogSynced(
                str(body["device_id"]),
                int(body["total"]),
                int(body["added"]),
                int(body["removed"]),
                int(body["changed"]),
                bool(body["partial"]),
                node,
            )
        except (KeyError, TypeError, ValueError):
            self.metrics.inc("cluster.replica.bad_event")
            return
        self.events.publish(event)

    def _heard_alarm(self, node: str, body: dict[str, Any]) -> None:
        try:
            alarm = alarm_from_wire(body)
        except ClusterError:
            self.metrics.inc("cluster.replica.bad_event")
            return
        self.events.publish(AlarmReceived(alarm, node))

    # -- snapshots ---------------------------------------------------------------------------
    def refetch(self, node: str) -> None:
        """Fetch everything ``node`` holds again (its events meanwhile are held)."""
        if node == self.node_id:
            return
        if node in self._fetching:
            self._again.add(node)
            return
        self._held.setdefault(node, [])
        task = asyncio.ensure_future(self._fetch(node))
        self._fetching[node] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._fetching.get(node) is t:
                del self._fetching[node]
            if node in self._again and not t.cancelled():
                self._again.discard(node)
                self.refetch(node)

        task.add_done_callback(done)

    async def _fetch(self, node: str) -> None:
        devices: list[Device] = []
        items: dict[str, list[CatalogItem]] = {}
        after = ""
        try:
            while True:
                page = await self.bus.request(
                    node,
                    "replica.snapshot",
                    {"after": after, "max_items": PAGE_ITEMS},
                    self.snapshot_timeout,
                )
                if not after:
                    devices = [device_from_wire(d) for d in page.get("devices", ())]
                for owner, raw in page.get("owners", ()):
                    found = [item_from_wire(i) for i in raw]
                    items[str(owner)] = [i for i in found if i is not None]
                nxt = page.get("next")
                if not nxt:
                    break
                after = str(nxt)
        except ClusterError as exc:
            # Not there (dead, or not yet started): its hello or its events will bring it.
            # What it published meanwhile still holds.
            self._replay(node, self._held.pop(node, []))
            self.metrics.inc("cluster.replica.fetch_failed")
            log.info("replica.fetch_failed", node=node, error=str(exc))
            return
        except BaseException:
            self._held.pop(node, None)
            raise
        self._apply_snapshot(node, devices, items)

    def _apply_snapshot(
        self, node: str, devices: list[Device], items: dict[str, list[CatalogItem]]
    ) -> None:
        held = self._held.pop(node, [])
        now_there = {d.device_id for d in devices}
        for dev in devices:
            self._apply_device(node, {"device": device_to_wire(dev), "reason": "snapshot"})
        for owner, its in items.items():
            mine = self.local.get(owner)
            if mine is not None and mine.online:
                continue  # registered here since: this node's catalog of it is the truth
            self.node_of[owner] = node
            self.catalog.mirror(owner, its, node)
        for device_id in self.of_node(node):
            if device_id in now_there or device_id in items:
                continue
            # That node no longer holds it: what it reported goes.
            self.catalog.mirror(device_id, (), node)
            gone = self.devices.pop(device_id, None)
            del self.node_of[device_id]
            if gone is not None and gone.online:
                self.events.publish(DeviceOffline(device_id, "gone from its node", node))
        self._replay(node, held)
        self.metrics.inc("cluster.replica.fetched")
        log.info(
            "replica.fetched",
            node=node,
            devices=len(devices),
            items=sum(len(v) for v in items.values()),
            held=len(held),
        )

    def _replay(self, node: str, held: list[tuple[str, dict[str, Any]]]) -> None:
        for event, body in held:
            if event == "dev":
                self._apply_device(node, body)
            else:
                self._apply_change(node, body)

    async def _snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        """Everything this node holds, one page: its devices (on the first page) and the items
        of its devices in device-ID order from ``after``, about ``max_items`` a page."""
        after = str(body.get("after") or "")
        try:
            budget = max(1, min(int(body.get("max_items", PAGE_ITEMS)), PAGE_ITEMS * 5))
        except (TypeError, ValueError):
            raise ClusterError("max_items is not a number", "bad") from None
        await self.bus.drain()  # what this node published so far is out before its state
        owners = sorted(o for o in self.catalog.owners() if o > after and self._local(o))
        out: list[list[Any]] = []
        taken = 0
        nxt = None
        for owner in owners:
            if taken >= budget:
                nxt = out[-1][0]
                break
            its = [item_to_wire(i) for i in self.catalog.reported_by(owner)]
            out.append([owner, its])
            taken += len(its)
        reply: dict[str, Any] = {"owners": out, "next": nxt}
        if not after:
            reply["devices"] = [
                device_to_wire(d) for d in self.local.values() if self._local(d.device_id)
            ]
        return reply


def _with_status(item: CatalogItem, status: str) -> CatalogItem:
    return replace(item, status=status)


class ClusterDevices:
    """The device directory of a node in a cluster (:class:`gateway.model.DeviceDirectory`):
    this node's registrar, then the devices other nodes hold."""

    def __init__(self, local: DeviceDirectory, replica: Replica) -> None:
        self.local = local
        self.replica = replica

    def get(self, device_id: str, /) -> Device | None:
        dev = self.local.get(device_id)
        if dev is not None and dev.online:
            return dev
        return self.replica.devices.get(device_id, dev)

    def __contains__(self, device_id: object, /) -> bool:
        return device_id in self.local or device_id in self.replica.devices

    def values(self) -> Iterator[Device]:
        remote = self.replica.devices
        for dev in self.local.values():
            if dev.online or dev.device_id not in remote:
                yield dev
        for device_id, dev in remote.items():
            mine = self.local.get(device_id)
            if mine is None or not mine.online:
                yield dev

    def ids(self) -> Iterator[str]:
        """Every device ID any node knows, each once (this node's first)."""
        remote = self.replica.devices
        for dev in self.local.values():
            yield dev.device_id
        for device_id in remote:
            if device_id not in self.local:
                yield device_id

    def __len__(self) -> int:
        """How many devices :meth:`ids` gives (O(devices): a few thousand)."""
        remote = self.replica.devices
        return len(remote) + sum(1 for d in self.local.values() if d.device_id not in remote)
