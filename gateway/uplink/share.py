"""What one upper platform sees of the gateway's catalog, in that upper's IDs.

Reference §7.2 and 2022 Annex H. ``share`` picks the channels: ``all``, or a list of IDs each
naming a device (all it reported) or one channel. The upper then sees, in this order: the
gateway itself (a type 200 system item, without ParentID: it is the root), the tree nodes the
shared channels hang under (civil regions, business groups 215, virtual organisations 216 with
their own ancestors), the devices that own shared channels (NVRs, built from what the registrar
and DeviceInfo know), and the channels. Every ID goes through the upper's :class:`IdMap`, and
every ``ParentID`` is rewritten so that the tree is whole from the upper's side: a parent the
upper cannot see is dropped, and an item left without one hangs under the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import replace

from gateway.catalog import Catalog
from gateway.config import Config, UpperPlatform
from gateway.manscdp.gbid import item_kind
from gateway.manscdp.messages import CatalogItem
from gateway.model import Device
from gateway.uplink.idmap import IdMap

TREE_KINDS = frozenset({"region", "business_group", "virtual_org", "system"})
_CHUNK = 5000
_ORDER = {"system": 0, "region": 1, "business_group": 2, "virtual_org": 3, "device": 4}


class SharedView:
    def __init__(
        self,
        upper: UpperPlatform,
        config: Config,
        catalog: Catalog,
        devices: dict[str, Device],
        idmap: IdMap,
    ) -> None:
        self.upper = upper
        self.gateway = config.gateway
        self.catalog = catalog
        self.devices = devices
        self.idmap = idmap
        self.share_all = upper.share == "all"
        self.shared: frozenset[str] = (
            frozenset() if upper.share == "all" else frozenset(upper.share)
        )

    # -- visibility -------------------------------------------------------------------------
    def channel_visible(self, owner: str, item_id: str) -> bool:
        """May this upper see a channel (or device item) ``item_id`` reported by ``owner``?"""
        return self.share_all or owner in self.shared or item_id in self.shared

    def device_visible(self, device_id: str) -> bool:
        """May this upper see a registered device (it shares the device or one channel of it)?"""
        if self.share_all or device_id in self.shared:
            return True
        return any(self.catalog.owner_of(i) == device_id for i in self.shared)

    def resolve(self, upper_item: str) -> tuple[str, str] | None:
        """(owner device, local ID) of an ID the upper used, when this upper may see it."""
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
            parent_id=self.gateway.id,
            register_way=1,
            secrecy=0,
            status="ON" if dev.online else "OFF",
        )

    def translate(self, owner: str, item: CatalogItem) -> CatalogItem:
        """A stored item in the upper's IDs, with ParentID and the business group rewritten."""
        kind = item_kind(item.device_id)
        gw = self.gateway.id
        parents: list[str] = []
        for p in item.parent_ids:
            if self._parent_seen(owner, p):
                parents.append(self.idmap.to_upper(p))
        if kind == "business_group":
            parents = [gw]  # its owning system, from the upper's side: the gateway
        elif not parents and kind != "virtual_org" and kind != "region":
            parents = [gw]
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

    def _parent_seen(self, owner: str, parent: str) -> bool:
        """Is ``parent`` something this upper sees: the reporting device, another shared
        device, or a stored tree node?"""
        if parent == owner or (parent in self.devices and self.device_visible(parent)):
            return True
        return item_kind(parent) in TREE_KINDS and self.catalog.get(parent) is not None

    def _node(self, local: str) -> str | None:
        return self.idmap.to_upper(local) if self.catalog.get(local) is not None else None

    # -- the whole view ---------------------------------------------------------------------
    def build(self, target: str | None = None) -> list[CatalogItem]:
        """The shared catalog in the upper's IDs, parents before children. ``target`` (an ID
        the upper used, other than the gateway's): only that node and what hangs under it."""
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
        view: list[CatalogItem] = [self.system_item()]
        tree = sorted(
            (self.translate(owner, node) for owner, node in nodes),
            key=lambda i: (_ORDER.get(item_kind(i.device_id), 5), i.device_id),
        )
        view.extend(tree)
        reported = {item.device_id for _, item in channels}
        for owner in owners:
            dev = self.devices.get(owner)
            if dev is not None and owner not in reported:
                view.append(self.device_item(dev))
        for n, (owner, item) in enumerate(channels):
            if n % _CHUNK == _CHUNK - 1:
                yield
            view.append(self.translate(owner, item))
        if target is not None and target != self.gateway.id:
            view = list(_subtree(view, target))
        out.extend(view)

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


def _subtree(items: Iterable[CatalogItem], target: str) -> Iterator[CatalogItem]:
    """``target`` and everything whose ParentID chain or business group reaches it."""
    members = {target}
    chosen: list[CatalogItem] = []
    pending = list(items)
    changed = True
    while changed:
        changed = False
        rest = []
        for item in pending:
            if (
                item.device_id in members
                or members.intersection(item.parent_ids)
                or (item.group_id in members)
            ):
                members.add(item.device_id)
                chosen.append(item)
                changed = True
            else:
                rest.append(item)
        pending = rest
    yield from chosen
