"""Catalog sync: what happens when a device comes online or goes offline.

GB/T 28181-2022 §9.5.2 and reference §1.4, §3.2–§3.3. When a device registers for the first
time, comes back from offline, or registers anew after a reboot, the gateway asks its DeviceInfo
(kept on the device record) and its Catalog, applies the answer to the stored catalog as a diff,
then subscribes to catalog changes (and alarms and positions when configured). A partial answer
(parts lost, or a ``SumNum`` that cannot be the count: its items are applied all the same) is
applied without removals and the sync is retried later (up to four times, backing off from
60 s). If no catalog comes at all the device's channels follow the device (ON). A device going
offline cancels its sync, drops its subscriptions and turns its channels OFF; a sync it
interrupts (the device vanished mid-answer: a lost TCP connection) applies nothing of the
answer and is marked as such (``sync.interrupted``, ``catalog.sync_interrupted``): it runs
again when the device is back. A device that goes quiet over UDP is still online when its
answer idles out, so what came is applied as a partial answer (``sync.partial``).

A global limit on concurrent syncs keeps a burst of 2,000 registrations (a power cut coming
back) from flooding the gateway with 2,000 parallel catalog collections, and the syncs start
in turn, at most ``sync_rate`` per second and none while the gateway sheds load (``busy``): the
storm of syncs after a storm of registrations waits for the registrations to be served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.catalog import Catalog
from gateway.downlink.downlink import Downlink, QueryError
from gateway.downlink.subscriptions import Subscriptions
from gateway.events import CatalogSynced, DeviceOffline, DeviceOnline, EventBus
from gateway.manscdp import CatalogItem
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.settings import DownlinkSection

log = structlog.get_logger("gateway.downlink.sync")


class CatalogSync:
    def __init__(
        self,
        *,
        settings: DownlinkSection,
        downlink: Downlink,
        subscriptions: Subscriptions,
        catalog: Catalog,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = settings
        self.downlink = downlink
        self.subscriptions = subscriptions
        self.catalog = catalog
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        # The sync task of each device whose answers are being collected now.
        self._collecting: dict[str, asyncio.Task[Any] | None] = {}
        self._limit = asyncio.Semaphore(self.cfg.max_concurrent_syncs)
        self._busy = busy
        self._gate = asyncio.Lock()  # FIFO: the syncs start in the order they were asked
        self._next_start = 0.0
        self.max_busy_wait = 60.0  # past this a sync starts, shedding or not
        self.retry_after = 60.0
        self.max_retries = 4

    def start(self) -> None:
        """After a gateway restart, devices still registered keep their stored catalog but
        lost our subscriptions: subscribe again, spread over a few seconds."""
        online = [d.device_id for d in self.downlink.devices.values() if d.online]
        if not online:
            return
        loop = asyncio.get_running_loop()
        spread = min(30.0, len(online) / 200)
        for i, device_id in enumerate(online):
            loop.call_later(spread * i / len(online), self._resubscribe, device_id)

    def _resubscribe(self, device_id: str) -> None:
        dev = self.downlink.device(device_id)
        if dev is not None and dev.online:
            self.subscriptions.device_online(device_id)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def on_online(self, event: DeviceOnline) -> None:
        if event.node:
            return  # held by another node, which syncs it (gateway.cluster)
        if not self.cfg.sync_on_register:
            # No catalog answer will say otherwise: the channels follow the device.
            self.catalog.set_device_status(event.device_id, "ON")
            self.subscriptions.device_online(event.device_id)
            return
        self.schedule(event.device_id)

    def on_offline(self, event: DeviceOffline) -> None:
        if event.node:
            return  # held by another node: its channels' OFF come from there
        task = self._running.pop(event.device_id, None)
        if task is not None:
            task.cancel()
            if self._collecting.get(event.device_id, False) is task:
                self.metrics.inc("sync.interrupted")
                log.warning(
                    "catalog.sync_interrupted", device_id=event.device_id, reason=event.reason
                )
        self.subscriptions.device_offline(event.device_id)
        changed = self.catalog.set_device_status(event.device_id, "OFF")
        if changed:
            log.info("catalog.device_offline", device_id=event.device_id, channels_off=changed)

    def schedule(self, device_id: str, delay: float = 0.0) -> asyncio.Task[None]:
        elsewhere = self.downlink.elsewhere
        if elsewhere is not None and (node := elsewhere.holder(device_id)) is not None:
            # Another node holds it: that node syncs it (and stores what it reports).
            return self.downlink.spawn(elsewhere.sync(node, device_id))
        old = self._running.pop(device_id, None)
        if old is not None:
            old.cancel()
        task = self.downlink.spawn(self._run(device_id, delay))
        self._running[device_id] = task
        task.add_done_callback(lambda t: self._done(device_id, t))
        return task

    def _done(self, device_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(device_id) is task:
            del self._running[device_id]

    async def _run(self, device_id: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self._turn()
        async with self._limit:
            partial = await self.sync(device_id)
        self.subscriptions.device_online(device_id)
        # Parts were lost on the way (or nothing came): ask again later, backing off.
        wait = self.retry_after
        for _ in range(self.max_retries):
            if not partial:
                return
            await asyncio.sleep(wait)
            wait *= 2
            dev = self.downlink.device(device_id)
            if dev is None or not dev.online:
                return
            await self._turn()
            async with self._limit:
                partial = await self.sync(device_id)

    async def _turn(self) -> None:
        """Wait for this sync's start: one at a time through the gate, ``1 / sync_rate``
        seconds apart, and (up to ``max_busy_wait``) not while the gateway sheds load. Only the
        sync at the head of the line polls."""
        loop = asyncio.get_running_loop()
        async with self._gate:
            busy = self._busy
            if busy is not None and busy():
                self.metrics.inc("sync.paused")
                give_up = loop.time() + self.max_busy_wait
                while busy() and loop.time() < give_up:
                    await asyncio.sleep(0.2)
            wait = self._next_start - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = max(loop.time(), self._next_start) + 1.0 / self.cfg.sync_rate

    async def sync(self, device_id: str) -> bool:
        """DeviceInfo, then Catalog, applied as a diff. Returns True when the catalog answer
        was partial (or missing)."""
        dev = self.downlink.device(device_id)
        if dev is None or not dev.online:
            return False
        me = self._collecting[device_id] = asyncio.current_task()
        try:
            return await self._sync(device_id, dev)
        finally:
            if self._collecting.get(device_id) is me:
                del self._collecting[device_id]

    async def _sync(self, device_id: str, dev: Device) -> bool:
        dl = self.downlink
        try:
            info = await dl.device_info(device_id)
        except QueryError as exc:
            log.info("sync.device_info_failed", device_id=device_id, error=str(exc))
        else:
            dev.name = info.device_name or dev.name
            dev.manufacturer = info.manufacturer or dev.manufacturer
            dev.model = info.model or dev.model
            dev.firmware = info.firmware or dev.firmware
            dev.channel_count = info.channel if info.channel is not None else dev.channel_count
            dl.store.save_device(dev)
        started = time.monotonic()
        try:
            result = await dl.catalog_query(device_id)
        except QueryError as exc:
            self.metrics.inc("sync.failed")
            log.warning("sync.catalog_failed", device_id=device_id, error=str(exc))
            # The device is online but its catalog did not come: its channels follow it.
            self.catalog.set_device_status(device_id, "ON")
            return True
        items: list[CatalogItem] = result.items
        diff = self.catalog.apply_sync(device_id, items, partial=result.partial)
        dev.synced_at = self.clock()
        dl.store.save_device(dev)
        self.metrics.inc("sync.partial" if result.partial else "sync.complete")
        self.metrics.observe("sync.seconds", time.monotonic() - started)
        log.info(
            "catalog.synced",
            device_id=device_id,
            items=len(items),
            sum_num=result.sum_num,
            partial=result.partial,
            added=diff.added,
            removed=diff.removed,
            changed=diff.changed,
            refused=diff.refused,
            dropped=result.dropped,
            seconds=round(time.monotonic() - started, 3),
        )
        self.events.publish(
            CatalogSynced(
                device_id, diff.total, diff.added, diff.removed, diff.changed, result.partial
            )
        )
        return result.partial
