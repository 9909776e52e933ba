"""The suite's side of the wire for each role of the target (reference §1.1, §7).

* ``device``: the suite is the platform. One endpoint on (``local_host``, ``local_port``) with a
  :class:`~conformance.peers.platform.SimPlatform` (``suite_platform_id``, ``suite_domain``,
  the run's password); :meth:`Harness.start` waits ``register_timeout`` for ``target_id`` to
  register, then reads its catalog to learn its channels.
* ``platform``: the suite is devices below the target. One endpoint (port picked by the OS)
  with a :class:`~conformance.peers.device.SimDevice` per ``suite_device_ids`` entry
  (``channels`` channels each), registering to (``target_host``, ``target_port``) with
  ``server_id = target_id`` and ``domain = target_domain``, keeping alive every
  :data:`KEEPALIVE_INTERVAL` seconds. A simulated upper platform also listens on
  (``local_host``, ``local_port``) for a target that registers upward; nobody waits for it,
  unless the run's ``cascade`` says the platform registers there: it is then played as a
  gateway.
* ``gateway``: both. The devices register to the gateway, the gateway registers to the suite's
  platform on (``local_host``, ``local_port``) (configure it so, with ``target_id`` as its ID);
  :meth:`Harness.start` waits for both registrations and for the gateway to have read every
  device's catalog (an upper Catalog query lists every item).

The devices are made to cover what the standard allows a device to do: the first sends one
catalog item per MESSAGE and has a custom tree (business group, virtual organisations), the
second (if any) sends its catalog in one batch and writes UTF-8; all keep 2016 or 2022 fields
as the edition says, record files, a voice output and PS/H.264 media.

Cases use what is here: ``platform`` (queries, controls, INVITEs to ``lower_id``), ``devices``
(what arrived below a gateway), :meth:`Harness.channel_ids`, :meth:`Harness.device_for`, the
REGISTER and keepalive logs, and a few helpers that leave the world as they found it
(:meth:`Harness.manual`, :meth:`Harness.resync`, :meth:`Harness.spare_device`).

Between cases the runner asks :meth:`Harness.state_problems` what is not as the role needs it
(the target not registered to the suite's platform, a suite device not registered to the
target) and :meth:`Harness.restore` puts it back: the switches of the suite's platform and
devices return to what they were when the run started, and it waits for the registrations to
come back (the suite's devices register again on their own; a target the suite's platform
forgot learns it from its next keepalive's 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import structlog

from conformance.peers.device import DeviceHub, SimDevice
from conformance.peers.platform import QueryResult, SimPlatform
from conformance.suite.options import Options
from conformance.suite.progress import waiting
from gateway.manscdp.messages import CatalogItem, CatalogQuery, Message
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint
from gateway.sip.errors import TransactionTimeout, TransportError
from gateway.sip.transaction import TimerConfig
from gateway.sip.transport import Peer

log = structlog.get_logger("conformance.suite.harness")

KEEPALIVE_INTERVAL = 1.0
"""Seconds between the suite devices' keepalives: short, so that no platform's offline timer
(normally 3 × 60 s) can fire during a run, however it is configured."""
RECORD_COUNT = 6  # record files a suite device reports in any RecordInfo window
PLAYBACK_FRAMES = 250  # at most this many frames per playback or download (10 s at 25 fps)
SPARE_BASE = 9900  # serials of the spare devices cases register (type 132, far from the rest)
VIDEO_TYPES = frozenset({"131", "132"})
_SEND_ERRORS = (TransactionTimeout, TransportError, OSError)
# Fields of the suite's simulated peers that are state, not switches: never put back between
# cases (every other plain field is a switch a case may have turned and the runner restores).
_PLATFORM_STATE = frozenset({"platform_id", "domain", "keepalive_interval",
                             "keepalive_timeout_count", "realm"})  # fmt: skip
_DEVICE_STATE = frozenset({
    "device_id", "server", "server_id", "domain", "call_id", "from_tag", "cseq", "sn",
    "registered", "reboots", "redirects", "redirect_home", "missed_keepalives", "recording",
    "guard", "ptz_position", "home_position", "last_challenge", "expires", "pipelined_dropped",
})  # fmt: skip
_PLAIN = (bool, int, float, str, tuple, frozenset, type(None))


def _switches(obj: Any, state: frozenset[str]) -> dict[str, Any]:
    """The plain-valued init fields of a simulated peer that are not ``state``: its switches."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init or f.name.startswith("_") or f.name in state:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, _PLAIN):
            out[f.name] = value
        elif f.name == "passwords" and isinstance(value, dict):  # per-ID passwords: a switch
            out[f.name] = dict(value)
    return out


def _put_back(obj: Any, saved: Mapping[str, Any]) -> list[str]:
    """Set ``obj``'s switches back to ``saved``; the names of those that had changed."""
    changed = []
    for name, value in saved.items():
        if getattr(obj, name) != value:
            setattr(obj, name, dict(value) if isinstance(value, dict) else value)
            changed.append(name)
    return changed


class HarnessError(RuntimeError):
    """The suite could not take its place (the target never registered, refused the devices)."""


def is_video_channel(item_id: str) -> bool:
    return len(item_id) == 20 and item_id[10:13] in VIDEO_TYPES


class Harness:
    """The suite's simulated peers for one run; built by the runner from the options."""

    def __init__(
        self, options: Options, *, device_settings: Mapping[str, Any] | None = None
    ) -> None:
        """``device_settings``: SimDevice attributes given to every suite device (a test that
        makes the devices below a gateway misbehave); the run itself passes only options."""
        self.options = options
        self.device_settings = dict(device_settings or {})
        # A cascading platform is played as a gateway is: devices below, an upper above.
        self.role = "gateway" if options.cascade else options.target_role
        self.trace: Any = None  # the runner's trace: endpoints are tapped as they start
        self.endpoints: list[tuple[Endpoint, str]] = []
        self.platform: SimPlatform | None = None
        self.platform_endpoint: Endpoint | None = None
        self.device_endpoint: Endpoint | None = None
        self.hub: DeviceHub | None = None
        self.devices: list[SimDevice] = []
        self.spares: list[SimDevice] = []  # devices cases registered for a while
        self.lower_id = options.target_id  # how the suite's platform knows the target
        self.device_events: deque[tuple[float, str, str, str]] = deque(maxlen=5000)
        self.platform_events: deque[str] = deque(maxlen=5000)
        self._channels: list[str] = []
        self._catalog: list[CatalogItem] = []
        # The switches of the suite's platform and devices as the run started (restore()).
        self._saved: list[tuple[Any, dict[str, Any]]] = []

    # -- what the suite plays ------------------------------------------------------------------
    @property
    def suite_is_platform(self) -> bool:
        """The suite's platform faces the target's device side (device and gateway roles)."""
        return self.role in ("device", "gateway")

    @property
    def suite_has_devices(self) -> bool:
        """The suite's devices face the target's registrar (platform and gateway roles)."""
        return self.role in ("platform", "gateway")

    @property
    def edition_2022(self) -> bool:
        return self.options.edition == "2022"

    @property
    def target_peer(self) -> Peer:
        """Where the target's SIP is: the source of its registration (device role), or the
        configured address."""
        if self.role == "device" and self.platform is not None:
            lower = self.platform.lowers.get(self.lower_id)
            if lower is not None:
                return lower.peer
        o = self.options
        return Peer(o.transport, o.target_host, o.target_port)

    def need_platform(self) -> SimPlatform:
        if self.platform is None:
            raise HarnessError("the suite has no platform in this role")
        return self.platform

    # -- lifecycle ------------------------------------------------------------------------------
    async def _endpoint(self, host: str, port: int, label: str) -> Endpoint:
        ep = Endpoint(metrics=Metrics(), timers=TimerConfig(), user_agent="gb28181-conformance")
        await ep.start(host, port)
        self.endpoints.append((ep, label))
        if self.trace is not None:
            self.trace.tap(ep, label)
        return ep

    async def start(self) -> None:
        o = self.options
        if not o.target_id:
            raise HarnessError("the target's ID (target_id) is needed")
        deadline = time.monotonic() + o.register_timeout
        if self.role == "device":
            await self._start_platform()
            await self._wait_registered(deadline, "the device")
            await self.refresh_channels()
            self._save_switches()
            return
        if not o.suite_device_ids:
            raise HarnessError(f"the {self.role} role needs suite device IDs")
        await self._start_platform()
        await self._start_devices(deadline)
        if self.role == "gateway":
            who = "the platform" if o.cascade else "the gateway"
            await self._wait_registered(deadline, f"{who} (to the suite's upper platform)")
            await self._wait_synced(deadline)
        self._save_switches()

    # -- between cases --------------------------------------------------------------------------
    def _save_switches(self) -> None:
        peers: list[tuple[Any, frozenset[str]]] = []
        if self.platform is not None:
            peers.append((self.platform, _PLATFORM_STATE))
        peers += [(d, _DEVICE_STATE) for d in self.devices]
        self._saved = [(peer, _switches(peer, state)) for peer, state in peers]

    def reset_switches(self) -> list[str]:
        """Put every switch of the suite's platform and devices back as it was when the run
        started; return what had been left changed (``platform.grant_expires``, …)."""
        changed = []
        for peer, saved in self._saved:
            who = "platform" if peer is self.platform else getattr(peer, "device_id", "?")
            changed += [f"{who}.{name}" for name in _put_back(peer, saved)]
        return changed

    def target_keepalive_times(self) -> list[float]:
        """Arrival times (``time.monotonic()``) of the target's keepalives to the suite's
        platform, oldest first (what the suite learns the target's heartbeat period from)."""
        if self.platform is None or not self.suite_is_platform:
            return []
        return [k[0] for k in self.keepalives_from(self.lower_id)]

    def state_problems(self) -> list[str]:
        """What is not as every case expects to find it (empty: all is well): the target
        registered to the suite's platform (device and gateway roles), each suite device
        registered to the target (platform and gateway roles)."""
        out = []
        if self.suite_is_platform and self.platform is not None and not self.registered():
            where = "upper platform" if self.role == "gateway" else "platform"
            out.append(f"the target {self.lower_id} is not registered to the suite's {where}")
        if self.suite_has_devices:
            out += [
                f"suite device {d.device_id} is not registered to the target"
                for d in self.devices
                if not d.registered
            ]
        return out

    async def restore(self, timeout: float) -> list[str]:
        """Put the switches back (:meth:`reset_switches`) and wait, at most ``timeout``
        seconds, until :meth:`state_problems` has nothing to say; return what is still wrong.

        The suite's devices register again on their own (their keepalive loop registers a
        device that is not registered); a target the suite's platform forgot or refused learns
        it from its next keepalive (404) and must register again by itself."""
        changed = self.reset_switches()
        if changed:
            log.info("conformance.switches_reset", switches=changed)
        problems = self.state_problems()
        if not problems:
            return []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        with waiting("; ".join(problems) + ": to be registered again", timeout):
            while problems and loop.time() < end:
                await asyncio.sleep(0.1)
                problems = self.state_problems()
        return problems

    async def _start_platform(self) -> None:
        o = self.options
        self.platform_endpoint = ep = await self._endpoint(o.local_host, o.local_port, "platform")
        self.platform = SimPlatform(
            ep,
            platform_id=o.suite_platform_id,
            domain=o.suite_domain,
            password=o.password,
            on_event=self.platform_events.append,
        ).start()

    def _make_device(self, device_id: str, index: int, **kw: Any) -> SimDevice:
        o = self.options
        assert self.device_endpoint is not None
        settings: dict[str, Any] = {
            "server_id": o.target_id,
            "domain": o.target_domain or o.target_id[:10],
            "password": o.password,
            "channel_count": o.channels,
            "gb_version": "3.0" if self.edition_2022 else None,
            "record_count": RECORD_COUNT,
            "playback_frames": PLAYBACK_FRAMES,
            "audio_outputs": 1,
            # One item per MESSAGE with a custom tree; then a batch in one MESSAGE, in UTF-8.
            "with_groups": index == 0,
            "items_per_message": 1 if index % 2 == 0 else max(1, o.channels + 1),
            "charset": "GB2312" if index % 2 == 0 else "UTF-8",
        }
        settings.update(self.device_settings)
        settings.update(kw)
        server = Peer(o.transport, o.target_host, o.target_port)
        return SimDevice(self.device_endpoint, device_id, server, **settings)

    async def _start_devices(self, deadline: float) -> None:
        o = self.options
        self.device_endpoint = ep = await self._endpoint(o.local_host, 0, "devices")
        self.hub = DeviceHub(ep, on_event=self._device_event)
        for i, device_id in enumerate(o.suite_device_ids):
            self.devices.append(self.hub.add(self._make_device(device_id, i)))
        pending = list(self.devices)
        last = ""
        with waiting("the suite's devices to register to the target", o.register_timeout):
            while pending:
                results = await asyncio.gather(*(self._try_register(d) for d in pending))
                last = "; ".join(r for r in results if r)
                pending = [d for d in pending if not d.registered]
                if not pending:
                    break
                if time.monotonic() + 1.0 > deadline:
                    raise HarnessError(f"the suite's devices could not register: {last}")
                await asyncio.sleep(1.0)
        self.hub.start_keepalive(KEEPALIVE_INTERVAL)

    async def _try_register(self, device: SimDevice) -> str:
        try:
            resp = await device.register()
        except _SEND_ERRORS as exc:
            return f"{device.device_id}: no answer ({type(exc).__name__})"
        if resp.status != 200:
            return f"{device.device_id}: {resp.status} {resp.reason}"
        return ""

    def _device_event(self, device_id: str, event: str, detail: str) -> None:
        self.device_events.append((time.monotonic(), device_id, event, detail))

    async def _wait_registered(self, deadline: float, who: str) -> None:
        platform = self.need_platform()
        with waiting(f"{who} {self.lower_id} to register", deadline - time.monotonic()):
            while not self.registered():
                if time.monotonic() >= deadline:
                    raise HarnessError(
                        f"{who} {self.lower_id} did not register within "
                        f"{self.options.register_timeout:g} s"
                    )
                await asyncio.sleep(0.05)
        log.info(
            "conformance.target_registered",
            target=self.lower_id,
            peer=str(platform.lowers[self.lower_id].peer),
        )

    def registered(self) -> bool:
        platform = self.platform
        if platform is None:
            return False
        lower = platform.lowers.get(self.lower_id)
        return lower is not None and lower.registered

    async def _wait_synced(self, deadline: float) -> None:
        """Until the upper's catalog lists every item of every suite device (or the deadline:
        the catalog cases then say what is missing)."""
        wanted = {i.device_id for d in self.devices for i in d.catalog_items()}
        what = "the target to list every suite device's catalog to the upper"
        with waiting(what, max(0.0, deadline - time.monotonic())):
            while True:
                res = await self.catalog(timeout=5.0, idle=1.0)
                seen = {i.device_id for i in res.items}
                if wanted <= seen or time.monotonic() + 0.5 >= deadline:
                    break
                await asyncio.sleep(0.3)

    async def close(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            devices = [d for d in (*self.devices, *self.spares) if d.registered]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.gather(*(d.unregister() for d in devices), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.hub.close()
        if self.platform is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.platform.close()
        for ep, _ in self.endpoints:
            await ep.close()

    # -- the target's channels, as the suite's platform sees them --------------------------------
    async def catalog(self, target: str | None = None, **kw: float) -> QueryResult:
        """A Catalog query to the target (the suite's platform; device and gateway roles)."""
        kw.setdefault("timeout", 10.0)
        kw.setdefault("idle", 2.0)
        res = await self.need_platform().catalog(self.lower_id, target, **kw)
        if target is None and res.items:
            self._catalog = list(res.items)
            self._channels = self._video_channels(res.items)
        return res

    def _video_channels(self, items: Iterable[CatalogItem]) -> list[str]:
        ids = [i.device_id for i in items if is_video_channel(i.device_id)]
        if self.role == "gateway":
            # Channels of the suite's own devices first, in their order.
            order = {c: n for n, c in enumerate(c for d in self.devices for c in d.channel_ids())}
            ids.sort(key=lambda c: order.get(c, len(order)))
        if not ids and is_video_channel(self.lower_id):
            ids = [self.lower_id]  # an IPC that is its own channel
        return ids

    async def refresh_channels(self) -> list[str]:
        await self.catalog()
        return self._channels

    def channel_ids(self) -> list[str]:
        """The video channels (types 131/132) the suite's platform sees at the target."""
        return list(self._channels)

    def catalog_items(self) -> list[CatalogItem]:
        """The target's catalog as last read."""
        return list(self._catalog)

    def first_channel(self) -> str | None:
        return self._channels[0] if self._channels else None

    def device_for(self, channel_id: str) -> tuple[SimDevice, str] | None:
        """Below a gateway: the suite device behind a channel the upper sees, and the channel's
        own ID there (the same ID unless the gateway re-codes IDs: then matched by content)."""
        for dev in (*self.devices, *self.spares):
            if dev.owns(channel_id):
                return dev, channel_id
        seen = next((i for i in self._catalog if i.device_id == channel_id), None)
        if seen is None:
            return None
        for dev in (*self.devices, *self.spares):
            for item in dev.catalog_items():
                if _same_content(item, seen):
                    return dev, item.device_id
        return None

    def device_by_id(self, device_id: str) -> SimDevice | None:
        return next((d for d in (*self.devices, *self.spares) if d.device_id == device_id), None)

    # -- helpers the cases share -----------------------------------------------------------------
    async def extra_platform(self, platform_id: str, label: str) -> SimPlatform:
        """A second simulated platform of the suite (same domain and password) on a port the
        OS picks, e.g. where a registration is redirected to; :meth:`close_extra` ends it."""
        ep = await self._endpoint(self.options.local_host, 0, label)
        o = self.options
        platform = SimPlatform(
            ep,
            platform_id=platform_id,
            domain=o.suite_domain,
            password=o.password,
            on_event=self.platform_events.append,
        )
        return platform.start()

    async def close_extra(self, platform: SimPlatform) -> None:
        await platform.close()
        ep = platform.endpoint
        self.endpoints = [(e, label) for e, label in self.endpoints if e is not ep]
        await ep.close()

    @contextlib.asynccontextmanager
    async def manual(self, *devices: SimDevice) -> AsyncIterator[None]:
        """The keepalive loop leaves ``devices`` alone inside the block (a case drives them);
        their keepalive switch is restored after it."""
        saved = [(d, d.paused, d.no_keepalive) for d in devices]
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        for d in devices:
            d.paused = True
            while d._beating and loop.time() < end:  # a heartbeat in flight ends first
                await asyncio.sleep(0.01)
        try:
            yield
        finally:
            for d, paused, no_keepalive in saved:
                d.paused, d.no_keepalive = paused, no_keepalive

    def spare_device(
        self, n: int, *, install: bool = False, type_code: str = "132", **kw: Any
    ) -> SimDevice:
        """A device of the suite's that is not among the run's devices (an IPC, type 132, or
        ``type_code``, e.g. 200 for a lower platform; serial :data:`SPARE_BASE` + ``n``), for
        cases that need a fresh registration; installed (answering queries) when ``install``.
        :meth:`drop_spare` takes it away again."""
        if self.device_endpoint is None:
            raise HarnessError("the suite has no devices in this role")
        base = (self.options.suite_device_ids or (self.options.target_id,))[0]
        device_id = f"{base[:10]}{type_code}{SPARE_BASE + n:07d}"
        existing = self.device_by_id(device_id)
        if existing is not None:
            self.spares.remove(existing)
            if self.hub is not None and self.hub.devices.get(device_id) is existing:
                self.hub.remove(existing)
        kw.setdefault("channel_count", 1)
        kw.setdefault("audio_outputs", 0)
        kw.setdefault("with_groups", False)
        kw.setdefault("items_per_message", None)
        kw.setdefault("charset", "GB2312")
        dev = self._make_device(device_id, 0, **kw)
        dev.paused = True  # never heartbeated by the loop
        if install:
            assert self.hub is not None
            self.hub.add(dev)
        self.spares.append(dev)
        return dev

    async def drop_spare(self, dev: SimDevice) -> None:
        """Unregister a spare device (if it is registered) and forget it."""
        if dev.registered:
            with contextlib.suppress(*_SEND_ERRORS):
                await dev.unregister()
        if self.hub is not None and self.hub.devices.get(dev.device_id) is dev:
            self.hub.remove(dev)
        await dev.close_media()

    def catalog_queries(self, dev: SimDevice, after: int = 0) -> list[CatalogQuery]:
        return [q for q in dev.queries[after:] if isinstance(q, CatalogQuery)]

    async def resync(self, dev: SimDevice, timeout: float) -> CatalogQuery:
        """Unregister ``dev`` and register it again, so that the target reads its catalog
        afresh; return the target's Catalog query once every part of the answer had its final
        response. Raises ``TimeoutError`` (with what was missing) after ``timeout``."""
        async with self.manual(dev):
            before, answered = len(dev.queries), len(dev.answer_statuses)
            with contextlib.suppress(*_SEND_ERRORS):
                await dev.unregister()
            resp = await dev.register()
            if resp.status != 200:
                raise HarnessError(f"{dev.device_id} could not register again: {resp.status}")
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while True:
                queries = self.catalog_queries(dev, before)
                if queries:
                    q = queries[0]
                    new = dev.answer_statuses[answered:]
                    parts = [a for a in new if a[:2] == ("Catalog", q.sn)]
                    if len(parts) >= _parts(dev) and all(s for _, _, s in parts):
                        return q
                if loop.time() >= end:
                    raise TimeoutError(
                        f"the target did not read {dev.device_id}'s catalog in {timeout:g} s"
                        f" (queries: {len(queries)}, parts answered: "
                        f"{len(dev.answer_statuses) - answered})"
                    )
                await asyncio.sleep(0.02)

    def keepalives_from(self, sender: str) -> list[tuple[float, str, Any, Message, int]]:
        platform = self.need_platform()
        return [k for k in platform.keepalive_log if k[1] == sender]

    def registers_from(self, sender: str) -> list[tuple[float, Any, Any]]:
        platform = self.need_platform()
        return [r for r in platform.register_answers if (r[1].from_.uri.user or "") == sender]


def _parts(dev: SimDevice) -> int:
    size = dev.catalog_size()
    return max(1, -(-size // dev.per_message))


def _same_content(a: CatalogItem, b: CatalogItem) -> bool:
    """Two items describe the same thing apart from IDs (a gateway that re-codes IDs)."""
    return (a.name, a.address, a.ip_address, a.longitude, a.latitude, a.model) == (
        b.name,
        b.address,
        b.ip_address,
        b.longitude,
        b.latitude,
        b.model,
    )


__all__ = [
    "KEEPALIVE_INTERVAL",
    "PLAYBACK_FRAMES",
    "RECORD_COUNT",
    "Harness",
    "HarnessError",
    "is_video_channel",
]
