"""Which upper hears of what, and what each NOTIFY carries: decided without I/O.

GB/T 28181-2022 §9.11 and Annex N; reference §7.5. An upper hears of a change only through
what it may see (:class:`~gateway.uplink.share.SharedView`) and what its subscription covers:
the DeviceID of the SUBSCRIBE body, in the upper's IDs, names the gateway (its ID or domain:
every shared item), a device (itself and its channels), a channel (itself) or a tree node
(what hangs under it; :meth:`SharedView.covers`).

* A catalog change goes to every catalog subscription that sees and covers the item: an ADD or
  UPDATE with the item as the upper sees it, anything else with the item's ID only, and nothing
  for an item the upper never knew. Tree nodes go only to uppers that share everything.
* A device that reported no catalog item for itself is in an upper's view, as the parent the
  gateway makes for it, while any item of its is: its first item's ADD brings an ADD of the
  device first, its last item's DEL a DEL of it. Its going on- or offline is ``ON``/``OFF``
  with its ID.
* An alarm of a shared channel (or device) goes in the alarm subscription's dialog when that
  covers it, else as a MESSAGE (as to an upper without an alarm subscription).
* A mobile position goes only in a MobilePosition subscription that covers it.

The planner returns what to queue or send; :mod:`gateway.uplink.notifier` sends it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from gateway.catalog import Catalog
from gateway.events import CatalogChange, MobilePositionReceived
from gateway.manscdp import (
    AlarmInfo,
    AlarmNotify,
    AlarmTypeParam,
    CatalogItem,
    CatalogNotify,
    MobilePositionNotify,
    item_kind,
)
from gateway.model import Alarm
from gateway.settings import GatewaySection
from gateway.uplink.idmap import IdMap
from gateway.uplink.share import TREE_KINDS, SharedView
from gateway.uplink.subscriptions import InboundSubscription


class Audience(Protocol):
    """An upper as the planner sees it (:class:`~gateway.uplink.session.UpperSession` is one):
    what it may see, its IDs, its subscriptions by kind, and whether it is registered."""

    @property
    def view(self) -> SharedView: ...

    @property
    def idmap(self) -> IdMap: ...

    @property
    def subs(self) -> Mapping[str, InboundSubscription]: ...

    @property
    def online(self) -> bool: ...


A = TypeVar("A", bound=Audience)


@dataclass(frozen=True, slots=True)
class CatalogNotice(Generic[A]):
    """One item for the catalog subscription of ``audience``, with its catalog ``event``
    (ADD, DEL, UPDATE, ON, OFF...), in the upper's IDs."""

    audience: A
    event: str
    item: CatalogItem


@dataclass(frozen=True, slots=True)
class AlarmDelivery(Generic[A]):
    """An alarm for ``audience``: a NOTIFY in ``sub``'s dialog, or a MESSAGE when ``sub`` is
    ``None``."""

    audience: A
    sub: InboundSubscription | None
    message: AlarmNotify


@dataclass(frozen=True, slots=True)
class PositionDelivery(Generic[A]):
    """A mobile position for ``audience``, as a NOTIFY in ``sub``'s dialog."""

    audience: A
    sub: InboundSubscription
    message: MobilePositionNotify


class NotifyPlanner:
    """The decisions above, for the gateway ``gateway`` whose catalog is ``catalog``."""

    def __init__(self, gateway: GatewaySection, catalog: Catalog) -> None:
        self.gw = gateway
        self.catalog = catalog

    def is_gateway(self, target: str) -> bool:
        """Does an upper's DeviceID name the gateway itself (its ID or its domain)?"""
        return target in (self.gw.id, self.gw.domain)

    def covered(
        self,
        a: Audience,
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
        if self.is_gateway(sub.target):
            return True
        local = a.idmap.to_local(sub.target)
        return local is not None and a.view.covers(local, owner, item_id, item)

    # -- catalog ----------------------------------------------------------------------------
    def catalog_change(
        self, audiences: Iterable[A], change: CatalogChange
    ) -> list[CatalogNotice[A]]:
        """What each catalog subscription hears of ``change``."""
        tree = item_kind(change.item_id) in TREE_KINDS
        out: list[CatalogNotice[A]] = []
        for a in audiences:
            sub = a.subs.get("Catalog")
            if sub is None:
                continue
            if tree:
                if not a.view.share_all:
                    continue
            elif not a.view.channel_visible(change.owner_id, change.item_id):
                continue
            stored = change.after or change.before
            if not self.covered(a, sub, change.owner_id, change.item_id, stored):
                continue
            around = [] if tree else self._device_coming_or_going(a, sub, change)
            if change.event in ("ADD", "UPDATE") and change.after is not None:
                out.extend(n for n in around if n.event == "ADD")  # the parents first
                item = a.view.translate(change.owner_id, change.after)
            else:
                mapped = a.idmap.known_upper(change.item_id)
                if mapped is None:
                    continue  # the upper never knew this item
                item = CatalogItem(device_id=mapped)
            out.append(CatalogNotice(a, change.event, item))
            out.extend(n for n in around if n.event == "DEL")  # after their last child
        return out

    def _device_coming_or_going(
        self, a: A, sub: InboundSubscription, change: CatalogChange
    ) -> list[CatalogNotice[A]]:
        """A device that lists no item for itself is in the upper's view (as the parent the
        gateway makes for it, :meth:`SharedView.device_item`) while any item of its is: its
        first item's ADD brings an ADD of the device, its last item's DEL a DEL of it. The
        same one floor up: a unit (its virtual organisation) is in the view while any of its
        devices is; the ADD of its first device brings its ADD before, the DEL of its last one
        its DEL after. Returned parents first for an ADD, children first for a DEL."""
        owner = change.owner_id
        if change.item_id == owner or self.catalog.owner_of(owner) is not None:
            return []  # the device's own item: its own changes say it
        adding = change.before is None and change.after is not None
        if not adding and not (change.after is None and change.before is not None):
            return []
        dev = a.view.devices.get(owner)
        if dev is None or not self.covered(a, sub, owner, owner):
            return []
        if self._shows_device(a, owner, besides=change.item_id):
            return []  # the device was shown already, and still is
        unit = self._unit_coming_or_going(a, sub, owner, adding)
        if adding:
            return [*unit, CatalogNotice(a, "ADD", a.view.device_item(dev))]
        mapped = a.idmap.known_upper(owner)
        device = [] if mapped is None else [CatalogNotice(a, "DEL", CatalogItem(device_id=mapped))]
        return [*device, *unit]

    def _unit_coming_or_going(
        self, a: A, sub: InboundSubscription, owner: str, adding: bool
    ) -> list[CatalogNotice[A]]:
        """The ADD (or DEL) of the unit of ``owner``, whose device comes into (or leaves) the
        view, when no other device of the unit is in it."""
        node = a.view.home_of(owner)
        if node is None or not self.covered(a, sub, owner, node.vo_id):
            return []
        if any(m != owner and self._shows_device(a, m) for m in node.members):
            return []
        if adding:
            return [CatalogNotice(a, "ADD", a.view.unit_item(node))]
        mapped = a.idmap.known_upper(node.vo_id)
        return [] if mapped is None else [CatalogNotice(a, "DEL", CatalogItem(device_id=mapped))]

    def _shows_device(self, a: A, owner: str, besides: str | None = None) -> bool:
        """Is ``owner`` in the upper's view as the parent the gateway makes for it: does any
        item of its (other than ``besides``) show there (:meth:`SharedView.build`)?"""
        return any(
            i.device_id != besides
            and item_kind(i.device_id) not in TREE_KINDS
            and a.view.channel_visible(owner, i.device_id)
            for i in self.catalog.reported_by(owner)
        )

    def device_event(
        self, audiences: Iterable[A], device_id: str, event: str
    ) -> list[CatalogNotice[A]]:
        """``ON``/``OFF`` of a registered device, for the catalog subscriptions that see and
        cover it; none when the device listed itself in its catalog (its item's own change
        says it). (A device none of whose items is in the view yet still has its ON/OFF go
        up: an upper may follow registrations before catalogs.)"""
        if self.catalog.owner_of(device_id) is not None:
            return []
        return [
            CatalogNotice(a, event, CatalogItem(device_id=a.idmap.to_upper(device_id)))
            for a in audiences
            if (sub := a.subs.get("Catalog")) is not None
            and a.view.device_visible(device_id)
            and self.covered(a, sub, device_id, device_id)
        ]

    @staticmethod
    def view_change(
        a: A, before: Iterable[CatalogItem], after: Iterable[CatalogItem]
    ) -> list[CatalogNotice[A]]:
        """What an upper's catalog subscription hears when what it may see changes (its
        share, or the units): the view it was shown (``before``) and the one it is shown now
        (``after``), both in the upper's IDs, parents first. ADD for what came into view
        (parents first), UPDATE for what moved or was renamed (a device into a unit), DEL for
        what left it (children first)."""
        old = {i.device_id: i for i in before}
        out: list[CatalogNotice[A]] = []
        seen: set[str] = set()
        for item in after:
            seen.add(item.device_id)
            prev = old.get(item.device_id)
            if prev is None:
                out.append(CatalogNotice(a, "ADD", item))
            elif (prev.parent_id, prev.name, prev.civil_code) != (
                item.parent_id,
                item.name,
                item.civil_code,
            ):
                out.append(CatalogNotice(a, "UPDATE", item))
        for item in reversed(list(old.values())):
            if item.device_id not in seen:
                out.append(CatalogNotice(a, "DEL", CatalogItem(device_id=item.device_id)))
        return out

    @staticmethod
    def notify_items(pending: Iterable[tuple[str, CatalogItem]]) -> list[CatalogItem]:
        """The items of one catalog NOTIFY from what was queued, each carrying its Event,
        devices first: when a site loses power, the upper hears which NVRs went before it
        hears about each of their channels (the order within one item's own events is kept:
        the sort is stable). Before the devices, the tree nodes being added (a unit that comes
        into the view): an upper hears of a parent before what hangs under it."""
        items = [replace(item, event=event) for event, item in pending]
        items.sort(key=_notify_rank)
        return items

    @staticmethod
    def offline_items(view: Iterable[CatalogItem]) -> list[CatalogItem]:
        """Annex N: a new catalog subscription first hears of the shared items that are
        offline."""
        return [CatalogItem(device_id=i.device_id, event="OFF") for i in view if i.status == "OFF"]

    def catalog_notify(self, sn: int, batch: Iterable[CatalogItem]) -> CatalogNotify:
        """One catalog NOTIFY body: SumNum = Num in each (Annex N)."""
        items = tuple(batch)
        return CatalogNotify(sn=sn, device_id=self.gw.id, sum_num=len(items), items=items)

    # -- alarms and positions ---------------------------------------------------------------
    def alarm(
        self, audiences: Iterable[A], alarm: Alarm, next_sn: Callable[[], int]
    ) -> list[AlarmDelivery[A]]:
        """Who hears of ``alarm`` and how (2022 §9.4; reference §7.5): every registered upper
        that sees the alarming channel (or the device, for an ID the device does not own)."""
        out: list[AlarmDelivery[A]] = []
        for a in audiences:
            if not a.online:
                continue
            channel = alarm.channel_id
            if self.catalog.owner_of(channel) != alarm.device_id:
                channel = alarm.device_id  # not a channel of its own: the alarm is the device's
            if channel == alarm.device_id:
                if not a.view.device_visible(channel):
                    continue
            elif not a.view.channel_visible(alarm.device_id, channel):
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
                sn=next_sn(),
                device_id=a.idmap.to_upper(channel),
                alarm_priority=alarm.priority,
                alarm_method=alarm.method,
                alarm_time=alarm.time or None,
                alarm_description=alarm.description or None,
                longitude=alarm.longitude,
                latitude=alarm.latitude,
                info=info,
            )
            sub = a.subs.get("Alarm")
            if sub is not None and not self.covered(a, sub, alarm.device_id, channel):
                # Not what the subscription names: as to an upper without one, by MESSAGE.
                sub = None
            out.append(AlarmDelivery(a, sub, msg))
        return out

    def positions(
        self, audiences: Iterable[A], event: MobilePositionReceived, next_sn: Callable[[], int]
    ) -> list[PositionDelivery[A]]:
        """The NOTIFYs of a device's mobile positions (2022 §9.11.2), one per position, for the
        MobilePosition subscriptions that see and cover the positioned item."""
        owner = event.device_id
        out: list[PositionDelivery[A]] = []
        for a in audiences:
            sub = a.subs.get("MobilePosition")
            if sub is None:
                continue
            for p in event.positions:
                device_id = p.device_id or owner
                if self.catalog.owner_of(device_id) != owner:
                    device_id = owner  # an ID it does not own: report the device
                visible = (
                    a.view.device_visible(device_id)
                    if device_id == owner
                    else a.view.channel_visible(owner, device_id)
                )
                if not visible or not self.covered(a, sub, owner, device_id):
                    continue
                msg = MobilePositionNotify(
                    sn=next_sn(),
                    device_id=a.idmap.to_upper(device_id),
                    time=p.capture_time,
                    longitude=p.longitude,
                    latitude=p.latitude,
                    speed=p.speed,
                    direction=p.direction,
                    altitude=p.altitude,
                )
                out.append(PositionDelivery(a, sub, msg))
        return out


def _notify_rank(item: CatalogItem) -> int:
    """Where an item goes in one catalog NOTIFY (:meth:`NotifyPlanner.notify_items`)."""
    kind = item_kind(item.device_id)
    if kind in TREE_KINDS and item.event == "ADD":
        return 0
    return 1 if kind == "device" else 2
