"""Subscriptions to devices: catalog changes, alarms and mobile positions (RFC 6665).

GB/T 28181-2022 §9.7, §9.11 and Annex N; reference §5.1–§5.4. The gateway SUBSCRIBEs with a
``Query`` body naming what it wants (``Event: Catalog;id=n`` for the catalog; the standard
fixes no package for alarms and positions, so ``presence`` is sent as most platforms do and the
body's CmdType decides). The SUBSCRIBE/200 pair makes a dialog; refreshes go in that dialog at
70–85 % of the granted time. A device that re-registers (it may have rebooted and forgotten us) is
subscribed afresh; a device going offline drops its subscriptions. A refusal or a timeout is
retried after ``downlink.subscription_retry`` seconds while the device stays online; a refresh
answered 481 (RFC 6665 §4.1.2.2: the dialog is gone) or failing after the subscription expired
starts a new dialog. Refreshes are jittered so that thousands of subscriptions made in one burst
do not all come due in the same second.

A device that never answers a SUBSCRIBE at all (a field quirk, ``subscribe_unanswered``: each
attempt is 11 retransmissions over UDP, RFC 3261 §17.1.2.2) is remembered on the device's quirk
book: its next attempts wait ``subscription_retry`` × 2^n, where n counts the unanswered
SUBSCRIBEs of every kind (catalog, alarm, position: with all three on, the first round already
makes it × 8), up to × 64, also after it registers again, and give up after ``4 × T1`` instead of
timer F. The first answer of any kind forgets the quirk.

NOTIFYs are matched to their subscription by Call-ID alone, not by tags and Event as
:meth:`gateway.sip.subscription.Subscriber.matches` would: a device that writes either wrongly
still has its NOTIFYs applied. They are answered 200; a NOTIFY from a registered device outside
any known dialog is still applied (some devices open a new Call-ID) and counted; anything else
gets 481. A NOTIFY whose body cannot be decoded is still answered 200 (an error would make the
device end the subscription, RFC 6665 §4.2.2) and is logged.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from gateway.catalog import Catalog
from gateway.downlink.downlink import Downlink
from gateway.manscdp import (
    AlarmNotify,
    AlarmQuery,
    CatalogNotify,
    CatalogQuery,
    DecodeError,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    decode,
)
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.settings import DownlinkSection, Identity
from gateway.sip import (
    Endpoint,
    Request,
    Response,
    ServerContext,
    SipError,
    Subscriber,
    TransactionTimeout,
    parse_subscription_state,
)

log = structlog.get_logger("gateway.downlink.subscriptions")

UNANSWERED = "subscribe_unanswered"  # the quirk (gateway.downlink.quirks)
MAX_BACKOFF_DOUBLINGS = 6

CATALOG, ALARM, POSITION = "Catalog", "Alarm", "MobilePosition"


@dataclass(slots=True)
class Subscription:
    """One subscription to a device: its RFC 6665 dialog (``subscriber``) and the gateway's
    bookkeeping around it (refresh timer, state)."""

    device_id: str
    kind: str
    expires: int
    subscriber: Subscriber
    active: bool = False
    expires_at: float = 0.0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    refreshes: int = 0
    ending: bool = False  # an Expires: 0 is on its way: never resubscribe from it
    in_flight: bool = False  # a SUBSCRIBE of this dialog awaits its answer

    @property
    def event(self) -> str:
        return self.subscriber.event

    @property
    def call_id(self) -> str:
        return self.subscriber.call_id

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def renewed(self) -> Subscription:
        """The same subscription asked for again in a new dialog."""
        return Subscription(self.device_id, self.kind, self.expires, self.subscriber.renewed())


class Subscriptions:
    def __init__(
        self,
        *,
        identity: Identity,
        settings: DownlinkSection,
        endpoint: Endpoint,
        downlink: Downlink,
        catalog: Catalog,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.cfg = settings
        self.endpoint = endpoint
        self.downlink = downlink
        self.catalog = catalog
        self.metrics = metrics
        self.clock = clock
        self._subs: dict[tuple[str, str], Subscription] = {}
        self._by_call_id: dict[str, Subscription] = {}
        self._event_ids = itertools.count(1000)
        self._closed = False

    def kinds(self) -> list[tuple[str, int]]:
        """What to subscribe to on each device, with the Expires to ask for."""
        out = []
        if self.cfg.catalog_subscription:
            out.append((CATALOG, self.cfg.catalog_subscription_expires))
        if self.cfg.alarm_subscription:
            out.append((ALARM, self.cfg.alarm_subscription_expires))
        if self.cfg.mobile_position_subscription:
            out.append((POSITION, self.cfg.mobile_position_expires))
        return out

    def get(self, device_id: str, kind: str) -> Subscription | None:
        return self._subs.get((device_id, kind))

    async def close(self) -> None:
        self._closed = True
        for sub in self._subs.values():
            sub.cancel_timer()
        self._subs.clear()
        self._by_call_id.clear()

    # -- lifecycle per device ---------------------------------------------------------------
    def device_online(self, device_id: str) -> None:
        """Subscribe afresh (old dialogs are forgotten: the device may have rebooted); a device
        known not to answer SUBSCRIBE only after its back-off (:meth:`retry_delay`)."""
        self.device_offline(device_id)
        unanswered = self.downlink.quirks.has(device_id, UNANSWERED)
        for kind, expires in self.kinds():
            if unanswered:
                sub = self._new(device_id, kind, expires)
                if sub is not None:
                    self._retry(sub)
            else:
                self.downlink.spawn(self.subscribe(device_id, kind, expires))

    def retry_delay(self, device_id: str) -> float:
        """How long to wait before the next attempt after a failure: ``subscription_retry``,
        doubled for each SUBSCRIBE the device left unanswered (at most × 64)."""
        misses = self.downlink.quirks.of(device_id).get(UNANSWERED, 0)
        return self.cfg.subscription_retry * float(1 << min(misses, MAX_BACKOFF_DOUBLINGS))

    def device_offline(self, device_id: str) -> None:
        for kind in (CATALOG, ALARM, POSITION):
            sub = self._subs.pop((device_id, kind), None)
            if sub is not None:
                sub.cancel_timer()
                self._by_call_id.pop(sub.call_id, None)

    # -- SUBSCRIBE --------------------------------------------------------------------------
    def _body(self, dev: Device, kind: str) -> Message:
        sn = self.downlink.next_sn()
        if kind == CATALOG:
            return CatalogQuery(sn=sn, device_id=dev.device_id)
        if kind == ALARM:
            return AlarmQuery(
                sn=sn,
                device_id=dev.device_id,
                start_alarm_priority=0,
                end_alarm_priority=0,
                alarm_method="0",
            )
        return MobilePositionQuery(
            sn=sn, device_id=dev.device_id, interval=self.cfg.mobile_position_interval
        )

    async def subscribe(self, device_id: str, kind: str, expires: int) -> bool:
        """Create (or refresh, when a dialog exists) a subscription. True when accepted."""
        dev = self.downlink.device(device_id)
        if dev is None or not dev.online or self._closed:
            return False
        sub = self._subs.get((device_id, kind)) or self._new(device_id, kind, expires)
        if sub is None:
            return False
        if sub.in_flight and expires != 0:
            return sub.active  # one request at a time in a dialog; the answer decides
        sub.cancel_timer()
        if expires == 0:
            sub.ending = True
        req = self._request(dev, sub, expires)
        sub.in_flight = True
        quirks = self.downlink.quirks
        # A device known not to answer gets a short wait, not 11 retransmissions.
        known_mute = quirks.has(device_id, UNANSWERED)
        timeout = 4 * self.endpoint.timers.t1 if known_mute else None
        try:
            resp = await self.downlink.request(dev, req, timeout=timeout)
        except SipError as exc:
            sub.in_flight = False
            self.metrics.inc("subscribe.failed")
            log.info("subscribe.no_answer", device_id=device_id, kind=kind, error=str(exc))
            if isinstance(exc, TransactionTimeout) and not sub.subscriber.confirmed:
                quirks.note(device_id, UNANSWERED, kind=kind)
            if self._subs.get((device_id, kind)) is sub and not sub.ending:
                self._retry(self._fresh_if_dead(sub, 0))
            return False
        sub.in_flight = False
        if quirks.has(device_id, UNANSWERED):
            quirks.forget(device_id, UNANSWERED)  # it answers after all
        if self._subs.get((device_id, kind)) is not sub:
            return False  # the device went offline or re-registered meanwhile
        if expires == 0:
            self._forget(sub)
            return resp.status < 300
        if resp.status >= 300:
            self.metrics.inc("subscribe.refused")
            log.info(
                "subscribe.refused",
                device_id=device_id,
                kind=kind,
                status=resp.status,
                reason=resp.reason,
            )
            sub.active = False
            if resp.status in (405, 489, 501):
                self._forget(sub)
                return False  # not supported: ask again when it next registers
            fresh = self._fresh_if_dead(sub, resp.status)
            # A lost dialog is re-created at once; other refusals wait for the retry period.
            self._retry(fresh, 1.0 if fresh is not sub else None)
            return False
        granted = sub.subscriber.confirm(resp)
        sub.expires = granted if granted is not None and 0 < granted <= expires else expires
        sub.active = True
        sub.expires_at = self.clock() + sub.expires
        self.metrics.inc("subscribe.ok")
        log.info(
            "subscribe.ok" if sub.refreshes == 0 else "subscribe.refreshed",
            device_id=device_id,
            kind=kind,
            expires=sub.expires,
        )
        sub.refreshes += 1
        loop = asyncio.get_running_loop()
        sub.timer = loop.call_later(
            sub.expires * random.uniform(0.7, 0.85),
            lambda: self.downlink.spawn(self.subscribe(device_id, kind, sub.expires)),
        )
        return True

    def _new(self, device_id: str, kind: str, expires: int) -> Subscription | None:
        """A subscription not yet asked for, in a new dialog, to an online device."""
        dev = self.downlink.device(device_id)
        if dev is None or not dev.online:
            return None
        event = f"Catalog;id={next(self._event_ids)}" if kind == CATALOG else "presence"
        uri = self._device_uri(dev)
        subscriber = Subscriber.create(
            target=uri,
            local_uri=self._gateway_uri(),
            remote_uri=uri,
            event=event,
            peer=self.downlink.peer(dev),
        )
        sub = Subscription(device_id, kind, expires, subscriber)
        self._add(sub)
        return sub

    def _fresh_if_dead(self, sub: Subscription, status: int) -> Subscription:
        """After a 481, or a failed refresh past expiry, the dialog is gone: the next attempt
        is an initial SUBSCRIBE in a new dialog."""
        if sub.subscriber.confirmed and (status == 481 or self.clock() >= sub.expires_at):
            self._forget(sub)
            fresh = sub.renewed()
            self._add(fresh)
            return fresh
        return sub

    async def unsubscribe(self, device_id: str, kind: str) -> bool:
        sub = self._subs.get((device_id, kind))
        if sub is None:
            return False
        return await self.subscribe(device_id, kind, 0)

    def _retry(self, sub: Subscription, delay: float | None = None) -> None:
        if self._closed:
            return
        sub.cancel_timer()
        loop = asyncio.get_running_loop()
        wait = self.retry_delay(sub.device_id) if delay is None else delay
        sub.timer = loop.call_later(
            wait * random.uniform(0.9, 1.1),
            lambda: self.downlink.spawn(self.subscribe(sub.device_id, sub.kind, sub.expires)),
        )

    def _add(self, sub: Subscription) -> None:
        self._subs[(sub.device_id, sub.kind)] = sub
        self._by_call_id[sub.call_id] = sub

    def _forget(self, sub: Subscription) -> None:
        sub.cancel_timer()
        if self._subs.get((sub.device_id, sub.kind)) is sub:
            del self._subs[(sub.device_id, sub.kind)]
        self._by_call_id.pop(sub.call_id, None)

    def _gateway_uri(self) -> str:
        gw = self.identity
        return f"sip:{gw.id}@{gw.domain}"

    @staticmethod
    def _device_uri(dev: Device) -> str:
        return f"sip:{dev.device_id}@{dev.host}:{dev.port}"

    def _request(self, dev: Device, sub: Subscription, expires: int) -> Request:
        """The next SUBSCRIBE of ``sub``'s dialog, to where the device registered from now
        (it may have moved behind its NAT since the dialog began)."""
        peer = self.downlink.peer(dev)
        uri = self._device_uri(dev)
        sub.subscriber.readdress(uri, uri, peer)
        body = self.downlink.body_for(dev, self._body(dev, sub.kind))
        return sub.subscriber.subscribe(
            expires,
            contact=self.endpoint.contact_uri(self.identity.id, peer),
            body=body,
            content_type="Application/MANSCDP+xml",
        )

    # -- NOTIFY -----------------------------------------------------------------------------
    def on_notify(self, req: Request, ctx: ServerContext) -> Response:
        sub = self._by_call_id.get(req.call_id)
        sender = req.from_.uri.user or ""
        dev = self.downlink.device(sub.device_id if sub is not None else sender)
        if dev is None:
            self.metrics.inc("notify.unknown_dialog")
            log.info("notify.unknown_dialog", peer=str(ctx.peer), sender=sender)
            return self.endpoint.answer(req, 481, "Subscription Does Not Exist")
        if sub is None:
            self.metrics.inc("notify.outside_dialog")
        state = parse_subscription_state(req.get_header("Subscription-State") or "")
        if req.body.strip():
            try:
                decoded = decode(req.body)
            except DecodeError as exc:
                self.metrics.inc("notify.bad_body")
                log.warning("notify.bad_body", device_id=dev.device_id, reason=exc.reason)
            else:
                if decoded.repairs:
                    self.metrics.inc("notify.repaired")
                    log.info(
                        "notify.repaired", device_id=dev.device_id, repairs=list(decoded.repairs)
                    )
                self.downlink.note_body(dev, req, decoded)
                self._apply(dev, decoded.message)
        if state.terminated and sub is not None and sub.ending:
            self._forget(sub)
        elif state.terminated and sub is not None:
            reason = state.reason
            log.info(
                "subscription.terminated", device_id=dev.device_id, kind=sub.kind, reason=reason
            )
            self._forget(sub)
            if dev.online and not self._closed and reason not in ("noresource", "rejected"):
                fresh = sub.renewed()
                self._add(fresh)
                self._retry(fresh)
        return self.endpoint.answer(req, 200, "OK")

    def _apply(self, dev: Device, msg: Message) -> None:
        self.metrics.inc(f"notify.{msg.CMD}")
        if isinstance(msg, CatalogNotify):
            changed = self.catalog.apply_notify(dev.device_id, msg.items)
            log.info(
                "catalog.notified", device_id=dev.device_id, items=len(msg.items), changed=changed
            )
        elif isinstance(msg, AlarmNotify):
            self.downlink.alarm_received(dev, msg)
        elif isinstance(msg, MobilePositionNotify):
            self.downlink.position_received(dev, msg)
        else:
            log.info("notify.ignored", device_id=dev.device_id, cmd_type=msg.CMD)
