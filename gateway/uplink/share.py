"""What one upper platform sees of the gateway's catalog, in that upper's IDs.

Reference §7.2 and 2022 Annex H. ``share`` picks the channels: ``all``, or a list of IDs each
naming a device (all it reported) or one channel. The upper then sees, in this order: the
gateway itself (a type 200 system item, without ParentID: it is the root), the tree nodes the
shared channels hang under (civil regions, business groups 215, virtual organisations 216 with
their own ancestors), the devices that own shared channels (NVRs, built from what the registrar
and DeviceInfo know), and the channels. Every ID goes through the upper's :class:`IdMap`, and
every ``ParentID`` is rewritten so that the tree is whole from the upper's side: a parent the
upper cannot see is dropped, and an item left without one hangs under the gateway. A parent the
upper sees is kept: the reporting device, another shared device, a stored tree node, or an item
of the visible catalog itself (a lower platform's NVR, type 118, above its cameras). Whatever
order the devices reported things in, an item comes after the items of the view it hangs under.

What an ID the upper names covers (a Catalog query or subscription for a node, a MobilePosition
or Alarm subscription for a device or channel) is decided in one place, :meth:`SharedView.covers`:
the item itself, everything whose visible ParentIDs or business group lead up to it, and, for a
registered device, every channel and device item it reported. The catalog of such an ID (a
Catalog query's answer, a subscription's first NOTIFY) is what it covers, with the tree nodes
those items hang under (an NVR's virtual organisations and their business group, with their
ancestors): a ParentID or business group in the answer that names a tree node the upper sees
names one in the answer. Only the named item's own ParentID points outside it.

What an upper is shared (:class:`Share`) changes at run time: all, or any mix of social units
(every device of the unit), devices (all each reported) and channels. The view keeps a snapshot
of the units (which devices each has, its name, civil code and virtual-organisation ID) taken
by :meth:`SharedView.refresh`, so that the uplink can build the view before and after a change
and tell the upper the difference.

Units as virtual organisations: each unit with at least one device in the view is a type 216
item (its ``vo_id``, its name, its civil code) hanging under the gateway. A device of a unit
hangs under the unit's item (the device item the gateway makes, and a device's own item without
a visible parent); so does any item of its that would otherwise hang under the gateway itself.
Channels under their device, or under a tree node the device reported, keep that parent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gateway.catalog import Catalog
from gateway.manscdp import CatalogItem, item_kind
from gateway.model import Device, DeviceDirectory
from gateway.settings import Identity, UpperPlatform
from gateway.uplink.idmap import IdMap

TREE_KINDS = frozenset({"region", "business_group", "virtual_org", "system"})
_CHUNK = 5000
_ORDER = {"system": 0, "region": 1, "business_group": 2, "virtual_org": 3, "device": 4}
# Type codes of what registers itself (front-end devices, 111-130, and platforms, 200): an ID
# of the TOML's ``share = [...]`` with another type names a channel.
_CHANNEL_TYPES = range(131, 200)


@dataclass(frozen=True, slots=True)
class Share:
    """What an upper is shared: everything (``all``), or social units (every device of each),
    devices (all each reported) and channels. Devices and channels are one set when deciding
    what is visible; they are kept apart for the people who read them."""

    all: bool = False
    units: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    @classmethod
    def seed(cls, value: str | Iterable[str]) -> Share:
        """The TOML's ``share``: ``"all"``, or IDs naming devices or channels."""
        if value == "all":
            return cls(all=True)
        ids = list(dict.fromkeys(value))
        channels = [i for i in ids if i[10:13].isdigit() and int(i[10:13]) in _CHANNEL_TYPES]
        picked = set(channels)  # (a set: 100,000 IDs must not cost 100,000² steps)
        return cls(devices=tuple(i for i in ids if i not in picked), channels=tuple(channels))

    def as_dict(self) -> dict[str, Any]:
        return {
            "all": self.all,
            "units": list(self.units),
            "devices": list(self.devices),
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Share:
        return cls(
            all=bool(data.get("all", False)),
            units=tuple(dict.fromkeys(data.get("units", ()))),
            devices=tuple(dict.fromkeys(data.get("devices", ()))),
            channels=tuple(dict.fromkeys(data.get("channels", ()))),
        )


class UnitLike(Protocol):
    """A social unit as the view needs it (:class:`gateway.directory.Unit` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def civil_code(self) -> str: ...

    @property
    def vo_id(self) -> str: ...


class Units(Protocol):
    """Where units and their devices are kept (:class:`gateway.directory.Directory`)."""

    @property
    def units(self) -> Mapping[str, Any]: ...

    def members(self, unit_id: str) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class UnitNode:
    """A unit as the view saw it at its last :meth:`SharedView.refresh`."""

    unit_id: str
    vo_id: str
    name: str
    civil_code: str
    members: frozenset[str] = field(default_factory=frozenset)


class SharedView:
    def __init__(
        self,
        upper: UpperPlatform,
        identity: Identity,
        catalog: Catalog,
        devices: DeviceDirectory,
        idmap: IdMap,
        share: Share | None = None,
        units: Units | None = None,
    ) -> None:
        self.upper = upper
        self.gateway = identity
        self.catalog = catalog
        self.devices = devices
        self.idmap = idmap
        self.units = units
        self.share = share if share is not None else Share.seed(upper.share)
        self.share_all = False
        self.shared: frozenset[str] = frozenset()
        self._home: dict[str, UnitNode] = {}  # device ID -> its unit
        self._vos: dict[str, UnitNode] = {}  # a unit's virtual-organisation ID -> the unit
        self._stale = False
        # The devices that report a shared ID (:meth:`device_visible`), worked out when first
        # asked after :meth:`refresh` or after a catalog change to a shared ID
        # (:meth:`catalog_changed`): who reports an ID changes only by such a change.
        self._owners: frozenset[str] | None = None
        self.refresh()

    # -- what is shared ---------------------------------------------------------------------
    def refresh(self, share: Share | None = None) -> None:
        """Take ``share`` (when given) and a new snapshot of the units: who is in which, and
        what is shared through a unit."""
        if share is not None:
            self.share = share
        shared = set(self.share.devices) | set(self.share.channels)
        home: dict[str, UnitNode] = {}
        vos: dict[str, UnitNode] = {}
        if self.units is not None:
            wanted = set(self.share.units)
            for unit_id, unit in list(self.units.units.items()):
                members = self.units.members(unit_id)
                if unit_id in wanted:
                    shared |= members
                if not unit.vo_id:
                    continue
                node = UnitNode(unit_id, unit.vo_id, unit.name, unit.civil_code, members)
                vos[unit.vo_id] = node
                for device_id in members:
                    home[device_id] = node
        self.share_all = self.share.all
        self.shared = frozenset(shared)
        self._home = home
        self._vos = vos
        self._owners = None
        self._stale = False

    def catalog_changed(self, item_id: str) -> None:
        """The catalog added, changed or removed ``item_id``: when it is shared, who reports
        it may have changed (it came, it went, another device reports a tree node now)."""
        if item_id in self.shared:
            self._owners = None

    def invalidate(self) -> None:
        """The units changed: take a new snapshot when next asked anything (a burst of
        changes, a bulk import, costs one)."""
        self._stale = True

    def _fresh(self) -> None:
        if self._stale:
            self.refresh()

    def home_of(self, device_id: str) -> UnitNode | None:
        """The unit of a device (as last refreshed), or ``None``."""
        self._fresh()
        return self._home.get(device_id)

    def unit_node(self, local_id: str) -> UnitNode | None:
        """The unit whose virtual organisation ``local_id`` is, or ``None``."""
        self._fresh()
        return self._vos.get(local_id)

    def unit_visible(self, local_id: str) -> bool:
        """Is ``local_id`` the virtual organisation of a unit with a device in this view?"""
        self._fresh()
        node = self._vos.get(local_id)
        return node is not None and any(
            any(True for _ in self._visible_items(m)) for m in node.members
        )

    def _visible_items(self, owner: str) -> Iterator[CatalogItem]:
        for i in self.catalog.reported_by(owner):
            if item_kind(i.device_id) not in TREE_KINDS and self.channel_visible(
                owner, i.device_id
            ):
                yield i

    def _home_id(self, owner: str) -> str:
        """What an item of ``owner`` with no visible parent hangs under, in the upper's IDs:
        its unit's virtual organisation, or the gateway."""
        self._fresh()
        node = self._home.get(owner)
        return self.gateway.id if node is None else self.idmap.to_upper(node.vo_id)

    def unit_item(self, node: UnitNode) -> CatalogItem:
        """A unit as a virtual organisation (type 216) under the gateway."""
        return CatalogItem(
            device_id=self.idmap.to_upper(node.vo_id),
            name=node.name,
            civil_code=node.civil_code or self.gateway.civil_code or None,
            parent_id=self.gateway.id,
        )

    # -- visibility -------------------------------------------------------------------------
    def channel_visible(self, owner: str, item_id: str) -> bool:
        """May this upper see a channel (or device item) ``item_id`` reported by ``owner``?"""
        self._fresh()
        return self.share_all or owner in self.shared or item_id in self.shared

    def device_visible(self, device_id: str) -> bool:
        """May this upper see a registered device (it shares the device or one channel of it)?"""
        self._fresh()
        if self.share_all or device_id in self.shared:
            return True
        owners = self._owners
        if owners is None:  # once per change, not a walk of the share per question
            owner_of = self.catalog.owner_of
            owners = self._owners = frozenset(
                o for i in self.shared if (o := owner_of(i)) is not None
            )
        return device_id in owners

    def resolve(self, upper_item: str) -> tuple[str, str] | None:
        """(owner device, local ID) of an ID the upper used, when this upper may see it."""
        self._fresh()
        local = self.idmap.to_local(upper_item)
        if local is None:
            return None
        owner = self.catalog.owner_of(local)
        if owner is not None and item_kind(local) not in TREE_KINDS:
            return (owner, local) if self.channel_visible(owner, local) else None
        if local in self.devices:
            # The device itself (TeleBoot, DeviceConfig, its whole status) only for an upper
            # that shares it whole: sharing one of its channels shows it as a tree node only.
            whole = self.share_all or local in self.shared
            return (local, local) if whole else None
        return None

    def counts(self) -> tuple[int, int]:
        """(channels in the view, how many of them are ON): every visible item but the tree
        nodes (an NVR's own item included)."""
        total = online = 0
        for owner, item in self.catalog:
            if item_kind(item.device_id) in TREE_KINDS:
                continue
            if self.channel_visible(owner, item.device_id):
                total += 1
                online += item.status == "ON"
        return total, online

    # -- items ------------------------------------------------------------------------------
    def system_item(self) -> CatalogItem:
        gw = self.gateway
        return CatalogItem(
            device_id=gw.id,
            name=gw.name,
            manufacturer="gb28181-gateway",
            model="gateway",
            civil_code=gw.civil_code or gw.id[:6],
            address="",
            register_way=1,
            secrecy=0,
            status="ON",
        )

    def device_item(self, dev: Device) -> CatalogItem:
        """The NVR (or IPC) itself, as the parent of its channels."""
        return CatalogItem(
            device_id=self.idmap.to_upper(dev.device_id),
            name=dev.name or dev.device_id,
            manufacturer=dev.manufacturer or None,
            model=dev.model or None,
            # Owner is mandatory for devices in 2016 (A.2.4.5): the unit the gateway serves.
            owner=self.gateway.name or "0",
            civil_code=self.gateway.civil_code or dev.device_id[:6],
            address="",
            parental=1,
            parent_id=self._home_id(dev.device_id),
            register_way=1,
            secrecy=0,
            status="ON" if dev.online else "OFF",
        )

    def translate(self, owner: str, item: CatalogItem) -> CatalogItem:
        """A stored item in the upper's IDs, with ParentID and the business group rewritten."""
        kind = item_kind(item.device_id)
        gw = self.gateway.id
        parents = [self.idmap.to_upper(p) for p in self._parents(owner, item)]
        if kind == "business_group":
            parents = [gw]  # its owning system, from the upper's side: the gateway
        elif not parents and kind != "virtual_org" and kind != "region":
            parents = [self._home_id(owner)]
        group = item.business_group_id
        info = item.info
        if info is not None and info.business_group_id:
            info = replace(info, business_group_id=self._node(info.business_group_id))
        return replace(
            item,
            device_id=self.idmap.to_upper(item.device_id),
            event=None,
            password=None,  # a device's password is nobody's business upstairs
            parent_id="/".join(dict.fromkeys(parents)) or None,
            business_group_id=self._node(group) if group else None,
            info=info,
        )

    def _parents(self, owner: str, item: CatalogItem) -> list[str]:
        """The ParentIDs of ``item`` (reported by ``owner``) that this upper sees, local IDs."""
        return [p for p in item.parent_ids if self._parent_seen(owner, p)]

    def _parent_seen(self, owner: str, parent: str) -> bool:
        """Is ``parent`` something this upper sees: the reporting device, another shared
        device, a stored tree node (a system, type 200, included: it is in the view whenever
        something shared hangs under it), or an item of the catalog this upper may see (an NVR
        a lower platform reported above its cameras)?"""
        if parent == owner or (parent in self.devices and self.device_visible(parent)):
            return True
        reported_by = self.catalog.owner_of(parent)
        if reported_by is None:
            return False
        return item_kind(parent) in TREE_KINDS or self.channel_visible(reported_by, parent)

    def _node(self, local: str) -> str | None:
        return self.idmap.to_upper(local) if self.catalog.get(local) is not None else None

    # -- what an ID covers ------------------------------------------------------------------
    def _links(self, owner: str, item: CatalogItem) -> list[str]:
        """What ``item`` hangs under from this upper's side (local IDs), as :meth:`translate`
        writes it: its visible ParentIDs (none for a business group: the gateway is its
        system) and its business group."""
        links = [] if item_kind(item.device_id) == "business_group" else self._parents(owner, item)
        group = item.group_id
        if group and self.catalog.get(group) is not None:
            links.append(group)
        return links

    def covers(
        self,
        target: str,
        owner: str,
        item_id: str,
        item: CatalogItem | None = None,
        memo: dict[str, bool] | None = None,
    ) -> bool:
        """Does ``target`` (a local ID an upper named, not the gateway's) cover ``item_id``,
        reported by ``owner`` (``item_id == owner``: the registered device itself)? Yes for the
        item itself; for a registered device, every channel and device item it reported; and
        for anything whose visible ParentIDs or business group lead up to ``target`` (a civil
        region, a business group, a virtual organisation, an NVR item of a lower platform).
        ``item``: the item when it is no longer stored (a deletion); ``memo``: answers for
        intermediate nodes, shared by calls with the same ``target``. Visibility is not
        checked here."""
        self._fresh()
        if item_id == target:
            return True
        if owner == target and item_kind(item_id) not in TREE_KINDS:
            return True
        unit = self._vos.get(target)
        if unit is not None:
            return owner in unit.members  # a unit: whatever its devices reported
        if item is None:
            item = self.catalog.get(item_id)
            if item is None:
                return False  # a registered device the catalog does not list: under the gateway
        return self._reaches(owner, item, target, {} if memo is None else memo, {item_id})

    def _reaches(
        self, owner: str, item: CatalogItem, target: str, memo: dict[str, bool], path: set[str]
    ) -> bool:
        for link in self._links(owner, item):
            if link == target:
                return True
            hit = memo.get(link)
            if hit is None:
                node = self.catalog.get(link)
                if link in path or node is None:
                    continue  # a loop in the tree, or a registered device: nothing above
                path.add(link)
                hit = memo[link] = self._reaches(
                    self.catalog.owner_of(link) or owner, node, target, memo, path
                )
                path.discard(link)
            if hit:
                return True
        return False

    # -- the whole view ---------------------------------------------------------------------
    def build(self, target: str | None = None) -> list[CatalogItem]:
        """The shared catalog in the upper's IDs, parents before children. ``target`` (an ID
        the upper used, other than the gateway's): only what it covers (:meth:`covers`: the
        node and what hangs under it), with the tree nodes those items hang under
        (:meth:`_nodes_above`)."""
        out: list[CatalogItem] = []
        for _ in self._build(target, out):
            pass
        return out

    async def build_async(self, target: str | None = None) -> list[CatalogItem]:
        """:meth:`build`, letting the event loop serve others every few thousand items (the
        whole view of 200,000 channels takes over a second)."""
        out: list[CatalogItem] = []
        for _ in self._build(target, out):
            await asyncio.sleep(0)
        return out

    def _build(self, target: str | None, out: list[CatalogItem]) -> Iterator[None]:
        self._fresh()
        channels: list[tuple[str, CatalogItem]] = []
        owners: dict[str, None] = {}
        wanted_nodes: dict[str, None] = {}
        for n, (owner, item) in enumerate(list(self.catalog)):
            if n % _CHUNK == _CHUNK - 1:
                yield
            kind = item_kind(item.device_id)
            if kind in TREE_KINDS or not self.channel_visible(owner, item.device_id):
                continue
            channels.append((owner, item))
            owners[owner] = None
            for p in item.parent_ids:
                if item_kind(p) in TREE_KINDS:
                    wanted_nodes[p] = None
            if item.group_id:
                wanted_nodes[item.group_id] = None
            if item.civil_code:
                wanted_nodes[item.civil_code] = None
        nodes = self._with_ancestors(wanted_nodes)
        reported = {item.device_id for _, item in channels}
        reported.update(node.device_id for _, node in nodes)
        devices = [
            dev
            for owner in owners
            if (dev := self.devices.get(owner)) is not None and owner not in reported
        ]
        inside = self._scope(target)
        if inside is not None and target is not None:  # (a scope comes with a target)
            kept: list[tuple[str, CatalogItem]] = []
            for n, (owner, item) in enumerate(channels):
                if n % _CHUNK == _CHUNK - 1:
                    yield
                if inside(owner, item.device_id):
                    kept.append((owner, item))
            channels = kept
            devices = [dev for dev in devices if inside(dev.device_id, dev.device_id)]
            covered = [(owner, node) for owner, node in nodes if inside(owner, node.device_id)]
            nodes = covered + self._nodes_above(target, nodes, covered + channels)
        homes = {node.vo_id: node for o in owners if (node := self._home.get(o)) is not None}
        if inside is not None:
            homes = {vo: node for vo, node in homes.items() if inside(vo, vo)}
        view: list[CatalogItem] = [self.system_item()] if inside is None else []
        view.extend(self.unit_item(node) for node in homes.values())
        view.extend(
            sorted(
                (self.translate(owner, node) for owner, node in nodes),
                key=lambda i: (_ORDER.get(item_kind(i.device_id), 5), i.device_id),
            )
        )
        view.extend(self.device_item(dev) for dev in devices)
        for n, (owner, item) in enumerate(channels):
            if n % _CHUNK == _CHUNK - 1:
                yield
            view.append(self.translate(owner, item))
        yield from _parents_first(view)
        out.extend(view)

    def _nodes_above(
        self,
        target: str,
        visible: list[tuple[str, CatalogItem]],
        included: list[tuple[str, CatalogItem]],
    ) -> list[tuple[str, CatalogItem]]:
        """For the view of ``target`` (an ID the upper used): the tree nodes this upper sees
        (``visible``: the whole view's) that the ``included`` items hang under, ParentID or
        business group as :meth:`translate` writes them, and what those hang under in turn,
        when ``target`` does not cover them: the virtual organisations an NVR's channels hang
        under and their business group. Without them the answer names parents that are not
        in it. Nothing above ``target`` itself: the item asked for is the root of its answer,
        and its own ParentID points outside it (as a channel's, asked for alone)."""
        local = self.idmap.to_local(target)
        by_id = {node.device_id: (owner, node) for owner, node in visible}
        have = {item.device_id for _, item in included}
        queue = [
            link
            for owner, item in included
            if item.device_id != local
            for link in self._links(owner, item)
        ]
        found: list[tuple[str, CatalogItem]] = []
        while queue:
            link = queue.pop()
            entry = by_id.get(link)
            if entry is None or link in have or link == local:
                continue  # not a tree node this upper sees (a device, a channel), or in already
            have.add(link)
            found.append(entry)
            queue.extend(self._links(*entry))
        return found

    def _scope(self, target: str | None) -> Callable[[str, str], bool] | None:
        """For a view of ``target`` (an ID the upper used): whether an item (owner, local ID)
        is in it (:meth:`covers`); ``None`` for the whole view (no target, or the gateway)."""
        if target is None or target == self.gateway.id:
            return None
        local = self.idmap.to_local(target)
        memo: dict[str, bool] = {}

        def inside(owner: str, item_id: str) -> bool:
            return local is not None and self.covers(local, owner, item_id, memo=memo)

        return inside

    def _with_ancestors(self, wanted: dict[str, None]) -> list[tuple[str, CatalogItem]]:
        """The stored tree nodes named in ``wanted``, with their parents and groups, once."""
        found: dict[str, tuple[str, CatalogItem]] = {}
        queue = list(wanted)
        while queue:
            node_id = queue.pop()
            if node_id in found or node_id == self.gateway.id:
                continue
            item = self.catalog.get(node_id)
            owner = self.catalog.owner_of(node_id)
            if item is None or owner is None:
                continue
            found[node_id] = (owner, item)
            queue.extend(p for p in item.parent_ids if item_kind(p) in TREE_KINDS)
            if item.group_id:
                queue.append(item.group_id)
        return list(found.values())


def _parents_first(view: list[CatalogItem]) -> Iterator[None]:
    """Reorder ``view`` (in place, as little as needed) so that every item comes after the
    items of the view it hangs under (its ParentIDs and business group). The view is built in
    an order that mostly holds already (the root, tree nodes by kind, devices, channels); this
    fixes what does not: a lower platform that lists cameras before their NVR item (type 118,
    a channel among channels), a virtual organisation under one with a higher ID, a tree node
    under a device. A loop in the tree is cut where it closes. A generator like
    :meth:`SharedView._build`: it pauses every few thousand items."""
    pos = {item.device_id: n for n, item in enumerate(view)}
    # Only ParentIDs need checking: a business group (215) sorts before everything that can
    # name it as its group (virtual organisations, devices, channels). The channels of one
    # device mostly share one ParentID string: each string is looked up once.
    furthest: dict[str, int] = {}  # a ParentID string -> the position of its last parent
    late = False
    for n, item in enumerate(view):
        if n % _CHUNK == _CHUNK - 1:
            yield
        parent = item.parent_id
        if not parent:
            continue
        last = furthest.get(parent)
        if last is None:
            last = furthest[parent] = max(pos.get(p, -1) for p in parent.split("/"))
        if last > n:
            late = True
            break
    if not late:
        return
    done = [False] * len(view)
    ordered: list[CatalogItem] = []
    for first in range(len(view)):
        if first % _CHUNK == _CHUNK - 1:
            yield
        if done[first]:
            continue
        # Depth first over parents that come later (iterative: a deep tree is no recursion).
        stack = [first]
        on_stack = {first}
        while stack:
            top = stack[-1]
            for k in _parent_positions(view[top], pos):
                if not done[k] and k not in on_stack:
                    stack.append(k)
                    on_stack.add(k)
                    break
            else:
                stack.pop()
                on_stack.discard(top)
                done[top] = True
                ordered.append(view[top])
    view[:] = ordered


def _parent_positions(item: CatalogItem, pos: dict[str, int]) -> Iterator[int]:
    """Positions in the view of what ``item`` hangs under."""
    for p in item.parent_ids:
        k = pos.get(p)
        if k is not None:
            yield k
    group = item.group_id
    if group:
        k = pos.get(group)
        if k is not None:
            yield k
