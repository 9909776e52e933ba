"""Talking to devices: queries, controls, and device notifications — the async facade.

GB/T 28181-2022 §9.3 (control), §9.4 (alarm), §9.5 (query), Annex M (multi-response); reference
§3–§5. A query is a ``MESSAGE`` out and one or more ``Response`` MESSAGEs back, matched on
(CmdType, SN) — SNs are random, the gateway's own, unique while pending — and checked against
the device or channel asked. Every incoming Response is answered 200 at once and fed to its
collector (:mod:`gateway.downlink.collector` decides when an answer is complete or partial;
:mod:`gateway.downlink.queries` waits for it and limits concurrent queries per device).

An answer is only taken from the address the queried device registered from (a registered
device cannot answer, or wipe, another's query), or over TCP from the host it registered from
(a device registered over UDP sends an answer too large for a datagram over TCP, RFC 3261
§18.1.1, from a port of its kernel's choosing). A notification is only taken from a registered,
online device, from the host it registered from.

Bodies to a device are written in the charset its own bodies really used, under the encoding
name its prolog declared (reference §8.3, :mod:`gateway.downlink.charset`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar, cast

import structlog

from gateway.catalog import Catalog
from gateway.downlink.charset import (
    DEFAULT_CHARSET,
    body_charset,
    declared_charset,
    encode_for,
)
from gateway.downlink.collector import Collector, QueryResult
from gateway.downlink.queries import (
    DeviceUnavailable,
    PendingQueries,
    QueryError,
    QueryLimits,
    QueryRejected,
    QueryTimeout,
)
from gateway.downlink.quirks import DeviceQuirks
from gateway.downlink.reports import alarm_from
from gateway.events import (
    AlarmReceived,
    DeviceNotification,
    EventBus,
    MediaStatusReceived,
    MobilePositionReceived,
)
from gateway.manscdp import (
    AlarmNotify,
    AlarmResponse,
    CatalogNotify,
    CatalogQuery,
    ConfigDownloadQuery,
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
    PresetQuery,
    PtzCommand,
    PtzPositionQuery,
    PtzPositionResponse,
    RecordInfoQuery,
    SDCardStatusQuery,
    SDCardStatusResponse,
)
from gateway.metrics import Metrics
from gateway.model import Alarm, Device, DeviceDirectory
from gateway.settings import DownlinkSection, Identity
from gateway.sip import (
    Endpoint,
    Peer,
    Request,
    Response,
    ServerContext,
    SipError,
    TransactionTimeout,
    build_request,
)
from gateway.store import Store
from gateway.tasks import TaskSet

# The query results and errors moved to their own modules; their old home still names them.
__all__ = [
    "DeviceUnavailable",
    "Downlink",
    "QueryError",
    "QueryRejected",
    "QueryResult",
    "QueryTimeout",
]

log = structlog.get_logger("gateway.downlink")

ANSWERLESS_KEPT = 1024  # answerless controls remembered (ptz_response quirk)

R = TypeVar("R", bound=Message)


class Elsewhere(Protocol):
    """Devices another node holds, in a cluster (:class:`gateway.downlink.RemoteDevices`):
    their queries and controls go to that node, which talks to the device."""

    def holder(self, device_id: str) -> str | None: ...

    async def query(
        self,
        node: str,
        device_id: str,
        q: Message,
        *,
        timeout: float | None,
        expected_parts: int,
        config_types: tuple[str, ...],
    ) -> QueryResult: ...

    async def control(
        self, node: str, target_id: str, c: DeviceControl
    ) -> DeviceControlResponse | None: ...

    async def sync(self, node: str, device_id: str) -> None: ...


class _Lane:
    """One request at a time to a device (see :meth:`Downlink.request`)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Downlink:
    """The device side's requests and notifications: sends queries and controls to registered
    devices and answers what they send unasked (alarms, positions, media status...)."""

    def __init__(
        self,
        *,
        identity: Identity,
        settings: DownlinkSection,
        endpoint: Endpoint,
        devices: DeviceDirectory,
        store: Store,
        catalog: Catalog,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        quirks: DeviceQuirks | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.identity = identity
        self.cfg = settings
        self.quirks = quirks if quirks is not None else DeviceQuirks(metrics)
        self.endpoint = endpoint
        # Devices are only read here, through the directory the registrar implements.
        self.devices = devices
        self.catalog = catalog
        self.store = store
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.gateway_id = identity.id
        self._rng = random.Random(os.urandom(16))
        self._cseq = itertools.count(1)
        # The queries waiting for their answers, by (CmdType, SN).
        self.pending = PendingQueries(metrics, busy=busy)
        self._limits = QueryLimits(
            self.cfg.max_queries_per_device, self.cfg.max_queued_per_device, metrics
        )
        self._tasks = TaskSet(log, "downlink.task_failed")
        self._closing = False
        # The last position of each device or channel (only IDs the reporting device owns).
        self.positions: dict[str, Any] = {}
        # Controls that have no answer in the standard (PTZCmd...), by SN, to the device they
        # went to and until when an answer to one is taken as the ``ptz_response`` quirk.
        self._answerless: OrderedDict[int, tuple[str, float]] = OrderedDict()
        # Requests in flight per device over TCP, and the one-at-a-time lane of each device
        # known to drop pipelined requests (both only while something is in flight).
        self._in_flight: dict[str, int] = {}
        self._lanes: dict[str, _Lane] = {}
        # In a cluster: the devices other nodes hold (set by the composition root).
        self.elsewhere: Elsewhere | None = None

    async def close(self) -> None:
        self._closing = True
        self._tasks.cancel_all()
        self.pending.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    # -- devices and addressing -------------------------------------------------------------
    def device(self, device_or_item_id: str) -> Device | None:
        """The registered device behind an ID: the device itself, or the device that
        reported the channel/tree item."""
        dev = self.devices.get(device_or_item_id)
        if dev is None:
            owner = self.catalog.owner_of(device_or_item_id)
            if owner is not None:
                dev = self.devices.get(owner)
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

    def note_body(self, dev: Device, req: Request, decoded: Decoded) -> None:
        """What a device's request says of how it writes: its charset, and a Content-Length
        that counted characters (the SIP parser took the whole datagram, see
        :func:`gateway.sip.message.counted_in_characters`)."""
        if req.declared_length is not None:
            self.quirks.note(
                dev.device_id,
                "content_length_chars",
                declared=req.declared_length,
                body=len(req.body),
            )
        self.note_charset(dev, decoded)

    def note_charset(self, dev: Device, decoded: Decoded) -> None:
        """Remember the charset a device's bodies really use, to answer it in kind; from a
        plain-ASCII body, the one it declares while none is known (:func:`declared_charset`)."""
        seen = body_charset(decoded)
        if seen is None:
            seen = None if dev.charset else declared_charset(decoded)
            if seen is None:
                return
            if seen[0] != DEFAULT_CHARSET:
                self.quirks.note(dev.device_id, "ascii_declared_charset", declared=seen[1])
        charset, declared = seen
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
        return encode_for(dev, msg)

    def build_request(
        self, method: str, dev: Device, target_id: str, body: bytes, headers: list[tuple[str, str]]
    ) -> Request:
        """A request with a MANSCDP ``body`` to ``target_id`` (the device or one of its
        channels) at the address ``dev`` registered from (RFC 3261 §8.1.1): a fresh Call-ID
        and From tag, the gateway's own growing CSeq, ``headers`` before Content-Type."""
        hostport = f"{dev.host}:{dev.port}"
        return build_request(
            method,
            f"sip:{target_id}@{hostport}",
            from_uri=f"sip:{self.gateway_id}@{self.identity.domain}",
            to_uri=f"sip:{target_id}@{hostport}",
            # CSeq is below 2**31 (RFC 3261 §8.1.1.5): wrap round rather than fail.
            cseq=(next(self._cseq) - 1) % 0x7FFFFFFF + 1,
            headers=headers,
            body=body,
            content_type="Application/MANSCDP+xml",
        )

    def next_sn(self) -> int:
        """A random SN, so that nobody can predict another device's pending query."""
        return self._rng.randrange(1, 2**31 - 1)

    # -- sending ----------------------------------------------------------------------------
    async def request(self, dev: Device, req: Request, *, timeout: float | None = None) -> Response:
        """Send ``req`` to ``dev`` in a client transaction and return the final response.

        Some devices drop the second of two requests that reach them in one TCP segment (the
        ``drops_pipelined`` quirk): a request sent over TCP while another to the same device
        is in flight waits only ``4 × T1`` for an answer (a device answers a MESSAGE at once);
        unanswered, it is sent again at once, the same transaction (same Via branch, RFC 3261
        §17.1: a device that did read it only answers again), for what is left of
        ``timeout``. When that second sending is answered, the device is remembered
        (``drops_pipelined``): its requests go one at a time from then on. A device that
        answers neither is silent, not quirky, and is not marked."""
        peer = self.peer(dev)
        if not peer.reliable:
            return await self.endpoint.request(req, peer, timeout=timeout)
        device_id = dev.device_id
        if self.quirks.has(device_id, "drops_pipelined"):
            return await self._one_at_a_time(device_id, req, peer, timeout, keep_via=False)
        busy = self._in_flight.get(device_id, 0)
        self._in_flight[device_id] = busy + 1
        first = 4 * self.endpoint.timers.t1
        try:
            if not busy:
                return await self.endpoint.request(req, peer, timeout=timeout)
            try:
                return await self.endpoint.request(req, peer, timeout=min(first, timeout or first))
            except TransactionTimeout:
                if timeout is not None and timeout <= first:
                    raise
        finally:
            left = self._in_flight[device_id] - 1
            if left:
                self._in_flight[device_id] = left
            else:
                del self._in_flight[device_id]
        left_over = None if timeout is None else timeout - first
        resp = await self._one_at_a_time(device_id, req, peer, left_over, keep_via=True)
        self.quirks.note(device_id, "drops_pipelined", method=req.method, call_id=req.call_id)
        return resp

    async def _one_at_a_time(
        self, device_id: str, req: Request, peer: Peer, timeout: float | None, *, keep_via: bool
    ) -> Response:
        lane = self._lanes.get(device_id)
        if lane is None:
            lane = self._lanes[device_id] = _Lane()
        lane.users += 1
        try:
            async with lane.lock:
                return await self.endpoint.request(req, peer, timeout=timeout, keep_via=keep_via)
        finally:
            lane.users -= 1
            if not lane.users and self._lanes.get(device_id) is lane:
                del self._lanes[device_id]

    async def send(self, device_id: str, msg: Message) -> Response:
        """Send ``msg`` in a MESSAGE to the device behind ``device_id`` (the message's own
        DeviceID is the target in the Request-URI) and return the SIP final response; no
        application answer is awaited. Raises :class:`QueryError` subclasses."""
        dev = self._online(device_id)
        req = self.build_request("MESSAGE", dev, msg.device_id, self.body_for(dev, msg), [])
        try:
            resp = await self.request(dev, req)
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
        elsewhere = self.elsewhere
        if elsewhere is not None and (node := elsewhere.holder(dev.device_id)) is not None:
            return await elsewhere.query(
                node,
                device_id,
                q,
                timeout=timeout,
                expected_parts=expected_parts,
                config_types=config_types,
            )
        async with self._limits.slot(dev.device_id):
            return await self._query(dev, q, timeout, expected_parts, config_types)

    async def _query(
        self,
        dev: Device,
        q: Message,
        timeout: float | None,
        expected_parts: int,
        config_types: tuple[str, ...],
    ) -> QueryResult:
        sn = self.next_sn()
        while (q.CMD, sn) in self.pending:
            sn = self.next_sn()
        q = replace(q, sn=sn)
        collector = Collector(
            QueryResult(dev.device_id, q.CMD, sn),
            frozenset({dev.device_id, q.device_id}),
            self.peer(dev),
            started=asyncio.get_running_loop().time(),
            response_timeout=timeout or self.cfg.response_timeout,
            idle_timeout=self.cfg.idle_timeout,
            max_time=self.cfg.max_query_time,
            expected_parts=expected_parts,
            config_types=config_types,
            max_items=self.cfg.max_items,
        )
        req = self.build_request("MESSAGE", dev, q.device_id, self.body_for(dev, q), [])
        self.metrics.inc(f"query.sent.{q.CMD}")
        result = await self.pending.collect(collector, self.request(dev, req))
        if result.partial:
            self._log_partial(result)
        return result

    def _log_partial(self, res: QueryResult) -> None:
        self.metrics.inc("query.partial")
        if res.count_error is not None:
            # The device's SumNum could not be the count: what came is kept, and said here.
            self.metrics.inc("query.bad_sum_num")
            log.warning(
                "query.bad_sum_num",
                device_id=res.device_id,
                cmd_type=res.cmd_type,
                sn=res.sn,
                problem=res.count_error,
                sum_num=res.sum_num,
                kept=len(res.items),
                dropped=res.dropped,
            )
        if res.dropped:
            self.metrics.inc("query.items_dropped", res.dropped)
        log.warning(
            "query.partial",
            device_id=res.device_id,
            cmd_type=res.cmd_type,
            sn=res.sn,
            got=len(res.items) or len(res.responses),
            sum_num=res.sum_num,
        )

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
        if self.elsewhere is not None:
            node = self.elsewhere.holder(self._online(target_id).device_id)
            if node is not None:
                return await self.elsewhere.control(node, target_id, c)
        self.metrics.inc("control.sent")
        if c.expects_response:
            res = await self.query(target_id, c)
            return cast(DeviceControlResponse, res.response)
        sn = self.next_sn()
        # Before the send: the device's Response may come in before its 200 is read.
        self._remember_answerless(target_id, sn)
        await self.send(target_id, replace(c, sn=sn))
        return None

    def _remember_answerless(self, target_id: str, sn: int) -> None:
        """A control with no answer in the standard went out: an answer to it within the
        response timeout is a quirk, not a stray (bounded: the last 1,024)."""
        dev = self.device(target_id)
        if dev is None:
            return
        book = self._answerless
        book[sn] = (dev.device_id, asyncio.get_running_loop().time() + self.cfg.response_timeout)
        while len(book) > ANSWERLESS_KEPT:
            book.popitem(last=False)

    def _answerless_control(self, dev: Device, msg: Message) -> bool:
        """A ``Response/DeviceControl`` to a control that has none (a PTZCmd): taken quietly
        and counted as the device's ``ptz_response`` quirk (True), not logged as a stray."""
        if not isinstance(msg, DeviceControlResponse) or (msg.CMD, msg.sn) in self.pending:
            return False
        sent = self._answerless.get(msg.sn)
        if sent is None or sent[0] != dev.device_id:
            return False
        if sent[1] < asyncio.get_running_loop().time():
            del self._answerless[msg.sn]
            return False
        self.quirks.note(dev.device_id, "ptz_response", sn=msg.sn, result=msg.result)
        return True

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
        return self.endpoint.answer(req, 200, "OK")

    def _not_registered(self, req: Request, ctx: ServerContext, what: str) -> Response:
        self.metrics.inc("message.unregistered")
        log.info("message.unregistered", peer=str(ctx.peer), what=what, sender=req.from_.uri.user)
        return self.endpoint.answer(req, 404, "Not Found (device not registered)")

    def on_response(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        """Every ``Response`` MESSAGE: 200 at once, then to the collector waiting for it."""
        msg = decoded.message
        sender = req.from_.uri.user or ""
        # Only a registered, online device at its own host gets its quirks and charset noted:
        # anyone can name a device in From (the collector still matches the answer by sender
        # and address on its own).
        dev = self._sender(req, ctx.peer)
        if dev is not None:
            self.note_body(dev, req, decoded)
            if self._answerless_control(dev, msg):
                return self._ok(req)
        self.deliver(msg, sender, ctx.peer)
        return self._ok(req)

    def deliver(self, msg: Message, sender: str, peer: Peer) -> bool:
        """Hand an answer to the request waiting for it; False when none is."""
        return self.pending.deliver(msg, sender, peer, asyncio.get_running_loop().time())

    def on_alarm(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        dev = self._sender(req, ctx.peer)
        if dev is None:
            return self._not_registered(req, ctx, "Alarm")
        self.note_body(dev, req, decoded)
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
        alarm = alarm_from(dev.device_id, msg, self.clock())
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
        self.note_body(dev, req, decoded)
        # A one-shot MobilePosition query is answered with this Notify; the reports of a
        # subscription are not answers (and no stray ones) while no such query is pending.
        if (msg.CMD, msg.sn) in self.pending:
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
        self.note_body(dev, req, decoded)
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
