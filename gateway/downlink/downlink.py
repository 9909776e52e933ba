"""Talking to devices: queries with multi-response collection, controls, and device notifications.

GB/T 28181-2022 §9.3 (control), §9.4 (alarm), §9.5 (query), Annex M (multi-response); reference
§3–§5. A query is a ``MESSAGE`` out and one or more ``Response`` MESSAGEs back, matched on
(CmdType, SN) — SNs are the gateway's own, unique while pending — and checked against the
device or channel asked. Every incoming Response is answered 200 at once and fed to its
collector. Every answer with a list (``SumNum`` and items: Catalog, RecordInfo, PresetQuery,
CruiseTrackListQuery, CruiseTrackQuery, SDCardStatus, the 2022 MobilePosition list form) is
collected item by item until ``SumNum``, across as many messages as the device splits it into.
An item with an identity (a channel's DeviceID, a preset's PresetID...) counts once however
often it comes; an item without one (a cruise point: a track may pass the same preset twice,
even in two parts of the same content), or lacking its identity field, counts every time (a
SIP retransmission of a part is absorbed by the transaction layer before it gets here).
ConfigDownload answers one Response per requested ConfigType. When parts stop coming for
``idle_timeout`` the collected items are returned marked ``partial``. A per-device limit on
concurrent queries keeps one slow NVR from holding the gateway's resources.

An answer is only taken from the address the queried device registered from (a registered
device cannot answer, or wipe, another's query), or over TCP from the host it registered from
(a device registered over UDP sends an answer too large for a datagram over TCP, RFC 3261
§18.1.1, from a port of its kernel's choosing); SNs are random, unique while pending. A
``SumNum`` that is negative, above ``downlink.max_items`` or smaller than the items actually
sent makes the answer partial: a partial answer never removes anything from the catalog.

Bodies to a device are written in the charset its own bodies really used, under the encoding
name its prolog declared (reference §8.3).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import structlog

from gateway.catalog import Catalog
from gateway.config import Config
from gateway.downlink.messages import MessageRouter
from gateway.downlink.registrar import Registrar
from gateway.events import (
    AlarmReceived,
    DeviceNotification,
    EventBus,
    MediaStatusReceived,
    MobilePositionReceived,
)
from gateway.manscdp.messages import (
    REGISTRY,
    AlarmNotify,
    AlarmResponse,
    CatalogItem,
    CatalogNotify,
    CatalogQuery,
    ConfigDownloadQuery,
    ConfigDownloadResponse,
    CruiseTrack,
    CruiseTrackListQuery,
    CruiseTrackListResponse,
    CruiseTrackQuery,
    CruiseTrackResponse,
    Decoded,
    DeviceConfig,
    DeviceConfigResponse,
    DeviceControl,
    DeviceControlResponse,
    DeviceInfoQuery,
    DeviceInfoResponse,
    DeviceStatusQuery,
    DeviceStatusResponse,
    HomePositionQuery,
    HomePositionResponse,
    MediaStatus,
    Message,
    MobilePositionNotify,
    PositionItem,
    PresetQuery,
    PtzPositionQuery,
    PtzPositionResponse,
    RecordInfoQuery,
    RecordItem,
    SDCard,
    SDCardStatusQuery,
    SDCardStatusResponse,
    encode,
)
from gateway.manscdp.ptz import PtzCommand
from gateway.manscdp.schema import BLOCK, LIST, NODE, Node
from gateway.metrics import Metrics
from gateway.model import Alarm, Device
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import SipError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transport import Peer
from gateway.tasks import TaskSet

log = structlog.get_logger("gateway.downlink")

R = TypeVar("R", bound=Message)


class QueryError(Exception):
    """A request to a device failed; the message says why."""


class DeviceUnavailable(QueryError):
    """The device is unknown or offline."""


class QueryTimeout(QueryError):
    """No answer in time."""


class QueryRejected(QueryError):
    """The device refused the MESSAGE with a SIP error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"device answered {status} {reason}")
        self.status = status
        self.reason = reason


def _catalog_key(item: Node) -> Hashable:
    return cast(CatalogItem, item).device_id


def _record_key(item: Node) -> Hashable:
    r = cast(RecordItem, item)
    return (r.device_id, r.start_time, r.end_time, r.file_path, r.type, r.stream_number)


def _preset_key(item: Node) -> Hashable:
    return getattr(item, "preset_id", None)


def _track_key(item: Node) -> Hashable:
    return cast(CruiseTrack, item).number


def _card_key(item: Node) -> Hashable:
    return cast(SDCard, item).id


def _position_key(item: Node) -> Hashable:
    p = cast(PositionItem, item)
    return (p.device_id, p.capture_time, p.longitude, p.latitude)


# How an item of a list answer (reference §3.3) is identified, where it has an identity: a
# repeated item is counted once. Other lists (CruiseTrackQuery's points) count every item, and
# so does an item whose key is ``None`` (its identity field missing: not the same as another
# item missing it). A key is ``None`` only then: tuples of several fields are never ``None``.
_ITEM_KEYS: dict[str, Callable[[Node], Hashable]] = {
    "Catalog": _catalog_key,
    "RecordInfo": _record_key,
    "PresetQuery": _preset_key,
    "CruiseTrackListQuery": _track_key,
    "SDCardStatus": _card_key,
    "MobilePosition": _position_key,
}


def _has_list(cls: type[Message]) -> bool:
    attrs = {spec.attr: spec.kind for spec in cls._specs}
    return attrs.get("items") == LIST and "sum_num" in attrs


# The messages that answer with a list: ``SumNum`` and the ``items`` it counts.
_LIST_ANSWERS: frozenset[type[Message]] = frozenset(c for c in REGISTRY.values() if _has_list(c))


@dataclass(slots=True)
class QueryResult:
    """What came back. ``responses``: every Response message, in arrival order; ``items``:
    the items of a list answer, from every part; ``sum_num``: its ``SumNum``; ``listed``: the
    answer is a list (a ``SumNum`` or items came: an answer of a list type without either, a
    2016 flat MobilePosition or a bare ``Result ERROR``, is not); ``partial``: parts stopped
    coming before ``SumNum`` (or before every requested ConfigType) was reached."""

    device_id: str
    cmd_type: str
    sn: int
    responses: list[Message] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    sum_num: int | None = None
    partial: bool = False
    listed: bool = False

    @property
    def response(self) -> Message:
        return self.responses[0]

    @property
    def answer(self) -> Message:
        """The answer as one message: the first Response, holding every item collected when
        the answer is a list."""
        first = self.responses[0]
        if not self.listed:
            return first
        changes: dict[str, Any] = {"items": tuple(self.items)}
        return replace(first, **changes)


def _config_blocks(msg: Message) -> set[str]:
    """The configuration blocks a ConfigDownload Response carries (lower-case tags)."""
    return {
        spec.tag.lower()
        for spec in msg._specs
        if spec.kind in (NODE, BLOCK) and getattr(msg, spec.attr) is not None
    }


class _Collector:
    """Gathers the Response MESSAGEs of one request."""

    __slots__ = (
        "expected_parts",
        "future",
        "item_key",
        "keys",
        "last",
        "max_items",
        "peer",
        "pending_types",
        "result",
        "targets",
    )

    def __init__(
        self,
        result: QueryResult,
        targets: frozenset[str],
        peer: Peer,
        loop: asyncio.AbstractEventLoop,
        *,
        expected_parts: int = 1,
        config_types: tuple[str, ...] = (),
        max_items: int = 100_000,
    ) -> None:
        self.result = result
        self.targets = targets
        self.peer = peer
        self.item_key = _ITEM_KEYS.get(result.cmd_type)
        self.keys: set[Hashable] = set()
        self.expected_parts = expected_parts
        self.pending_types = {t.lower() for t in config_types}
        self.max_items = max_items
        self.future: asyncio.Future[QueryResult] = loop.create_future()
        self.last = 0.0

    def accepts(self, sender: str, device_id: str, peer: Peer) -> bool:
        """From the queried device's registered address, or over TCP from its host (any port:
        a large answer, RFC 3261 §18.1.1), naming the device or the target. A UDP answer from
        another port is refused: a datagram's source is the device's own SIP port."""
        if peer != self.peer and not (peer.reliable and peer.host == self.peer.host):
            return False
        return sender in self.targets or device_id in self.targets

    def _finish(self, partial: bool = False) -> None:
        self.result.partial = partial
        self.future.set_result(self.result)

    def feed(self, msg: Message, now: float) -> None:
        if self.future.done():
            return
        res = self.result
        res.responses.append(msg)
        self.last = now
        if type(msg) not in _LIST_ANSWERS:
            if self.pending_types and isinstance(msg, ConfigDownloadResponse):
                # One Response per type, or several types in one: done when all were seen.
                self.pending_types -= _config_blocks(msg)
                if not self.pending_types or len(res.responses) >= self.expected_parts:
                    self._finish()
            elif len(res.responses) >= self.expected_parts:
                self._finish()
            return
        sum_num = getattr(msg, "sum_num", None)
        items: tuple[Any, ...] = getattr(msg, "items", ())
        if sum_num is not None or items:
            res.listed = True
        if res.sum_num is None and sum_num is not None:
            res.sum_num = sum_num
            if sum_num < 0 or sum_num > self.max_items:
                self._finish(partial=True)  # an impossible count: keep what came, remove nothing
                return
        key = self.item_key
        if key is None:
            # No identity, so no way (and no need) to tell a repeat: the same part sent again
            # as a SIP retransmission never reaches the collector, and a second part with the
            # same content (an A-B-A-B patrol sent as two A-Bs) is real.
            res.items.extend(items)
        else:
            for item in items:
                k = key(item)
                if k is None:
                    res.items.append(item)  # its identity field is missing: nothing to merge on
                elif k not in self.keys:
                    self.keys.add(k)
                    res.items.append(item)
        total = res.sum_num
        if len(res.items) > self.max_items or (total is not None and len(res.items) > total):
            self._finish(partial=True)  # more than announced: the answer cannot be trusted whole
        elif total is None or len(res.items) == total:
            # Without SumNum (seen on PresetQuery) there is no way to know more will come.
            self._finish()


class _Limit:
    """A per-device semaphore that disappears when nobody uses it."""

    __slots__ = ("sem", "users")

    def __init__(self, n: int) -> None:
        self.sem = asyncio.Semaphore(n)
        self.users = 0


class Downlink:
    def __init__(
        self,
        *,
        config: Config,
        endpoint: Endpoint,
        registrar: Registrar,
        catalog: Catalog,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cfg = config.downlink
        self.endpoint = endpoint
        self.registrar = registrar
        self.catalog = catalog
        self.store = registrar.store
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.gateway_id = config.gateway.id
        self._rng = random.Random(os.urandom(16))
        self._cseq = itertools.count(1)
        self._collectors: dict[tuple[str, int], _Collector] = {}
        self._limits: dict[str, _Limit] = {}
        self._tasks = TaskSet(log, "downlink.task_failed")
        self._closing = False
        # The last position of each device or channel (only IDs the reporting device owns).
        self.positions: dict[str, Any] = {}

    # -- wiring -----------------------------------------------------------------------------
    def install(self, router: MessageRouter) -> None:
        router.handle_typed("Response", None, self.on_response)
        router.handle_typed("Notify", "Alarm", self.on_alarm)
        router.handle_typed("Notify", "MobilePosition", self.on_position)
        router.handle_typed("Notify", "MediaStatus", self.on_media_status)
        router.handle_typed("Notify", "Catalog", self.on_catalog_message)
        for cmd in ("DeviceUpgradeResult", "UploadSnapShotFinished", "VideoUploadNotify"):
            router.handle_typed("Notify", cmd, self.on_notification)
        router.handle_typed("Notify", "PTZPosition", self.on_notification)

    async def close(self) -> None:
        self._closing = True
        self._tasks.cancel_all()
        for c in self._collectors.values():
            if not c.future.done():
                c.future.set_exception(DeviceUnavailable("the gateway is shutting down"))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    # -- devices and addressing -------------------------------------------------------------
    def device(self, device_or_item_id: str) -> Device | None:
        """The registered device behind an ID: the device itself, or the device that
        reported the channel/tree item."""
        dev = self.registrar.devices.get(device_or_item_id)
        if dev is None:
            owner = self.catalog.owner_of(device_or_item_id)
            if owner is not None:
                dev = self.registrar.devices.get(owner)
        return dev

    def _online(self, device_id: str) -> Device:
        dev = self.device(device_id)
        if dev is None:
            raise DeviceUnavailable(f"unknown device {device_id}")
        if not dev.online:
            raise DeviceUnavailable(f"device {dev.device_id} is offline")
        return dev

    @staticmethod
    def peer(dev: Device) -> Peer:
        return Peer(dev.transport, dev.host, dev.port)

    def note_charset(self, dev: Device, decoded: Decoded) -> None:
        """Remember the charset a device's bodies really use, to answer it in kind."""
        if decoded.charset is None:
            return
        charset = "UTF-8" if decoded.charset == "UTF-8" else "GB2312"
        declared = decoded.declared or charset
        if (dev.charset, dev.declared_charset) != (charset, declared):
            if dev.charset:
                log.info(
                    "device.charset_changed",
                    device_id=dev.device_id,
                    charset=charset,
                    declared=declared,
                )
            dev.charset, dev.declared_charset = charset, declared
            self.store.save_device(dev)

    def body_for(self, dev: Device, msg: Message) -> bytes:
        charset = dev.charset or "GB2312"
        return encode(
            msg,
            charset,
            declare=dev.declared_charset or charset,
            gb2022=dev.gb_version.startswith("3"),
        )

    def build_request(
        self, method: str, dev: Device, target_id: str, body: bytes, headers: list[tuple[str, str]]
    ) -> Request:
        domain = self.config.gateway.domain
        hostport = f"{dev.host}:{dev.port}"
        return Request(
            method,
            f"sip:{target_id}@{hostport}",
            [
                ("From", f"<sip:{self.gateway_id}@{domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<sip:{target_id}@{hostport}>"),
                ("Call-ID", self.endpoint.call_id()),
                ("CSeq", f"{next(self._cseq)} {method}"),
                *headers,
                ("Content-Type", "Application/MANSCDP+xml"),
            ],
            body,
        )

    def next_sn(self) -> int:
        """A random SN, so that nobody can predict another device's pending query."""
        return self._rng.randrange(1, 2**31 - 1)

    # -- sending ----------------------------------------------------------------------------
    async def send(self, device_id: str, msg: Message) -> Response:
        """Send ``msg`` in a MESSAGE to the device behind ``device_id`` (the message's own
        DeviceID is the target in the Request-URI) and return the SIP final response; no
        application answer is awaited. Raises :class:`QueryError` subclasses."""
        dev = self._online(device_id)
        req = self.build_request("MESSAGE", dev, msg.device_id, self.body_for(dev, msg), [])
        try:
            resp = await self.endpoint.request(req, self.peer(dev))
        except SipError as exc:
            self.metrics.inc("downlink.send_failed")
            raise QueryTimeout(f"{msg.CMD} to {dev.device_id}: {exc}") from None
        if resp.status >= 300:
            self.metrics.inc("downlink.rejected")
            raise QueryRejected(resp.status, resp.reason)
        return resp

    async def query(
        self,
        device_id: str,
        q: Message,
        *,
        timeout: float | None = None,
        expected_parts: int = 1,
        config_types: tuple[str, ...] = (),
    ) -> QueryResult:
        """Send query ``q`` (its SN is replaced by the gateway's own) to the device behind
        ``device_id`` and collect the answer. Raises :class:`QueryError` subclasses when
        nothing usable came back; a multi-response answer cut short is returned ``partial``."""
        dev = self._online(device_id)
        if self._closing:
            raise DeviceUnavailable("the gateway is shutting down")
        limit = self._limits.get(dev.device_id)
        if limit is None:
            limit = self._limits[dev.device_id] = _Limit(self.cfg.max_queries_per_device)
        if limit.users >= self.cfg.max_queries_per_device + self.cfg.max_queued_per_device:
            self.metrics.inc("query.queue_full")
            raise QueryRejected(503, f"too many queries queued for {dev.device_id}")
        limit.users += 1
        try:
            async with limit.sem:
                return await self._query(dev, q, timeout, expected_parts, config_types)
        finally:
            limit.users -= 1
            if limit.users == 0:
                self._limits.pop(dev.device_id, None)

    async def _query(
        self,
        dev: Device,
        q: Message,
        timeout: float | None,
        expected_parts: int,
        config_types: tuple[str, ...],
    ) -> QueryResult:
        loop = asyncio.get_running_loop()
        sn = self.next_sn()
        while (q.CMD, sn) in self._collectors:
            sn = self.next_sn()
        q = replace(q, sn=sn)
        result = QueryResult(dev.device_id, q.CMD, sn)
        collector = _Collector(
            result,
            frozenset({dev.device_id, q.device_id}),
            self.peer(dev),
            loop,
            expected_parts=expected_parts,
            config_types=config_types,
            max_items=self.cfg.max_items,
        )
        key = (q.CMD, sn)
        self._collectors[key] = collector
        req = self.build_request("MESSAGE", dev, q.device_id, self.body_for(dev, q), [])
        sip = asyncio.ensure_future(self.endpoint.request(req, self.peer(dev)))
        sip.add_done_callback(_consume)
        self.metrics.inc(f"query.sent.{q.CMD}")
        try:
            result = await self._collect(collector, sip, timeout or self.cfg.response_timeout)
        finally:
            self._collectors.pop(key, None)
            if not collector.future.done():
                collector.future.cancel()
            if not sip.done():
                sip.cancel()  # the answer is in (or given up): stop retransmitting the MESSAGE
        if result.partial:
            self._log_partial(result)
        return result

    def _log_partial(self, res: QueryResult) -> None:
        self.metrics.inc("query.partial")
        log.warning(
            "query.partial",
            device_id=res.device_id,
            cmd_type=res.cmd_type,
            sn=res.sn,
            got=len(res.items) or len(res.responses),
            sum_num=res.sum_num,
        )

    async def _collect(
        self, c: _Collector, sip: asyncio.Future[Response], first_timeout: float
    ) -> QueryResult:
        loop = asyncio.get_running_loop()
        res = c.result
        start = loop.time()
        deadline = start + first_timeout
        # However fast a device trickles parts, one query ends after this long.
        hard = start + self.cfg.max_query_time
        waiting: set[asyncio.Future[Any]] = {c.future, sip}
        while True:
            now = loop.time()
            # Before the first answer: the response timeout; after it: the idle timeout.
            remaining = (c.last + self.cfg.idle_timeout if res.responses else deadline) - now
            remaining = min(remaining, hard - now)
            if remaining <= 0:
                if res.responses:
                    res.partial = True
                    return res
                self.metrics.inc("query.timeout")
                raise QueryTimeout(f"{res.cmd_type} to {res.device_id}: no answer in time")
            done, _ = await asyncio.wait(
                waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if c.future.done():
                self.metrics.inc("query.completed")
                return c.future.result()
            if sip in done:
                waiting.discard(sip)
                self._check_sip(sip, res)

    def _check_sip(self, sip: asyncio.Future[Response], res: QueryResult) -> None:
        """A MESSAGE the device refused, or that never got a final response, ends the wait
        unless answers already came."""
        exc = sip.exception()
        if exc is not None:
            if not res.responses:
                self.metrics.inc("downlink.send_failed")
                raise QueryTimeout(f"{res.cmd_type} to {res.device_id}: {exc}")
            return
        resp = sip.result()
        if resp.status >= 300 and not res.responses:
            self.metrics.inc("downlink.rejected")
            raise QueryRejected(resp.status, resp.reason)

    # -- typed conveniences -----------------------------------------------------------------
    async def device_info(self, device_id: str) -> DeviceInfoResponse:
        dev = self._online(device_id)
        q = DeviceInfoQuery(sn=0, device_id=dev.device_id)
        return await self._one(device_id, q, DeviceInfoResponse)

    async def device_status(
        self, device_id: str, target: str | None = None
    ) -> DeviceStatusResponse:
        q = DeviceStatusQuery(sn=0, device_id=target or device_id)
        return await self._one(device_id, q, DeviceStatusResponse)

    async def catalog_query(self, device_id: str) -> QueryResult:
        dev = self._online(device_id)
        return await self.query(device_id, CatalogQuery(sn=0, device_id=dev.device_id))

    async def record_info(
        self,
        channel_id: str,
        start_time: str,
        end_time: str,
        *,
        type: str = "all",
        secrecy: int = 0,
        **filters: Any,
    ) -> QueryResult:
        """History file search (reference §3.6). ``type`` defaults to ``all``: Dahua NVRs
        answer nothing when the element is missing."""
        q = RecordInfoQuery(
            sn=0,
            device_id=channel_id,
            start_time=start_time,
            end_time=end_time,
            secrecy=secrecy,
            type=type,
            **filters,
        )
        return await self.query(channel_id, q)

    async def config_download(self, target_id: str, config_types: str) -> QueryResult:
        """ConfigDownload: one Response per ``/``-separated type is awaited."""
        types = tuple(t.strip() for t in config_types.split("/") if t.strip())
        q = ConfigDownloadQuery(sn=0, device_id=target_id, config_type=config_types)
        return await self.query(target_id, q, expected_parts=max(len(types), 1), config_types=types)

    async def preset_query(self, channel_id: str) -> QueryResult:
        return await self.query(channel_id, PresetQuery(sn=0, device_id=channel_id))

    async def _one(self, target_id: str, q: Message, kind: type[R]) -> R:
        """The answer to ``q`` as one message (a list answer in several parts: merged)."""
        res = await self.query(target_id, q)
        answer = res.answer
        if not isinstance(answer, kind):  # pragma: no cover - the registry decides
            raise QueryError(f"{q.CMD} to {target_id}: unexpected {type(answer).__name__}")
        return answer

    async def home_position(self, channel_id: str) -> HomePositionResponse:
        """2022 HomePositionQuery (reference §3.9)."""
        q = HomePositionQuery(sn=0, device_id=channel_id)
        return await self._one(channel_id, q, HomePositionResponse)

    async def cruise_track_list(self, channel_id: str) -> CruiseTrackListResponse:
        q = CruiseTrackListQuery(sn=0, device_id=channel_id)
        return await self._one(channel_id, q, CruiseTrackListResponse)

    async def cruise_track(self, channel_id: str, number: int = 0) -> CruiseTrackResponse:
        q = CruiseTrackQuery(sn=0, device_id=channel_id, number=number)
        return await self._one(channel_id, q, CruiseTrackResponse)

    async def ptz_position(self, channel_id: str) -> PtzPositionResponse:
        q = PtzPositionQuery(sn=0, device_id=channel_id)
        return await self._one(channel_id, q, PtzPositionResponse)

    async def sd_card_status(self, target_id: str) -> SDCardStatusResponse:
        q = SDCardStatusQuery(sn=0, device_id=target_id)
        return await self._one(target_id, q, SDCardStatusResponse)

    async def control(self, target_id: str, c: DeviceControl) -> DeviceControlResponse | None:
        """Send a DeviceControl to a channel or device. Sub-commands that have an application
        answer (RecordCmd, GuardCmd, AlarmCmd, HomePosition, DeviceUpgrade) wait for it; the
        others end with the device's 200 OK (reference §4.1)."""
        c = replace(c, device_id=target_id)
        self.metrics.inc("control.sent")
        if c.expects_response:
            res = await self.query(target_id, c)
            return cast(DeviceControlResponse, res.response)
        await self.send(target_id, replace(c, sn=self.next_sn()))
        return None

    async def ptz(self, channel_id: str, command: PtzCommand | str) -> None:
        """Send a PTZCmd (reference §4.2); the string goes out exactly as given."""
        text = command.encode() if isinstance(command, PtzCommand) else command
        await self.control(channel_id, DeviceControl(sn=0, device_id=channel_id, ptz_cmd=text))

    async def configure(self, target_id: str, c: DeviceConfig) -> DeviceConfigResponse:
        """DeviceConfig (reference §4.5); the device answers Response/DeviceConfig."""
        res = await self.query(target_id, replace(c, device_id=target_id))
        return cast(DeviceConfigResponse, res.response)

    # -- incoming MESSAGEs ------------------------------------------------------------------
    def _sender(self, req: Request, peer: Peer | None = None) -> Device | None:
        """The registered, online device a notification comes from: named in From (by its
        own ID or a channel's) and sent from the host it registered from."""
        user = req.from_.uri.user
        dev = self.device(user) if user else None
        if dev is None or not dev.online:
            return None
        if peer is not None and peer.host != dev.host:
            self.metrics.inc("message.address_mismatch")
            log.info("message.address_mismatch", device_id=dev.device_id, peer=str(peer))
            return None
        return dev

    def _ok(self, req: Request) -> Response:
        return make_response(req, 200, "OK", to_tag=self.endpoint.tag())

    def _not_registered(self, req: Request, ctx: ServerContext, what: str) -> Response:
        self.metrics.inc("message.unregistered")
        log.info("message.unregistered", peer=str(ctx.peer), what=what, sender=req.from_.uri.user)
        return make_response(
            req, 404, "Not Found (device not registered)", to_tag=self.endpoint.tag()
        )

    def on_response(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        """Every ``Response`` MESSAGE: 200 at once, then to the collector waiting for it."""
        msg = decoded.message
        sender = req.from_.uri.user or ""
        dev = self.device(sender)
        if dev is not None:
            self.note_charset(dev, decoded)
        self.deliver(msg, sender, ctx.peer)
        return self._ok(req)

    def deliver(self, msg: Message, sender: str, peer: Peer) -> bool:
        """Hand an answer to the request waiting for it; False when none is."""
        c = self._collectors.get((msg.CMD, msg.sn))
        if c is None or not c.accepts(sender, msg.device_id, peer):
            self.metrics.inc("message.stray_response")
            log.info(
                "message.stray_response",
                sender=sender,
                peer=str(peer),
                cmd_type=msg.CMD,
                sn=msg.sn,
                expected=None if c is None else str(c.peer),
            )
            return False
        c.feed(msg, asyncio.get_running_loop().time())
        return True

    def on_alarm(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        dev = self._sender(req, ctx.peer)
        if dev is None:
            return self._not_registered(req, ctx, "Alarm")
        self.note_charset(dev, decoded)
        msg = cast(AlarmNotify, decoded.message)
        self.alarm_received(dev, msg)
        # GB/T 28181-2022 §9.4: the platform answers the alarm with a Response/Alarm MESSAGE.
        answer = AlarmResponse(sn=msg.sn, device_id=msg.device_id, result="OK")
        self.spawn(self._send_quietly(dev.device_id, answer))
        return self._ok(req)

    async def _send_quietly(self, device_id: str, msg: Message) -> None:
        try:
            await self.send(device_id, msg)
        except QueryError as exc:
            log.info(
                "downlink.answer_failed", device_id=device_id, cmd_type=msg.CMD, error=str(exc)
            )

    def alarm_received(self, dev: Device, msg: AlarmNotify) -> Alarm:
        info = msg.info
        alarm = Alarm(
            device_id=dev.device_id,
            channel_id=msg.device_id,
            priority=msg.alarm_priority,
            method=msg.alarm_method,
            alarm_type=info.alarm_type if info is not None else None,
            event_type=(
                info.alarm_type_param.event_type
                if info is not None and info.alarm_type_param is not None
                else None
            ),
            time=msg.alarm_time or "",
            description=msg.alarm_description or "",
            longitude=msg.longitude,
            latitude=msg.latitude,
            received_at=self.clock(),
        )
        self.store.save_alarm(alarm)
        self.metrics.inc("alarm.received")
        log.info(
            "alarm.received",
            device_id=dev.device_id,
            channel_id=msg.device_id,
            priority=msg.alarm_priority,
            method=msg.alarm_method,
            alarm_type=alarm.alarm_type,
        )
        self.events.publish(AlarmReceived(alarm))
        return alarm

    def on_position(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        dev = self._sender(req, ctx.peer)
        if dev is None:
            return self._not_registered(req, ctx, "MobilePosition")
        msg = cast(MobilePositionNotify, decoded.message)
        self.note_charset(dev, decoded)
        # A one-shot MobilePosition query is answered with this Notify; the reports of a
        # subscription are not answers (and no stray ones) while no such query is pending.
        if (msg.CMD, msg.sn) in self._collectors:
            self.deliver(msg, req.from_.uri.user or "", ctx.peer)
        self.position_received(dev, msg)
        return self._ok(req)

    def position_received(self, dev: Device, msg: MobilePositionNotify) -> None:
        positions = tuple(msg.positions())
        for p in positions:
            key = p.device_id or msg.device_id
            if key == dev.device_id or self.catalog.owner_of(key) == dev.device_id:
                self.positions[key] = p
        self.metrics.inc("position.received")
        self.events.publish(MobilePositionReceived(dev.device_id, positions))

    def on_media_status(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        msg = cast(MediaStatus, decoded.message)
        dev = self._sender(req, ctx.peer)
        device_id = dev.device_id if dev is not None else (req.from_.uri.user or "")
        self.metrics.inc("media_status.received")
        self.events.publish(MediaStatusReceived(device_id, req.call_id, msg.notify_type))
        return self._ok(req)

    def on_catalog_message(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        """A catalog change sent as a MESSAGE instead of a NOTIFY (seen on some NVRs)."""
        dev = self._sender(req, ctx.peer)
        if dev is None:
            return self._not_registered(req, ctx, "Catalog notify")
        self.note_charset(dev, decoded)
        self.catalog.apply_notify(dev.device_id, cast(CatalogNotify, decoded.message).items)
        return self._ok(req)

    def on_notification(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        dev = self._sender(req, ctx.peer)
        if dev is None:
            return self._not_registered(req, ctx, decoded.message.CMD)
        self.metrics.inc(f"notification.{decoded.message.CMD}")
        self.events.publish(DeviceNotification(dev.device_id, decoded.message))
        return self._ok(req)

    def sender(self, req: Request, peer: Peer | None = None) -> Device | None:
        """The registered, online device a request comes from (see :meth:`_sender`)."""
        return self._sender(req, peer)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a background request's exception so asyncio does not log it as lost."""
    if not fut.cancelled():
        fut.exception()
