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
* The uppers are a runtime set: seeded from ``[[uplink.platforms]]`` at the first start
  (records of kind ``upper`` in the store, with what each is shared), then the store is the
  truth and :meth:`Uplink.add_upper`, :meth:`Uplink.update_upper`, :meth:`Uplink.remove_upper`
  and :meth:`Uplink.set_share` change it while the gateway runs. An upper removed, or whose
  registration settings change, hears its subscriptions end (``noresource``) and is
  unregistered (``Expires: 0``); its media sessions end (:class:`~gateway.events.UpperOffline`).
* When what an upper sees changes (its share; the units and their devices, from the
  directory), a catalog subscription hears the difference: ADD for what came into its view,
  DEL for what left it, UPDATE for what moved (:meth:`NotifyPlanner.view_change`).
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import structlog
from pydantic import ValidationError

from gateway.catalog import Catalog
from gateway.cluster import Cluster
from gateway.directory import UNIT_REMOVED, Directory
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
from gateway.settings import Identity, UplinkSection, UpperPlatform
from gateway.sip import Endpoint, ParseError, Peer, Request, Response, ServerContext
from gateway.store import Store
from gateway.tasks import TaskSet
from gateway.uplink.answers import about_gateway, answer_catalog
from gateway.uplink.forwarding import FORWARDED, Forwarder
from gateway.uplink.idmap import IdMap
from gateway.uplink.notifier import NOTIFY_DELAY, UpperNotifier
from gateway.uplink.planning import NotifyPlanner
from gateway.uplink.registration import UpperLink
from gateway.uplink.sending import Sender
from gateway.uplink.session import UpperSession
from gateway.uplink.share import Share, SharedView
from gateway.uplink.subscriptions import InboundSubscription
from gateway.uplink.takeover import UpperTakeover

__all__ = ["InboundSubscription", "Uplink", "UpperError", "UpperSession"]

log = structlog.get_logger("gateway.uplink")

UPPER = "upper"  # store records: one per upper, {"platform": {...}, "share": {...}}
META = "uplink"  # store record "seeded": the TOML's uppers were copied once
# Settings an upper's registration is made of: changing one means unregistering and starting
# over (the others are read as they are each time they are used).
SOFT_FIELDS = frozenset(
    {
        "name",
        "keepalive_interval",
        "keepalive_timeout_count",
        "retry_interval",
        "charset",
        "catalog_batch_udp_bytes",
        "catalog_batch_tcp_items",
        "catalog_min_items",
        "catalog_max_items",
        "other_hosts",
    }
)


class UpperError(ValueError):
    """A change to the uppers refused; ``field`` names what was wrong, ``status`` the HTTP
    status an API would answer."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


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
        directory: Directory | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.cfg = settings
        self.directory = directory
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
        # Every upper (the disabled ones too) and what each is shared: the TOML's until
        # :meth:`start` reads the store.
        self.platforms: dict[str, UpperPlatform] = {up.id: up for up in settings.platforms}
        self.shares: dict[str, Share] = {up.id: Share.seed(up.share) for up in settings.platforms}
        self._started = False
        # In a cluster, an upper is served only while this node holds its lease
        # (:mod:`gateway.uplink.takeover`); alone, every upper is served.
        self.takeover: UpperTakeover | None = None
        if cluster is not None and cluster.active:
            self.takeover = UpperTakeover(self, cluster)
        self._units_dirty = False
        # One change to the uppers at a time: stopping a session awaits the upper (seconds),
        # and a change acting on what it read before that await would race another.
        self._changing = asyncio.Lock()
        for upper in self.platforms.values():
            if upper.enabled:
                self.sessions[upper.id] = self._new_session(upper)
        if directory is not None:
            directory.listeners.append(self._directory_changed)

    def new_link(self, upper: UpperPlatform) -> UpperLink:
        """The registration to ``upper`` (not started)."""
        return UpperLink(
            upper,
            identity=self.gw,
            endpoint=self.endpoint,
            metrics=self.metrics,
            on_online=self._upper_online,
            on_offline=self._upper_offline,
            next_sn=self.next_sn,
            clock=self.clock,
            store=self.store,
            on_saved=self.takeover.registration_saved if self.takeover is not None else None,
        )

    def _new_session(self, upper: UpperPlatform) -> UpperSession:
        idmap = IdMap(upper, self.store, self.gw.id, self.clock)
        idmap.reserved |= set(self.platforms)
        link = self.new_link(upper)
        view = SharedView(
            upper,
            self.gw,
            self.catalog,
            self.devices,
            idmap,
            self.shares[upper.id],
            self.directory,
        )
        return UpperSession(upper, link, idmap, view)

    def start(self) -> None:
        self.endpoint.on_refused(self.request_refused)
        self._load_uppers()
        self.prune_units()
        rows = self.store.load_id_map()
        uppers = set(self.platforms)
        for s in self.sessions.values():
            s.idmap.reserved |= uppers
            s.idmap.load(rows)
            self._activate(s)
        self._started = True
        if self.sessions:
            log.info("uplink.started", uppers=list(self.sessions))

    # -- the uppers, changeable at run time ------------------------------------------------
    def _load_uppers(self) -> None:
        """At the first start, copy the TOML's uppers into the store; after that, the store's
        uppers are the ones served (the TOML's are ignored)."""
        if "seeded" not in dict(self.store.load_records(META)):
            for upper_id in self.platforms:
                self._save(upper_id)
            self.store.save_record(META, "seeded", {"at": self.clock()})
            return
        platforms: dict[str, UpperPlatform] = {}
        shares: dict[str, Share] = {}
        for key, data in self.store.load_records(UPPER):
            try:
                upper = UpperPlatform.model_validate(data["platform"])
                share = Share.from_dict(data.get("share") or {})
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                log.warning("uplink.bad_upper_record", key=key, error=str(exc)[:200])
                continue
            platforms[upper.id] = upper
            shares[upper.id] = share
        self.platforms, self.shares = platforms, shares
        self.sessions = {up.id: self._new_session(up) for up in platforms.values() if up.enabled}

    def _save(self, upper_id: str) -> None:
        upper = self.platforms[upper_id]
        self.store.save_record(
            UPPER,
            upper_id,
            {
                # The password is kept: digest authentication needs it.
                "platform": upper.model_dump(mode="json", exclude={"share"}),
                "share": self.shares[upper_id].as_dict(),
            },
        )

    async def _start_session(self, upper: UpperPlatform) -> None:
        # A session still there (never under the lock, but cheap to be sure) is ended first:
        # overwriting it would leave its link registering, seen by nobody.
        await self._stop_session(upper.id, "replaced")
        s = self._new_session(upper)
        s.idmap.load(self.store.load_id_map(upper.id))
        for other in self.sessions.values():
            other.idmap.reserved.add(upper.id)
        self.sessions[upper.id] = s
        if self._started:
            self._activate(s)

    def _activate(self, s: UpperSession) -> None:
        """Register to the upper now, or (in a cluster) whenever this node holds its lease."""
        if self.takeover is None:
            s.link.start()
        else:
            self.takeover.hold(s)

    async def _stop_session(self, upper_id: str, reason: str) -> None:
        """End everything of an upper's session: its catalog answer, its subscriptions (with
        a terminating NOTIFY), its media (UpperOffline), its registration (unregistered)."""
        s = self.sessions.pop(upper_id, None)
        if s is None:
            return
        if s.catalog_task is not None and not s.catalog_task.done():
            s.catalog_task.cancel()
        await self.notifier.end_all(s, "noresource")
        self.events.publish(UpperOffline(upper_id, reason))
        await s.link.close(unregister=True)
        if self.takeover is not None:
            await self.takeover.release(upper_id, forget=reason == "removed")
        s.log.info("uplink.upper_stopped", reason=reason)

    async def add_upper(self, upper: UpperPlatform, share: Share | None = None) -> None:
        """A new upper: stored, and (when enabled) registered to at once."""
        async with self._changing:
            await self._add_upper(upper, share)

    async def _add_upper(self, upper: UpperPlatform, share: Share | None) -> None:
        if upper.id in self.platforms:
            raise UpperError(f"upper {upper.id} exists already", "id", 409)
        if upper.id == self.gw.id:
            raise UpperError("id: an upper cannot have the gateway's own ID", "id", 422)
        self.platforms[upper.id] = upper
        self.shares[upper.id] = share if share is not None else Share.seed(upper.share)
        self._save(upper.id)
        if upper.enabled:
            await self._start_session(upper)
        self.metrics.inc("uplink.upper_added")
        log.info("uplink.upper_added", upper=upper.id, enabled=upper.enabled)

    async def update_upper(self, upper_id: str, changes: Mapping[str, Any]) -> UpperPlatform:
        """Change an upper's settings (validated as :class:`UpperPlatform`; a
        :class:`pydantic.ValidationError` names the bad field). A change to how it is
        registered to (address, ID, password...) unregisters the old registration first and
        registers anew; the rest takes effect in place. Serialised with the other changes:
        an upper removed meanwhile is a 404."""
        async with self._changing:
            return await self._update_upper(upper_id, changes)

    async def _update_upper(self, upper_id: str, changes: Mapping[str, Any]) -> UpperPlatform:
        old = self._upper(upper_id)
        data = old.model_dump()
        data.update(changes)
        data.pop("share", None)
        new = UpperPlatform.model_validate(data)
        if new.id != upper_id and new.id in self.platforms:
            raise UpperError(f"upper {new.id} exists already", "id", 409)
        if new.id == self.gw.id:
            raise UpperError("id: an upper cannot have the gateway's own ID", "id", 422)
        changed = {
            k
            for k in type(new).model_fields
            if k != "share" and getattr(old, k) != getattr(new, k)  # (kept in self.shares)
        }
        if changed - SOFT_FIELDS:
            await self._stop_session(upper_id, "settings changed")
            share = self.shares.pop(upper_id)
            del self.platforms[upper_id]
            if new.id != upper_id:
                self.store.delete_record(UPPER, upper_id)
            self.platforms[new.id] = new
            self.shares[new.id] = share
            self._save(new.id)
            if new.enabled:
                await self._start_session(new)
        else:
            self.platforms[upper_id] = new
            self._save(upper_id)
            s = self.sessions.get(upper_id)
            if s is not None:
                s.upper = s.link.upper = s.view.upper = new
        log.info("uplink.upper_updated", upper=upper_id, changed=sorted(changed))
        return new

    async def remove_upper(self, upper_id: str) -> None:
        """Unregister from an upper, end its subscriptions and media, forget it."""
        async with self._changing:
            await self._remove_upper(upper_id)

    async def _remove_upper(self, upper_id: str) -> None:
        self._upper(upper_id)
        await self._stop_session(upper_id, "removed")
        del self.platforms[upper_id]
        del self.shares[upper_id]
        self.store.delete_record(UPPER, upper_id)
        self.metrics.inc("uplink.upper_removed")
        log.info("uplink.upper_removed", upper=upper_id)

    async def set_share(self, upper_id: str, share: Share) -> None:
        """What ``upper_id`` is shared, now; a catalog subscription of it hears the change."""
        async with self._changing:
            await self._set_share(upper_id, share)

    async def _set_share(self, upper_id: str, share: Share) -> None:
        self._upper(upper_id)
        self.shares[upper_id] = share
        self._save(upper_id)
        s = self.sessions.get(upper_id)
        if s is not None:
            await self._change_view(s, lambda: s.view.refresh(share))
        log.info("uplink.share_changed", upper=upper_id, **share.as_dict())

    def prune_units(self) -> None:
        """Drop from every share the units the directory no longer has: when the directory
        says a unit was removed (``UNIT_REMOVED``), and at start for shares stored before.
        O(the units shared)."""
        if self.directory is None:
            return
        known = self.directory.units
        for upper_id, share in list(self.shares.items()):
            if all(u in known for u in share.units):
                continue
            pruned = replace(share, units=tuple(u for u in share.units if u in known))
            self.shares[upper_id] = pruned
            self._save(upper_id)
            s = self.sessions.get(upper_id)
            if s is not None:
                # What the view shows changes with its next units snapshot (the unit's
                # devices left it with the unit): only the share it reads from is swapped.
                s.view.share = pruned
            log.info(
                "uplink.share_pruned", upper=upper_id, units=len(share.units) - len(pruned.units)
            )

    def _upper(self, upper_id: str) -> UpperPlatform:
        upper = self.platforms.get(upper_id)
        if upper is None:
            raise UpperError(f"no upper {upper_id}", "id", 404)
        return upper

    async def _change_view(self, s: UpperSession, change: Callable[[], None]) -> None:
        """Apply ``change`` to what ``s`` sees; when it holds a catalog subscription, tell it
        the difference (the view its subscription names, before and after)."""
        async with s.view_lock:
            sub = s.subs.get("Catalog")
            if sub is None or sub.ended or not s.link.online:
                change()
                return
            target = None if self.planner.is_gateway(sub.target) else sub.target
            before = await s.view.build_async(target)
            change()
            after = await s.view.build_async(target)
            notices = self.planner.view_change(s, before, after)
            self.notifier.queue(notices)
            if notices:
                s.log.info("uplink.view_changed", notices=len(notices))

    def _directory_changed(self, what: str, device_ids: Iterable[str]) -> None:
        """Units or accounts changed. A view with no catalog subscription to tell takes a
        new snapshot of the units when next used; the others are diffed and told, a burst
        (a bulk import) at once, after ``NOTIFY_DELAY``."""
        if what == UNIT_REMOVED:
            self.prune_units()
        told = False
        for s in self.sessions.values():
            sub = s.subs.get("Catalog")
            if sub is None or sub.ended or not s.link.online:
                s.view.invalidate()
            else:
                told = True
        if told and not self._units_dirty:
            self._units_dirty = True
            self.spawn(self._refresh_units())

    async def _refresh_units(self) -> None:
        await asyncio.sleep(NOTIFY_DELAY)
        self._units_dirty = False
        for s in list(self.sessions.values()):
            await self._change_view(s, s.view.refresh)

    def state_of(self, upper_id: str) -> str:
        """``disabled``, ``registered``, ``registering`` (trying, no failure yet),
        ``offline`` (refused or unreachable: backing off), or in a cluster ``standby``
        (another node holds the upper's lease)."""
        upper = self._upper(upper_id)
        s = self.sessions.get(upper_id)
        if not upper.enabled or s is None:
            return "disabled"
        if self.takeover is not None and not self.takeover.holder(upper_id):
            return "standby"  # another node of the cluster serves it
        if s.link.online:
            return "registered"
        return "registering" if s.link.failures == 0 else "offline"

    async def close(self) -> None:
        if self.directory is not None and self._directory_changed in self.directory.listeners:
            self.directory.listeners.remove(self._directory_changed)
        if self.takeover is not None:
            # Leases given back, the registrations left standing for the next holder.
            await self.takeover.close()
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
                self.catalog.owner_of(local) is not None
                or local in self.devices
                or s.view.unit_node(local) is not None
            ):
                return True
        return False

    def connection_lost(self, peer: Peer) -> None:
        """A TCP connection closed: the registration riding on it must start over."""
        for s in self.sessions.values():
            s.link.connection_lost(peer)

    def _upper_online(self, link: UpperLink) -> None:
        self.events.publish(UpperOnline(link.upper.id))
        if self.takeover is not None:
            self.takeover.online(link)

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
        if self.takeover is not None and not self.takeover.holder(s.upper.id):
            return None  # another node of the cluster serves it (answered 503)
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

    def standby_refusal(self, req: Request, ctx: ServerContext, what: str) -> Response | None:
        """503 for a request from an upper that another node of the cluster serves (this node
        stands by for it), so the upper retries rather than taking a 403 for an answer;
        ``None`` when the request is not that."""
        if self.takeover is None:
            return None
        s = self.sessions.get(req.from_.uri.user or "")
        if s is None or self.takeover.holder(s.upper.id) or ctx.peer.host not in s.hosts():
            return None
        self.metrics.inc("cluster.upper_request_on_standby")
        log.info("cluster.upper_request_on_standby", upper=s.upper.id, what=what)
        return self.endpoint.answer(
            req, 503, "Service Unavailable (another node serves this platform)"
        )

    def _refused(self, req: Request, ctx: ServerContext, what: str) -> Response:
        standby = self.standby_refusal(req, ctx, what)
        if standby is not None:
            return standby
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
        if local is not None and s.view.unit_visible(local):
            return True  # a unit, as a virtual organisation
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
        for s in self.sessions.values():
            s.view.catalog_changed(change.item_id)
        self.notifier.on_catalog_change(self.sessions.values(), change)

    def on_device_online(self, event: DeviceOnline) -> None:
        self.notifier.on_device_event(self.sessions.values(), event.device_id, "ON")

    def on_device_offline(self, event: DeviceOffline) -> None:
        self.notifier.on_device_event(self.sessions.values(), event.device_id, "OFF")

    def on_alarm(self, event: AlarmReceived) -> None:
        self.notifier.on_alarm(self.sessions.values(), event)

    def on_position(self, event: MobilePositionReceived) -> None:
        self.notifier.on_position(self.sessions.values(), event)
