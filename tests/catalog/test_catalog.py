"""The catalog: diffs on re-sync, NOTIFY events, status following the device, and storage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gateway.catalog import Catalog
from gateway.events import CatalogChange, EventBus
from gateway.manscdp import CatalogInfo, CatalogItem
from gateway.metrics import Metrics
from gateway.store import MemoryStore, SqliteStore, read_catalog

GW = "34020000002000000001"
NVR = "34020000001180000001"


def cam(n: int, **kw: object) -> CatalogItem:
    fields: dict[str, object] = {
        "device_id": f"340200000013100000{n:02d}",
        "name": f"通道{n}",
        "manufacturer": "Hikvision",
        "parent_id": NVR,
        "status": "ON",
    }
    fields.update(kw)
    return CatalogItem(**fields)  # type: ignore[arg-type]


def make() -> tuple[Catalog, list[CatalogChange], MemoryStore]:
    store = MemoryStore()
    events = EventBus()
    seen: list[CatalogChange] = []
    events.subscribe(CatalogChange, seen.append)
    return Catalog(store=store, events=events, metrics=Metrics(), gateway_id=GW), seen, store


def test_first_sync_adds_everything_and_resync_is_a_diff() -> None:
    catalog, seen, store = make()
    diff = catalog.apply_sync(NVR, [cam(1), cam(2), cam(3)], partial=False)
    assert (diff.added, diff.changed, diff.removed, diff.total) == (3, 0, 0, 3)
    assert [(c.event, c.item_id, c.before) for c in seen] == [
        ("ADD", cam(n).device_id, None) for n in (1, 2, 3)
    ]
    seen.clear()
    renamed = cam(2, name="北门")
    diff = catalog.apply_sync(NVR, [cam(1), renamed, cam(4)], partial=False)
    assert (diff.added, diff.changed, diff.removed, diff.total) == (1, 1, 1, 3)
    by_event = {c.event: c for c in seen}
    assert by_event["UPDATE"].before == cam(2) and by_event["UPDATE"].after == renamed
    assert by_event["DEL"].item_id == cam(3).device_id and by_event["DEL"].after is None
    assert by_event["ADD"].item_id == cam(4).device_id
    assert len(seen) == 3  # the unchanged channel 1 makes no event
    assert (NVR, cam(3).device_id) not in store.items
    assert store.items[(NVR, cam(2).device_id)].name == "北门"


def test_status_only_change_is_on_or_off_and_partial_sync_removes_nothing() -> None:
    catalog, seen, _ = make()
    catalog.apply_sync(NVR, [cam(1), cam(2)], partial=False)
    seen.clear()
    diff = catalog.apply_sync(NVR, [cam(1, status="OFF")], partial=True)
    assert (diff.changed, diff.removed, diff.total) == (1, 0, 2)
    assert [(c.event, c.item_id) for c in seen] == [("OFF", cam(1).device_id)]


def test_parent_id_naming_the_gateway_is_dropped() -> None:
    catalog, _, _ = make()
    catalog.apply_sync(
        NVR,
        [cam(1, parent_id=GW), cam(2, parent_id=f"{GW}/34020000002160000001")],
        partial=False,
    )
    one, two = catalog.get(cam(1).device_id), catalog.get(cam(2).device_id)
    assert one is not None and one.parent_id is None
    assert two is not None and two.parent_ids == ("34020000002160000001",)


def test_notify_events_update_the_store_and_emit_before_and_after() -> None:
    catalog, seen, store = make()
    catalog.apply_sync(NVR, [cam(1), cam(2), cam(3)], partial=False)
    seen.clear()
    items = [
        CatalogItem(device_id=cam(1).device_id, event="OFF"),
        CatalogItem(device_id=cam(2).device_id, event="VLOST"),
        CatalogItem(device_id=cam(3).device_id, event="DEL"),
        cam(5, event="ADD"),
        cam(1, event="UPDATE", name="改名", status="OFF"),
        CatalogItem(device_id="34020000001310000099", event="ON"),  # unknown: ignored
        CatalogItem(device_id=cam(2).device_id, event="BOGUS"),
    ]
    assert catalog.apply_notify(NVR, items) == 5
    assert [c.event for c in seen] == ["OFF", "VLOST", "DEL", "ADD", "UPDATE"]
    assert seen[0].before is not None and seen[0].before.status == "ON"
    assert seen[0].after is not None and seen[0].after.status == "OFF"
    assert seen[1].after is not None and seen[1].after.status == "OFF"
    added = store.items[(NVR, cam(5).device_id)]
    assert added.event is None and added.name == "通道5"  # the NOTIFY's Event is not stored
    assert store.items[(NVR, cam(1).device_id)].name == "改名"
    assert (NVR, cam(3).device_id) not in store.items


def test_channels_follow_the_device_offline_but_tree_nodes_do_not() -> None:
    catalog, seen, _ = make()
    group = CatalogItem(device_id="34020000002150000001", name="分组", parent_id=GW)
    catalog.apply_sync(NVR, [cam(1), cam(2, status="OFF"), group], partial=False)
    seen.clear()
    assert catalog.set_device_status(NVR, "OFF") == 1
    assert [(c.event, c.item_id) for c in seen] == [("OFF", cam(1).device_id)]
    assert all(i.status == "OFF" for i in catalog.items_of(NVR) if i.device_id != group.device_id)


def test_same_tree_node_from_two_devices_is_kept_per_device() -> None:
    catalog, _, _ = make()
    region = CatalogItem(device_id="340200", name="芜湖")
    other = "34020000001180000002"
    catalog.apply_sync(NVR, [region, cam(1)], partial=False)
    catalog.apply_sync(other, [region], partial=False)
    catalog.apply_sync(other, [], partial=False)
    assert [i.device_id for i in catalog.items_of(NVR)] == ["340200", cam(1).device_id]


# Issue 13 item 7: an item is taken only with a DeviceID that is an ID (reference §1.2, §1.4):
# 20 ASCII digits, or a civil-region code of 2, 4, 6 or 8 digits.
BAD_IDS = [
    "../../etc/passwd'\";--",
    "3402000000131000000",  # 19 digits
    "340200000013100000011",  # 21 digits
    "340200000013100001",  # 18: the 2016 "coding rule B", deleted in 2022
    "３４０２００００００１３１００００００１",  # full-width digits
    "3402000000131000000²",
    "34020000001310000001 ",
    "3402000000131000000a",
    "34020",  # 5 digits: no civil-region code
]


def test_items_without_a_valid_device_id_are_refused_and_the_others_kept() -> None:
    catalog, seen, store = make()
    catalog.apply_sync(NVR, [cam(1), cam(2)], partial=False)
    seen.clear()
    bad = [CatalogItem(device_id=i, name="x", parent_id=NVR) for i in BAD_IDS]
    region = CatalogItem(device_id="34", name="安徽省")
    diff = catalog.apply_sync(NVR, [cam(1), *bad, cam(3), region], partial=False)
    assert (diff.added, diff.removed, diff.refused, diff.total) == (2, 1, len(BAD_IDS), 3)
    assert {i.device_id for i in catalog.items_of(NVR)} == {
        cam(1).device_id,
        cam(3).device_id,
        "34",
    }
    assert {(o, i) for o, i in store.items} == {(NVR, i.device_id) for i in catalog.items_of(NVR)}
    assert not any(c.item_id in BAD_IDS for c in seen)
    assert catalog.metrics.get("catalog.bad_item_id") == len(BAD_IDS)
    # The same in a NOTIFY (or a catalog MESSAGE): the good items are applied.
    added = [CatalogItem(device_id=i, event="ADD", name="x") for i in BAD_IDS]
    assert catalog.apply_notify(NVR, [*added, cam(4, event="ADD")]) == 1
    assert catalog.get(cam(4).device_id) is not None
    assert not any(catalog.get(i) for i in BAD_IDS)
    assert catalog.metrics.get("catalog.bad_item_id") == 2 * len(BAD_IDS)


def test_odd_parent_and_group_ids_are_kept_as_sent() -> None:
    """Real devices fill ParentID and BusinessGroupID loosely: they only place an item in the
    tree, and an item is not refused for them."""
    catalog, _, _ = make()
    odd = cam(1, parent_id="0", business_group_id="")
    nvr_tree = cam(2, parent_id=f"{NVR}/34020000002160000001/")
    catalog.apply_sync(NVR, [odd, nvr_tree], partial=False)
    assert catalog.get(odd.device_id) == odd
    got = catalog.get(nvr_tree.device_id)
    assert got is not None and got.parent_ids == (NVR, "34020000002160000001")


async def test_an_older_database_with_a_bad_id_loads_without_it(tmp_path: Path) -> None:
    """An item stored before the ID check is skipped on load and counted, but stays in the
    store (an upgrade destroys no data); a name with control characters stored then is kept
    (the writer leaves them out)."""
    store = SqliteStore(tmp_path / "old.db")
    await store.start()
    raw = cam(2, name="通\x01道\x9b2")
    store.save_item(NVR, cam(1), 0.0)
    store.save_item(NVR, CatalogItem(device_id="../../etc/passwd'\";--", name="x"), 0.0)
    store.save_item(NVR, raw, 0.0)
    await store.close()
    again = SqliteStore(tmp_path / "old.db")
    catalog = Catalog(store=again, events=EventBus(), metrics=Metrics(), gateway_id=GW)
    catalog.load()
    await again.close()
    assert {i.device_id for i in catalog.items_of(NVR)} == {cam(1).device_id, cam(2).device_id}
    assert catalog.get(raw.device_id) == raw
    assert catalog.get("../../etc/passwd'\";--") is None
    assert catalog.metrics.get("catalog.load.skipped_bad_id") == 1
    assert catalog.metrics.get("catalog.bad_item_id") == 0  # not a refusal of a new item
    assert sorted(i.device_id for _, i in read_catalog(tmp_path / "old.db", NVR)) == sorted(
        [cam(1).device_id, cam(2).device_id, "../../etc/passwd'\";--"]
    )


async def test_sqlite_keeps_every_field_and_reloads(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    await store.start()
    events = EventBus()
    catalog = Catalog(store=store, events=events, metrics=Metrics(), gateway_id=GW)
    item = cam(
        1,
        owner="业主",
        civil_code="340200",
        address="北京路1号",
        parental=0,
        register_way=1,
        secrecy=0,
        ip_address="192.168.1.64",
        port=8000,
        longitude=117.2272,
        latitude=31.8206,
        business_group_id="34020000002150000001",
        info=CatalogInfo(ptz_type=1, download_speed="1/2/4", grassroots_code="000000"),
        extra=(("StreamNum", "<StreamNum>2</StreamNum>"),),
    )
    catalog.apply_sync(NVR, [item, cam(2)], partial=False)
    await store.close()
    rows = read_catalog(tmp_path / "c.db", NVR)
    assert [i for _, i in rows] == [item, cam(2)]
    assert rows[0][1].extra_text("StreamNum") == "2"
    again = SqliteStore(tmp_path / "c.db")
    reloaded = Catalog(store=again, events=EventBus(), metrics=Metrics(), gateway_id=GW)
    reloaded.load()
    await again.close()
    assert reloaded.get(item.device_id) == item
    assert reloaded.owner_of(cam(2).device_id) == NVR
    assert replace(item, name="x") != reloaded.get(item.device_id)


def test_the_device_item_is_a_parent_exactly_while_orphans_hang_under_it() -> None:
    """Items without ParentID hang under their device, which says Parental 1 while any do and
    what it reported itself once none do (after a sync without them, or a DEL)."""
    catalog, seen, _ = make()
    own = CatalogItem(device_id=NVR, name="NVR", parental=0, status="ON")
    orphan = replace(cam(1), parent_id=None)
    catalog.apply_sync(NVR, [own, orphan], partial=False)
    assert catalog.get(NVR).parental == 1  # type: ignore[union-attr]
    assert [i.device_id for i in catalog.children(NVR)] == [orphan.device_id]
    catalog.apply_sync(NVR, [own], partial=False)
    assert catalog.get(NVR).parental == 0  # type: ignore[union-attr]
    assert catalog.children(NVR) == []
    catalog.apply_sync(NVR, [own, orphan], partial=False)
    assert catalog.get(NVR).parental == 1  # type: ignore[union-attr]
    seen.clear()
    catalog.apply_sync(NVR, [own, orphan], partial=False)
    assert seen == []  # the same sync again: no churn
    catalog.apply_notify(NVR, [CatalogItem(device_id=orphan.device_id, event="DEL")])
    assert catalog.get(NVR).parental == 0  # type: ignore[union-attr]
