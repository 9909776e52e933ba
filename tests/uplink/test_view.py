"""What an upper sees: ID recoding and the shared tree, without sockets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.catalog import Catalog
from gateway.events import EventBus
from gateway.manscdp import CatalogInfo, CatalogItem, is_gb_id, item_kind
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.settings import Config, UpperPlatform, config_from_dict
from gateway.store import MemoryStore, SqliteStore, read_id_map
from gateway.uplink import IdMap, SharedView

GW = "34020000002000000001"
UP = "34010000002000000001"
NVR1, NVR2 = "34020000001180000001", "34020000001180000002"
GROUP, ORG = "34020000002150000001", "34020000002160000001"


def upper(**kw: object) -> UpperPlatform:
    fields: dict[str, object] = {"id": UP, "domain": "3401000000", "host": "10.0.0.1"}
    fields.update({"password": "x"})
    fields.update(kw)
    return UpperPlatform.model_validate(fields)


def cam(owner: str, n: int, **kw: object) -> CatalogItem:
    fields: dict[str, object] = {
        "device_id": f"{owner[:10]}131{owner[-3:]}{n:04d}",
        "name": f"通道{n}",
        "parent_id": owner,
        "civil_code": "340200",
        "status": "ON",
    }
    fields.update(kw)
    return CatalogItem(**fields)  # type: ignore[arg-type]


def world() -> tuple[Config, Catalog, dict[str, Device]]:
    config = config_from_dict({"gateway": {"name": "网关", "civil_code": "340200"}})
    catalog = Catalog(store=MemoryStore(), events=EventBus(), metrics=Metrics(), gateway_id=GW)
    region = CatalogItem(device_id="340200", name="芜湖市")
    group = CatalogItem(device_id=GROUP, name="交通", parent_id=NVR1)
    org = CatalogItem(device_id=ORG, name="路口", info=CatalogInfo(business_group_id=GROUP))
    catalog.apply_sync(
        NVR1,
        [region, group, org, cam(NVR1, 1), cam(NVR1, 2, parent_id=f"{NVR1}/{ORG}")],
        partial=False,
    )
    catalog.apply_sync(NVR2, [cam(NVR2, 1, status="OFF")], partial=False)
    devices = {
        NVR1: Device(NVR1, online=True, name="一号NVR", manufacturer="Hik"),
        NVR2: Device(NVR2, online=False, name="二号NVR"),
    }
    return config, catalog, devices


def view(**kw: object) -> tuple[SharedView, IdMap, MemoryStore]:
    config, catalog, devices = world()
    up = upper(**kw)
    store = MemoryStore()
    idmap = IdMap(up, store, GW)
    return SharedView(up, config.gateway, catalog, devices, idmap), idmap, store


def test_share_all_keeps_ids_and_builds_the_whole_tree_parents_first() -> None:
    v, _, _ = view()
    items = v.build()
    ids = [i.device_id for i in items]
    assert ids[0] == GW and items[0].parent_id is None  # the root: the gateway itself
    assert items[0].name == "网关" and items[0].civil_code == "340200"
    assert set(ids) == {
        GW, "340200", GROUP, ORG, NVR1, NVR2, cam(NVR1, 1).device_id, cam(NVR1, 2).device_id,
        cam(NVR2, 1).device_id,
    }  # fmt: skip
    order = [item_kind(i) for i in ids]
    assert order.index("channel") > order.index("device") > order.index("virtual_org")
    by_id = {i.device_id: i for i in items}
    assert by_id[NVR1].parent_id == GW and by_id[NVR1].status == "ON"
    assert by_id[NVR2].status == "OFF" and by_id[NVR2].name == "二号NVR"
    assert by_id[GROUP].parent_id == GW  # a business group hangs under the system
    assert by_id[ORG].info is not None and by_id[ORG].info.business_group_id == GROUP
    assert by_id[cam(NVR1, 2).device_id].parent_ids == (NVR1, ORG)


def test_share_list_by_device_or_channel_and_tree_nodes_only_when_needed() -> None:
    v, _, _ = view(share=(NVR2,))
    ids = {i.device_id for i in v.build()}
    assert ids == {GW, "340200", NVR2, cam(NVR2, 1).device_id}
    v, _, _ = view(share=(cam(NVR1, 2).device_id,))
    ids = {i.device_id for i in v.build()}
    assert ids == {GW, "340200", GROUP, ORG, NVR1, cam(NVR1, 2).device_id}
    assert v.resolve(cam(NVR1, 2).device_id) == (NVR1, cam(NVR1, 2).device_id)
    assert v.resolve(cam(NVR1, 1).device_id) is None  # not shared with this upper
    # The NVR shows as the channel's parent, but it is not shared itself: no TeleBoot for it.
    assert v.resolve(NVR1) is None and v.resolve(NVR2) is None
    v, _, _ = view(share=(NVR1,))
    assert v.resolve(NVR1) == (NVR1, NVR1)


def test_recode_gives_valid_ids_in_the_uppers_namespace_and_keeps_regions() -> None:
    v, idmap, store = view(id_policy="recode", civil_code="3401", industry_code="05")
    items = v.build()
    by_name = {i.name: i for i in items}
    channel = by_name["通道2"]
    assert is_gb_id(channel.device_id) and channel.device_id.startswith("3401000005131")
    assert by_name["芜湖市"].device_id == "340200"  # civil regions are never recoded
    assert items[0].device_id == GW
    nvr = by_name["一号NVR"]
    assert nvr.device_id.startswith("3401000005118")
    assert channel.parent_ids == (nvr.device_id, by_name["路口"].device_id)
    ids = [i.device_id for i in items]
    assert len(ids) == len(set(ids))
    assert idmap.to_local(channel.device_id) == cam(NVR1, 2).device_id
    assert v.resolve(channel.device_id) == (NVR1, cam(NVR1, 2).device_id)
    assert v.resolve(cam(NVR1, 2).device_id) is None  # the local ID means nothing upstairs
    # Built again: the same IDs, no new allocations.
    before = len(store.id_map)
    assert [i.device_id for i in v.build()] == ids and len(store.id_map) == before


async def test_recoded_ids_survive_a_restart_and_never_collide(tmp_path: Path) -> None:
    up = upper(id_policy="recode", civil_code="340100")
    store = SqliteStore(tmp_path / "m.db")
    await store.start()
    first = IdMap(up, store, GW)
    a = first.to_upper("34020000001310000001")
    b = first.to_upper("34020000001310000002")
    second_upper = upper(id="34010000002000000002", id_policy="recode", civil_code="340100")
    other = IdMap(second_upper, store, GW)
    assert other.to_upper("34020000001310000002") == a  # each upper has its own namespace
    await store.close()
    assert a != b and a[:14] == b[:14] == "34010000001310"
    again = SqliteStore(tmp_path / "m.db")
    second = IdMap(up, again, GW)
    second.load(again.load_id_map())
    assert second.to_upper("34020000001310000002") == b
    assert second.to_upper("34020000001310000001") == a
    c = second.to_upper("34020000001310000003")
    assert c not in (a, b)
    await again.close()
    rows = read_id_map(tmp_path / "m.db", UP)
    assert [(r[1], r[2]) for r in rows] == [
        ("34020000001310000001", a),
        ("34020000001310000002", b),
        ("34020000001310000003", c),
    ]


def test_recode_needs_a_civil_code() -> None:
    with pytest.raises(ValueError, match="civil_code"):
        upper(id_policy="recode")


def test_recode_never_hands_out_a_platforms_own_id() -> None:
    """A lower platform registered as a device (type 200) must not get the upper's ID."""
    up = upper(id_policy="recode", civil_code="340100")
    idmap = IdMap(up, MemoryStore(), GW)
    first = idmap.to_upper("34020000002000000009")
    assert first != UP and first == "34010000002000000002"


# -- a lower platform (type 200) registered as a device: its tree keeps its shape -------------
LOWER = "34020000002000000007"
LOWER_NVR = "34020000001189950001"
OTHER_NVR = "34020000001189950002"


def lower_cam(nvr: str, n: int) -> CatalogItem:
    return CatalogItem(
        device_id=f"{nvr[:10]}131996{nvr[-1]}{n:03d}",
        name=f"摄像机{nvr[-1]}-{n}",
        parent_id=nvr,
        civil_code="340200",
        status="ON",
    )


def lower_view(**kw: object) -> tuple[SharedView, IdMap]:
    """NVR 1's world plus a lower platform that reported two NVR items (ParentID the
    platform) with two cameras each (ParentID the NVR)."""
    config, catalog, devices = world()
    items: list[CatalogItem] = []
    for nvr in (LOWER_NVR, OTHER_NVR):
        items.append(CatalogItem(device_id=nvr, name=f"NVR{nvr[-1]}", parent_id=LOWER))
        items += [lower_cam(nvr, 1), lower_cam(nvr, 2)]
    catalog.apply_sync(LOWER, items, partial=False)
    devices[LOWER] = Device(LOWER, online=True, name="下级平台")
    up = upper(**kw)
    idmap = IdMap(up, MemoryStore(), GW)
    return SharedView(up, config.gateway, catalog, devices, idmap), idmap


def test_a_lower_platforms_cameras_stay_under_their_nvr_items() -> None:
    v, _ = lower_view()
    by_id = {i.device_id: i for i in v.build()}
    assert by_id[LOWER].parent_id == GW  # the registered platform hangs under the gateway
    assert by_id[LOWER_NVR].parent_id == LOWER
    assert by_id[lower_cam(LOWER_NVR, 2).device_id].parent_id == LOWER_NVR
    assert by_id[lower_cam(OTHER_NVR, 1).device_id].parent_id == OTHER_NVR
    # Shared by the platform's ID: the same shape.
    v, _ = lower_view(share=(LOWER,))
    by_id = {i.device_id: i for i in v.build()}
    assert by_id[lower_cam(LOWER_NVR, 1).device_id].parent_id == LOWER_NVR


def test_a_camera_shared_without_its_nvr_item_hangs_under_the_gateway() -> None:
    cam1 = lower_cam(LOWER_NVR, 1).device_id
    v, _ = lower_view(share=(cam1,))
    by_id = {i.device_id: i for i in v.build()}
    assert set(by_id) == {GW, "340200", LOWER, cam1}
    assert by_id[cam1].parent_id == GW  # the NVR item is not this upper's to see
    v, _ = lower_view(share=(cam1, LOWER_NVR))
    by_id = {i.device_id: i for i in v.build()}
    assert by_id[cam1].parent_id == LOWER_NVR


def test_recoded_parents_of_a_lower_platforms_tree_are_the_uppers_ids() -> None:
    v, idmap = lower_view(id_policy="recode", civil_code="3401", industry_code="05")
    items = v.build()
    by_local = {idmap.to_local(i.device_id): i for i in items}
    nvr = by_local[LOWER_NVR]
    assert nvr.device_id != LOWER_NVR and nvr.parent_id == idmap.to_upper(LOWER)
    assert by_local[lower_cam(LOWER_NVR, 1).device_id].parent_id == nvr.device_id


def test_what_an_id_covers_device_channel_and_tree_node() -> None:
    """One scope rule for subscriptions and catalog queries (SharedView.covers)."""
    v, idmap = lower_view()
    cam1, cam2 = cam(NVR1, 1).device_id, cam(NVR1, 2).device_id
    lcam = lower_cam(LOWER_NVR, 1).device_id
    assert v.covers(NVR1, NVR1, NVR1) and v.covers(NVR1, NVR1, cam1)  # a device: its channels
    assert not v.covers(NVR1, NVR2, cam(NVR2, 1).device_id)  # ...not another's
    assert v.covers(cam1, NVR1, cam1) and not v.covers(cam1, NVR1, cam2)  # a channel: itself
    assert not v.covers(cam1, NVR1, NVR1)
    assert v.covers(ORG, NVR1, cam2) and not v.covers(ORG, NVR1, cam1)  # a virtual org
    assert v.covers(GROUP, NVR1, cam2) and v.covers(GROUP, NVR1, ORG)  # ...its business group
    assert v.covers(LOWER_NVR, LOWER, lcam) and not v.covers(OTHER_NVR, LOWER, lcam)
    assert v.covers(LOWER, LOWER, lcam)
    # The catalog of a node, as a query or subscription for it sees it: the same rule.
    assert {i.device_id for i in v.build(LOWER_NVR)} == {
        LOWER_NVR, lcam, lower_cam(LOWER_NVR, 2).device_id,
    }  # fmt: skip
    assert {i.device_id for i in v.build(ORG)} == {ORG, cam2}
    assert {i.device_id for i in v.build(NVR2)} == {NVR2, cam(NVR2, 1).device_id}
    assert v.build("34020000001319999999") == []  # names nothing
    assert idmap.to_local(GW) == GW


# -- the catalog of one ID is a whole tree: what it names, and the nodes that hangs under -----
def assert_parents_first(items: list[CatalogItem]) -> None:
    """Every ParentID and business group that names an item of ``items`` names an earlier one."""
    ids = {i.device_id for i in items}
    seen: set[str] = set()
    for item in items:
        for parent in (*item.parent_ids, item.group_id):
            if parent in ids:
                assert parent in seen, f"{item.device_id} comes before its parent {parent}"
        seen.add(item.device_id)


def dangling(items: list[CatalogItem], root: str) -> set[str]:
    """Tree nodes named as ParentID or business group inside ``items`` but missing from them
    (the root's own parents and the gateway, the root of everything, aside)."""
    ids = {i.device_id for i in items}
    named = {
        parent
        for item in items
        if item.device_id != root
        for parent in (*item.parent_ids, item.group_id)
        if parent is not None
    }
    return {p for p in named - ids - {GW} if item_kind(p) not in ("device", "channel")}


def test_the_catalog_of_a_device_has_the_tree_nodes_its_channels_hang_under() -> None:
    """build(NVR1) answered cam2 with ParentID NVR1/ORG and no ORG: now ORG is there, and the
    business group ORG belongs to, parents first."""
    v, _, _ = view()
    cam1, cam2 = cam(NVR1, 1).device_id, cam(NVR1, 2).device_id
    items = v.build(NVR1)
    assert [i.device_id for i in items] == [GROUP, ORG, NVR1, cam1, cam2]
    assert dangling(items, NVR1) == set()
    assert_parents_first(items)
    by_id = {i.device_id: i for i in items}
    assert by_id[cam2].parent_ids == (NVR1, ORG)
    # Nothing above what was asked for: a node's or a channel's own parents stay outside.
    assert {i.device_id for i in v.build(ORG)} == {ORG, cam2}
    assert [i.device_id for i in v.build(cam2)] == [cam2]
    assert {i.device_id for i in v.build(GROUP)} == {GROUP, ORG, cam2}
    # In the upper's IDs the same, recoded.
    v, idmap, _ = view(id_policy="recode", civil_code="3401", industry_code="05")
    v.build()
    items = v.build(idmap.to_upper(NVR1))
    assert {idmap.to_local(i.device_id) for i in items} == {GROUP, ORG, NVR1, cam1, cam2}
    assert dangling(items, idmap.to_upper(NVR1)) == set()


def test_the_catalog_of_one_device_has_only_nodes_this_upper_sees() -> None:
    """Shared one channel outside the organisation: the organisation is not this upper's."""
    v, _, _ = view(share=(cam(NVR1, 1).device_id,))
    assert {i.device_id for i in v.build()} == {GW, "340200", NVR1, cam(NVR1, 1).device_id}
    assert {i.device_id for i in v.build(NVR1)} == {NVR1, cam(NVR1, 1).device_id}


def test_parents_come_first_whatever_order_the_devices_reported() -> None:
    """A lower platform lists its cameras before their NVR item (type 118, sorted among the
    channels) and an organisation under one with a higher ID; an NVR reports an organisation
    under itself (the device item comes after the tree nodes); two organisations name each
    other (a loop is cut, nothing is lost or repeated)."""
    config, catalog, devices = world()
    outer, inner = "34020000002160000009", "34020000002160000002"
    loop_a, loop_b = "34020000002160000007", "34020000002160000006"
    own_org = "34020000002160000005"
    lcam1 = replace(lower_cam(LOWER_NVR, 1), parent_id=f"{LOWER_NVR}/{inner}")
    lcam2 = replace(lower_cam(LOWER_NVR, 2), parent_id=loop_a)
    catalog.apply_sync(
        LOWER,
        [
            lcam1,
            lcam2,
            CatalogItem(device_id=LOWER_NVR, name="NVR1", parent_id=LOWER),
            CatalogItem(device_id=inner, name="内", parent_id=outer),
            CatalogItem(device_id=outer, name="外"),
            CatalogItem(device_id=loop_a, name="甲", parent_id=loop_b),
            CatalogItem(device_id=loop_b, name="乙", parent_id=loop_a),
        ],
        partial=False,
    )
    own = cam(NVR1, 3, parent_id=own_org)
    catalog.apply_notify(
        NVR1,
        [
            replace(own, event="ADD"),
            CatalogItem(device_id=own_org, name="本机", parent_id=NVR1, event="ADD"),
        ],
    )
    devices[LOWER] = Device(LOWER, online=True, name="下级平台")
    up = upper()
    v = SharedView(up, config.gateway, catalog, devices, IdMap(up, MemoryStore(), GW))
    items = v.build()
    ids = [i.device_id for i in items]
    assert len(ids) == len(set(ids)) and ids[0] == GW
    assert {outer, inner, loop_a, loop_b, own_org, LOWER_NVR, own.device_id} <= set(ids)
    assert_parents_first([i for i in items if i.device_id not in (loop_a, loop_b)])
    assert ids.index(LOWER_NVR) < ids.index(lcam1.device_id)
    assert ids.index(outer) < ids.index(inner) < ids.index(lcam1.device_id)
    assert ids.index(NVR1) < ids.index(own_org) < ids.index(own.device_id)
    # The same in the catalog of the lower platform alone.
    scoped = v.build(LOWER)
    assert_parents_first([i for i in scoped if i.device_id not in (loop_a, loop_b)])
    assert dangling(scoped, LOWER) == set()
