"""Subscriptions from the uppers and the NOTIFYs sent in them (the gateway as notifier).

RFC 6665 §4.2 and GB/T 28181-2022 §9.11, Annex N; reference §7.5. One dialog per kind
(Catalog, Alarm, MobilePosition) and upper, refreshed in-dialog, ended by ``Expires: 0`` or
expiry with a terminating NOTIFY (``Subscription-State: terminated;reason=timeout``). A
catalog subscription starts with a NOTIFY of the shared items that are offline (Annex N).
Catalog changes are gathered for ``NOTIFY_DELAY`` seconds and sent in batches; NOTIFYs of one
dialog go one at a time. An upper answering ``481`` has dropped the dialog: it ends here too.
Who hears of what is :class:`~gateway.uplink.planning.NotifyPlanner`'s decision; the
bookkeeping is :mod:`gateway.uplink.subscriptions` (each dialog a
:class:`gateway.sip.subscription.Notifier`, which writes the NOTIFYs); this module does the
awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from gateway.events import AlarmReceived, CatalogChange, MobilePositionReceived
from gateway.manscdp import AlarmResponse, CatalogItem, CatalogResponse, DecodeError, decode, encode
from gateway.metrics import Metrics
from gateway.settings import GatewaySection
from gateway.sip import Endpoint, ParseError, Request, Response, SipError, make_response
from gateway.uplink.planning import CatalogNotice, NotifyPlanner
from gateway.uplink.sending import Sender
from gateway.uplink.session import UpperSession
from gateway.uplink.subscriptions import KINDS, InboundSubscription, granted_expires

NOTIFY_DELAY = 0.2


class UpperNotifier:
    """The SUBSCRIBE dialogs of every upper and the NOTIFYs in them."""

    def __init__(
        self,
        *,
        gateway: GatewaySection,
        endpoint: Endpoint,
        sender: Sender,
        planner: NotifyPlanner,
        metrics: Metrics,
        clock: Callable[[], float],
        spawn: Callable[[Any], asyncio.Task[Any]],
        next_sn: Callable[[], int],
    ) -> None:
        self.gw = gateway
        self.endpoint = endpoint
        self.sender = sender
        self.planner = planner
        self.metrics = metrics
        self.clock = clock
        self.spawn = spawn
        self.next_sn = next_sn

    # -- SUBSCRIBE --------------------------------------------------------------------------
    def subscribe(self, s: UpperSession, req: Request) -> Response:
        """A SUBSCRIBE from upper ``s``: a new subscription, a refresh or an unsubscribe."""
        try:
            expires = req.expires
        except ParseError:
            return self.endpoint.answer(req, 400, "Bad Request (Expires)")
        to_tag = req.to.tag
        existing = next((x for x in s.subs.values() if x.call_id == req.call_id), None)
        if to_tag and (existing is None or existing.local_tag != to_tag):
            return self.endpoint.answer(req, 481, "Subscription Does Not Exist")
        if existing is not None:
            return self._refresh(s, existing, req, expires)
        if not req.body.strip():
            return self.endpoint.answer(
                req, 400, "Bad Request (SUBSCRIBE needs a MANSCDP Query body)"
            )
        try:
            query = decode(req.body).message
        except DecodeError:
            return self.endpoint.answer(req, 400, "Bad Request (MANSCDP body)")
        if query.ROOT != "Query" or query.CMD not in KINDS:
            return self.endpoint.answer(
                req, 489, f"Bad Event ({query.CMD} cannot be subscribed here)"
            )
        granted = granted_expires(expires)
        if granted == 0:
            return self.endpoint.answer(req, 200, "OK")
        sub = InboundSubscription.accept(
            req,
            query,
            peer=s.link.peer,
            local_uri=f"sip:{self.gw.id}@{self.gw.domain}",
            remote_uri=f"sip:{s.upper.id}@{s.upper.domain}",
            expires_at=self.clock() + granted,
        )
        old = s.subs.get(sub.kind)
        if old is not None:
            self.end(s, old, notify=False)
        s.subs[sub.kind] = sub
        self._arm_expiry(s, sub, granted)
        self.metrics.inc(f"uplink.subscribed.{sub.kind}")
        s.log.info("uplink.subscribed", kind=sub.kind, expires=granted, target=sub.target)
        if sub.kind == "Catalog":
            self.spawn(self._initial_catalog_notify(s, sub))
        return self._subscribe_ok(s, req, sub, granted)

    def _subscribe_ok(
        self, s: UpperSession, req: Request, sub: InboundSubscription, granted: int
    ) -> Response:
        body = b""
        if sub.kind in ("Catalog", "Alarm"):
            cls = CatalogResponse if sub.kind == "Catalog" else AlarmResponse
            body = encode(cls(sn=sub.query.sn, device_id=sub.query.device_id, result="OK"))
        headers = [
            ("Expires", str(granted)),
            ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, s.link.peer)}>"),
        ]
        if body:
            headers.append(("Content-Type", "Application/MANSCDP+xml"))
        return make_response(req, 200, "OK", to_tag=sub.local_tag, headers=headers, body=body)

    def _refresh(
        self, s: UpperSession, sub: InboundSubscription, req: Request, expires: int | None
    ) -> Response:
        granted = granted_expires(expires)
        if granted == 0:
            self.end(s, sub, notify=True, reason="timeout")
            s.log.info("uplink.unsubscribed", kind=sub.kind)
            return make_response(req, 200, "OK", to_tag=sub.local_tag, headers=[("Expires", "0")])
        sub.notifier.extend(self.clock(), granted)
        self._arm_expiry(s, sub, granted)
        self.metrics.inc("uplink.subscription_refreshed")
        return self._subscribe_ok(s, req, sub, granted)

    def resume(self, s: UpperSession, sub: InboundSubscription) -> None:
        """A subscription another node of a cluster held, now served here
        (:mod:`gateway.uplink.takeover`): its expiry armed, and a catalog subscription hears
        the whole shared catalog (each item an ``UPDATE``), then the changes as usual."""
        self._arm_expiry(s, sub, max(0.0, sub.notifier.expires_at - self.clock()))
        if sub.kind == "Catalog":
            self.spawn(self._full_catalog_notify(s, sub))

    async def _full_catalog_notify(self, s: UpperSession, sub: InboundSubscription) -> None:
        target = None if self.planner.is_gateway(sub.target) else sub.target
        items = [replace(i, event="UPDATE") for i in await s.view.build_async(target)]
        if items:
            await self._send_catalog_notifies(s, sub, items)
        else:  # nothing shared: still one NOTIFY (SumNum 0), the dialog goes on from here
            msg = self.planner.catalog_notify(self.next_sn(), ())
            await self.notify(s, sub, self.sender.encode(s, msg))

    def _arm_expiry(self, s: UpperSession, sub: InboundSubscription, seconds: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        loop = asyncio.get_running_loop()
        sub.timer = loop.call_later(seconds, lambda: self._expired(s, sub))

    def _expired(self, s: UpperSession, sub: InboundSubscription) -> None:
        if s.subs.get(sub.kind) is sub:
            s.log.info("uplink.subscription_expired", kind=sub.kind)
            self.end(s, sub, notify=True, reason="timeout")

    def end(
        self, s: UpperSession, sub: InboundSubscription, *, notify: bool, reason: str = ""
    ) -> None:
        """End ``sub``; with ``notify`` (and the upper registered), a terminating NOTIFY."""
        state = sub.notifier.terminate(reason or "timeout")
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if s.subs.get(sub.kind) is sub:
            del s.subs[sub.kind]
        if notify and s.link.online:
            self.spawn(self.notify(s, sub, b"", state=state))

    def drop_all(self, s: UpperSession) -> None:
        """The upper went offline: its subscriptions end without a NOTIFY (it re-subscribes
        when it is back)."""
        for sub in list(s.subs.values()):
            self.end(s, sub, notify=False)

    async def end_all(self, s: UpperSession, reason: str) -> None:
        """The upper is going away (removed, or its settings changed): each subscription
        ends with a terminating NOTIFY (RFC 6665 §4.2.2; ``reason`` e.g. ``noresource``),
        awaited (a short while at most) so it goes out before the registration ends."""
        sends = []
        for sub in list(s.subs.values()):
            state = sub.notifier.terminate(reason)
            self.end(s, sub, notify=False)
            sub.queue.clear()
            if s.link.online:
                sends.append(self.notify(s, sub, b"", state=state))
        if sends:
            try:
                await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 2.0)
            except TimeoutError:
                s.log.info("uplink.final_notify_timeout")

    def close(self, sessions: Iterable[UpperSession]) -> None:
        for s in sessions:
            for sub in s.subs.values():
                if sub.timer is not None:
                    sub.timer.cancel()
            s.subs.clear()

    # -- NOTIFY -----------------------------------------------------------------------------
    async def notify(
        self,
        s: UpperSession,
        sub: InboundSubscription,
        body: bytes,
        *,
        state: str | None = None,
        split: bool = False,
    ) -> bool:
        """One NOTIFY in ``sub``'s dialog, after the ones before it; none after it ended,
        but the terminating one (``state``)."""
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
        def build() -> Request:
            # The dialog's transport stays that of the link, even for a NOTIFY over TCP; each
            # attempt takes the dialog's next CSeq (RFC 3261 §12.2.1.1).
            return sub.notifier.notify(
                state or sub.notifier.active(self.clock()),
                contact=self.endpoint.contact_uri(self.gw.id, s.link.peer),
                body=body,
                content_type="Application/MANSCDP+xml" if body else None,
            )

        try:
            resp = await self.sender.request(s, build, split=split)
        except (SipError, OSError) as exc:
            self.metrics.inc("uplink.notify_failed")
            s.log.info("uplink.notify_failed", kind=sub.kind, error=str(exc))
            return False
        if resp.status == 481 and not sub.ended:
            s.log.info("uplink.subscription_gone", kind=sub.kind)
            self.end(s, sub, notify=False)
        if resp.status >= 300:
            self.metrics.inc("uplink.notify_refused")
            return False
        self.metrics.inc("uplink.notify_sent")
        return True

    async def _send_catalog_notifies(
        self, s: UpperSession, sub: InboundSubscription, items: Sequence[CatalogItem]
    ) -> None:
        """NOTIFYs with ``items`` (each carrying its Event), SumNum = Num in each (Annex N)."""

        async def send(batch: Sequence[Any], split: bool) -> bool:
            if sub.ended:
                return False
            msg = self.planner.catalog_notify(self.next_sn(), batch)
            return await self.notify(s, sub, self.sender.encode(s, msg), split=split)

        empty = self.planner.catalog_notify(self.next_sn(), ())
        overhead = self.sender.overhead(s) + 200  # Event, Subscription-State, Contact, tags
        await self.sender.send_batches(s, items, empty, overhead, send)

    async def _initial_catalog_notify(self, s: UpperSession, sub: InboundSubscription) -> None:
        """Annex N: right after the subscription, the shared items that are offline."""
        await asyncio.sleep(0)
        target = None if self.planner.is_gateway(sub.target) else sub.target
        view = await s.view.build_async(target)
        await self._send_catalog_notifies(s, sub, self.planner.offline_items(view))

    # -- events → NOTIFYs -------------------------------------------------------------------
    def queue(self, notices: Iterable[CatalogNotice[UpperSession]]) -> None:
        """Queue catalog notices for their uppers' catalog subscriptions (batched)."""
        self._queue(notices)

    def _queue(self, notices: Iterable[CatalogNotice[UpperSession]]) -> None:
        for n in notices:
            s = n.audience
            sub = s.subs.get("Catalog")
            if sub is None or not s.link.online:
                continue
            sub.queue.append((n.event, n.item))
            if not sub.flushing:
                sub.flushing = True
                self.spawn(self._flush(s, sub))

    async def _flush(self, s: UpperSession, sub: InboundSubscription) -> None:
        try:
            while sub.queue and not sub.ended:
                await asyncio.sleep(NOTIFY_DELAY)  # gather what changes together
                pending, sub.queue = sub.queue, []
                await self._send_catalog_notifies(s, sub, self.planner.notify_items(pending))
        finally:
            sub.flushing = False

    def on_catalog_change(self, sessions: Iterable[UpperSession], change: CatalogChange) -> None:
        self._queue(self.planner.catalog_change(sessions, change))

    def on_device_event(self, sessions: Iterable[UpperSession], device_id: str, event: str) -> None:
        self._queue(self.planner.device_event(sessions, device_id, event))

    def on_alarm(self, sessions: Iterable[UpperSession], event: AlarmReceived) -> None:
        for d in self.planner.alarm(sessions, event.alarm, self.next_sn):
            s = d.audience
            self.metrics.inc("uplink.alarm_forwarded")
            if d.sub is not None:
                self.spawn(self.notify(s, d.sub, self.sender.encode(s, d.message)))
            else:
                self.spawn(self.sender.send(s, d.message))

    def on_position(self, sessions: Iterable[UpperSession], event: MobilePositionReceived) -> None:
        for d in self.planner.positions(sessions, event, self.next_sn):
            s = d.audience
            self.spawn(self.notify(s, d.sub, self.sender.encode(s, d.message)))
