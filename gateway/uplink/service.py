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
* Quirks of real uppers (issue 15) are served where the standard allows (no Max-Forwards,
  UDP requests on a TCP registration, a BYE numbered like its INVITE) or refused cleanly (a
  CSeq naming another method: 400), and noted on the upper's record
  (:mod:`~gateway.uplink.quirks`, ``UpperSession.quirks``).

This module is the async facade: the handlers it installs, start and close, sending. The rules
live beside it, each readable on its own: :mod:`~gateway.uplink.answers` (queries about the
gateway, the catalog answer), :mod:`~gateway.uplink.forwarding` (queries and controls to
devices), :mod:`~gateway.uplink.sending` (MESSAGEs, the UDP→TCP fallback, multi-part answers),
:mod:`~gateway.uplink.batching` (how many items per message, pure),
:mod:`~gateway.uplink.subscriptions` (subscription bookkeeping, pure),
:mod:`~gateway.uplink.planning` (who hears of what and what each NOTIFY carries, pure) and
:mod:`~gateway.uplink.notifier` (the SUBSCRIBE dialogs and the NOTIFYs in them).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from gateway.catalog import Catalog
from gateway.downlink import Downlink, make_tz
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
from gateway.manscdp import Decoded, DeviceConfig, DeviceControl, Message
from gateway.metrics import Metrics
from gateway.model import DeviceDirectory
from gateway.settings import Identity, UplinkSection
from gateway.sip import Endpoint, ParseError, Peer, Request, Response, ServerContext
from gateway.store import Store
from gateway.tasks import TaskSet
from gateway.uplink.answers import about_gateway, answer_catalog
from gateway.uplink.forwarding import FORWARDED, Forwarder
from gateway.uplink.idmap import IdMap
from gateway.uplink.notifier import UpperNotifier
from gateway.uplink.planning import NotifyPlanner
from gateway.uplink.registration import UpperLink
from gateway.uplink.sending import Sender
from gateway.uplink.session import UpperSession
from gateway.uplink.share import SharedView
from gateway.uplink.subscriptions import InboundSubscription

__all__ = ["InboundSubscription", "Uplink", "UpperSession"]

log = structlog.get_logger("gateway.uplink")


class Uplink:
    """The async facade of the upper side: the handlers it installs, start and close, sending.
    What it decides is in the modules named above."""

    def __init__(
        self,
        *,
        identity: Identity,
        settings: UplinkSection,
        endpoint: Endpoint,
        catalog: Catalog,
        devices: DeviceDirectory,
        downlink: Downlink,
        store: Store,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = settings
        self.gw = identity
        self.endpoint = endpoint
        self.catalog = catalog
        self.devices = devices
        self.downlink = downlink
        self.store = store
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.tz = make_tz(self.gw.time_zone)
        self.sessions: dict[str, UpperSession] = {}
        self._sn = itertools.count(int.from_bytes(os.urandom(2), "big") + 1)
        self._tasks = TaskSet(log, "uplink.task_failed")
        self.sender = Sender(gateway=self.gw, endpoint=endpoint, metrics=metrics, clock=clock)
        self.planner = NotifyPlanner(self.gw, catalog)
        self.notifier = UpperNotifier(
            gateway=self.gw,
            endpoint=endpoint,
            sender=self.sender,
            planner=self.planner,
            metrics=metrics,
            clock=clock,
            spawn=self.spawn,
            next_sn=self.next_sn,
        )
        self.forwarder = Forwarder(
            downlink=downlink, metrics=metrics, send=self.send, send_parts=self.send_parts
        )
        for upper in settings.platforms:
            if not upper.enabled:
                continue
            idmap = IdMap(upper, store, self.gw.id, clock)
            link = UpperLink(
                upper,
                identity=identity,
                endpoint=endpoint,
                metrics=metrics,
                on_online=self._upper_online,
                on_offline=self._upper_offline,
                next_sn=self.next_sn,
                clock=clock,
                store=store,
            )
            view = SharedView(upper, identity, catalog, devices, idmap)
            self.sessions[upper.id] = UpperSession(upper, link, idmap, view)

    def start(self) -> None:
        self.endpoint.on_refused(self.request_refused)
        rows = self.store.load_id_map()
        uppers = {up.id for up in self.cfg.platforms}
        for s in self.sessions.values():
            s.idmap.reserved |= uppers
            s.idmap.load(rows)
            s.link.start()
        if self.sessions:
            log.info("uplink.started", uppers=list(self.sessions))

    async def close(self) -> None:
        self._tasks.cancel_all()
        self.notifier.close(self.sessions.values())
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
                self.catalog.owner_of(local) is not None or local in self.devices
            ):
                return True
        return False

    def connection_lost(self, peer: Peer) -> None:
        """A TCP connection closed: the registration riding on it must start over."""
        for s in self.sessions.values():
            s.link.connection_lost(peer)

    def _upper_online(self, link: UpperLink) -> None:
        self.events.publish(UpperOnline(link.upper.id))

    def _upper_offline(self, link: UpperLink, reason: str) -> None:
        s = self.sessions.get(link.upper.id)
        if s is not None:
            self.notifier.drop_all(s)
        self.events.publish(UpperOffline(link.upper.id, reason))

    # -- sending to an upper (:mod:`gateway.uplink.sending`) --------------------------------
    def upper_for(self, req: Request, ctx: ServerContext) -> UpperSession | None:
        """The upper a request comes from, or ``None`` (for the media sessions)."""
        return self._session(req, ctx)

    def encode_for(self, s: UpperSession, msg: Message) -> bytes:
        return self.sender.encode(s, msg)

    async def send(self, s: UpperSession, msg: Message) -> bool:
        """One MESSAGE to the upper; True when it answered 2xx. Over a UDP link one too large
        for a datagram goes over TCP (:meth:`Sender.request`)."""
        return await self.sender.send(s, msg)

    async def send_parts(
        self,
        s: UpperSession,
        make: Callable[[Sequence[Any], int], Message],
        items: Sequence[Any],
    ) -> int:
        """A multi-part answer: ``make(batch, total)`` builds each message; sent serially, each
        after the previous one's 200 (Annex M). Returns how many messages went out."""
        return await self.sender.send_parts(s, make, items)

    # -- requests from an upper -------------------------------------------------------------
    def is_upper_host(self, host: str) -> bool:
        """Whether ``host`` is an address of a configured upper platform."""
        return any(host in s.hosts() for s in self.sessions.values())

    def _session(self, req: Request, ctx: ServerContext) -> UpperSession | None:
        """The upper a request comes from: its ID (or, after a redirect, the ID of the server
        it sent us to) in From, from that server's host."""
        user = req.from_.uri.user or ""
        s = self.sessions.get(user)
        if s is None:
            s = next((x for x in self.sessions.values() if x.link.server_id == user), None)
        if s is None or ctx.peer.host != s.link.peer.host:
            return None
        if req.max_forwards is None:
            s.quirks.note("no_max_forwards", method=req.method)
        if s.link.peer.reliable and not ctx.peer.reliable:
            # UDP from an upper we registered to over TCP (its Request-URI has no transport):
            # served all the same; the answer goes back the way the request came (RFC 3261
            # §18.2.2), what the gateway starts goes over the registration's link. (TCP from
            # an upper on a UDP link is no quirk: §18.1.1 sends large requests over TCP.)
            s.quirks.note("request_over_other_transport", transport=ctx.peer.transport)
        if ctx.peer.transport == "tcp":
            # A connection the upper opened to us: kept when the connection cap makes room.
            self.endpoint.mark_trusted(ctx.peer)
        return s

    def request_refused(self, req: Request, peer: Peer, exc: ParseError) -> None:
        """The SIP core refused a request before any handler saw it: when it came from an
        upper's host with that upper's ID in From, note the quirk (the 400 has gone out)."""
        if exc.reason != "CSeq Method Mismatch":
            return
        try:
            user = req.from_.uri.user or ""
        except ParseError:
            return
        s = self.sessions.get(user)
        if s is None or peer.host not in s.hosts():
            return
        s.quirks.note("cseq_method_mismatch", method=req.method[:20], detail=exc.detail[:60])

    def _refused(self, req: Request, ctx: ServerContext, what: str) -> Response:
        self.metrics.inc("uplink.not_an_upper")
        log.info("uplink.not_an_upper", peer=str(ctx.peer), sender=req.from_.uri.user, what=what)
        return self.endpoint.answer(req, 403, "Forbidden (not an upper platform of this gateway)")

    def _not_shared(self, s: UpperSession, req: Request, target: str, what: str) -> Response:
        self.metrics.inc("uplink.not_shared")
        s.log.info("uplink.not_shared", target=target, what=what)
        return self.endpoint.answer(req, 404, "Not Found (not shared with this platform)")

    def on_query(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        msg = decoded.message
        if s is None:
            return self._refused(req, ctx, msg.CMD)
        self.metrics.inc(f"uplink.query.{msg.CMD}")
        target = msg.device_id
        is_gateway = self.planner.is_gateway(target)
        if msg.CMD == "Catalog":
            if not is_gateway and not self._node_visible(s, target):
                return self._not_shared(s, req, target, msg.CMD)
            # One catalog answer per upper at a time: a new query replaces one still going.
            if s.catalog_task is not None and not s.catalog_task.done():
                s.catalog_task.cancel()
                s.log.info("uplink.catalog_answer_replaced")
            answer = answer_catalog(
                s,
                msg,
                None if is_gateway else target,
                gateway_id=self.gw.id,
                store=self.store,
                send_parts=self.send_parts,
            )
            s.catalog_task = self.spawn(answer)
            return self.endpoint.answer(req, 200, "OK")
        if is_gateway:
            about = about_gateway(
                msg,
                gateway=self.gw,
                catalog=self.catalog,
                view=s.view,
                now=self.clock(),
                tz=self.tz,
            )
            if about is None:
                return self.endpoint.answer(
                    req, 404, f"Not Found ({msg.CMD} about the gateway itself)"
                )
            self.spawn(self.send(s, about))
            return self.endpoint.answer(req, 200, "OK")
        if msg.CMD not in FORWARDED:
            return self.endpoint.answer(req, 501, f"Not Implemented ({msg.CMD} from an upper)")
        found = s.view.resolve(target)
        if found is None:
            return self._not_shared(s, req, target, msg.CMD)
        self.spawn(self.forwarder.query(s, msg, found[1]))
        return self.endpoint.answer(req, 200, "OK")

    def _node_visible(self, s: UpperSession, target: str) -> bool:
        """May the upper ask the catalog of ``target``: something it sees, or a tree node
        (all of which it sees with ``share = "all"``)."""
        if s.view.resolve(target) is not None:
            return True
        local = s.idmap.to_local(target)
        if local is None or self.catalog.get(local) is None:
            return False
        return s.view.share_all or local in s.view.shared

    def on_control(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        msg = decoded.message
        if s is None:
            return self._refused(req, ctx, msg.CMD)
        self.metrics.inc(f"uplink.control.{msg.CMD}")
        target = msg.device_id
        if self.planner.is_gateway(target):
            return self.endpoint.answer(
                req, 403, "Forbidden (controls go to channels, not the gateway)"
            )
        found = s.view.resolve(target)
        if found is None:
            return self._not_shared(s, req, target, msg.CMD)
        if not isinstance(msg, DeviceControl | DeviceConfig):
            return self.endpoint.answer(req, 501, f"Not Implemented ({msg.CMD})")
        if isinstance(msg, DeviceControl) and msg.device_id2:
            second = s.view.resolve(msg.device_id2)
            if second is None:
                return self._not_shared(s, req, msg.device_id2, msg.CMD)
            msg = replace(msg, device_id2=second[1])
        self.spawn(self.forwarder.control(s, msg, found[1]))
        return self.endpoint.answer(req, 200, "OK")

    def on_subscribe(self, req: Request, ctx: ServerContext) -> Response:
        s = self._session(req, ctx)
        if s is None:
            return self._refused(req, ctx, "SUBSCRIBE")
        return self.notifier.subscribe(s, req)

    # -- downlink events → NOTIFYs (:mod:`gateway.uplink.planning`) -------------------------
    def on_catalog_change(self, change: CatalogChange) -> None:
        self.notifier.on_catalog_change(self.sessions.values(), change)

    def on_device_online(self, event: DeviceOnline) -> None:
        self.notifier.on_device_event(self.sessions.values(), event.device_id, "ON")

    def on_device_offline(self, event: DeviceOffline) -> None:
        self.notifier.on_device_event(self.sessions.values(), event.device_id, "OFF")

    def on_alarm(self, event: AlarmReceived) -> None:
        self.notifier.on_alarm(self.sessions.values(), event)

    def on_position(self, event: MobilePositionReceived) -> None:
        self.notifier.on_position(self.sessions.values(), event)
