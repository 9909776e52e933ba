"""Every catalog item the devices reported, kept per device, with change events.

GB/T 28181-2022 §9.5.2 (catalog query), §9.11 and Annex N (catalog change notification),
reference §1.4 and §5.2. Items are the codec's :class:`CatalogItem` values: channels, and the
tree nodes they hang under (civil regions, systems, business groups 215, virtual organisations
216). The tree is in the items themselves: ``ParentID`` (several parents joined by ``/``) and the
business group. A ``ParentID`` naming the gateway itself is dropped on the way in (the gateway is
the root for everything below it).

Items are kept per reporting device, so two NVRs that both report the civil region ``340200``
do not overwrite each other, and a re-sync of one device is a diff against what that device
reported before: added, removed and changed items are stored and each becomes one
:class:`~gateway.events.CatalogChange` with the item before and after. A device going offline
turns its channels ``OFF``; that too is a change per channel.

An item is only taken with a ``DeviceID`` that is an ID (reference §1.2, §1.4): 20 ASCII digits
(GB/T 28181-2022 Appendix E), or a civil-region code of 2, 4, 6 or 8 digits, which region items
carry. The 2016 18-digit "coding rule B" was deleted in 2022 and is refused like anything else.
An item with another ``DeviceID`` is refused and counted (``catalog.bad_item_id``); the good items
of the same message are kept. ``ParentID`` and ``BusinessGroupID`` are kept as sent: real devices
fill them loosely, and they only place an item in the tree. A channel or device item with
neither (a field quirk: the item would float at the root of an upper's tree) is hung under the
device that reported it, whose own item, if it reports one, then says ``Parental`` 1; each such
item is counted on the device (``no_parent_id``, :class:`QuirkBook`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, KeysView
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from gateway.events import CatalogChange, EventBus
from gateway.manscdp import CatalogItem, is_civil_code, is_gb_id, item_kind
from gateway.metrics import Metrics
from gateway.store import Store

log = structlog.get_logger("gateway.catalog")

# Kinds whose Status follows the device that reported them.
_HAS_STATUS = frozenset({"channel", "device"})

# What a NOTIFY status event sets Status to (reference §5.2). VLOST and DEFECT keep their own
# event name on the change but the channel cannot stream, so it counts as OFF.
_STATUS_OF_EVENT = {"ON": "ON", "OFF": "OFF", "VLOST": "OFF", "DEFECT": "OFF"}


class QuirkBook(Protocol):
    """Where a device's field quirks are counted (``gateway.downlink.DeviceQuirks``)."""

    def note(self, device_id: str, quirk: str, n: int = 1, **detail: object) -> int: ...


@dataclass(frozen=True, slots=True)
class SyncDiff:
    """What a sync changed; ``refused``: items not taken, their ``DeviceID`` being no ID."""

    added: int
    removed: int
    changed: int
    total: int
    refused: int = 0


def valid_item_id(item_id: str) -> bool:
    """A catalog item's ``DeviceID``: a 20-digit GB ID, or a civil-region code (reference §1.2:
    any other length is invalid)."""
    return is_gb_id(item_id) or is_civil_code(item_id)


class Catalog:
    def __init__(
        self,
        *,
        store: Store,
        events: EventBus,
        metrics: Metrics,
        gateway_id: str,
        clock: Callable[[], float] = time.time,
        quirks: QuirkBook | None = None,
    ) -> None:
        self.store = store
        self.quirks = quirks
        self.events = events
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.clock = clock
        self._by_owner: dict[str, dict[str, CatalogItem]] = {}
        # item ID -> the device that reported it (the last one, for shared tree nodes).
        self._owner: dict[str, str] = {}
        # The Parental each device last reported on its own item: what it goes back to when
        # nothing hangs under it any more (see :meth:`_parental`).
        self._reported_parental: dict[str, int | None] = {}

    # -- reading ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the stored items. One without a valid ``DeviceID`` (stored before the check
        existed) is skipped, not served, but left in the store: loading never destroys data (an
        operator can still read or export it, and a later fix of the check can take it back).
        The skipped ones are counted and logged once with their number."""
        skipped = 0
        for owner, item in self.store.load_items():
            if valid_item_id(item.device_id):
                self._put(owner, item)
            else:
                skipped += 1
        if skipped:
            self.metrics.inc("catalog.load.skipped_bad_id", skipped)
            log.warning("catalog.load_skipped_bad_id", skipped=skipped)
        log.info("catalog.loaded", items=len(self._owner), devices=len(self._by_owner))

    def items_of(self, owner_id: str) -> list[CatalogItem]:
        return list(self._by_owner.get(owner_id, {}).values())

    def reported_by(self, owner_id: str) -> Iterable[CatalogItem]:
        """``owner_id``'s items without a copy (not to be iterated across a change)."""
        return self._by_owner.get(owner_id, {}).values()

    def get(self, item_id: str) -> CatalogItem | None:
        owner = self._owner.get(item_id)
        if owner is None:
            return None
        return self._by_owner[owner].get(item_id)

    def owner_of(self, item_id: str) -> str | None:
        """The registered device that reported ``item_id`` (where requests for it go)."""
        return self._owner.get(item_id)

    def owners(self) -> KeysView[str]:
        """The devices that reported items (a live view: not to be iterated across a change)."""
        return self._by_owner.keys()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_owner.values())

    def __iter__(self) -> Iterator[tuple[str, CatalogItem]]:
        for owner, items in self._by_owner.items():
            for item in items.values():
                yield owner, item

    def children(self, parent_id: str) -> list[CatalogItem]:
        """Items whose ParentID (any of them) or business group is ``parent_id``."""
        out = []
        for _, item in self:
            if parent_id in item.parent_ids or item.group_id == parent_id:
                out.append(item)
        return out

    # -- writing ----------------------------------------------------------------------------
    def _valid(self, owner: str, items: Iterable[CatalogItem]) -> tuple[list[CatalogItem], int]:
        """The items whose ``DeviceID`` is an ID, and how many were refused (counted, and
        logged once per message with a short excerpt of the first bad ID)."""
        good: list[CatalogItem] = []
        refused = 0
        first = ""
        for item in items:
            if valid_item_id(item.device_id):
                good.append(item)
            else:
                if not refused:
                    first = ascii(item.device_id[:32])
                refused += 1
        if refused:
            self.metrics.inc("catalog.bad_item_id", refused)
            log.warning("catalog.bad_item_id", device_id=owner, refused=refused, first=first)
        return good, refused

    def _normalise(self, owner: str, item: CatalogItem) -> CatalogItem:
        """Drop the NOTIFY ``Event`` and a ParentID naming the gateway itself; hang an orphan
        (:func:`is_orphan`) under ``owner``; the owner's own item is a parent (``Parental``
        1) when anything of its hangs under it."""
        changes: dict[str, object] = {}
        if item.event is not None:
            changes["event"] = None
        if item.parent_id and self.gateway_id in item.parent_id:
            parents = [p for p in item.parent_ids if p != self.gateway_id]
            changes["parent_id"] = "/".join(parents) or None
        if is_orphan(owner, item) and "parent_id" not in changes:
            changes["parent_id"] = owner
        elif item.device_id == owner:
            self._reported_parental[owner] = item.parental
            if item.parental != 1 and self._has_children(owner):
                changes["parental"] = 1
        return replace(item, **changes) if changes else item  # type: ignore[arg-type]

    def _has_children(self, owner: str) -> bool:
        return any(owner in i.parent_ids for i in self._by_owner.get(owner, {}).values())

    def _orphans(self, owner: str, items: list[CatalogItem]) -> int:
        """Count (as the device's quirk) the items it sent without a place in the tree."""
        n = sum(1 for i in items if is_orphan(owner, i))
        if n:
            self.metrics.inc("catalog.no_parent_id", n)
            if self.quirks is not None:
                self.quirks.note(owner, "no_parent_id", n, first=items[0].device_id)
        return n

    def _parental(self, owner: str, now: float) -> None:
        """After orphans were hung under ``owner``, or items left it: its own item says it is
        a parent (``Parental`` 1) while anything hangs under it, and what the device itself
        reported once nothing does."""
        items = self._by_owner.get(owner, {})
        own = items.get(owner)
        if own is None:
            return
        has = any(owner in i.parent_ids for k, i in items.items() if k != owner)
        want = 1 if has else self._reported_parental.get(owner, own.parental)
        if own.parental != want:
            self._changed(owner, owner, "UPDATE", own, replace(own, parental=want), now)

    def _put(self, owner: str, item: CatalogItem) -> None:
        self._by_owner.setdefault(owner, {})[item.device_id] = item
        self._owner[item.device_id] = owner

    def _drop(self, owner: str, item_id: str) -> None:
        items = self._by_owner.get(owner)
        if items is not None:
            items.pop(item_id, None)
            if not items:
                del self._by_owner[owner]
        if item_id == owner:
            self._reported_parental.pop(owner, None)
        if self._owner.get(item_id) == owner:
            del self._owner[item_id]
            if item_kind(item_id) not in _HAS_STATUS:
                # A tree node (a civil region, a group) other devices may report too.
                for other, their in self._by_owner.items():
                    if item_id in their:
                        self._owner[item_id] = other
                        break

    def _changed(
        self,
        owner: str,
        item_id: str,
        event: str,
        before: CatalogItem | None,
        after: CatalogItem | None,
        now: float,
        node: str = "",
    ) -> None:
        if after is None:
            self._drop(owner, item_id)
            if not node:
                self.store.delete_item(owner, item_id)
        else:
            self._put(owner, after)
            if not node:
                self.store.save_item(owner, after, now)
        self.metrics.inc(
            f"catalog.mirrored.{event.lower()}" if node else f"catalog.{event.lower()}"
        )
        self.events.publish(CatalogChange(owner, item_id, event, before, after, node))

    def apply_sync(self, owner: str, items: Iterable[CatalogItem], *, partial: bool) -> SyncDiff:
        """Make ``owner``'s items what a catalog query returned. A partial answer only adds
        and changes: items it did not mention may simply have been lost on the way. Items
        without a valid ``DeviceID`` are refused (:func:`valid_item_id`)."""
        now = self.clock()
        old = self._by_owner.get(owner, {})
        seen: set[str] = set()
        added = changed = removed = 0
        good, refused = self._valid(owner, items)
        orphans = self._orphans(owner, good)
        # The device's own item last, once what hangs under it is known.
        good.sort(key=lambda i: i.device_id == owner)
        for raw in good:
            item = self._normalise(owner, raw)
            item_id = item.device_id
            seen.add(item_id)
            before = old.get(item_id)
            if before is None:
                added += 1
                self._changed(owner, item_id, "ADD", None, item, now)
            elif before != item:
                changed += 1
                self._changed(owner, item_id, _diff_event(before, item), before, item, now)
        if not partial:
            for item_id in [i for i in old if i not in seen]:
                removed += 1
                self._changed(owner, item_id, "DEL", old[item_id], None, now)
        if orphans or removed:
            self._parental(owner, now)
        total = len(self._by_owner.get(owner, {}))
        return SyncDiff(added, removed, changed, total, refused)

    def apply_notify(self, owner: str, items: Iterable[CatalogItem]) -> int:
        """Apply the items of a catalog NOTIFY (reference §5.2); returns how many changed."""
        now = self.clock()
        count = 0
        good, _ = self._valid(owner, items)
        orphans = self._orphans(
            owner, [i for i in good if (i.event or "").upper() in ("", "NONE", "ADD", "UPDATE")]
        )
        good.sort(key=lambda i: i.device_id == owner)
        deleted = False
        for raw in good:
            event = (raw.event or "").upper()
            item_id = raw.device_id
            before = self._by_owner.get(owner, {}).get(item_id)
            if event in ("", "NONE") and raw.name is not None:
                event = "UPDATE"  # older stacks send full items without an Event
            if event in _STATUS_OF_EVENT:
                if before is None:
                    log.info("catalog.notify_unknown_item", device_id=owner, item=item_id)
                    continue
                status = _STATUS_OF_EVENT[event]
                if before.status == status and event in ("ON", "OFF"):
                    continue  # nothing changed (VLOST/DEFECT still say something new)
                after = before if before.status == status else replace(before, status=status)
                self._changed(owner, item_id, event, before, after, now)
            elif event == "DEL":
                if before is None:
                    continue
                self._changed(owner, item_id, "DEL", before, None, now)
                deleted = True
            elif event in ("ADD", "UPDATE"):
                after = self._normalise(owner, raw)
                if before == after:
                    continue
                kind = "ADD" if before is None else "UPDATE"
                self._changed(owner, item_id, kind, before, after, now)
            else:
                self.metrics.inc("catalog.notify_bad_event")
                log.info(
                    "catalog.notify_bad_event", device_id=owner, item=item_id, notify_event=event
                )
                continue
            count += 1
        if orphans or deleted:
            self._parental(owner, now)
        return count

    # -- another node's devices (gateway.cluster.Replica) -------------------------------------
    def mirror(self, owner: str, items: Iterable[CatalogItem], node: str) -> SyncDiff:
        """Make ``owner``'s items exactly ``items``, as ``node`` (the node that holds the
        device, which stored them) has them: one change event per difference, marked with
        ``node``, nothing written to this node's store. The items come normalised already."""
        now = self.clock()
        old = self._by_owner.get(owner, {})
        seen: set[str] = set()
        added = changed = removed = 0
        for item in items:
            item_id = item.device_id
            seen.add(item_id)
            before = old.get(item_id)
            if before is None:
                added += 1
                self._changed(owner, item_id, "ADD", None, item, now, node)
            elif before != item:
                changed += 1
                self._changed(owner, item_id, _diff_event(before, item), before, item, now, node)
        for item_id in [i for i in old if i not in seen]:
            removed += 1
            self._changed(owner, item_id, "DEL", old[item_id], None, now, node)
        return SyncDiff(added, removed, changed, len(self._by_owner.get(owner, {})))

    def mirror_change(
        self, owner: str, item_id: str, event: str, after: CatalogItem | None, node: str
    ) -> bool:
        """One change of an item ``node`` holds (its :class:`CatalogChange` as that node
        published it): kept in memory, published here marked with ``node``. False when it
        changes nothing (heard twice: after a re-fetch of that node's state)."""
        before = self._by_owner.get(owner, {}).get(item_id)
        if before == after or not valid_item_id(item_id):
            return False
        self._changed(owner, item_id, event, before, after, self.clock(), node)
        return True

    def set_device_status(self, owner: str, status: str) -> int:
        """Channel status follows the device: every channel it reported goes ``status``
        (``OFF`` when the device goes offline). Returns how many changed."""
        now = self.clock()
        count = 0
        for item in list(self._by_owner.get(owner, {}).values()):
            if item.status == status or item_kind(item.device_id) not in _HAS_STATUS:
                continue
            self._changed(owner, item.device_id, status, item, replace(item, status=status), now)
            count += 1
        return count


def is_orphan(owner: str, item: CatalogItem) -> bool:
    """A channel or device item, not the reporting device itself, with neither ``ParentID``
    nor business group: nowhere in the tree."""
    return (
        not item.parent_id
        and not item.group_id
        and item.device_id != owner
        and item_kind(item.device_id) in _HAS_STATUS
    )


def _diff_event(before: CatalogItem, after: CatalogItem) -> str:
    """A change that is only the status is ON/OFF; anything else is an UPDATE."""
    if before.status != after.status and replace(before, status=after.status) == after:
        return "ON" if (after.status or "").upper() == "ON" else "OFF"
    return "UPDATE"
