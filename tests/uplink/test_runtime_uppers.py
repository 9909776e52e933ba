"""Uppers changed while the gateway runs, what each is shared, and social units as virtual
organisations (type 216) in the tree an upper sees: simulated NVRs below, the simulated city
platform above, over real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from conformance.peers.platform import SimPlatform
from gateway.events import UpperOffline
from gateway.manscdp import CatalogItem, CatalogNotify
from gateway.settings import UpperPlatform
from gateway.store import MemoryStore
from gateway.uplink import IdMap, Share, SharedView, UpperError, UpperSession
from tests.conftest import wait_for
from tests.uplink.test_uplink import (
    GW,
    NVR1,
    NVR2,
    UP,
    gateway_with,
    nvr,
    online_at,
    platform,
    synced_nvr,
    upper_config,
)

pytestmark = pytest.mark.timeout(90)


def notified(p: SimPlatform) -> list[CatalogItem]:
    """Every item of every catalog NOTIFY the platform received, in order."""
    return [i for _, m in p.notifies if isinstance(m, CatalogNotify) for i in m.items]


def events(p: SimPlatform, *kinds: str) -> list[tuple[str, str]]:
    return [e for e in p.catalog_events if e[0] in kinds]


async def test_an_upper_added_at_run_time_registers_is_updated_and_removed_cleanly(
    upper_endpoint, start_gateway
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway)
    uplink = gw.uplink
    assert uplink.sessions == {}
    await uplink.add_upper(UpperPlatform.model_validate(upper_config(upper_endpoint)))
    await online_at(p)
    assert uplink.state_of(UP) == "registered"
    stored = dict(gw.store.load_records("upper"))
    assert stored[UP]["platform"]["host"] == "127.0.0.1"
    assert stored[UP]["share"] == {"all": True, "units": [], "devices": [], "channels": []}

    # A soft change (the name) keeps the registration as it is.
    link = uplink.sessions[UP].link
    await uplink.update_upper(UP, {"name": "市平台"})
    assert uplink.sessions[UP].link is link and link.upper.name == "市平台"

    # A new password: the old registration is ended first (Expires: 0), then a new one made.
    before = len(p.registers)
    await uplink.update_upper(UP, {"password": "abcdefgh"})
    unregister = [r for r in p.registers[before:] if r.get_header("Expires") == "0"]
    assert unregister, "the old registration was not ended"
    assert not p.lowers[GW].online
    p.password = "abcdefgh"
    await wait_for(lambda: uplink.state_of(UP) == "registered", 10, "registered anew")
    await online_at(p)
    assert uplink.sessions[UP].link is not link and uplink.sessions[UP].upper.password == (
        "abcdefgh"
    )

    # Removed: its subscription ends with a NOTIFY, its media end, it is unregistered.
    sub = await p.subscribe(GW, "Catalog")
    assert sub.active
    await wait_for(lambda: "Catalog" in uplink.sessions[UP].subs, 5, "subscribed")
    offline: list[UpperOffline] = []
    gw.events.subscribe(UpperOffline, offline.append)
    ended: list[str] = []
    end_upper = gw.media.end_upper

    def spy(upper_id: str, reason: str) -> Any:
        ended.append(upper_id)
        return end_upper(upper_id, reason)

    gw.media.end_upper = spy  # type: ignore[method-assign]
    gw_sub = uplink.sessions[UP].subs["Catalog"]
    await uplink.remove_upper(UP)
    assert not sub.active  # the terminating NOTIFY arrived
    term = [r for r, _ in p.notifies if "terminated" in (r.get_header("Subscription-State") or "")]
    assert term and "noresource" in (term[-1].get_header("Subscription-State") or "")
    await wait_for(lambda: not p.lowers[GW].online, 5, "unregistered")
    assert uplink.sessions == {} and uplink.platforms == {} and uplink.shares == {}
    assert gw_sub.timer is None and gw_sub.ended
    assert [e.upper_id for e in offline] == [UP] and ended == [UP]
    assert dict(gw.store.load_records("upper")) == {}


async def test_runtime_uppers_survive_a_restart_and_the_toml_seeds_only_once(
    upper_endpoint, start_gateway
) -> None:
    p = platform(upper_endpoint)
    seeded = upper_config(upper_endpoint, share=[NVR1])
    gw = await gateway_with(start_gateway, seeded)
    await online_at(p)
    assert gw.uplink.shares[UP] == Share(devices=(NVR1,))
    link = gw.uplink.sessions[UP].link
    await gw.uplink.update_upper(UP, {"keepalive_interval": 0.25})  # in place
    assert gw.uplink.sessions[UP].link is link and gw.uplink.shares[UP] == Share(devices=(NVR1,))
    other = upper_config(upper_endpoint, id="34010000002000000009", enabled=False)
    await gw.uplink.add_upper(UpperPlatform.model_validate(other))
    await gw.uplink.set_share(UP, Share(channels=("34020000001310000001",)))
    await gw.uplink.update_upper(UP, {"name": "renamed"})
    await gw.close()
    # The same store; the TOML's upper again: the store wins.
    gw2 = await gateway_with(start_gateway, seeded)
    assert set(gw2.uplink.platforms) == {UP, "34010000002000000009"}
    assert set(gw2.uplink.sessions) == {UP}  # the other is disabled
    assert gw2.uplink.state_of("34010000002000000009") == "disabled"
    assert gw2.uplink.platforms[UP].name == "renamed"
    assert gw2.uplink.shares[UP] == Share(channels=("34020000001310000001",))
    assert gw2.uplink.platforms[UP].password == "12345678"  # stored: digest needs it


async def test_a_share_change_reaches_a_subscribed_upper_as_add_and_del(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, share=[NVR1]))
    dev1 = nvr(device_endpoint, gw, NVR1, channel_count=2)
    dev2 = nvr(device_endpoint, gw, NVR2, channel_count=3)
    await synced_nvr(gw, dev1)
    await synced_nvr(gw, dev2)
    await online_at(p)
    await p.subscribe(GW, "Catalog")
    await wait_for(lambda: "Catalog" in gw.uplink.sessions[UP].subs, 5, "subscribed")
    first = {i.device_id for i in (await p.catalog(GW)).items}
    assert first == {GW, NVR1, *dev1.channel_ids()}

    await gw.uplink.set_share(UP, Share(devices=(NVR2,)))
    want_add = {NVR2, *dev2.channel_ids()}
    want_del = {NVR1, *dev1.channel_ids()}
    await wait_for(
        lambda: (
            {d for _, d in events(p, "ADD")} >= want_add
            and {d for _, d in events(p, "DEL")} >= want_del
        ),
        10,
        "ADD and DEL",
    )
    assert {d for _, d in events(p, "ADD")} == want_add
    assert {d for _, d in events(p, "DEL")} == want_del
    added = [i for i in notified(p) if i.event == "ADD"]
    assert added[0].device_id == NVR2  # the parent before its channels
    assert all(i.name for i in added)  # an ADD carries the whole item
    after = {i.device_id for i in (await p.catalog(GW)).items}
    assert after == {GW, NVR2, *dev2.channel_ids()}
    # A channel shared alone: the NVR stays in view as its parent.
    p.catalog_events.clear()
    one = next(iter(dev2.channel_ids()))
    await gw.uplink.set_share(UP, Share(channels=(one,)))
    gone = set(dev2.channel_ids()) - {one}
    await wait_for(lambda: {d for _, d in events(p, "DEL")} >= gone, 10, "DELs")
    assert {d for _, d in events(p, "DEL")} == gone and not events(p, "ADD")


async def test_units_are_virtual_organisations_above_their_devices(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    unit = gw.directory.add_unit("第三中学", kind="school", civil_code="34020001")
    gw.directory.add_account(NVR1, password="12345678", unit_id=unit.id)
    dev1 = nvr(device_endpoint, gw, NVR1, channel_count=2)
    dev2 = nvr(device_endpoint, gw, NVR2, channel_count=1)
    await synced_nvr(gw, dev1)
    await synced_nvr(gw, dev2)
    await online_at(p)
    res = await p.catalog(GW)
    by_id = {i.device_id: i for i in res.items}
    vo = by_id[unit.vo_id]
    assert vo.name == "第三中学" and vo.parent_id == GW and vo.civil_code == "34020001"
    assert unit.vo_id[10:13] == "216"
    assert by_id[NVR1].parent_id == unit.vo_id  # a device of the unit hangs under it
    assert by_id[NVR2].parent_id == GW  # a device in no unit: as before
    assert all(by_id[c].parent_id == NVR1 for c in dev1.channel_ids())  # channels keep theirs
    ids = [i.device_id for i in res.items]
    assert ids.index(unit.vo_id) < ids.index(NVR1)  # parents first
    # The unit itself may be asked for: its devices and their channels.
    under = await p.catalog(GW, unit.vo_id)
    assert {i.device_id for i in under.items} == {unit.vo_id, NVR1, *dev1.channel_ids()}

    # Shared by unit: only the unit's devices; the upper subscribed hears the difference.
    await p.subscribe(GW, "Catalog")
    await wait_for(lambda: "Catalog" in gw.uplink.sessions[UP].subs, 5, "subscribed")
    await gw.uplink.set_share(UP, Share(units=(unit.id,)))
    gone = {NVR2, *dev2.channel_ids()}
    await wait_for(lambda: {d for _, d in events(p, "DEL")} >= gone, 10, "DELs")
    assert {i.device_id for i in (await p.catalog(GW)).items} == {
        GW,
        unit.vo_id,
        NVR1,
        *dev1.channel_ids(),
    }
    # A device joins the unit: it comes into view under the unit's organisation.
    p.catalog_events.clear()
    gw.directory.add_account(NVR2, password="12345678", unit_id=unit.id)
    await wait_for(lambda: {d for _, d in events(p, "ADD")} >= gone, 10, "ADDs")
    added = {i.device_id: i for i in notified(p) if i.event == "ADD"}
    assert added[NVR2].parent_id == unit.vo_id
    # The unit is emptied: its devices, and the unit after them, leave the view.
    p.catalog_events.clear()
    gw.directory.remove_unit(unit.id, force=True)
    await wait_for(lambda: ("DEL", unit.vo_id) in p.catalog_events, 10, "the unit's DEL")
    dels = [d for _, d in events(p, "DEL")]
    assert dels[-1] == unit.vo_id and {NVR1, NVR2} <= set(dels)
    assert [i.device_id for i in (await p.catalog(GW)).items] == [GW]


async def test_a_unit_comes_into_view_with_its_first_device(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """A device of a unit registering after the upper subscribed: the unit's ADD comes before
    the device's, which comes before its channels (planning._unit_coming_or_going)."""
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    unit = gw.directory.add_unit("银行", kind="bank")
    gw.directory.add_account(NVR1, password="12345678", unit_id=unit.id)
    await online_at(p)
    await p.subscribe(GW, "Catalog")
    await wait_for(lambda: "Catalog" in gw.uplink.sessions[UP].subs, 5, "subscribed")
    dev = nvr(device_endpoint, gw, NVR1, channel_count=2)
    assert (await dev.register()).status == 200
    await wait_for(lambda: len(events(p, "ADD")) >= 4, 15, "the unit, device and channels")
    channels = list(dev.channel_ids())
    assert events(p, "ADD")[:4] == [
        ("ADD", unit.vo_id),
        ("ADD", NVR1),
        ("ADD", channels[0]),
        ("ADD", channels[1]),
    ]


async def test_concurrent_changes_to_one_upper_leave_no_orphan_session(
    upper_endpoint, start_gateway
) -> None:
    """PATCH+PATCH and DELETE+PATCH of one upper at once (each stop awaits the upper): one
    change at a time, so no session is left without its upper, none overwritten while it still
    registers, and the change that comes second sees the first one's result."""
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    await online_at(p)
    uplink = gw.uplink
    made: list[UpperSession] = []
    new_session = uplink._new_session

    def spy(upper: UpperPlatform) -> UpperSession:
        s = new_session(upper)
        made.append(s)
        return s

    uplink._new_session = spy  # type: ignore[method-assign]

    def consistent() -> None:
        assert set(uplink.sessions) <= set(uplink.platforms)
        assert set(uplink.shares) == set(uplink.platforms)
        live = {id(s) for s in uplink.sessions.values()}
        orphans = [s for s in made if id(s) not in live and s.link._task is not None]
        assert orphans == [], "a session nobody holds is still registering"

    p.password = "bbbbbbbb"
    both = await asyncio.gather(
        uplink.update_upper(UP, {"password": "aaaaaaaa"}),
        uplink.update_upper(UP, {"password": "bbbbbbbb"}),
        return_exceptions=True,
    )
    assert not [r for r in both if isinstance(r, BaseException)]
    consistent()
    assert uplink.sessions[UP].upper.password == "bbbbbbbb"
    await online_at(p)

    gone = await asyncio.gather(
        uplink.remove_upper(UP),
        uplink.update_upper(UP, {"password": "cccccccc"}),
        return_exceptions=True,
    )
    assert gone[0] is None
    assert isinstance(gone[1], UpperError) and gone[1].status == 404
    consistent()
    assert uplink.platforms == {} and uplink.sessions == {} and uplink.shares == {}
    assert dict(gw.store.load_records("upper")) == {}


class _CountedId(str):
    """An ID that counts how often it is compared (a set or dict finds it by hash)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountedId.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.timeout(30)
def test_a_large_share_list_is_split_in_linear_steps() -> None:
    """``share = [ids]`` from the TOML or the API (up to 100,000 IDs): devices and channels
    are told apart by set, not by a scan of the channels per ID."""
    n = 2000
    ids = [_CountedId(f"3402000000131{i:07d}") for i in range(n)]  # channels (131)
    ids += [_CountedId(f"3402000000111{i:07d}") for i in range(n)]  # devices (111)
    _CountedId.compared = 0
    share = Share.seed(ids)
    assert len(share.channels) == n and len(share.devices) == n
    assert _CountedId.compared <= 4 * n  # a scan per ID: about n * n
    too_many = ["34020000001110000001"] * 100_001
    with pytest.raises(ValueError):
        UpperPlatform.model_validate(upper_config_for_ids(too_many))


def upper_config_for_ids(share: list[str]) -> dict[str, Any]:
    return {"id": UP, "domain": UP[:10], "host": "127.0.0.1", "password": "x", "share": share}


def test_whether_a_device_is_seen_through_a_shared_channel_is_kept_between_changes() -> None:
    """``device_visible`` (asked per event and per item) does not walk the share each time:
    the owners of shared IDs are worked out once per share or catalog change to a shared ID,
    and a shared channel reported later makes its device visible."""
    from gateway.events import CatalogChange
    from tests.uplink.test_view import NVR1, NVR2, cam, world
    from tests.uplink.test_view import upper as upper_of

    config, catalog, devices = world()
    later = cam(NVR2, 7)
    others = [f"3402000000131{i:07d}" for i in range(500)]
    shared = (cam(NVR1, 1).device_id, later.device_id, *others)
    up = upper_of()
    v = SharedView(up, config.gateway, catalog, devices, IdMap(up, MemoryStore(), GW))
    v.refresh(Share(channels=shared))
    catalog.events.subscribe(CatalogChange, lambda c: v.catalog_changed(c.item_id))
    asked = 0
    owner_of = catalog.owner_of

    def counted(item_id: str) -> str | None:
        nonlocal asked
        asked += 1
        return owner_of(item_id)

    catalog.owner_of = counted  # type: ignore[method-assign]
    for _ in range(100):
        assert v.device_visible(NVR1) and not v.device_visible(NVR2)
    assert asked <= 2 * len(shared)  # a walk per question: 200 walks
    catalog.apply_notify(NVR2, [replace(later, event="ADD")])
    assert v.device_visible(NVR2)
    catalog.apply_sync(NVR2, [], partial=False)
    assert not v.device_visible(NVR2)


async def test_a_device_is_seen_once_its_shared_channel_is_reported(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """Through the uplink's catalog-change path: the channel shared before its NVR came."""
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    dev = nvr(device_endpoint, gw, NVR1, channel_count=2)
    one = sorted(dev.channel_ids())[0]
    await gw.uplink.set_share(UP, Share(channels=(one,)))
    view = gw.uplink.sessions[UP].view
    assert not view.device_visible(NVR1)
    await synced_nvr(gw, dev)
    assert view.device_visible(NVR1)
