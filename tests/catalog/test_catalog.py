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
