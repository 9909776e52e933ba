"""The upper-platform side: answering and forwarding what each upper asks, and notifying it.

GB/T 28181-2022 §9.3–§9.7, §9.11, Annexes M and N; reference §7.2–§7.5. One
:class:`UpperSession` per configured upper holds its registration (:class:`UpperLink`), its ID
map, what it may see (:class:`SharedView`) and the subscriptions it made.

* Queries about the gateway itself (its ID or domain): Catalog (the shared tree), DeviceInfo,
  DeviceStatus, RecordInfo (no central storage: an empty answer). About a shared channel or
  device: forwarded to the device through the downlink (its own SN downwards, the upper's SN
  upwards, IDs translated both ways), the answer relayed, multi-part answers included.
* DeviceControl and DeviceConfig for a shared channel: forwarded (the PTZ string unchanged),
  the device's Response relayed where the command has one.
* Anything naming an ID the upper may not see: ``404``, logged and counted. A request from a
  peer that is not a configured upper: ``403``.
* Every request is answered ``200`` at once; the application answer is a separate MESSAGE.
  Multi-part answers go out serially, each after the previous one's 200 (Annex M): over TCP
  ``catalog_batch_tcp_items`` items per message; over UDP batches under
  ``catalog_batch_udp_bytes``, but an item too large for that goes over TCP, whole.
* Size and transport (RFC 3261 §18.1.1; 2022 Annex M): to an upper reached over UDP, any
  MESSAGE or NOTIFY larger than ``catalog_batch_udp_bytes`` goes over TCP to the same host and
  port. Nothing is ever cut to fit: when TCP fails (refused, reset, or no answer within
  ``TCP_ANSWER_TIMEOUT``), the items go over UDP whole (counted as ``uplink.udp_oversize``), and
  TCP is not tried again for ``TCP_RETRY_AFTER`` seconds.
* Subscriptions from the upper (Catalog, Alarm, MobilePosition): a dialog per kind, refreshed
  in-dialog, ended by ``Expires: 0`` or expiry with a terminating NOTIFY. A catalog
  subscription starts with a NOTIFY of the shared items that are offline (Annex N). Catalog
  changes from the downlink become NOTIFYs to every upper allowed to see the item, gathered for
  ``NOTIFY_DELAY`` seconds and batched. Alarms of shared channels go up in the alarm
  subscription's dialog, or as a MESSAGE when the upper has none. A subscription covers what
  the DeviceID of its body names (in the upper's IDs; :meth:`SharedView.covers`): the gateway
  (its ID or domain) every shared item, a device itself and its channels, a channel itself, a
  tree node what hangs under it. Positions and catalog changes outside it are not sent in it;
  an alarm outside it goes as a MESSAGE, as to an upper without an alarm subscription.
* When an upper goes offline its subscriptions are dropped (it re-subscribes when it is back)
  and :class:`~gateway.events.UpperOffline` tells the session layer to end its media.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from lxml import etree

from gateway.catalog import Catalog
from gateway.config import Config, UpperPlatform
from gateway.downlink.downlink import Downlink, QueryError
from gateway.downlink.messages import MessageRouter
from gateway.downlink.registrar import Registrar, gb_date
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    DeviceOffline,
    DeviceOnline,
    EventBus,
    MobilePositionReceived,
    UpperOffline,
    UpperOnline,
)
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.gbid import item_kind
from gateway.manscdp.messages import (
    REGISTRY,
    AlarmInfo,
    AlarmNotify,
    AlarmResponse,
    AlarmTypeParam,
    CatalogItem,
    CatalogNotify,
    CatalogResponse,
    ConfigDownloadQuery,
    Decoded,
    DeviceConfig,
    DeviceControl,
    DeviceInfoResponse,
    DeviceStatusResponse,
    Message,
    MobilePositionNotify,
    RecordInfoResponse,
    decode,
    encode,
)
from gateway.manscdp.schema import write_node
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import ParseError, SipError, TransactionTimeout, TransportError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transport import Peer
from gateway.store import Store
from gateway.tasks import TaskSet
from gateway.uplink.idmap import IdMap
from gateway.uplink.registration import UpperLink
from gateway.uplink.share import SharedView

log = structlog.get_logger("gateway.uplink")

NOTIFY_DELAY = 0.2
# After TCP to an upper reached over UDP failed, large requests go over UDP (whole) for this
# long before TCP is tried again: a firewall that drops SYNs must not cost each one a timeout.
TCP_RETRY_AFTER = 60.0
# How long a request sent over TCP to an upper reached over UDP waits for its final response
# before it goes over UDP instead. Without it the TCP attempt would wait for Timer F (64·T1,
# 32 s): an upper that accepts the connection but never reads it would hold every oversize
# MESSAGE and NOTIFY that long, after the query it answers has timed out upstairs. An upper
# answers a MESSAGE or NOTIFY 200 at once (Annex M); a few seconds leave room for a slow one.
#
# The fallback may duplicate: an upper that processed the TCP request but answered too late
# (or not at all) gets it again over UDP, as a new transaction it cannot match to the first
# (fresh Call-ID, or the dialog's next CSeq). That is the lesser harm, and the one chosen: what
# is too large for a datagram is a list (a part of a catalog or record answer, a catalog
# NOTIFY) whose items are named (DeviceID, a record's times), so a repeat states the same
# thing twice under the same SN, while giving up would lose the items for good (the upper
# learns of them only at its next full query). Reusing the Call-ID and CSeq would not let the
# upper drop the repeat either (RFC 3261 §8.2.2.2 merges requests only while the first
# transaction is pending, answering 482), and a NOTIFY's CSeq must grow in its dialog.
TCP_ANSWER_TIMEOUT = 4.0
# Queries forwarded to the device that answers them (reference §7.2).
_FORWARDED = frozenset(
    {
        "DeviceInfo",
        "DeviceStatus",
        "RecordInfo",
        "ConfigDownload",
        "PresetQuery",
        "HomePositionQuery",
        "CruiseTrackListQuery",
        "CruiseTrackQuery",
        "PTZPosition",
        "SDCardStatus",
        "MobilePosition",
    }
)
_KINDS = ("Catalog", "Alarm", "MobilePosition")


class _TcpFailed(Exception):
    """TCP to an upper reached over UDP failed for a request whose content the caller can send
    in smaller requests (raised instead of sending it whole over UDP)."""


@dataclass(slots=True)
class InboundSubscription:
    """A subscription an upper made to the gateway (we are the notifier)."""

    kind: str
    call_id: str
    remote_tag: str
    local_tag: str
    remote_uri: str
    target: str
    event: str
    expires_at: float
    query: Message
    cseq: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    queue: list[tuple[str, CatalogItem]] = field(default_factory=list, repr=False)
    flushing: bool = False
    ended: bool = False
    # NOTIFYs of one dialog go one at a time, so their CSeqs arrive in order (RFC 3261
    # §12.2.2) and nothing follows the terminating one.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class UpperSession:
    def __init__(self, upper: UpperPlatform, link: UpperLink, idmap: IdMap, view: SharedView):
        self.upper = upper
        self.link = link
        self.idmap = idmap
        self.view = view
        self.subs: dict[str, InboundSubscription] = {}
        self.catalog_task: asyncio.Task[Any] | None = None
        # Over a UDP link: until when large requests skip TCP (it failed); 0: TCP is tried.
        self.tcp_retry_at = 0.0
        self.log = log.bind(upper=upper.id)

    @property
    def reliable(self) -> bool:
        return self.link.peer.reliable


class Uplink:
    def __init__(
        self,
        *,
        config: Config,
        endpoint: Endpoint,
        catalog: Catalog,
        registrar: Registrar,
        downlink: Downlink,
        store: Store,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.gw = config.gateway
        self.endpoint = endpoint
        self.catalog = catalog
        self.registrar = registrar
        self.downlink = downlink
        self.store = store
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.tz = registrar.tz
        self.sessions: dict[str, UpperSession] = {}
        self._sn = itertools.count(int.from_bytes(os.urandom(2), "big") + 1)
        self._event_ids = itertools.count(1)
        self._tasks = TaskSet(log, "uplink.task_failed")
        for upper in config.uplink.platforms:
            if not upper.enabled:
                continue
            idmap = IdMap(upper, store, self.gw.id, clock)
            link = UpperLink(
                upper,
                config=config,
                endpoint=endpoint,
                metrics=metrics,
                on_online=self._upper_online,
                on_offline=self._upper_offline,
                next_sn=self.next_sn,
                clock=clock,
            )
            view = SharedView(upper, config, catalog, registrar.devices, idmap)
            self.sessions[upper.id] = UpperSession(upper, link, idmap, view)

    # -- wiring -----------------------------------------------------------------------------
    def install(self, router: MessageRouter) -> None:
        router.handle_typed("Query", None, self.on_query)
        router.handle_typed("Control", None, self.on_control)
        self.endpoint.route("SUBSCRIBE", self.on_subscribe)
        self.endpoint.on_connection_lost(self._connection_lost)
        self.events.subscribe(CatalogChange, self.on_catalog_change)
        self.events.subscribe(DeviceOnline, self.on_device_online)
        self.events.subscribe(DeviceOffline, self.on_device_offline)
        self.events.subscribe(AlarmReceived, self.on_alarm)
        self.events.subscribe(MobilePositionReceived, self.on_position)

    def start(self) -> None:
        rows = self.store.load_id_map()
        uppers = {up.id for up in self.config.uplink.platforms}
        for s in self.sessions.values():
            s.idmap.reserved |= uppers
            s.idmap.load(rows)
            s.link.start()
        if self.sessions:
            log.info("uplink.started", uppers=list(self.sessions))

    async def close(self) -> None:
        self._tasks.cancel_all()
        for s in self.sessions.values():
            for sub in s.subs.values():
                if sub.timer is not None:
                    sub.timer.cancel()
            s.subs.clear()
        await asyncio.gather(*(s.link.close() for s in self.sessions.values()))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    def next_sn(self) -> int:
        return next(self._sn) % (2**31 - 1) or 1

    def knows(self, user: str) -> bool:
        """Is ``user`` an ID some upper may use for a gateway item (a recoded one included)?"""
        for s in self.sessions.values():
            local = s.idmap.to_local(user)
            if local is not None and (
                self.catalog.owner_of(local) is not None or local in self.registrar.devices
            ):
                return True
        return False

    def _connection_lost(self, peer: Any) -> None:
        for s in self.sessions.values():
            s.link.connection_lost(peer)

    def _upper_online(self, link: UpperLink) -> None:
        self.events.publish(UpperOnline(link.upper.id))

    def _upper_offline(self, link: UpperLink, reason: str) -> None:
        s = self.sessions.get(link.upper.id)
        if s is not None:
            for sub in list(s.subs.values()):
                self._end(s, sub, notify=False)
        self.events.publish(UpperOffline(link.upper.id, reason))

    # -- sending to an upper ----------------------------------------------------------------
    def _message(self, s: UpperSession, body: bytes) -> Request:
        gw, up, peer = self.gw, s.upper, s.link.peer
        return Request(
            "MESSAGE",
            f"sip:{up.id}@{peer.host}:{peer.port}",
            [
                ("From", f"<sip:{gw.id}@{gw.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<sip:{up.id}@{up.domain}>"),
                ("Call-ID", self.endpoint.call_id()),
                ("CSeq", "1 MESSAGE"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ],
            body,
        )

    def upper_for(self, req: Request, ctx: ServerContext) -> UpperSession | None:
        """The upper a request comes from, or ``None`` (for the media sessions)."""
        return self._session(req, ctx)

    def encode_for(self, s: UpperSession, msg: Message) -> bytes:
        return self._encode(s, msg)

    def _encode(self, s: UpperSession, msg: Message) -> bytes:
        return encode(msg, s.upper.charset, gb2022=s.upper.gb_version == "2022")

    async def send(self, s: UpperSession, msg: Message) -> bool:
        """One MESSAGE to the upper; True when it answered 2xx. Over a UDP link one too large
        for a datagram goes over TCP (:meth:`_request`)."""
        return await self._send_message(s, msg, split=False)

    async def _send_message(self, s: UpperSession, msg: Message, *, split: bool) -> bool:
        body = self._encode(s, msg)
        try:
            resp = await self._request(s, lambda: self._message(s, body), split=split)
        except (SipError, OSError) as exc:
            s.log.info("uplink.send_failed", cmd_type=msg.CMD, error=str(exc))
            self.metrics.inc("uplink.send_failed")
            return False
        if resp.status >= 300:
            s.log.info("uplink.send_refused", cmd_type=msg.CMD, status=resp.status)
            self.metrics.inc("uplink.send_refused")
            return False
        return True

    async def _request(
        self, s: UpperSession, build: Callable[[], Request], *, split: bool = False
    ) -> Response:
        """Send ``build()`` to the upper; its final response.

        Over a UDP link a request larger than ``catalog_batch_udp_bytes`` goes over TCP to the
        upper's host and port (RFC 3261 §18.1.1: above 1300 bytes when the path MTU is unknown,
        a congestion-controlled transport; 2022 Annex M). When TCP fails (refused, reset, or no
        final response in ``TCP_ANSWER_TIMEOUT`` seconds rather than Timer F's 32 s: see there
        for the duplicate this risks) the request goes over UDP whole, logged and counted as
        ``uplink.udp_oversize``, and TCP is left alone for ``TCP_RETRY_AFTER`` seconds. With
        ``split`` the caller can send the content in smaller requests instead:
        :class:`_TcpFailed` says so. ``build`` makes the request afresh for each attempt (fresh
        Call-ID, or the next CSeq)."""
        peer = s.link.peer
        req = build()
        size = self._wire_size(s, req)
        limit = s.upper.catalog_batch_udp_bytes
        if peer.reliable or size <= limit:
            return await self.endpoint.request(req, peer)
        if self._tcp_usable(s):
            tcp = Peer("tcp", peer.host, peer.port)
            try:
                resp = await self.endpoint.request(req, tcp, timeout=TCP_ANSWER_TIMEOUT)
            except (TransportError, TransactionTimeout, OSError) as exc:
                s.tcp_retry_at = self.clock() + TCP_RETRY_AFTER
                self.metrics.inc("uplink.tcp_failed")
                s.log.warning(
                    "uplink.tcp_failed",
                    peer=str(tcp),
                    method=req.method,
                    size=size,
                    error=str(exc),
                    retry_after=TCP_RETRY_AFTER,
                )
            else:
                self.metrics.inc("uplink.sent_over_tcp")
                return resp
            if split:
                raise _TcpFailed
            req = build()
        elif split:
            raise _TcpFailed
        self.metrics.inc("uplink.udp_oversize")
        s.log.warning("uplink.udp_oversize", method=req.method, size=size, limit=limit)
        return await self.endpoint.request(req, peer)

    def _tcp_usable(self, s: UpperSession) -> bool:
        return self.clock() >= s.tcp_retry_at

    def _added(self, s: UpperSession) -> int:
        """Bytes of the headers the endpoint adds to a request when sending it (Via with our
        address and branch, Max-Forwards, User-Agent); a TCP Via is as long as a UDP one."""
        return (
            len(f"Via: {self.endpoint.via(s.link.peer)}\r\n")
            + len("Max-Forwards: 70\r\n")
            + len(f"User-Agent: {self.endpoint.user_agent}\r\n")
        )

    def _wire_size(self, s: UpperSession, req: Request) -> int:
        return len(req.to_bytes()) + self._added(s)

    def _overhead(self, s: UpperSession) -> int:
        """Bytes of a MESSAGE to this upper without its body, as sent (with room for a long
        Content-Length)."""
        room = len("Content-Length: 100000\r\n") + 16
        return len(self._message(s, b"").to_bytes()) + self._added(s) + room

    def _udp_budget(self, s: UpperSession, empty: Message, overhead: int) -> int:
        """Bytes of items that fit a message whose envelope is ``empty`` within
        ``catalog_batch_udp_bytes``."""
        return s.upper.catalog_batch_udp_bytes - overhead - len(self._encode(s, empty)) - 40

    def _batches(
        self, s: UpperSession, items: Sequence[Any], empty: Message, overhead: int
    ) -> Iterator[Sequence[Any]]:
        """Split ``items`` for messages whose envelope is ``empty``: by count
        (``catalog_batch_tcp_items``) over TCP; over UDP, see :meth:`_udp_batches`."""
        if not items:
            yield ()
            return
        if s.reliable:
            n = s.upper.catalog_batch_tcp_items
            for i in range(0, len(items), n):
                yield items[i : i + n]
            return
        yield from self._udp_batches(s, items, self._udp_budget(s, empty, overhead))

    def _udp_batches(
        self, s: UpperSession, items: Sequence[Any], budget: int
    ) -> Iterator[list[Any]]:
        """Batches for a UDP link: as many items as fit ``budget`` bytes (each whole message
        within ``catalog_batch_udp_bytes``, RFC 3261 §18.1.1). An item too large for that even
        alone makes its message one for TCP (:meth:`_request`); while TCP is usable, such a
        message also takes the items around it, up to ``catalog_batch_tcp_items``; otherwise
        the item goes alone, whole. A generator: sizes are worked out batch by batch, between
        the sends, and so is whether TCP is usable."""
        per_tcp = s.upper.catalog_batch_tcp_items
        batch: list[Any] = []
        used = 0
        for item in items:
            size = self._item_size(s, item)
            if batch and used + size > budget:
                over_tcp = used > budget or size > budget
                if not (over_tcp and len(batch) < per_tcp and self._tcp_usable(s)):
                    yield batch
                    batch, used = [], 0
            batch.append(item)
            used += size
        if batch:
            yield batch

    def _item_size(self, s: UpperSession, item: Any) -> int:
        el = etree.Element("Item")
        write_node(item, el, s.upper.gb_version == "2022")
        etree.indent(el, space="")
        codec = "utf-8" if s.upper.charset == "UTF-8" else "gb18030"
        return len(etree.tostring(el, encoding="unicode").encode(codec)) + 2

    async def _send_batches(
        self,
        s: UpperSession,
        items: Sequence[Any],
        empty: Message,
        overhead: int,
        send: Callable[[Sequence[Any], bool], Awaitable[bool]],
    ) -> tuple[int, bool]:
        """Send ``items`` serially, batch by batch (:meth:`_batches`), each with
        ``send(batch, split)``; a batch of several items whose TCP attempt failed goes again in
        messages for UDP. Stops at the first message not accepted. Returns how many messages
        went out and whether all did."""
        sent = 0
        budget = self._udp_budget(s, empty, overhead)
        for batch in self._batches(s, items, empty, overhead):
            try:
                if not await send(batch, len(batch) > 1):
                    return sent, False
                sent += 1
            except _TcpFailed:
                for part in self._udp_batches(s, batch, budget):
                    if not await send(part, False):
                        return sent, False
                    sent += 1
        return sent, True

    async def send_parts(
        self,
        s: UpperSession,
        make: Callable[[Sequence[Any], int], Message],
        items: Sequence[Any],
    ) -> int:
        """A multi-part answer: ``make(batch, total)`` builds each message; sent serially, each
        after the previous one's 200 (Annex M). Returns how many messages went out."""
        empty = make((), len(items))

        async def send(batch: Sequence[Any], split: bool) -> bool:
            return await self._send_message(s, make(batch, len(items)), split=split)

        sent, complete = await self._send_batches(s, items, empty, self._overhead(s), send)
        if not complete:
            s.log.warning("uplink.parts_abandoned", cmd_type=empty.CMD, sent=sent)
        return sent

    # -- requests from an upper -------------------------------------------------------------
    def _session(self, req: Request, ctx: ServerContext) -> UpperSession | None:
        """The upper a request comes from: its ID (or, after a redirect, the ID of the server
        it sent us to) in From, from that server's host."""
        user = req.from_.uri.user or ""
        s = self.sessions.get(user)
        if s is None:
            s = next((x for x in self.sessions.values() if x.link.server_id == user), None)
        if s is None or ctx.peer.host != s.link.peer.host:
            return None
        return s

    def _reply(self, req: Request, status: int, reason: str) -> Response:
        return make_response(req, status, reason, to_tag=self.endpoint.tag())

    def _refused(self, req: Request, ctx: ServerContext, what: str) -> Response:
        self.metrics.inc("uplink.not_an_upper")
        log.info("uplink.not_an_upper", peer=str(ctx.peer), sender=req.from_.uri.user, what=what)
        return self._reply(req, 403, "Forbidden (not an upper platform of this gateway)")

    def _not_shared(self, s: UpperSession, req: Request, target: str, what: str) -> Response:
        self.metrics.inc("uplink.not_shared")
        s.log.info("uplink.not_shared", target=target, what=what)
        return self._reply(req, 404, "Not Found (not shared with this platform)")

    def _is_gateway(self, target: str) -> bool:
        return target in (self.gw.id, self.gw.domain)

    def on_query(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        msg = decoded.message
        if s is None:
            return self._refused(req, ctx, msg.CMD)
        self.metrics.inc(f"uplink.query.{msg.CMD}")
        target = msg.device_id
        if msg.CMD == "Catalog":
            if not self._is_gateway(target) and not self._node_visible(s, target):
                return self._not_shared(s, req, target, msg.CMD)
            # One catalog answer per upper at a time: a new query replaces one still going.
            if s.catalog_task is not None and not s.catalog_task.done():
                s.catalog_task.cancel()
                s.log.info("uplink.catalog_answer_replaced")
            s.catalog_task = self.spawn(
                self._answer_catalog(s, msg, None if self._is_gateway(target) else target)
            )
            return self._reply(req, 200, "OK")
        if self._is_gateway(target):
            answer = self._about_gateway(s, msg)
            if answer is None:
                return self._reply(req, 404, f"Not Found ({msg.CMD} about the gateway itself)")
            self.spawn(self.send(s, answer))
            return self._reply(req, 200, "OK")
        if msg.CMD not in _FORWARDED:
            return self._reply(req, 501, f"Not Implemented ({msg.CMD} from an upper)")
        found = s.view.resolve(target)
        if found is None:
            return self._not_shared(s, req, target, msg.CMD)
        self.spawn(self._forward_query(s, msg, found[1]))
        return self._reply(req, 200, "OK")

    def _node_visible(self, s: UpperSession, target: str) -> bool:
        """May the upper ask the catalog of ``target``: something it sees, or a tree node
        (all of which it sees with ``share = "all"``)."""
        if s.view.resolve(target) is not None:
            return True
        local = s.idmap.to_local(target)
        if local is None or self.catalog.get(local) is None:
            return False
        return s.view.share_all or local in s.view.shared

    def _about_gateway(self, s: UpperSession, msg: Message) -> Message | None:
        gw = self.gw
        if msg.CMD == "DeviceInfo":
            shared = sum(
                1
                for owner, item in self.catalog
                if item_kind(item.device_id) not in ("region", "business_group", "virtual_org")
                and s.view.channel_visible(owner, item.device_id)
            )
            from gateway import __version__

            return DeviceInfoResponse(
                sn=msg.sn,
                device_id=gw.id,
                device_name=gw.name,
                result="OK",
                manufacturer="gb28181-gateway",
                model="gateway",
                firmware=__version__,
                channel=shared,
            )
        if msg.CMD == "DeviceStatus":
            return DeviceStatusResponse(
                sn=msg.sn,
                device_id=gw.id,
                result="OK",
                online="ONLINE",
                status="OK",
                device_time=gb_date(self.clock(), self.tz)[:19],
            )
        if msg.CMD == "RecordInfo":  # no central storage here: nothing found
            return RecordInfoResponse(sn=msg.sn, device_id=gw.id, name=gw.name, sum_num=0)
        return None

    async def _answer_catalog(self, s: UpperSession, msg: Message, target: str | None) -> None:
        started = time.monotonic()
        mapped = len(s.idmap)
        items = await s.view.build_async(target)
        if len(s.idmap) != mapped:
            await self.store.flush()  # new recoded IDs are stored before the upper sees them
        answer_id = target or self.gw.id

        def make(batch: Sequence[Any], total: int) -> Message:
            return CatalogResponse(
                sn=msg.sn, device_id=answer_id, sum_num=total, items=tuple(batch)
            )

        sent = await self.send_parts(s, make, items)
        s.log.info(
            "uplink.catalog_answered",
            items=len(items),
            messages=sent,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _forward_query(self, s: UpperSession, msg: Message, local: str) -> None:
        upper_target = msg.device_id
        down = replace(msg, device_id=local)
        kw: dict[str, Any] = {}
        if isinstance(down, ConfigDownloadQuery) and down.config_type:
            types = tuple(t for t in down.config_type.split("/") if t)
            kw = {"expected_parts": max(1, len(types)), "config_types": types}
        try:
            res = await self.downlink.query(local, down, **kw)
        except QueryError as exc:
            s.log.info(
                "uplink.forward_failed", cmd_type=msg.CMD, target=upper_target, error=str(exc)
            )
            self.metrics.inc("uplink.forward_failed")
            failed = self._error_answer(msg, upper_target)
            if failed is not None:
                await self.send(s, failed)
            return
        self.metrics.inc("uplink.forwarded")
        first = res.response
        if res.listed:
            # Every item of every part the device sent, in our own parts (Annex M), SumNum
            # the items relayed; the other fields (Result, Name, Number...) the first part's.
            items = [self._up_item(s, i, upper_target) for i in res.items]

            def make(batch: Sequence[Any], total: int) -> Message:
                fields: dict[str, Any] = {
                    "sn": msg.sn,
                    "device_id": upper_target,
                    "sum_num": total,
                    "items": tuple(batch),
                }
                return replace(first, **fields)

            await self.send_parts(s, make, items)
            return
        # No list (or a list type answered without one: a 2016 flat MobilePosition, a bare
        # Result ERROR): relayed as the device wrote it, nothing added.
        for r in res.responses:
            if isinstance(r, DeviceStatusResponse) and r.alarm_status:
                r = replace(r, alarm_status=tuple(self._up_item(s, a) for a in r.alarm_status))
            await self.send(s, replace(r, sn=msg.sn, device_id=upper_target))

    def _up_item(self, s: UpperSession, item: Any, fallback: str | None = None) -> Any:
        """A relayed item (a record, an alarm input, a position...) with its DeviceID in the
        upper's IDs; an ID the upper does not know becomes ``fallback`` (or is left out). Items
        without one (cruise tracks and points, SD cards, presets) go as they are."""
        device_id = getattr(item, "device_id", None)
        if not device_id:
            return item
        return replace(item, device_id=s.idmap.known_upper(device_id) or fallback)

    @staticmethod
    def _error_answer(msg: Message, target: str) -> Message | None:
        cls = REGISTRY.get(("response", msg.CMD.lower()))
        if cls is None or "result" not in {sp.attr for sp in cls._specs}:
            return None
        return cls(sn=msg.sn, device_id=target, result="ERROR")  # type: ignore[call-arg]

    def on_control(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        msg = decoded.message
        if s is None:
            return self._refused(req, ctx, msg.CMD)
        self.metrics.inc(f"uplink.control.{msg.CMD}")
        target = msg.device_id
        if self._is_gateway(target):
            return self._reply(req, 403, "Forbidden (controls go to channels, not the gateway)")
        found = s.view.resolve(target)
        if found is None:
            return self._not_shared(s, req, target, msg.CMD)
        if not isinstance(msg, DeviceControl | DeviceConfig):
            return self._reply(req, 501, f"Not Implemented ({msg.CMD})")
        if isinstance(msg, DeviceControl) and msg.device_id2:
            second = s.view.resolve(msg.device_id2)
            if second is None:
                return self._not_shared(s, req, msg.device_id2, msg.CMD)
            msg = replace(msg, device_id2=second[1])
        self.spawn(self._forward_control(s, msg, found[1]))
        return self._reply(req, 200, "OK")

    async def _forward_control(
        self, s: UpperSession, msg: DeviceControl | DeviceConfig, local: str
    ) -> None:
        try:
            if isinstance(msg, DeviceControl):
                answer: Message | None = await self.downlink.control(local, msg)
            else:
                answer = await self.downlink.configure(local, msg)
        except QueryError as exc:
            s.log.info(
                "uplink.control_failed", cmd_type=msg.CMD, target=msg.device_id, error=str(exc)
            )
            self.metrics.inc("uplink.control_failed")
            if isinstance(msg, DeviceConfig) or msg.expects_response:
                failed = self._error_answer(msg, msg.device_id)
                if failed is not None:
                    await self.send(s, failed)
            return
        self.metrics.inc("uplink.control_forwarded")
        if answer is not None:
            await self.send(s, replace(answer, sn=msg.sn, device_id=msg.device_id))

    # -- subscriptions from an upper --------------------------------------------------------
    def on_subscribe(self, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        if s is None:
            return self._refused(req, ctx, "SUBSCRIBE")
        try:
            expires = req.expires
        except ParseError:
            return self._reply(req, 400, "Bad Request (Expires)")
        to_tag = req.to.tag
        existing = next((x for x in s.subs.values() if x.call_id == req.call_id), None)
        if to_tag and (existing is None or existing.local_tag != to_tag):
            return self._reply(req, 481, "Subscription Does Not Exist")
        if existing is not None:
            return self._refresh(s, existing, req, expires)
        if not req.body.strip():
            return self._reply(req, 400, "Bad Request (SUBSCRIBE needs a MANSCDP Query body)")
        try:
            query = decode(req.body).message
        except DecodeError as exc:
            return self._reply(req, 400, f"Bad Request (MANSCDP: {exc.reason})"[:100])
        if query.ROOT != "Query" or query.CMD not in _KINDS:
            return self._reply(req, 489, f"Bad Event ({query.CMD} cannot be subscribed here)")
        granted = 600 if expires is None else min(expires, 86400)
        if granted == 0:
            return self._reply(req, 200, "OK")
        contact = req.contacts
        sub = InboundSubscription(
            kind=query.CMD,
            call_id=req.call_id,
            remote_tag=req.from_.tag or "",
            local_tag=self.endpoint.tag(),
            remote_uri=str(contact[0].uri) if contact else str(req.from_.uri),
            target=query.device_id,
            event=req.get_header("Event") or query.CMD,
            expires_at=self.clock() + granted,
            query=query,
        )
        old = s.subs.get(sub.kind)
        if old is not None:
            self._end(s, old, notify=False)
        s.subs[sub.kind] = sub
        self._arm_expiry(s, sub, granted)
        self.metrics.inc(f"uplink.subscribed.{sub.kind}")
        s.log.info("uplink.subscribed", kind=sub.kind, expires=granted, target=sub.target)
        if sub.kind == "Catalog":
            self.spawn(self._initial_catalog_notify(s, sub))
        return self._subscribe_ok(req, sub, granted)

    def _subscribe_ok(self, req: Request, sub: InboundSubscription, granted: int) -> Response:
        body = b""
        if sub.kind in ("Catalog", "Alarm"):
            cls = CatalogResponse if sub.kind == "Catalog" else AlarmResponse
            body = encode(cls(sn=sub.query.sn, device_id=sub.query.device_id, result="OK"))
        headers = [
            ("Expires", str(granted)),
            ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, self._peer_of(req))}>"),
        ]
        if body:
            headers.append(("Content-Type", "Application/MANSCDP+xml"))
        return make_response(req, 200, "OK", to_tag=sub.local_tag, headers=headers, body=body)

    def _peer_of(self, req: Request) -> Any:
        user = req.from_.uri.user or ""
        s = self.sessions.get(user) or next(
            (x for x in self.sessions.values() if x.link.server_id == user), None
        )
        return s.link.peer if s is not None else None

    def _refresh(
        self, s: UpperSession, sub: InboundSubscription, req: Request, expires: int | None
    ) -> Response:
        granted = 600 if expires is None else min(expires, 86400)
        if granted == 0:
            self._end(s, sub, notify=True, reason="timeout")
            s.log.info("uplink.unsubscribed", kind=sub.kind)
            return make_response(req, 200, "OK", to_tag=sub.local_tag, headers=[("Expires", "0")])
        sub.expires_at = self.clock() + granted
        self._arm_expiry(s, sub, granted)
        self.metrics.inc("uplink.subscription_refreshed")
        return self._subscribe_ok(req, sub, granted)

    def _arm_expiry(self, s: UpperSession, sub: InboundSubscription, seconds: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        loop = asyncio.get_running_loop()
        sub.timer = loop.call_later(seconds, lambda: self._expired(s, sub))

    def _expired(self, s: UpperSession, sub: InboundSubscription) -> None:
        if s.subs.get(sub.kind) is sub:
            s.log.info("uplink.subscription_expired", kind=sub.kind)
            self._end(s, sub, notify=True, reason="timeout")

    def _end(
        self, s: UpperSession, sub: InboundSubscription, *, notify: bool, reason: str = ""
    ) -> None:
        sub.ended = True
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if s.subs.get(sub.kind) is sub:
            del s.subs[sub.kind]
        if notify and s.link.online:
            self.spawn(self._notify(s, sub, b"", state=f"terminated;reason={reason or 'timeout'}"))

    async def _notify(
        self,
        s: UpperSession,
        sub: InboundSubscription,
        body: bytes,
        *,
        state: str | None = None,
        split: bool = False,
    ) -> bool:
        async with sub.lock:
            if sub.ended and state is None:
                return False
            return await self._send_notify(s, sub, body, state, split)

    async def _send_notify(
        self,
        s: UpperSession,
        sub: InboundSubscription,
        body: bytes,
        state: str | None,
        split: bool,
    ) -> bool:
        gw = self.gw

        def build() -> Request:
            sub.cseq += 1  # each attempt (a retry over UDP after TCP failed) a CSeq of its own
            headers = [
                ("From", f"<sip:{gw.id}@{gw.domain}>;tag={sub.local_tag}"),
                ("To", f"<sip:{s.upper.id}@{s.upper.domain}>;tag={sub.remote_tag}"),
                ("Call-ID", sub.call_id),
                ("CSeq", f"{sub.cseq} NOTIFY"),
                # The dialog's transport stays that of the link, even for a NOTIFY over TCP.
                ("Contact", f"<{self.endpoint.contact_uri(gw.id, s.link.peer)}>"),
                ("Event", sub.event),
                ("Subscription-State", state or f"active;expires={sub.remaining(self.clock())}"),
            ]
            if body:
                headers.append(("Content-Type", "Application/MANSCDP+xml"))
            return Request("NOTIFY", sub.remote_uri, headers, body)

        try:
            resp = await self._request(s, build, split=split)
        except (SipError, OSError) as exc:
            self.metrics.inc("uplink.notify_failed")
            s.log.info("uplink.notify_failed", kind=sub.kind, error=str(exc))
            return False
        if resp.status == 481 and not sub.ended:
            s.log.info("uplink.subscription_gone", kind=sub.kind)
            self._end(s, sub, notify=False)
        if resp.status >= 300:
            self.metrics.inc("uplink.notify_refused")
            return False
        self.metrics.inc("uplink.notify_sent")
        return True

    async def _send_catalog_notifies(
        self, s: UpperSession, sub: InboundSubscription, items: Sequence[CatalogItem]
    ) -> None:
        """NOTIFYs with ``items`` (each carrying its Event), SumNum = Num in each (Annex N)."""

        def make(batch: Sequence[CatalogItem]) -> CatalogNotify:
            return CatalogNotify(
                sn=self.next_sn(), device_id=self.gw.id, sum_num=len(batch), items=tuple(batch)
            )

        async def send(batch: Sequence[Any], split: bool) -> bool:
            if sub.ended:
                return False
            return await self._notify(s, sub, self._encode(s, make(batch)), split=split)

        overhead = self._overhead(s) + 200  # Event, Subscription-State, Contact, tags
        await self._send_batches(s, items, make(()), overhead, send)

    async def _initial_catalog_notify(self, s: UpperSession, sub: InboundSubscription) -> None:
        """Annex N: right after the subscription, the shared items that are offline."""
        await asyncio.sleep(0)
        view = await s.view.build_async(None if self._is_gateway(sub.target) else sub.target)
        items = [CatalogItem(device_id=i.device_id, event="OFF") for i in view if i.status == "OFF"]
        await self._send_catalog_notifies(s, sub, items)

    # -- downlink events → NOTIFYs ----------------------------------------------------------
    def _queue(self, s: UpperSession, event: str, item: CatalogItem) -> None:
        sub = s.subs.get("Catalog")
        if sub is None or not s.link.online:
            return
        sub.queue.append((event, item))
        if not sub.flushing:
            sub.flushing = True
            self.spawn(self._flush(s, sub))

    async def _flush(self, s: UpperSession, sub: InboundSubscription) -> None:
        try:
            while sub.queue and not sub.ended:
                await asyncio.sleep(NOTIFY_DELAY)  # gather what changes together
                pending, sub.queue = sub.queue, []
                items = [replace(item, event=event) for event, item in pending]
                # Devices first: when a site loses power, the upper hears which NVRs went
                # before it hears about each of their channels (the order within one item's
                # own events is kept: the sort is stable).
                items.sort(key=lambda i: item_kind(i.device_id) != "device")
                await self._send_catalog_notifies(s, sub, items)
        finally:
            sub.flushing = False

    def on_catalog_change(self, change: CatalogChange) -> None:
        kind = item_kind(change.item_id)
        tree = kind in ("region", "business_group", "virtual_org", "system")
        for s in self.sessions.values():
            sub = s.subs.get("Catalog")
            if sub is None:
                continue
            if tree:
                if not s.view.share_all:
                    continue
            elif not s.view.channel_visible(change.owner_id, change.item_id):
                continue
            stored = change.after or change.before
            if not self._covered(s, sub, change.owner_id, change.item_id, stored):
                continue
            if change.event in ("ADD", "UPDATE") and change.after is not None:
                item = s.view.translate(change.owner_id, change.after)
            else:
                mapped = s.idmap.known_upper(change.item_id)
                if mapped is None:
                    continue  # the upper never knew this item
                item = CatalogItem(device_id=mapped)
            self._queue(s, change.event, item)

    def _device_event(self, device_id: str, event: str) -> None:
        reported = self.catalog.owner_of(device_id) is not None
        for s in self.sessions.values():
            sub = s.subs.get("Catalog")
            if (
                sub is not None
                and not reported
                and s.view.device_visible(device_id)
                and self._covered(s, sub, device_id, device_id)
            ):
                self._queue(s, event, CatalogItem(device_id=s.idmap.to_upper(device_id)))

    def _covered(
        self,
        s: UpperSession,
        sub: InboundSubscription,
        owner: str,
        item_id: str,
        item: CatalogItem | None = None,
    ) -> bool:
        """Is ``item_id`` (reported by ``owner``; the device itself when the same) inside what
        the subscription's DeviceID names: everything for the gateway (its ID or domain),
        else what that ID covers in the upper's view (:meth:`SharedView.covers`: a device and
        its channels, a channel, a node of the tree and what hangs under it). The DeviceID is
        the upper's: mapped back to ours first. Visibility is checked by the caller."""
        if self._is_gateway(sub.target):
            return True
        local = s.idmap.to_local(sub.target)
        return local is not None and s.view.covers(local, owner, item_id, item)

    def on_device_online(self, event: DeviceOnline) -> None:
        self._device_event(event.device_id, "ON")

    def on_device_offline(self, event: DeviceOffline) -> None:
        self._device_event(event.device_id, "OFF")

    def on_alarm(self, event: AlarmReceived) -> None:
        alarm = event.alarm
        for s in self.sessions.values():
            if not s.link.online:
                continue
            channel = alarm.channel_id
            owner = self.catalog.owner_of(channel)
            if owner != alarm.device_id:
                channel = alarm.device_id  # not a channel of its own: the alarm is the device's
            if channel == alarm.device_id:
                if not s.view.device_visible(channel):
                    continue
            elif not s.view.channel_visible(alarm.device_id, channel):
                continue
            info = None
            if alarm.alarm_type is not None:
                param = (
                    AlarmTypeParam(event_type=alarm.event_type)
                    if alarm.event_type is not None
                    else None
                )
                info = AlarmInfo(alarm_type=alarm.alarm_type, alarm_type_param=param)
            msg = AlarmNotify(
                sn=self.next_sn(),
                device_id=s.idmap.to_upper(channel),
                alarm_priority=alarm.priority,
                alarm_method=alarm.method,
                alarm_time=alarm.time or None,
                alarm_description=alarm.description or None,
                longitude=alarm.longitude,
                latitude=alarm.latitude,
                info=info,
            )
            sub = s.subs.get("Alarm")
            if sub is not None and not self._covered(s, sub, alarm.device_id, channel):
                # Not what the subscription names: as to an upper without one, by MESSAGE.
                sub = None
            self.metrics.inc("uplink.alarm_forwarded")
            if sub is not None:
                self.spawn(self._notify(s, sub, self._encode(s, msg)))
            else:
                self.spawn(self.send(s, msg))

    def on_position(self, event: MobilePositionReceived) -> None:
        for s in self.sessions.values():
            sub = s.subs.get("MobilePosition")
            if sub is None:
                continue
            for p in event.positions:
                device_id = p.device_id or event.device_id
                if self.catalog.owner_of(device_id) != event.device_id:
                    device_id = event.device_id  # an ID it does not own: report the device
                owner = event.device_id
                visible = (
                    s.view.device_visible(device_id)
                    if device_id == owner
                    else s.view.channel_visible(owner, device_id)
                )
                if not visible or not self._covered(s, sub, owner, device_id):
                    continue
                msg = MobilePositionNotify(
                    sn=self.next_sn(),
                    device_id=s.idmap.to_upper(device_id),
                    time=p.capture_time,
                    longitude=p.longitude,
                    latitude=p.latitude,
                    speed=p.speed,
                    direction=p.direction,
                    altitude=p.altitude,
                )
                self.spawn(self._notify(s, sub, self._encode(s, msg)))
