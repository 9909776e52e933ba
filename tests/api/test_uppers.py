"""``/api/v1/uppers`` through HTTP: roles, validation naming the field, the password never
shown, an upper added through the API registering at a simulated city platform, and what
each upper is shared."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conformance.peers.platform import SimPlatform
from gateway.sip import Endpoint
from tests.api.conftest import Api
from tests.media.rig import upper_endpoint

__all__ = ["upper_endpoint"]

pytestmark = pytest.mark.timeout(60)

UP = "34010000002000000001"
UP2 = "34010000002000000002"
SECRET = "s3cret-Upper-pw"
U = "/api/v1/uppers"


def body(port: int, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": UP,
        "domain": UP[:10],
        "host": "127.0.0.1",
        "port": port,
        "password": SECRET,
        "name": "市平台",
        "keepalive_interval": 0.5,
        "retry_interval": 0.2,
    }
    out.update(kw)
    return out


async def eventually(api: Api, path: str, key: str, value: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = (await api.viewer.get(path)).json()
        if got.get(key) == value:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} {key}: {got.get(key)!r}, not {value!r}")
        await asyncio.sleep(0.02)


async def test_an_upper_added_through_the_api_registers_and_is_removed(
    start_api, upper_endpoint: Endpoint
) -> None:
    api: Api = await start_api()
    p = SimPlatform(upper_endpoint, platform_id=UP, domain=UP[:10], password=SECRET).start()
    assert (await api.operator.post(U, json=body(upper_endpoint.port))).status_code == 403
    assert (await api.viewer.post(U, json=body(upper_endpoint.port))).status_code == 403
    made = await api.admin.post(U, json=body(upper_endpoint.port))
    assert made.status_code == 201, made.text
    assert made.json()["id"] == UP and made.json()["share"]["all"] is True
    got = await eventually(api, f"{U}/{UP}", "state", "registered")
    assert got["name"] == "市平台" and got["port"] == upper_endpoint.port
    assert got["subscriptions"] == [] and got["channels"] == {"total": 0, "online": 0}
    gw = api.gw.config.gateway.id
    assert p.lowers[gw].online
    deadline = time.monotonic() + 10
    while (await api.viewer.get(f"{U}/{UP}")).json()["last_keepalive"] is None:
        assert time.monotonic() < deadline, "no keepalive answered"
        await asyncio.sleep(0.05)
    again = await api.admin.post(U, json=body(upper_endpoint.port))
    assert again.status_code == 409 and again.json()["field"] == "id"
    # The platform quirks this upper showed are part of its description.
    assert (await api.viewer.get(f"{U}/{UP}")).json()["quirks"] == {}
    api.gw.uplink.sessions[UP].quirks.note("no_max_forwards")
    assert (await api.viewer.get(f"{U}/{UP}")).json()["quirks"] == {"no_max_forwards": 1}

    listed = (await api.viewer.get(U)).json()
    assert listed["total"] == 1 and listed["items"][0]["state"] == "registered"

    # Disabled: unregistered; enabled again: registering anew.
    patched = await api.admin.patch(f"{U}/{UP}", json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["state"] == "disabled"
    assert not p.lowers[gw].online and api.gw.uplink.sessions == {}
    assert (await api.admin.patch(f"{U}/{UP}", json={"enabled": True})).status_code == 200
    await eventually(api, f"{U}/{UP}", "state", "registered")

    assert (await api.operator.delete(f"{U}/{UP}")).status_code == 403
    assert (await api.admin.delete(f"{U}/{UP}")).status_code == 204
    assert (await api.viewer.get(f"{U}/{UP}")).status_code == 404
    assert api.gw.uplink.sessions == {} and not p.lowers[gw].online
    assert (await api.admin.delete(f"{U}/{UP}")).status_code == 404
    p.stop()


async def test_validation_names_the_field(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in body(5060).items() if k != "password"}, "password"),
        (body(70000), "port"),
        (body(5060, id="123"), "id"),
        (body(5060, transport="sctp"), "transport"),
        (body(5060, share={"devices": ["nope"]}), "share.devices.0"),
        (body(5060, share={"units": ["no-such-unit"]}), "units"),
        (body(5060, colour="red"), "colour"),
    ]
    for payload, field in cases:
        res = await api.admin.post(U, json=payload)
        assert res.status_code == 422, (field, res.text)
        assert res.json()["field"] == field and field.split(".")[0] in res.json()["error"]
    assert (await api.admin.post(U, json=body(5060))).status_code == 201
    bad = await api.admin.patch(f"{U}/{UP}", json={"keepalive_interval": -1})
    assert bad.status_code == 422 and bad.json()["field"] == "keepalive_interval"
    bad = await api.operator.put(f"{U}/{UP}/share", json={"all": False, "channels": ["x"]})
    assert bad.status_code == 422 and bad.json()["field"].startswith("channels")
    assert (await api.viewer.get(f"{U}/{UP2}")).status_code == 404
    missing = await api.admin.patch(f"{U}/{UP2}", json={"name": "x"})
    assert missing.status_code == 404
    assert api.gw.uplink.platforms[UP].keepalive_interval == 0.5  # the bad PATCH changed nothing


async def test_the_password_is_never_shown(api: Api) -> None:
    made = await api.admin.post(U, json=body(5060, enabled=False))
    assert made.status_code == 201
    changed = await api.admin.patch(f"{U}/{UP}", json={"password": SECRET + "2"})
    assert changed.status_code == 200
    for c in (api.viewer, api.operator, api.admin):
        for path in (U, f"{U}/{UP}", f"{U}/{UP}/share", f"{U}/{UP}/id-map"):
            text = (await c.get(path)).text
            assert SECRET not in text and "password" not in text, path
    for res in (made, changed):
        assert SECRET not in res.text and "password" not in res.text
    # Stored (digest needs it), and nowhere in the audit log.
    assert api.gw.uplink.platforms[UP].password == SECRET + "2"
    entries = api.gw.store.load_audit(limit=100)
    assert len(entries) >= 2 and all(SECRET not in repr(e) for e in entries)


async def test_share_and_id_map(api: Api) -> None:
    unit = api.gw.directory.add_unit("第一医院", kind="hospital")
    assert (await api.admin.post(U, json=body(5060, enabled=False))).status_code == 201
    share = {
        "all": False,
        "units": [unit.id],
        "devices": ["34020000001180000001"],
        "channels": ["34020000001310000001"],
    }
    assert (await api.viewer.put(f"{U}/{UP}/share", json=share)).status_code == 403
    put = await api.operator.put(f"{U}/{UP}/share", json=share)
    assert put.status_code == 200 and put.json() == share
    assert (await api.viewer.get(f"{U}/{UP}/share")).json() == share
    assert (await api.viewer.get(f"{U}/{UP}")).json()["share"] == share
    records = dict(api.gw.store.load_records("upper"))
    assert records[UP]["share"] == share

    recode = body(5060, id=UP2, enabled=True, id_policy="recode", civil_code="3401")
    recode["host"] = "127.0.0.1"
    recode["port"] = 9  # nobody there: it stays unregistered
    assert (await api.admin.post(U, json=recode)).status_code == 201
    s = api.gw.uplink.sessions[UP2]
    mapped = s.idmap.to_upper("34020000001310000007")
    page = (await api.viewer.get(f"{U}/{UP2}/id-map?limit=1")).json()
    assert page["id_policy"] == "recode" and page["total"] == 1
    assert page["items"] == [{"local_id": "34020000001310000007", "upper_id": mapped}]
    assert (await api.viewer.get(f"{U}/{UP2}/id-map?limit=501")).status_code == 422


async def test_the_channel_counts_follow_the_catalog_and_the_share(api: Api) -> None:
    """An upper's channel counts are kept between requests (counting walks the catalog) and
    follow every change they depend on: a sync, channels going OFF, the share."""
    from dataclasses import replace

    from gateway.manscdp import CatalogItem

    made = await api.admin.post(U, json=body(9))  # nobody there: it keeps trying, no matter
    assert made.status_code == 201
    nvr = "34020000001180000077"
    assert (await api.viewer.get(f"{U}/{UP}")).json()["channels"] == {"total": 0, "online": 0}
    chans = [
        CatalogItem(device_id=f"3402000000131000{n:04d}", name=f"c{n}", parent_id=nvr, status="ON")
        for n in range(1, 4)
    ]
    api.gw.catalog.apply_sync(nvr, chans, partial=False)
    assert (await api.viewer.get(f"{U}/{UP}")).json()["channels"] == {"total": 3, "online": 3}
    off = [chans[0], *(replace(c, status="OFF") for c in chans[1:])]
    api.gw.catalog.apply_sync(nvr, off, partial=False)
    assert (await api.viewer.get(f"{U}/{UP}")).json()["channels"] == {"total": 3, "online": 1}
    shared = await api.operator.put(
        f"{U}/{UP}/share", json={"all": False, "units": [], "devices": [], "channels": []}
    )
    assert shared.status_code == 200, shared.text
    assert (await api.viewer.get(f"{U}/{UP}")).json()["channels"] == {"total": 0, "online": 0}


async def test_id_map_pages_are_cut_from_a_kept_list_and_a_disabled_uppers_rows(
    api: Api,
) -> None:
    """A registered upper's recoded IDs are sorted once per new mapping, not per page; for a
    disabled upper only its own rows are read from the store."""
    for upper_id in (UP, UP2):
        cfg = body(9, id=upper_id, id_policy="recode", civil_code="3401")
        assert (await api.admin.post(U, json=cfg)).status_code == 201
    one, two = api.gw.uplink.sessions[UP], api.gw.uplink.sessions[UP2]
    for n in range(5):
        one.idmap.to_upper(f"340200000013100000{n:02d}")
        two.idmap.to_upper(f"340200000013200000{n:02d}")
    assert one.idmap.pairs() is one.idmap.pairs()  # kept between pages
    first = (await api.viewer.get(f"{U}/{UP}/id-map?limit=2")).json()
    assert first["total"] == 5 and first["items"][0]["local_id"] == "34020000001310000000"
    one.idmap.to_upper("34020000001300000009")  # a new mapping: sorted anew
    again = (await api.viewer.get(f"{U}/{UP}/id-map?limit=1")).json()
    assert again["total"] == 6 and again["items"][0]["local_id"] == "34020000001300000009"

    assert (await api.admin.patch(f"{U}/{UP2}", json={"enabled": False})).status_code == 200
    await api.gw.store.flush()
    asked: list[str | None] = []
    load = api.gw.store.load_id_map

    def spy(upper_id: str | None = None) -> list[tuple[str, str, str]]:
        asked.append(upper_id)
        return load(upper_id)

    api.gw.store.load_id_map = spy  # type: ignore[method-assign]
    page = (await api.viewer.get(f"{U}/{UP2}/id-map?limit=500")).json()
    assert asked == [UP2]  # not every upper's rows
    assert page["total"] == 5
    assert {i["local_id"] for i in page["items"]} == {
        f"340200000013200000{n:02d}" for n in range(5)
    }


async def test_a_removed_unit_leaves_every_share(api: Api) -> None:
    """A removed unit is dropped from the shares at once (the directory's UNIT_REMOVED, told
    for an empty unit too)."""
    d = api.gw.directory
    full, empty = d.add_unit("第一医院", kind="hospital"), d.add_unit("空单位", kind="hospital")
    d.add_account("34020000001180000001", unit_id=full.id)
    for upper_id in (UP, UP2):
        assert (
            await api.admin.post(U, json=body(9, id=upper_id, enabled=False))
        ).status_code == 201
        share = {"all": False, "units": [full.id, empty.id], "devices": [], "channels": []}
        assert (await api.operator.put(f"{U}/{upper_id}/share", json=share)).status_code == 200
    d.remove_unit(full.id, force=True)
    assert all(s.units == (empty.id,) for s in api.gw.uplink.shares.values())
    d.remove_unit(empty.id)
    for upper_id in (UP, UP2):
        assert (await api.viewer.get(f"{U}/{upper_id}/share")).json()["units"] == []
        assert (await api.viewer.get(f"{U}/{upper_id}")).json()["share"]["units"] == []
        assert dict(api.gw.store.load_records("upper"))[upper_id]["share"]["units"] == []
