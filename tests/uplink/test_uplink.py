"""The gateway as a lower platform: simulated NVRs below, the simulated city platform above,
over real sockets (GB/T 28181-2022 §9 and reference §7)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from conformance.suite.cases.common import item_differences
from gateway.app import Gateway
from gateway.events import CatalogSynced
from gateway.manscdp import (
    AlarmNotify,
    CatalogItem,
    CruisePoint,
    CruiseTrackListQuery,
    CruiseTrackListResponse,
    CruiseTrackQuery,
    CruiseTrackResponse,
    DeviceControl,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PositionItem,
    SDCard,
    SDCardStatusQuery,
    SDCardStatusResponse,
    is_gb_id,
    item_kind,
)
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, parse
from gateway.uplink import sending as uplink_sending
from tests.conftest import make_config, wait_for
from tests.media.rig import fast_timers

GW = "34020000002000000001"
UP = "34010000002000000001"
UP2 = "34010000002000000002"
NVR1, NVR2 = "34020000001180000001", "34020000001180000002"
FAST_DOWN = {"response_timeout": 3.0, "idle_timeout": 0.5}


def platform(ep: Endpoint, **kw: Any) -> SimPlatform:
    kw.setdefault("platform_id", UP)
    kw.setdefault("domain", UP[:10])
    return SimPlatform(ep, **kw).start()


def upper_config(ep: Endpoint, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "id": UP,
        "domain": UP[:10],
        "host": "127.0.0.1",
        "port": ep.port,
        "password": "12345678",
        "keepalive_interval": 0.3,
        "keepalive_timeout_count": 2,
        "retry_interval": 0.2,
    }
    cfg.update(kw)
    return cfg


def nvr(ep: Endpoint, gw: Gateway, device_id: str = NVR1, **kw: Any) -> SimDevice:
    dev = SimDevice(ep, device_id, Peer(kw.pop("transport", "udp"), "127.0.0.1", gw.port), **kw)
    dev.install()
    return dev


Start = Callable[..., Awaitable[Gateway]]


async def gateway_with(start_gateway: Start, *uppers: dict[str, Any], **sections: Any) -> Gateway:
    sections.setdefault("downlink", FAST_DOWN)
    return await start_gateway(
        uplink={"platforms": list(uppers)},
        gateway={"name": "测试网关", "civil_code": "340200"},
        **sections,
    )


async def synced_nvr(gw: Gateway, dev: SimDevice) -> None:
    done: list[CatalogSynced] = []
    gw.events.subscribe(CatalogSynced, done.append)
    assert (await dev.register()).status == 200
    await wait_for(lambda: any(d.device_id == dev.device_id for d in done), 15, "sync")


async def online_at(p: SimPlatform, lower: str = GW, timeout: float = 5.0) -> None:
    await wait_for(lambda: lower in p.lowers and p.lowers[lower].online, timeout, "registered")


@pytest.mark.parametrize("qop", [True, False])
async def test_registers_upward_with_digest_and_keeps_alive(
    upper_endpoint, start_gateway, qop: bool
) -> None:
    p = platform(upper_endpoint, qop=qop)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, gb_version="2022"))
    await online_at(p)
    lower = p.lowers[GW]
    assert lower.gb_version == "3.0"  # X-GB-Ver for an upper configured for 2022
    await wait_for(lambda: p.lowers[GW].keepalives >= 2, 3, "keepalives")
    assert gw.uplink is not None and gw.uplink.sessions[UP].link.online
    register = p.registers[-1]
    assert "Authorization" in {name for name, _ in register.headers()}


async def test_wrong_password_retries_with_backoff_and_407_is_answered(
    upper_endpoint, start_gateway
) -> None:
    p = platform(upper_endpoint, password="other", challenge_407=True)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    await wait_for(lambda: gw.metrics.get("uplink.register_refused") >= 2, 5, "two refusals")
    assert GW not in p.lowers or not p.lowers[GW].online
    p.password = "12345678"
    await online_at(p, timeout=8)
    assert "Proxy-Authorization" in {name for name, _ in p.registers[-1].headers()}


async def test_redirect_is_followed_and_registration_starts_over_when_lost(
    upper_endpoint, start_gateway
) -> None:
    """The 302's Contact names another server (its own ID); when that one is lost the gateway
    goes back to the configured address."""
    real = Endpoint(metrics=Metrics(), timers=fast_timers())
    await real.start("127.0.0.1", 0)
    try:
        target = platform(real, platform_id=UP2, domain=UP[:10])
        front = platform(
            upper_endpoint, platform_id=UP2, domain=UP[:10], redirect_to=("127.0.0.1", real.port)
        )
        gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
        await online_at(target)
        assert GW not in front.lowers
        assert gw.metrics.get("uplink.redirected") == 1
        assert target.registers[-1].request_uri.user == UP2
        await wait_for(lambda: target.lowers[GW].keepalives >= 1, 3, "keepalive at the new place")
        res = await target.device_info(GW)  # the redirected-to server is served as the upper
        assert res.status == 200 and res.responses
        target.refuse_keepalives = True
        await online_at(front, timeout=8)  # back where it started (no redirect this time)
        assert gw.metrics.get("uplink.offline") == 1
    finally:
        await real.close()


async def test_upper_restart_or_silence_makes_the_gateway_register_again(
    upper_endpoint, start_gateway
) -> None:
    p = platform(upper_endpoint)
    # A short T1: an unanswered keepalive is given up after 64·T1 = 1.3 s, not 32 s.
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint), sip={"t1": 0.02})
    await online_at(p)
    p.restart()  # forgets us: the next keepalive gets 404
    await online_at(p)
    assert gw.metrics.get("uplink.offline") == 1
    before = p.lowers[GW].registrations
    p.drop_keepalives = True
    await wait_for(lambda: gw.metrics.get("uplink.offline") == 2, 15, "offline after misses")
    assert gw.metrics.get("uplink.keepalive_lost") >= 2  # silence, counted miss by miss
    p.drop_keepalives = False
    await wait_for(lambda: p.lowers[GW].registrations > before, 8, "registered again")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_catalog_query_returns_exactly_the_shared_tree(
    upper_endpoint, start_gateway, device_endpoint, transport: str
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, transport=transport))
    dev = nvr(device_endpoint, gw, channel_count=40, with_groups=True)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.catalog(GW)
    assert not res.partial and res.sum_num == len(res.items)
    ids = [i.device_id for i in res.items]
    expected = {GW, NVR1, *dev.channel_ids(), *dev.group_ids()}
    assert set(ids) == expected and len(ids) == len(expected)
    root = next(i for i in res.items if i.device_id == GW)
    assert root.name == "测试网关" and root.parent_id is None
    by_id = {i.device_id: i for i in res.items}
    assert by_id[dev.channel_id(3)].name == "通道3"
    assert all(by_id[c].parent_ids[0] == NVR1 for c in dev.channel_ids())
    for c in dev.channel_ids():  # every field as the NVR sent it, over either transport
        sent = dev.item(c)
        assert sent is not None and not item_differences(sent, by_id[c]), c
    if transport == "udp":
        # RFC 3261 §18.1.1: no MESSAGE over UDP above 1300 bytes; the channels (each too large
        # for one with the envelope and headers) went over TCP, batched.
        sizes = [(via_transport(r), len(r)) for r in res.raw]
        assert sizes[0][0] == "UDP" and max(n for t, n in sizes if t == "UDP") <= 1300
        assert {t for t, n in sizes if n > 1300} == {"TCP"}
        assert gw.metrics.get("uplink.udp_oversize") == 0
    else:
        assert len(res.raw) == 1  # 43 items in one batch over TCP


def upper_query(sn: int, port: int) -> bytes:
    """A Catalog query from the upper, written as it would send it over TCP."""
    body = (
        '<?xml version="1.0" encoding="GB2312"?>\r\n'
        f"<Query><CmdType>Catalog</CmdType><SN>{sn}</SN><DeviceID>{GW}</DeviceID></Query>\r\n"
    ).encode()
    head = (
        f"MESSAGE sip:{GW}@{GW[:10]} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{port};rport;branch=z9hG4bK-q{sn}\r\n"
        f"From: <sip:{UP}@{UP[:10]}>;tag=up{sn}\r\n"
        f"To: <sip:{GW}@{GW[:10]}>\r\n"
        f"Call-ID: upper-query-{sn}\r\nCSeq: {sn} MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: Application/MANSCDP+xml\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.timeout(60)
async def test_a_connection_the_upper_opened_is_kept_at_the_connection_cap(
    upper_endpoint, start_gateway
) -> None:
    """Issue 13 item 4: idle strangers filling the TCP connection cap are evicted to make room,
    never a connection an upper opened to the gateway (it is marked trusted once a request over
    it is known to come from that upper)."""
    cap = 20
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, transport="tcp")
    gw = await gateway_with(start_gateway, up, sip={"max_connections": cap})
    await online_at(p)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    port = writer.get_extra_info("sockname")[1]
    idle: list[asyncio.StreamWriter] = []
    try:
        writer.write(upper_query(1, port))
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SIP/2.0 200")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for i in range(3 * cap):
            _, w = await asyncio.open_connection(
                "127.0.0.1", gw.port, local_addr=(f"127.0.0.{2 + i % 4}", 0)
            )
            idle.append(w)
        await wait_for(
            lambda: gw.metrics.get("sip.tcp.evicted") >= 2 * cap, 10, "strangers evicted"
        )
        writer.write(upper_query(2, port))
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SIP/2.0 200")
    finally:
        writer.close()
        for w in idle:
            w.close()


async def test_recode_ids_are_valid_in_the_uppers_namespace_and_stable_across_restart(
    tmp_path: Path, upper_endpoint, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy="recode", civil_code="3401", industry_code="08")
    sections = {
        "downlink": FAST_DOWN,
        "uplink": {"platforms": [up]},
        "gateway": {"civil_code": "340200"},
    }
    gw = Gateway(make_config(tmp_path, **sections))
    await gw.start()
    try:
        dev = nvr(device_endpoint, gw, channel_count=6, with_groups=True)
        await synced_nvr(gw, dev)
        await online_at(p)
        first = await p.catalog(GW)
        port = gw.port
    finally:
        await gw.close()
    ids = [i.device_id for i in first.items if i.device_id != GW]
    assert len(ids) == len(set(ids)) == 6 + 3 + 1
    assert all(is_gb_id(i) and i.startswith("3401000008") for i in ids)
    assert {item_kind(i) for i in ids} == {"device", "channel", "business_group", "virtual_org"}
    assert not set(ids) & {*dev.channel_ids(), NVR1}
    sections["sip"] = {"port": port}
    again = Gateway(make_config(tmp_path, **sections))
    await again.start()
    try:
        p.restart()
        await online_at(p)
        second = await p.catalog(GW)
    finally:
        await again.close()
    assert sorted(i.device_id for i in second.items) == sorted(i.device_id for i in first.items)
    names = {i.device_id: i.name for i in first.items}
    assert all(names[i.device_id] == i.name for i in second.items)
    # Operators see the mapping with `gb28181-gateway idmap`.
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text(f'[store]\npath = "{tmp_path / "gw.db"}"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "gateway.cli", "idmap", "--config", str(cfg_file), "--json"]
    out = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=30, check=True
    )
    rows = json.loads(out.stdout)
    assert {r["upper_item_id"] for r in rows} == set(ids)
    assert {r["local_id"] for r in rows} == {*dev.channel_ids(), *dev.group_ids(), NVR1}


async def test_offline_and_added_channels_reach_the_upper_as_notifies(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    dev = nvr(device_endpoint, gw, channel_count=3)
    other = nvr(device_endpoint, gw, NVR2, channel_count=2)
    await synced_nvr(gw, dev)
    await synced_nvr(gw, other)
    await online_at(p)
    (await other.unregister())  # offline before the subscription: reported in the first NOTIFY
    sub = await p.subscribe(GW, "Catalog")
    assert sub.active and sub.expires == 600
    await wait_for(lambda: len(p.catalog_events) >= 3, 3, "initial report")
    assert set(p.catalog_events) == {("OFF", NVR2), *(("OFF", c) for c in other.channel_ids())}
    p.catalog_events.clear()
    await wait_for(lambda: dev.subscription("Catalog") is not None, 5, "gateway subscribed down")
    added = CatalogItem(
        device_id="34020000001310009999", name="新通道", parent_id=NVR1, status="ON"
    )
    await dev.notify_catalog([("ADD", added)])
    await wait_for(lambda: ("ADD", added.device_id) in p.catalog_events, 3, "ADD upward")
    add_notify = next(m for _, m in p.notifies if m is not None and m.CMD == "Catalog"
                      and any(i.device_id == added.device_id for i in m.items))  # type: ignore[attr-defined]  # fmt: skip
    assert add_notify.items[0].name == "新通道"  # type: ignore[attr-defined]
    assert add_notify.sum_num == len(add_notify.items)  # type: ignore[attr-defined]
    (await dev.unregister())
    await wait_for(lambda: ("OFF", NVR1) in p.catalog_events, 3, "device OFF upward")
    offs = {d for e, d in p.catalog_events if e == "OFF"}
    assert offs >= {NVR1, *dev.channel_ids(), added.device_id}
    # Expires: 0 ends it with a terminating NOTIFY; nothing more comes.
    await p.unsubscribe(sub)
    assert gw.uplink is not None and "Catalog" not in gw.uplink.sessions[UP].subs
    await wait_for(
        lambda: any(
            (r.get_header("Subscription-State") or "").startswith("terminated")
            for r, _ in p.notifies
        ),
        3,
        "terminating NOTIFY",
    )


async def test_ptz_and_record_info_are_forwarded_with_translated_ids(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy="recode", civil_code="340100")
    gw = await gateway_with(start_gateway, up)
    dev = nvr(device_endpoint, gw, channel_count=3, record_count=30, items_per_message=8)
    await synced_nvr(gw, dev)
    await online_at(p)
    catalog = await p.catalog(GW)
    cam = next(i for i in catalog.items if i.name == "通道2")
    assert cam.device_id != dev.channel_id(2)
    await p.ptz(GW, cam.device_id, "A50F0101808000B6")
    await wait_for(lambda: bool(dev.ptz_commands), 3, "PTZ at the NVR")
    assert dev.ptz_commands == ["A50F0101808000B6"]
    assert dev.controls[-1].device_id == dev.channel_id(2)
    answer = await p.control(GW, DeviceControl(sn=0, device_id=cam.device_id, record_cmd="Record"))
    assert answer is not None and answer.result == "OK" and answer.device_id == cam.device_id
    res = await p.record_info(GW, cam.device_id, "2024-05-20T00:00:00", "2024-05-20T23:59:59")
    assert not res.partial and res.sum_num == 30 and len(res.items) == 30
    assert {r.device_id for r in res.items} == {cam.device_id}  # translated back up
    status = await p.device_status(GW, cam.device_id)
    assert status.responses and status.responses[0].device_id == cam.device_id
    assert status.responses[0].result == "OK"  # type: ignore[attr-defined]


async def test_ids_an_upper_may_not_see_get_404(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    dev_channel = f"{NVR1[:10]}131{NVR1[-3:]}0001"
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, share=[NVR2]))
    dev = nvr(device_endpoint, gw, channel_count=2)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.device_status(GW, dev.channel_id(1), timeout=1)
    assert res.status == 404 and not res.responses
    with pytest.raises(Exception, match="404"):
        await p.ptz(GW, dev.channel_id(1), "A50F0100000000B5")
    assert not dev.ptz_commands and gw.metrics.get("uplink.not_shared") == 2
    assert dev_channel  # the share list named only NVR2, which never registered here


async def test_two_uppers_each_see_only_their_share(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    second_ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await second_ep.start("127.0.0.1", 0)
    try:
        p1 = platform(upper_endpoint)
        p2 = platform(second_ep, platform_id=UP2, domain=UP2[:10])
        gw = await gateway_with(
            start_gateway,
            upper_config(upper_endpoint, share=[NVR1]),
            upper_config(second_ep, id=UP2, domain=UP2[:10], share=[NVR2]),
        )
        one = nvr(device_endpoint, gw, NVR1, channel_count=3)
        two = nvr(device_endpoint, gw, NVR2, channel_count=4)
        await synced_nvr(gw, one)
        await synced_nvr(gw, two)
        await online_at(p1)
        await online_at(p2)
        seen1 = {i.device_id for i in (await p1.catalog(GW)).items}
        seen2 = {i.device_id for i in (await p2.catalog(GW)).items}
        assert seen1 == {GW, NVR1, *one.channel_ids()}
        assert seen2 == {GW, NVR2, *two.channel_ids()}
        await gw.close()  # while both uppers still answer its goodbye REGISTERs
    finally:
        await second_ep.close()


async def test_gateway_answers_about_itself_and_forwards_alarms(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    dev = nvr(device_endpoint, gw, channel_count=2)
    await synced_nvr(gw, dev)
    await online_at(p)
    info = await p.device_info(GW)
    assert info.responses[0].device_name == "测试网关"  # type: ignore[attr-defined]
    assert info.responses[0].channel == 2  # type: ignore[attr-defined]  # shared video channels
    status = await p.device_status(GW)
    assert status.responses[0].online == "ONLINE"  # type: ignore[attr-defined]
    await dev.send_alarm(dev.channel_id(1), priority=2, method=5, alarm_type=2)
    await wait_for(lambda: len(p.alarms) == 1, 3, "alarm by MESSAGE")
    assert p.alarms[0].device_id == dev.channel_id(1) and p.alarms[0].alarm_priority == 2
    sub = await p.subscribe(GW, "Alarm")
    assert sub.active
    await dev.send_alarm(dev.channel_id(2), priority=1)
    await wait_for(lambda: len(p.alarms) == 2, 3, "alarm by NOTIFY")
    assert any(m is not None and m.CMD == "Alarm" for _, m in p.notifies)
    # An alarm naming an ID the device never reported goes up as the device's own.
    await dev.send_alarm("34020000001340009999", priority=3)
    await wait_for(lambda: len(p.alarms) == 3, 3, "third alarm")
    assert p.alarms[2].device_id == NVR1


async def test_subscriptions_are_refreshed_and_positions_go_up(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    positions_on = {**FAST_DOWN, "mobile_position_subscription": True}
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint), downlink=positions_on)
    dev = nvr(device_endpoint, gw, channel_count=1)
    await synced_nvr(gw, dev)
    await online_at(p)
    catalog = await p.subscribe(GW, "Catalog", expires=120)
    await p.refresh(catalog, 300)
    assert catalog.active and catalog.expires == 300 and catalog.cseq == 2
    assert gw.uplink is not None
    held = gw.uplink.sessions[UP].subs["Catalog"]
    assert held.call_id == catalog.call_id and held.notifier.remaining(time.time()) > 250
    positions = await p.subscribe(GW, "MobilePosition")
    assert positions.active
    await wait_for(lambda: dev.subscription("MobilePosition") is not None, 5, "position sub down")
    await dev.send_position(117.2275, 31.8207, form="2022", via="notify")
    await wait_for(lambda: bool(p.positions), 3, "position upward")
    assert p.positions[0].device_id == NVR1 and p.positions[0].longitude == 117.2275


# -- RFC 3261 §18.1.1 / 2022 Annex M: a MESSAGE too large for UDP goes over TCP, whole ----------
LONG = CatalogItem(
    device_id="34020000001310009999",
    name="东门停车场入口枪机" * 12,
    address="北京市海淀区中关村大街" * 40,
    parent_id=NVR1,
    civil_code="340200",
    status="ON",
)


def via_transport(raw: bytes) -> str:
    return parse(raw).top_via.transport.upper()


def stop_listening_on_tcp(ep: Endpoint) -> None:
    """The upper keeps UDP but no longer accepts TCP connections (refused, as from a platform
    that listens on UDP only)."""
    server = ep.transports._server
    assert server is not None
    server.close()


def large_nvr(ep: Endpoint, gw: Gateway) -> SimDevice:
    """2022 channels (each item with every 2022 Info field is over 1300 bytes in a MESSAGE),
    a small custom tree, and one item with a long name and address."""
    return nvr(
        ep, gw, channel_count=6, with_groups=True, gb_version="3.0", catalog_extra_items=[LONG]
    )


def assert_whole(dev: SimDevice, items: list[CatalogItem]) -> None:
    seen = {i.device_id: i for i in items}
    for sent in dev.catalog_items():
        # The gateway hangs the business group under itself (reference §7.2).
        ignore = ["parent_id"] if item_kind(sent.device_id) == "business_group" else []
        assert not item_differences(sent, seen[sent.device_id], ignore), sent.device_id
    assert seen[dev.channel_id(1)].info.grassroots_code == "340200"  # type: ignore[union-attr]


async def test_large_catalog_items_go_up_over_tcp_with_every_field(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, gb_version="2022"))
    dev = large_nvr(device_endpoint, gw)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.catalog(GW)
    assert not res.partial and res.sum_num == len(res.items) == 1 + 1 + dev.catalog_size()
    assert_whole(dev, res.items)
    sizes = [(via_transport(r), len(r)) for r in res.raw]
    assert all(size <= 1300 for t, size in sizes if t == "UDP")
    assert any(t == "UDP" for t, _ in sizes)  # the small items still go in UDP batches
    big = [size for t, size in sizes if t == "TCP"]
    assert big and min(big) > 1300
    assert len(res.raw) < dev.catalog_size()  # the large items share their TCP MESSAGEs
    # Counted when the gateway has the upper's 200, which may come after the last part here.
    await wait_for(lambda: gw.metrics.get("uplink.sent_over_tcp") == len(big), 3, "200s over TCP")
    assert gw.metrics.get("uplink.udp_oversize") == gw.metrics.get("uplink.tcp_failed") == 0
    # The registration stays on UDP; the TCP connection was only for the large MESSAGEs.
    assert p.lowers[GW].peer.transport == "udp" and p.lowers[GW].online


async def test_large_catalog_items_go_whole_over_udp_when_tcp_is_refused(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    stop_listening_on_tcp(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, gb_version="2022"))
    dev = large_nvr(device_endpoint, gw)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.catalog(GW)
    assert not res.partial and res.sum_num == len(res.items) == 1 + 1 + dev.catalog_size()
    assert_whole(dev, res.items)
    assert {via_transport(r) for r in res.raw} == {"UDP"}
    oversize = [len(r) for r in res.raw if len(r) > 1300]
    assert len(oversize) == 7  # the 6 channels and the long item, each alone and whole
    assert gw.metrics.get("uplink.udp_oversize") == 7
    # TCP was tried once; after that the upper's TCP is left alone for a while.
    assert gw.metrics.get("uplink.tcp_failed") == 1
    assert gw.metrics.get("uplink.sent_over_tcp") == 0


class SilentTcp(asyncio.Protocol):
    """An upper's TCP port that accepts connections and reads what comes, but never answers
    (a platform whose TCP side hangs)."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


async def test_large_catalog_items_go_whole_over_udp_when_tcp_never_answers(
    upper_endpoint, start_gateway, device_endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TCP connection the upper accepts but never answers on: the MESSAGE goes over UDP
    after ``TCP_ANSWER_TIMEOUT``, not after Timer F (32 s with the default T1, far beyond the
    query's idle time here: the answer would end partial)."""
    monkeypatch.setattr(uplink_sending, "TCP_ANSWER_TIMEOUT", 0.5)
    p = platform(upper_endpoint)
    stop_listening_on_tcp(upper_endpoint)
    received: list[bytes] = []
    loop = asyncio.get_running_loop()
    silent = await loop.create_server(lambda: SilentTcp(received), "127.0.0.1", upper_endpoint.port)
    try:
        gw = await gateway_with(start_gateway, upper_config(upper_endpoint, gb_version="2022"))
        dev = large_nvr(device_endpoint, gw)
        await synced_nvr(gw, dev)
        await online_at(p)
        res = await p.catalog(GW, timeout=20.0, idle=4.0)
        assert not res.partial and res.sum_num == len(res.items) == 1 + 1 + dev.catalog_size()
        assert_whole(dev, res.items)
        assert {via_transport(r) for r in res.raw} == {"UDP"}
        assert b"MESSAGE sip:" in b"".join(received)  # TCP was tried: the upper got it there
        assert gw.metrics.get("uplink.tcp_failed") == 1
        assert gw.metrics.get("uplink.sent_over_tcp") == 0
        assert gw.metrics.get("uplink.udp_oversize") == 7
    finally:
        silent.close()


async def test_large_catalog_notify_goes_up_over_tcp_in_its_dialog(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, gb_version="2022"))
    dev = nvr(device_endpoint, gw, channel_count=1)
    await synced_nvr(gw, dev)
    await online_at(p)
    sub = await p.subscribe(GW, "Catalog")
    assert sub.active
    await wait_for(lambda: dev.subscription("Catalog") is not None, 5, "gateway subscribed down")
    await dev.notify_catalog([("ADD", LONG)])
    await wait_for(lambda: ("ADD", LONG.device_id) in p.catalog_events, 3, "ADD upward")
    req, msg = next(
        (r, m) for r, m in p.notifies if m is not None and m.CMD == "Catalog"
        and any(i.device_id == LONG.device_id for i in m.items)  # type: ignore[attr-defined]
    )  # fmt: skip
    assert req.top_via.transport.upper() == "TCP" and len(req.to_bytes()) > 1300
    assert req.call_id == sub.call_id
    contact = req.get_header("Contact") or ""
    assert "transport=tcp" not in contact  # the dialog itself stays on UDP
    got = next(i for i in msg.items if i.device_id == LONG.device_id)  # type: ignore[attr-defined]
    assert (got.name, got.address) == (LONG.name, LONG.address)
    # Counted when the 200 is back at the gateway, which may be after the upper saw the NOTIFY.
    await wait_for(lambda: gw.metrics.get("uplink.sent_over_tcp") == 1, 3, "counted")


# -- relayed answers with a list keep every item (reference §3.3, §3.9; 2022 Annex M) ----------
def upper_ids(gw: Gateway) -> Callable[[str], str]:
    assert gw.uplink is not None
    idmap = gw.uplink.sessions[UP].idmap
    return idmap.to_upper


async def ask(p: SimPlatform, msg: Message) -> Message:
    res = await p.query(GW, msg, timeout=5.0)
    assert res.status == 200 and len(res.responses) == 1, res
    return res.responses[0]


async def one_shot_position(p: SimPlatform, target: str) -> MobilePositionNotify:
    """Query/MobilePosition by MESSAGE: the answer is a Notify/MobilePosition MESSAGE."""
    before = len(p.positions)
    task = asyncio.ensure_future(p.query(GW, MobilePositionQuery(sn=0, device_id=target)))
    try:
        await wait_for(lambda: len(p.positions) > before, 5, "position answer")
    finally:
        task.cancel()
    return p.positions[before]


async def test_relayed_cruise_sd_card_and_position_answers_are_the_devices(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """The answers go up as the device gave them: every track and point, the card, and a
    2016 flat position without a SumNum the device never sent (IDs in the upper's space)."""
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy="recode", civil_code="340100", gb_version="2022")
    gw = await gateway_with(start_gateway, up)
    dev = nvr(device_endpoint, gw, channel_count=2, gb_version="3.0")
    await synced_nvr(gw, dev)
    await online_at(p)
    await p.catalog(GW)
    to_upper = upper_ids(gw)
    cam, nvr_up = to_upper(dev.channel_id(1)), to_upper(NVR1)
    assert cam != dev.channel_id(1)
    tracks = await ask(p, CruiseTrackListQuery(sn=0, device_id=cam))
    assert isinstance(tracks, CruiseTrackListResponse) and tracks.device_id == cam
    assert tracks.result == "OK" and tracks.sum_num == 2
    assert [(t.number, t.name) for t in tracks.items] == [(0, "巡航路线1"), (1, "巡航路线2")]
    track = await ask(p, CruiseTrackQuery(sn=0, device_id=cam, number=1))
    assert isinstance(track, CruiseTrackResponse)
    assert (track.number, track.name, track.sum_num) == (1, "巡航路线2", len(dev.presets))
    assert [p.preset_index for p in track.items] == [p.preset_id for p in dev.presets]
    sd = await ask(p, SDCardStatusQuery(sn=0, device_id=nvr_up))
    assert isinstance(sd, SDCardStatusResponse) and sd.device_id == nvr_up and sd.sum_num == 1
    assert [(c.id, c.hdd_name, c.capacity) for c in sd.items] == [(1, "SD1", 61440.0)]
    assert [q.device_id for q in dev.queries if q.CMD == "SDCardStatus"] == [NVR1]
    pos = await one_shot_position(p, nvr_up)
    assert pos.device_id == nvr_up and pos.sum_num is None and not pos.items
    assert (pos.longitude, pos.latitude) == dev.position


CARDS = (
    SDCard(id=1, hdd_name="SD1", status="ok", format_progress=100, capacity=64.0, free_space=8.0),
    SDCard(id=2, hdd_name="SD2", status="idle", format_progress=0, capacity=32.0, free_space=32.0),
)
# A track that goes back to where it started: preset 1 twice, alike.
POINTS = tuple(CruisePoint(preset_index=i, stay_time=5, speed=3) for i in (1, 2, 3, 1))


class SplittingDevice(SimDevice):
    """Answers in several MESSAGEs: SDCardStatus one card each, CruiseTrackQuery two points
    each; a MobilePosition query in the 2022 list form, the device's and a channel's."""

    def _on_query(self, msg: Message) -> None:
        parts: list[Message]
        if isinstance(msg, SDCardStatusQuery):
            parts = [SDCardStatusResponse(sn=msg.sn, device_id=msg.device_id, result="OK",
                                          sum_num=2, items=(c,)) for c in CARDS]  # fmt: skip
        elif isinstance(msg, CruiseTrackQuery):
            parts = [CruiseTrackResponse(sn=msg.sn, device_id=msg.device_id, result="OK",
                                         number=msg.number, name="往返", sum_num=len(POINTS),
                                         items=POINTS[i : i + 2]) for i in (0, 2)]  # fmt: skip
        elif isinstance(msg, MobilePositionQuery):
            items = tuple(PositionItem(device_id=i, capture_time="2024-05-20T10:00:00",
                                       longitude=117.2, latitude=31.8) for i in
                          (self.device_id, self.channel_id(2)))  # fmt: skip
            parts = [MobilePositionNotify(sn=msg.sn, device_id=msg.device_id,
                                          time="2024-05-20T10:00:00", sum_num=2,
                                          items=items)]  # fmt: skip
        else:
            super()._on_query(msg)
            return
        self.queries.append(msg)
        self._spawn(self._send_parts(msg, parts, True))


async def test_list_answers_in_several_parts_are_collected_and_relayed_whole(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy="recode", civil_code="340100", gb_version="2022")
    gw = await gateway_with(start_gateway, up)
    dev = SplittingDevice(device_endpoint, NVR1, Peer("udp", "127.0.0.1", gw.port),
                          channel_count=2, gb_version="3.0")  # fmt: skip
    dev.install()
    await synced_nvr(gw, dev)
    await online_at(p)
    await p.catalog(GW)
    to_upper = upper_ids(gw)
    nvr_up, cam_up = to_upper(NVR1), to_upper(dev.channel_id(2))
    sd = await ask(p, SDCardStatusQuery(sn=0, device_id=nvr_up))
    assert isinstance(sd, SDCardStatusResponse) and sd.sum_num == 2
    assert [c.hdd_name for c in sd.items] == ["SD1", "SD2"]
    assert [a for a in dev.answer_statuses if a[0] == "SDCardStatus"][-1][2] == 200
    track = await ask(p, CruiseTrackQuery(sn=0, device_id=cam_up, number=3))
    assert isinstance(track, CruiseTrackResponse) and (track.number, track.name) == (3, "往返")
    assert track.sum_num == 4 and [p.preset_index for p in track.items] == [1, 2, 3, 1]
    pos = await one_shot_position(p, nvr_up)
    assert pos.device_id == nvr_up and pos.sum_num == 2
    assert [i.device_id for i in pos.items] == [nvr_up, cam_up]  # the upper's IDs inside too


# -- a subscription covers what its DeviceID names (RFC 6665; reference §5.1, §7.4) -----------
async def position_from(gw: Gateway, dev: SimDevice, lon: float, item: str | None = None) -> None:
    """``dev`` reports a position by MESSAGE and the gateway has handled it."""
    before = gw.metrics.get("position.received")
    await dev.send_position(lon, 31.5, device_id=item, via="message")
    await wait_for(lambda: gw.metrics.get("position.received") > before, 3, "position in")


async def test_a_position_subscription_carries_only_what_its_device_id_names(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """SUBSCRIBE for NVR 1 (by its recoded ID): NVR 2's positions stay out; for a channel:
    only that channel's; for the gateway: everyone's. A position that is left out goes before
    the one awaited, in the same dialog, so it would have arrived first."""
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy="recode", civil_code="340100")
    gw = await gateway_with(start_gateway, up)
    one = nvr(device_endpoint, gw, NVR1, channel_count=2)
    two = nvr(device_endpoint, gw, NVR2, channel_count=1)
    await synced_nvr(gw, one)
    await synced_nvr(gw, two)
    await online_at(p)
    await p.catalog(GW)
    to_upper = upper_ids(gw)

    async def reported(*moves: tuple[SimDevice, float, str | None]) -> list[tuple[str, float]]:
        """Each move sent in turn; the positions that came up (DeviceID, longitude) once the
        last one did."""
        start = len(p.positions)
        for dev, lon, item in moves:
            await position_from(gw, dev, lon, item)
        last = moves[-1][1]
        await wait_for(lambda: any(m.longitude == last for m in p.positions[start:]), 3, "up")
        return [(m.device_id, m.longitude or 0.0) for m in p.positions[start:]]

    sub = await p.subscribe(GW, "MobilePosition", target=to_upper(NVR1))
    assert sub.active
    seen = await reported((two, 100.5, None), (one, 117.1, None), (one, 117.2, one.channel_id(1)))
    assert seen == [(to_upper(NVR1), 117.1), (to_upper(one.channel_id(1)), 117.2)]
    sub = await p.subscribe(GW, "MobilePosition", target=to_upper(one.channel_id(2)))
    seen = await reported((one, 117.3, None), (one, 117.4, one.channel_id(1)),
                          (one, 117.5, one.channel_id(2)))  # fmt: skip
    assert seen == [(to_upper(one.channel_id(2)), 117.5)]
    sub = await p.subscribe(GW, "MobilePosition", target=GW)
    seen = await reported((two, 100.6, None), (one, 117.6, None))
    assert seen == [(to_upper(NVR2), 100.6), (to_upper(NVR1), 117.6)]


async def test_an_alarm_subscription_for_one_device_gets_only_its_alarms(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """Another device's alarm does not go in the subscription's dialog: it goes by MESSAGE,
    as to an upper without an alarm subscription."""
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    one = nvr(device_endpoint, gw, NVR1, channel_count=1)
    two = nvr(device_endpoint, gw, NVR2, channel_count=1)
    await synced_nvr(gw, one)
    await synced_nvr(gw, two)
    await online_at(p)
    sub = await p.subscribe(GW, "Alarm", target=NVR1)
    assert sub.active
    await two.send_alarm(two.channel_id(1), priority=2)
    await one.send_alarm(one.channel_id(1), priority=1)
    await wait_for(lambda: len(p.alarms) == 2, 3, "both alarms")
    notified = [m.device_id for r, m in p.notifies if isinstance(m, AlarmNotify)]
    assert notified == [one.channel_id(1)]
    assert {a.device_id for a in p.alarms} == {one.channel_id(1), two.channel_id(1)}


async def test_a_catalog_subscription_for_one_device_gets_only_its_changes(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    one = nvr(device_endpoint, gw, NVR1, channel_count=1)
    two = nvr(device_endpoint, gw, NVR2, channel_count=1)
    await synced_nvr(gw, one)
    await synced_nvr(gw, two)
    await online_at(p)
    sub = await p.subscribe(GW, "Catalog", target=NVR1)
    assert sub.active
    await wait_for(lambda: all(d.subscription("Catalog") for d in (one, two)), 5, "subscribed")
    added = [
        CatalogItem(device_id=f"{dev.device_id[:10]}131{dev.device_id[-3:]}0099", name="新通道",
                    parent_id=dev.device_id, status="ON") for dev in (two, one)
    ]  # fmt: skip
    await two.notify_catalog([("ADD", added[0])])
    await one.notify_catalog([("ADD", added[1])])
    await wait_for(lambda: ("ADD", added[1].device_id) in p.catalog_events, 3, "ADD upward")
    assert ("ADD", added[0].device_id) not in p.catalog_events


# -- a lower platform registered as a device: its tree keeps its shape upward ----------------
LOWER = "34020000002000000007"


def lower_tree() -> list[CatalogItem]:
    """Two NVR items (ParentID the lower platform) with two cameras each (ParentID the NVR)."""
    items = []
    for k in (1, 2):
        nvr_id = f"{LOWER[:10]}118995000{k}"
        items.append(CatalogItem(device_id=nvr_id, name=f"下级平台NVR{k}", parent_id=LOWER,
                                 civil_code="340200", status="ON"))  # fmt: skip
        items += [CatalogItem(device_id=f"{LOWER[:10]}131996{k}{n:03d}", name=f"摄像机{k}-{n}",
                              parent_id=nvr_id, civil_code="340200", status="ON")
                  for n in (1, 2)]  # fmt: skip
    return items


@pytest.mark.parametrize("id_policy", ["keep", "recode"])
async def test_a_lower_platforms_cameras_stay_under_their_nvrs_upward(
    upper_endpoint, start_gateway, device_endpoint, id_policy: str
) -> None:
    p = platform(upper_endpoint)
    up = upper_config(upper_endpoint, id_policy=id_policy, civil_code="340100")
    gw = await gateway_with(start_gateway, up)
    tree = lower_tree()
    lower = nvr(device_endpoint, gw, LOWER, channel_count=0, catalog_extra_items=tree,
                name="下级平台")  # fmt: skip
    await synced_nvr(gw, lower)
    await online_at(p)
    res = await p.catalog(GW)
    to_upper = upper_ids(gw)
    by_id = {i.device_id: i for i in res.items}
    assert by_id[to_upper(LOWER)].parent_id == GW
    for item in tree:
        got = by_id[to_upper(item.device_id)]
        assert got.parent_id == to_upper(item.parent_id or ""), item.device_id
