"""Read views over the catalog, the registrar and the directory, fit for 200,000 channels.

The API's list pages, searches and tree levels must not walk every catalog item per request.
What is derived from one device's items (its channels sorted by ID, their counts, the lowercase
search keys, its tree: children by parent and channel counts below each node) is kept per
reporting device in a :class:`DeviceView` and rebuilt lazily: every
:class:`~gateway.events.CatalogChange` marks its owner dirty (O(1)), and the next read of that
device rebuilds only its view (O(its items)). Global lists are concatenations of the per-device
views in device-ID order, so a page is found by summing counts over devices, not over channels.

The device list (a few thousand devices) is the union of the registered devices and the device
accounts, sorted by ID, re-sorted only when a device registers or an account changes. The
totals per unit (devices and channels, total and online) are computed in one pass over the
devices and kept until :attr:`Views.version` moves (any catalog change, a device on or offline,
a directory change), so the tree's root and ``/stats`` cost O(units) between changes.

After a start the views of every device are built by :meth:`Views.warm` (from the stats
sampler), a few devices per turn of the event loop, so 200,000 channels (about half a second of
CPU) never stall SIP for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.api.context import ApiContext
from gateway.events import CatalogChange, DeviceOffline, DeviceOnline
from gateway.manscdp import CatalogItem, item_kind
from gateway.model import Device

UNASSIGNED = "_unassigned"
TREE_KINDS = {
    "region": "region",
    "system": "region",
    "business_group": "business_group",
    "virtual_org": "virtual_org",
    "device": "device",
    "channel": "channel",
}


def is_on(item: CatalogItem) -> bool:
    return (item.status or "").upper() == "ON"


@dataclass(slots=True)
class DeviceView:
    """What one device reported, arranged for reading (see the module docstring)."""

    channels: list[CatalogItem] = field(default_factory=list)  # sorted by ID
    keys: list[str] = field(default_factory=list)  # "id\x1fname", lowercase, per channel
    blob: str = ""  # every key joined: one substring test says whether any channel matches
    online: int = 0
    # The device's tree: parent ID ("" for the top, under the device) -> child item IDs.
    children: dict[str, list[str]] = field(default_factory=dict)
    # Channels (total, online) at and below each tree node.
    below: dict[str, tuple[int, int]] = field(default_factory=dict)
    items: dict[str, CatalogItem] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.channels)


def build_device_view(owner: str, items: Iterable[CatalogItem]) -> DeviceView:
    """One device's view: O(its items), with a guard against ParentID cycles."""
    view = DeviceView()
    by_id = {i.device_id: i for i in items if i.device_id != owner}
    view.items = by_id
    kinds = {item_id: item_kind(item_id) for item_id in by_id}
    chans = sorted(
        (i for k, i in by_id.items() if kinds[k] == "channel"), key=lambda i: i.device_id
    )
    view.channels = chans
    view.keys = [f"{i.device_id}\x1f{i.name or ''}".lower() for i in chans]
    view.blob = "\n".join(view.keys)
    view.online = sum(1 for i in chans if is_on(i))
    children: dict[str, list[str]] = {}
    for item_id in sorted(by_id):
        item = by_id[item_id]
        parents = [p for p in item.parent_ids if p in by_id and p != item_id]
        if not parents:
            group = item.group_id
            if group and group in by_id and group != item_id:
                parents = [group]
        for p in parents or [""]:
            children.setdefault(p, []).append(item_id)
    view.children = children
    view.below = _count_below(by_id, kinds, children)
    return view


def _count_below(
    by_id: dict[str, CatalogItem], kinds: Mapping[str, str], children: dict[str, list[str]]
) -> dict[str, tuple[int, int]]:
    """Channels (total, online) at and below each node, iteratively (no recursion limit);
    a node reached again through a ParentID cycle counts as nothing the second time."""
    below: dict[str, tuple[int, int]] = {}
    for item_id, item in by_id.items():
        if item_id not in children and item_id not in below:  # a leaf: most items
            below[item_id] = (1, int(is_on(item))) if kinds[item_id] == "channel" else (0, 0)
    for root in by_id:
        if root in below:
            continue
        stack: list[tuple[str, bool]] = [(root, False)]
        open_: set[str] = set()
        while stack:
            node, expanded = stack.pop()
            if expanded:
                open_.discard(node)
                total = online = 0
                if kinds[node] == "channel":
                    total, online = 1, int(is_on(by_id[node]))
                for child in children.get(node, ()):
                    t, o = below.get(child, (0, 0))
                    total += t
                    online += o
                below[node] = (total, online)
                continue
            if node in below or node in open_:
                continue
            open_.add(node)
            stack.append((node, True))
            for child in children.get(node, ()):
                if child not in below and child not in open_:
                    stack.append((child, False))
    return below


class Views:
    """Cached views for the API (one per gateway, in ``ctx.extras["views"]``)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._views: dict[str, DeviceView] = {}
        self._dirty: set[str] = set()
        self._all_built = False
        self._owners: list[str] = []
        self._owner_set: set[str] = set()
        self._owners_stale = True
        self._devices: list[str] = []
        self._devices_key: tuple[int, int, int] = (-1, -1, -1)
        self._device_changes = 0  # bumped when a device registers or an account changes
        # Bumped by every change any count can depend on: the per-unit totals are kept for it.
        self.version = 0
        self._unit_totals: tuple[int, dict[str, dict[str, int]]] | None = None
        ctx.events.subscribe(CatalogChange, self._on_change)
        ctx.events.subscribe(DeviceOnline, self._on_device)
        ctx.events.subscribe(DeviceOffline, self._on_offline)
        ctx.directory.listeners.append(self._on_directory)

    @classmethod
    def of(cls, ctx: ApiContext) -> Views:
        views = ctx.extras.get("views")
        if views is None:
            views = ctx.extras["views"] = cls(ctx)
        assert isinstance(views, Views)
        return views

    def _on_change(self, event: CatalogChange) -> None:
        self.version += 1
        self._dirty.add(event.owner_id)
        if event.after is None or event.owner_id not in self._owner_set:
            self._owners_stale = True  # a device may have come or gone

    def _on_device(self, event: DeviceOnline) -> None:
        self.version += 1
        self._device_changes += 1

    def _on_offline(self, event: DeviceOffline) -> None:
        self.version += 1

    def _on_directory(self, what: str, device_ids: Iterable[str]) -> None:
        self.version += 1
        self._device_changes += 1

    # -- per device ---------------------------------------------------------------------------
    def view(self, owner: str) -> DeviceView:
        v = self._views.get(owner)
        if v is None or owner in self._dirty:
            self._dirty.discard(owner)
            v = build_device_view(owner, self.ctx.catalog.reported_by(owner))
            self._views[owner] = v
        return v

    async def warm(self, batch: int = 20) -> int:
        """Build every device's view that is missing or stale, ``batch`` devices per turn of
        the loop (after a start, 200,000 channels take about a second of CPU: spread out, the
        loop keeps serving SIP meanwhile). Returns how many were built."""
        built = 0
        for i, owner in enumerate(list(self.owners())):
            if owner in self._views and owner not in self._dirty:
                continue
            if owner in self.ctx.catalog.owners():
                self.view(owner)
                built += 1
            if i % batch == batch - 1:
                await asyncio.sleep(0)
        return built

    def owners(self) -> list[str]:
        """The devices that reported items, sorted (re-sorted when one may have come or gone)."""
        if self._owners_stale:
            self._owners_stale = False
            self._owners = sorted(self.ctx.catalog.owners())
            self._owner_set = set(self._owners)
            for gone in [o for o in self._views if o not in self._owner_set]:
                del self._views[gone]
            self._dirty &= self._owner_set
        return self._owners

    def counts(self, owner: str) -> tuple[int, int]:
        """(channels, online channels) of a device."""
        if owner not in self.ctx.catalog.owners():
            return 0, 0
        v = self.view(owner)
        return v.total, v.online

    # -- devices ------------------------------------------------------------------------------
    def device_ids(self) -> list[str]:
        """Every known device: registered ones and those with an account, sorted by ID."""
        n, devices = self.ctx.device_count_and_ids()
        accounts = self.ctx.directory.accounts
        key = (n, len(accounts), self._device_changes)
        if key != self._devices_key:
            self._devices = sorted(set(devices) | set(accounts))
            self._devices_key = key
        return self._devices

    def device(self, device_id: str) -> Device | None:
        return self.ctx.device(device_id)

    def known(self, device_id: str) -> bool:
        return self.ctx.has_device(device_id) or device_id in self.ctx.directory.accounts

    def device_name(self, device_id: str) -> str:
        acc = self.ctx.directory.accounts.get(device_id)
        if acc is not None and acc.name:
            return acc.name
        dev = self.device(device_id)
        if dev is not None and dev.name:
            return dev.name
        own = self.ctx.catalog.get(device_id)
        return (own.name or "") if own is not None else ""

    def online(self, device_id: str) -> bool:
        dev = self.device(device_id)
        return dev is not None and dev.online

    def unit_devices(self, unit_id: str) -> list[str]:
        if unit_id == UNASSIGNED:
            return [d for d in self.device_ids() if self.ctx.directory.unit_of(d) is None]
        return sorted(self.ctx.directory.members(unit_id))

    # -- channels across devices ----------------------------------------------------------------
    def all_channels(
        self, owners: Iterable[str], q: str, offset: int, limit: int
    ) -> tuple[int, list[tuple[str, CatalogItem]]]:
        """(total, the page) of the channels of ``owners`` in order, those matching ``q``."""
        q = q.lower()
        total = 0
        page: list[tuple[str, CatalogItem]] = []
        end = offset + limit
        for owner in owners:
            v = self.view(owner)
            if not v.channels:
                continue
            if not q:
                n = v.total
                if total + n > offset and total < end:
                    lo = max(offset - total, 0)
                    hi = min(end - total, n)
                    page.extend((owner, c) for c in v.channels[lo:hi])
                total += n
                continue
            if q not in v.blob:
                continue
            hits = [i for i, k in enumerate(v.keys) if q in k]
            n = len(hits)
            if total + n > offset and total < end:
                lo = max(offset - total, 0)
                hi = min(end - total, n)
                page.extend((owner, v.channels[i]) for i in hits[lo:hi])
            total += n
        return total, page

    def totals(self, device_ids: Iterable[str]) -> dict[str, int]:
        """Devices and channels, total and online, over ``device_ids``."""
        devices = online = chans = chans_on = 0
        for d in device_ids:
            devices += 1
            dev = self.device(d)
            if dev is not None and dev.online:
                online += 1
            t, o = self.counts(d)
            chans += t
            chans_on += o
        return {
            "devices_total": devices,
            "devices_online": online,
            "channels_total": chans,
            "channels_online": chans_on,
        }

    def unit_totals(self) -> dict[str, dict[str, int]]:
        """:meth:`totals` of every unit (and ``_unassigned``, and ``""``: everything), in one
        pass over the devices, kept until something they count changes (:attr:`version`; the
        units' own list is checked too: adding an empty unit fires no event)."""
        units = self.ctx.directory.units
        cached = self._unit_totals
        if cached is not None and cached[0] == self.version and units.keys() <= cached[1].keys():
            return cached[1]
        zero = {"devices_total": 0, "devices_online": 0, "channels_total": 0, "channels_online": 0}
        out: dict[str, dict[str, int]] = {u: dict(zero) for u in units}
        out[UNASSIGNED] = dict(zero)
        out[""] = dict(zero)
        unit_of = self.ctx.directory.unit_of
        for d in self.device_ids():
            unit = unit_of(d)
            dev = self.device(d)
            on = int(dev is not None and dev.online)
            t, o = self.counts(d)
            for key in (unit.id if unit is not None else UNASSIGNED, ""):
                acc = out.get(key)
                if acc is None:
                    continue
                acc["devices_total"] += 1
                acc["devices_online"] += on
                acc["channels_total"] += t
                acc["channels_online"] += o
        self._unit_totals = (self.version, out)
        return out
