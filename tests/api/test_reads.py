"""The read side through HTTP with simulated NVRs: devices, channels, the tree, alarms,
statistics and their history (issue 16)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from fastapi import FastAPI

from conformance.peers.device import SimDevice
from gateway.api.server import HttpServer
from gateway.api.stats import StatsSampler, sampler_of
from gateway.manscdp import CatalogItem
from tests.api.conftest import Api
from tests.conftest import sim, wait_for

pytestmark = pytest.mark.timeout(60)

NVR1 = "34020000001180000001"
NVR2 = "34020000001180000002"
NEVER = "34020000001180000009"  # has an account, never registers
FAST = {"response_timeout": 3.0, "idle_timeout": 0.5}


async def nvr(api: Api, ep: Any, device_id: str, **kw: Any) -> SimDevice:
    dev = sim(ep, api.gw, device_id, **kw)
    dev.install()
    assert (await dev.register()).status == 200
    registered = api.gw.registrar.devices[device_id]
    await wait_for(lambda: registered.synced_at > 0, 20, f"sync of {device_id}")
    return dev


async def setup(api: Api, ep: Any) -> tuple[str, SimDevice, SimDevice]:
    """A unit "No. 3 Middle School" with NVR1 (3 channels, business group and two virtual
    organisations) and NEVER; NVR2 (5 channels) in no unit."""
    d = api.gw.directory
    unit = d.add_unit("No. 3 Middle School", kind="school")
    d.add_account(NVR1, password="12345678", name="Gate NVR", unit_id=unit.id)
    d.add_account(NEVER, password="12345678", name="Library NVR", unit_id=unit.id)
    one = await nvr(api, ep, NVR1, channel_count=3, with_groups=True)
    two = await nvr(api, ep, NVR2, channel_count=5)
    return unit.id, one, two


async def get(api: Api, path: str, **params: Any) -> Any:
    r = await api.viewer.get(f"/api/v1{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_devices_list_paging_filters_search_and_detail(start_api, device_endpoint) -> None:
    api: Api = await start_api(downlink=FAST)
    unit_id, one, two = await setup(api, device_endpoint)

    everything = await get(api, "/devices")
    assert everything["total"] == 3
    assert [d["id"] for d in everything["items"]] == [NVR1, NVR2, NEVER]
    first = everything["items"][0]
    assert first["name"] == "Gate NVR" and first["online"] is True
    assert first["unit"] == {"id": unit_id, "name": "No. 3 Middle School"}
    assert first["manufacturer"] == "SimVision" and first["transport"] == "udp"
    assert first["channels"] == {"total": 3, "online": 3}
    assert first["host"] == "127.0.0.1" and first["expires_at"] > first["registered_at"]
    assert everything["items"][1]["unit"] is None
    assert everything["items"][1]["channels"] == {"total": 5, "online": 5}
    assert everything["items"][2]["online"] is False
    assert everything["items"][2]["last_keepalive"] is None

    page = await get(api, "/devices", offset=1, limit=1)
    assert page["total"] == 3 and [d["id"] for d in page["items"]] == [NVR2]
    assert (await get(api, "/devices", offset=5))["items"] == []
    by_name = await get(api, "/devices", q="library")
    assert [d["id"] for d in by_name["items"]] == [NEVER]
    by_id = await get(api, "/devices", q="0000002")
    assert [d["id"] for d in by_id["items"]] == [NVR2]
    in_unit = await get(api, "/devices", unit=unit_id)
    assert [d["id"] for d in in_unit["items"]] == [NVR1, NEVER]
    loose = await get(api, "/devices", unit="_unassigned")
    assert [d["id"] for d in loose["items"]] == [NVR2]
    offline = await get(api, "/devices", online="false")
    assert [d["id"] for d in offline["items"]] == [NEVER]
    online_in_unit = await get(api, "/devices", online="true", unit=unit_id)
    assert [d["id"] for d in online_in_unit["items"]] == [NVR1]

    bad = await api.viewer.get("/api/v1/devices", params={"limit": 501})
    assert bad.status_code == 422 and bad.json()["field"] == "limit"
    nounit = await api.viewer.get("/api/v1/devices", params={"unit": "nope"})
    assert nounit.status_code == 404 and nounit.json()["field"] == "unit"

    detail = await get(api, f"/devices/{NVR1}")
    assert detail["account"] == {"enabled": True}
    assert detail["user_agent"] == one.user_agent
    assert detail["quirks"] == {}
    api.gw.quirks.note(NVR1, "no_parent_id", 2)
    assert (await get(api, f"/devices/{NVR1}"))["quirks"] == {"no_parent_id": 2}
    assert (await get(api, f"/devices/{NVR2}"))["account"] is None
    missing = await api.viewer.get("/api/v1/devices/34020000001180000077")
    assert missing.status_code == 404 and "34020000001180000077" in missing.json()["error"]
    assert (await api.anonymous.get("/api/v1/devices")).status_code == 401

    # The NVR goes away: the lists follow (the views are rebuilt from the change events).
    await two.unregister()
    await wait_for(lambda: not api.gw.registrar.devices[NVR2].online, 5, "NVR2 offline")
    offline = await get(api, "/devices", online="false")
    assert [d["id"] for d in offline["items"]] == [NVR2, NEVER]
    assert offline["items"][0]["channels"] == {"total": 5, "online": 0}


async def test_channels_lists_and_search(start_api, device_endpoint) -> None:
    api: Api = await start_api(downlink=FAST)
    _, one, two = await setup(api, device_endpoint)
    mine = await get(api, f"/devices/{NVR2}/channels")
    assert mine["total"] == 5
    assert [c["id"] for c in mine["items"]] == sorted(two.channel_ids())
    c = mine["items"][0]
    assert c["device_id"] == NVR2 and c["online"] is True and c["status"] == "ON"
    assert c["name"] == "通道1" and c["manufacturer"] == "SimVision"
    assert c["longitude"] is not None
    page = await get(api, f"/devices/{NVR2}/channels", offset=3, limit=10)
    assert [c["id"] for c in page["items"]] == sorted(two.channel_ids())[3:]
    named = await get(api, f"/devices/{NVR2}/channels", q="通道4")
    assert [c["id"] for c in named["items"]] == [two.channel_id(4)]

    every = await get(api, "/channels")
    # Channels only (not the business group and the organisations), grouped by device.
    assert every["total"] == 8
    expected = sorted(one.channel_ids()) + sorted(two.channel_ids())
    assert [c["id"] for c in every["items"]] == expected
    across = await get(api, "/channels", offset=2, limit=2)
    assert [c["id"] for c in across["items"]] == expected[2:4]
    prefix = two.channel_id(2)[:-1]
    hits = await get(api, "/channels", q=prefix)
    assert {c["id"] for c in hits["items"]} == {i for i in expected if i.startswith(prefix)}
    assert hits["total"] == len(hits["items"]) > 0
    only = await get(api, "/channels", device=NVR1, q="通道")
    assert only["total"] == 3
    none = await get(api, "/channels", q="no such camera")
    assert none == {"total": 0, "items": []}
    assert (await get(api, f"/devices/{NEVER}/channels")) == {"total": 0, "items": []}


async def test_tree_levels_and_counts(start_api, device_endpoint) -> None:
    api: Api = await start_api(downlink=FAST)
    unit_id, one, two = await setup(api, device_endpoint)
    root = await get(api, "/tree")
    assert [(n["id"], n["kind"]) for n in root["items"]] == [
        (unit_id, "unit"),
        ("_unassigned", "unit"),
    ]
    school = root["items"][0]
    assert school["name"] == "No. 3 Middle School" and school["has_children"] is True
    assert school["counts"] == {"total": 3, "online": 3}
    assert school["devices"] == {"total": 2, "online": 1}
    assert root["items"][1]["counts"] == {"total": 5, "online": 5}

    devices = await get(api, "/tree", parent=unit_id)
    assert [(n["id"], n["kind"], n["online"]) for n in devices["items"]] == [
        (NVR1, "device", True),
        (NEVER, "device", False),
    ]
    assert devices["items"][0]["has_children"] is True
    assert devices["items"][1]["has_children"] is False
    assert (await get(api, "/tree", parent=NEVER)) == {"total": 0, "items": []}

    bg, vo1, vo2 = one.group_ids()
    top = await get(api, "/tree", parent=NVR1)
    assert [(n["id"], n["kind"]) for n in top["items"]] == [(bg, "business_group")]
    assert top["items"][0]["counts"] == {"total": 3, "online": 3}
    under_bg = await get(api, "/tree", parent=bg)
    assert [(n["id"], n["kind"]) for n in under_bg["items"]] == [(vo1, "virtual_org")]
    under_vo1 = await get(api, "/tree", parent=vo1, device=NVR1)
    # Odd channels hang under organisation 1, even ones under organisation 2 (inside 1).
    assert [n["id"] for n in under_vo1["items"]] == sorted(
        [vo2, one.channel_id(1), one.channel_id(3)]
    )
    kinds = {n["id"]: n for n in under_vo1["items"]}
    assert kinds[vo2]["kind"] == "virtual_org" and kinds[vo2]["has_children"] is True
    assert kinds[vo2]["counts"] == {"total": 1, "online": 1}
    assert kinds[one.channel_id(1)]["kind"] == "channel"
    assert kinds[one.channel_id(1)]["has_children"] is False
    assert kinds[one.channel_id(1)]["online"] is True
    flat = await get(api, "/tree", parent=NVR2, limit=2, offset=1)
    assert flat["total"] == 5 and [n["id"] for n in flat["items"]] == sorted(two.channel_ids())[1:3]
    unknown = await api.viewer.get("/api/v1/tree", params={"parent": "34020000002160099999"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "parent"


async def test_tree_survives_a_parent_cycle(api: Api) -> None:
    """Two organisations naming each other as parent: counted once, no endless walk."""
    owner = "34020000001180000005"
    a, b = "34020000002160000001", "34020000002160000002"
    cam = "34020000001310000001"
    api.gw.catalog.apply_sync(
        owner,
        [
            CatalogItem(device_id=a, name="A", parent_id=b),
            CatalogItem(device_id=b, name="B", parent_id=a),
            CatalogItem(device_id=cam, name="cam", parent_id=a, status="ON"),
        ],
        partial=False,
    )
    top = await get(api, "/tree", parent=owner)
    assert top["total"] == 0  # everything hangs under something it reported
    under_a = await get(api, "/tree", parent=a)
    assert {n["id"] for n in under_a["items"]} == {b, cam}
    counts = {n["id"]: n["counts"]["total"] for n in under_a["items"]}
    assert counts[cam] == 1 and counts[b] <= 1  # the cycle is not walked round and round
    under_b = await get(api, "/tree", parent=b)
    assert [n["id"] for n in under_b["items"]] == [a]


async def test_alarms_newest_first_filtered_by_device(start_api, device_endpoint) -> None:
    api: Api = await start_api(downlink=FAST)
    _, one, two = await setup(api, device_endpoint)
    assert (await one.send_alarm(description="door")).status == 200
    assert (await two.send_alarm(priority=2, description="motion")).status == 200
    assert (await two.send_alarm(priority=3, description="smoke")).status == 200
    await api.gw.store.flush()
    every = await get(api, "/alarms")
    assert every["total"] == 3
    assert [a["description"] for a in every["items"]] == ["smoke", "motion", "door"]
    mine = await get(api, "/alarms", device=NVR2, limit=1)
    assert mine["total"] == 2 and mine["items"][0]["priority"] == 3
    item = mine["items"][0]
    assert item["device_id"] == NVR2 and item["channel_id"] == two.channel_id(1)
    assert item["received_at"] > 0 and item["time"]


async def test_stats_now_and_history_survive_a_restart(start_api, device_endpoint) -> None:
    api: Api = await start_api(downlink=FAST)
    unit_id, _, two = await setup(api, device_endpoint)
    now = await get(api, "/stats")
    assert now["devices"] == {"total": 3, "online": 2}
    assert now["channels"] == {"total": 8, "online": 8}
    assert now["sessions"] == {"active": 0}
    units = {u["id"]: u for u in now["units"]}
    assert units[unit_id]["devices"] == {"total": 2, "online": 1}
    assert units[unit_id]["channels"] == {"total": 3, "online": 3}
    assert units[unit_id]["online_rate"] == 1.0
    assert units["_unassigned"]["channels"]["total"] == 5

    assert api.gw.api is not None
    sampler = api.gw.api.stats
    point = sampler.sample()
    assert point[1:] == (2, 3, 8, 8)
    history = await get(api, "/stats/history", hours=1)
    assert history["points"][-1] == {
        "t": point[0],
        "devices_online": 2,
        "devices_total": 3,
        "channels_online": 8,
        "channels_total": 8,
    }
    bad = await api.viewer.get("/api/v1/stats/history", params={"hours": 100})
    assert bad.status_code == 422 and bad.json()["field"] == "hours"
    # The ring is read back from the store by a new sampler (as after a restart).
    await api.gw.store.flush()
    again = StatsSampler(api.gw.api.ctx)
    again.load()
    assert list(again.points)[-1] == point

    # The counts are kept between changes and follow them.
    await two.unregister()
    await wait_for(lambda: not api.gw.registrar.devices[NVR2].online, 5, "NVR2 offline")
    after = await get(api, "/stats")
    assert after["devices"] == {"total": 3, "online": 1}
    assert after["channels"] == {"total": 8, "online": 3}
    empty = api.gw.directory.add_unit("Empty")
    assert empty.id in {u["id"] for u in (await get(api, "/stats"))["units"]}
    assert empty.id in {n["id"] for n in (await get(api, "/tree"))["items"]}


async def test_stats_ring_is_bounded_and_persisted_per_hour(api: Api) -> None:
    assert api.gw.api is not None
    ctx = api.gw.api.ctx
    # The gateway's own sampler (its first point comes a second after the start) would sample
    # on the fake clock below while the store flushes, and overwrite the last hour's record.
    await sampler_of(ctx).close()
    clock = [1_800_000_000.0]
    ctx.clock = lambda: clock[0]
    sampler = StatsSampler(ctx)
    for _ in range(26 * 60):  # 26 hours of minutes
        sampler.sample()
        clock[0] += 60
    assert len(sampler.points) == 24 * 60
    await api.gw.store.flush()
    hours = ctx.store.load_records("stats")
    # At most the hours of the ring (and the one it is entering), each at most 60 points.
    assert len(hours) <= 26 and all(len(d["points"]) <= 60 for _, d in hours)
    again = StatsSampler(ctx)
    again.load()
    assert list(again.points) == list(sampler.points)


def test_http_connections_do_not_wait_for_a_delayed_ack() -> None:
    """On asyncio's own loop (uvloop sets it by itself) each accepted connection has
    TCP_NODELAY only when the listening socket says TCP: else a response written in two parts
    (head, then body) waits ~40 ms for the client's delayed ACK."""

    async def main() -> int:
        server = HttpServer(FastAPI(), "127.0.0.1", 0)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            assert server._server is not None
            conns = list(server._server.server_state.connections)
            assert conns
            sock = conns[0].transport.get_extra_info("socket")  # type: ignore[attr-defined]
            nodelay = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
            return nodelay
        finally:
            await server.close()

    loop = asyncio.SelectorEventLoop()
    try:
        assert loop.run_until_complete(main()) != 0
    finally:
        loop.close()


async def test_device_list_follows_account_changes_of_the_same_count(api: Api) -> None:
    """One account removed and another added between two pages: the cached, sorted device
    list is rebuilt (its key is not only the number of devices)."""
    d = api.gw.directory
    d.add_account(NVR1, name="first")
    assert [x["id"] for x in (await get(api, "/devices"))["items"]] == [NVR1]
    d.remove_account(NVR1)
    d.add_account(NVR2, name="second")
    assert [x["id"] for x in (await get(api, "/devices"))["items"]] == [NVR2]


async def test_views_warm_up_a_few_devices_per_turn(api: Api) -> None:
    """After a start the views are built by the sampler a few devices at a time, and what is
    built is what a request would have built."""
    from gateway.api._views import Views

    for n in range(1, 6):
        owner = f"3402000000118000000{n}"
        items = [
            CatalogItem(device_id=f"340200000013100{n:02d}{c:03d}", name=f"cam {c}", status="ON")
            for c in range(1, 4)
        ]
        api.gw.catalog.apply_sync(owner, items, partial=False)
    assert api.gw.api is not None
    views = Views.of(api.gw.api.ctx)
    views._views.clear()
    assert await views.warm(batch=2) == 5
    assert await views.warm() == 0  # nothing stale
    assert views.counts("34020000001180000003") == (3, 3)
    assert (await get(api, "/channels"))["total"] == 15
