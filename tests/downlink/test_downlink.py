"""The downlink against the simulated NVR over real sockets: sync, queries, controls, alarms,
subscriptions and NOTIFYs (GB/T 28181-2022 §9.3–§9.7, §9.11)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from gateway.app import Gateway
from gateway.downlink import DeviceUnavailable, QueryTimeout
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    CatalogSynced,
    MediaStatusReceived,
    MobilePositionReceived,
)
from gateway.manscdp import (
    AlarmSelector,
    BasicParam,
    CatalogItem,
    CatalogResponse,
    ConfigDownloadResponse,
    CruiseTrackListResponse,
    CruiseTrackResponse,
    DeviceConfig,
    DeviceControl,
    DeviceInfoQuery,
    HomePosition,
    HomePositionResponse,
    MediaStatus,
    PtzPositionResponse,
    SDCardStatusResponse,
    ZoomBox,
    encode,
    item_kind,
    ptz,
)
from gateway.metrics import Metrics
from gateway.routes import sniff_cmd_type
from gateway.sip import Endpoint, Peer, Request, Response, TimerConfig, parse
from tests.conftest import make_config, sim, wait_for

NVR = "34020000001180000001"
FAST = {"response_timeout": 3.0, "idle_timeout": 0.5}


def nvr(ep: Endpoint, gw: Gateway, transport: str = "udp", **kw: Any) -> SimDevice:
    dev = sim(ep, gw, kw.pop("device_id", NVR), transport, **kw)
    dev.install()
    return dev


def record_answers(ep: Endpoint) -> dict[str, list[int]]:
    """The SIP status the gateway gave each MESSAGE sent from ``ep``, by the body's CmdType."""
    seen: dict[str, list[int]] = {}
    send = ep.request

    async def recording(req: Request, peer: Peer, **kw: Any) -> Response:
        resp = await send(req, peer, **kw)
        if req.method == "MESSAGE":
            seen.setdefault(sniff_cmd_type(req.body) or "?", []).append(resp.status)
        return resp

    ep.request = recording  # type: ignore[method-assign]
    return seen


def subscribed(gw: Gateway, kind: str = "Catalog") -> bool:
    """The gateway holds an accepted subscription of ``kind`` to the NVR."""
    sub = gw.subscriptions.get(NVR, kind) if gw.subscriptions is not None else None
    return sub is not None and sub.active


def synced(gw: Gateway) -> list[CatalogSynced]:
    seen: list[CatalogSynced] = []
    gw.events.subscribe(CatalogSynced, seen.append)
    return seen


def changes(gw: Gateway) -> list[CatalogChange]:
    seen: list[CatalogChange] = []
    gw.events.subscribe(CatalogChange, seen.append)
    return seen


def channels_of(gw: Gateway, owner: str = NVR) -> dict[str, CatalogItem]:
    return {i.device_id: i for i in gw.catalog.items_of(owner) if i.device_id[10:13] == "131"}


@pytest.mark.parametrize(
    ("transport", "per_message", "messages"), [("udp", 1, 1000), ("tcp", 250, 4)]
)
async def test_1000_channels_sync_completely(
    start_gateway, device_endpoint, transport: str, per_message: int, messages: int
) -> None:
    """UDP: one item per MESSAGE (Hikvision practice); TCP: 250 items per MESSAGE."""
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, transport, channel_count=1000, items_per_message=per_message)
    statuses = record_answers(device_endpoint)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 30, "catalog sync")
    assert done[0].partial is False and done[0].added == 1000 and done[0].total == 1000
    stored = channels_of(gw)
    assert set(stored) == set(dev.channel_ids())
    assert stored[dev.channel_id(7)].name == "通道7"
    assert gw.metrics.get("message.stray_response") == 0
    # Every part was answered 200 at once and counted once.
    assert sum(1 for q in dev.queries if q.CMD == "Catalog") == 1
    info = gw.registrar.devices[NVR]  # type: ignore[union-attr]
    assert (info.name, info.manufacturer, info.channel_count) == (dev.name, dev.manufacturer, 1000)
    await gw.store.flush()
    assert len([k for k in gw.store.load_items() if k[0] == NVR]) == 1000
    # The parts really were split so, and the gateway answered every one of them 200.
    assert statuses["Catalog"] == [200] * messages


async def test_tree_nodes_are_stored_with_their_parents(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    region = CatalogItem(device_id="340200", name="芜湖市")
    dev = nvr(device_endpoint, gw, channel_count=4, with_groups=True, catalog_extra_items=[region])
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "sync")
    group, org1, org2 = dev.group_ids()
    items = {i.device_id: i for i in gw.catalog.items_of(NVR)}
    assert items["340200"] == region and item_kind("340200") == "region"
    assert items[group].device_id[10:13] == "215"
    assert items[org1].group_id == group and items[org2].parent_ids == (org1,)
    in_org = [i for i in items.values() if len(i.parent_ids) == 2]
    assert in_org and all(i.parent_ids[0] == NVR for i in in_org)
    assert {i.device_id for i in gw.catalog.children(org1)} >= {org2}


async def test_dropped_fragment_gives_a_partial_result(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=50, items_per_message=5, drop_parts={3})
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "sync")
    assert done[0].partial is True and done[0].total == 45
    missing = {dev.channel_id(n) for n in range(16, 21)}
    assert not missing & set(channels_of(gw))
    assert gw.metrics.get("query.partial") == 1
    # A later complete answer fills the gap (a partial one never removes anything).
    dev.drop_parts = frozenset()
    res = await gw.downlink.catalog_query(NVR)  # type: ignore[union-attr]
    assert res.partial is False and len(res.items) == 50 and res.sum_num == 50


async def test_wrong_sum_num_is_partial_and_repeats_do_not_count_twice(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=10, items_per_message=3, wrong_sum_num=12)
    assert (await dev.register()).status == 200
    res = await gw.downlink.catalog_query(NVR)  # type: ignore[union-attr]
    assert res.partial and len(res.items) == 10 and res.sum_num == 12


async def test_notify_add_del_off_change_the_store_and_emit_events(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=5)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done) and subscribed(gw), 10, "sub")
    sub = gw.subscriptions.get(NVR, "Catalog")  # type: ignore[union-attr]
    assert sub is not None and sub.active and sub.event.startswith("Catalog;id=")
    seen = changes(gw)
    added = CatalogItem(
        device_id="34020000001310009999", name="新增通道", parent_id=NVR, status="ON"
    )
    first = dev.subscribes[0]
    assert first.get_header("Expires") == "600"  # GB/T 28181-2022 Annex N default
    assert (first.get_header("Event") or "").startswith("Catalog;id=")
    await dev.notify_catalog(
        [("OFF", dev.channel_id(1)), ("DEL", dev.channel_id(2)), ("ADD", added)]
    )
    await wait_for(lambda: len(seen) == 3, 5, "three changes")
    assert [(c.event, c.item_id) for c in seen] == [
        ("OFF", dev.channel_id(1)),
        ("DEL", dev.channel_id(2)),
        ("ADD", added.device_id),
    ]
    assert seen[0].before is not None and seen[0].before.status == "ON"
    stored = channels_of(gw)
    assert stored[dev.channel_id(1)].status == "OFF"
    assert dev.channel_id(2) not in stored
    assert stored[added.device_id].name == "新增通道"
    await gw.store.flush()
    assert (NVR, added.device_id) in {(o, i.device_id) for o, i in gw.store.load_items()}
    # Back ON, a fault on another channel, and an ON that changes nothing (no event).
    await dev.notify_catalog(
        [("ON", dev.channel_id(1)), ("DEFECT", dev.channel_id(3)), ("ON", dev.channel_id(4))]
    )
    await wait_for(lambda: len(seen) == 5, 5, "two more changes")
    assert [(c.event, c.item_id) for c in seen[3:]] == [
        ("ON", dev.channel_id(1)),
        ("DEFECT", dev.channel_id(3)),
    ]
    assert channels_of(gw)[dev.channel_id(1)].status == "ON"
    assert channels_of(gw)[dev.channel_id(3)].status == "OFF"
    await asyncio.sleep(0.1)
    assert len(seen) == 5


async def test_subscription_is_refreshed_in_its_dialog_and_renewed_after_reboot(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=2)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done) and subscribed(gw), 10, "first subscribe")
    subs = gw.subscriptions
    assert subs is not None
    assert await subs.subscribe(NVR, "Catalog", 2)  # a short Expires: refreshed at 70-85 %
    await wait_for(lambda: len(dev.subscribes) >= 3, 5, "refresh")
    call_ids = {r.call_id for r in dev.subscribes}
    assert len(call_ids) == 1  # refreshes stay in the dialog
    assert all(r.to.tag for r in dev.subscribes[1:])
    # A reboot (new Call-ID while registered) means a fresh sync and a new subscription.
    await dev.reboot(0)
    await wait_for(lambda: len(done) == 2, 10, "second sync")
    await wait_for(lambda: len({r.call_id for r in dev.subscribes}) == 2, 10, "new dialog")


async def test_device_offline_turns_channels_off_and_coming_back_resyncs(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=3)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "sync")
    seen = changes(gw)
    assert (await dev.unregister()).status == 200
    await wait_for(lambda: len(seen) == 3, 5, "channels off")
    assert {c.event for c in seen} == {"OFF"}
    assert all(i.status == "OFF" for i in channels_of(gw).values())
    assert gw.subscriptions.get(NVR, "Catalog") is None  # type: ignore[union-attr]
    seen.clear()
    assert (await dev.register()).status == 200
    await wait_for(lambda: len(done) == 2, 10, "resync")
    assert [c.event for c in seen] == ["ON", "ON", "ON"]
    assert done[1].added == 0 and done[1].changed == 3


async def test_ptz_reaches_the_device_with_the_exact_bytes(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=2)
    assert (await dev.register()).status == 200
    gw.catalog.apply_sync(NVR, [dev.channel_item(1)], partial=False)
    downlink = gw.downlink
    assert downlink is not None
    await downlink.ptz(dev.channel_id(1), ptz.ptz_move(pan=1, tilt=1, pan_speed=0x40))
    await downlink.ptz(dev.channel_id(1), "a50f0100000000b5")  # sent exactly as given
    await wait_for(lambda: len(dev.ptz_commands) == 2, 3, "PTZ")
    # Up-right, pan speed 0x40, tilt speed 0x80: sum of bytes 1..7 = 0x17E.
    assert dev.ptz_commands == ["A50F01094080007E", "a50f0100000000b5"]
    control = dev.controls[0]
    assert control.device_id == dev.channel_id(1)


async def test_controls_with_and_without_an_answer(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=2)
    assert (await dev.register()).status == 200
    dl = gw.downlink
    assert dl is not None
    cam = dev.channel_id(1)
    record = await dl.control(NVR, DeviceControl(sn=0, device_id=cam, record_cmd="Record"))
    assert record is not None and record.result == "OK" and dev.recording
    guard = await dl.control(NVR, DeviceControl(sn=0, device_id=NVR, guard_cmd="SetGuard"))
    assert guard is not None and guard.result == "OK" and dev.guard
    reset = await dl.control(NVR, DeviceControl(sn=0, device_id=NVR, alarm_cmd="ResetAlarm"))
    assert reset is not None and reset.result == "OK"
    home = HomePosition(enabled=1, reset_time=60, preset_index=2)
    answered = await dl.control(NVR, DeviceControl(sn=0, device_id=cam, home_position=home))
    assert answered is not None and dev.home_position == home
    box = ZoomBox(length=1920, width=1080, mid_point_x=960, mid_point_y=540, length_x=320)
    assert await dl.control(NVR, DeviceControl(sn=0, device_id=cam, drag_zoom_in=box)) is None
    assert await dl.control(NVR, DeviceControl(sn=0, device_id=cam, iframe_cmd="Send")) is None
    out = DeviceControl(sn=0, device_id=cam, drag_zoom_out=box)
    assert await dl.control(NVR, out) is None
    selective = DeviceControl(
        sn=0, device_id=NVR, alarm_cmd="ResetAlarm", info=AlarmSelector(alarm_method="2")
    )
    assert (await dl.control(NVR, selective)) is not None
    await wait_for(lambda: len(dev.controls) == 8, 3, "controls")
    assert dev.controls[4].drag_zoom_in == box and dev.controls[5].iframe_cmd == "Send"
    assert dev.controls[6].drag_zoom_out == box
    assert dev.controls[7].info is not None and dev.controls[7].info.alarm_method == "2"
    # The I-frame command is spelt as the device's edition has it (2016 IFameCmd, 2022 IFrameCmd).
    record = gw.registrar.devices[NVR]  # type: ignore[union-attr]
    iframe = DeviceControl(sn=1, device_id=cam, iframe_cmd="Send")
    assert b"<IFameCmd>" in dl.body_for(record, iframe)
    record.gb_version = "3.0"
    assert b"<IFrameCmd>" in dl.body_for(record, iframe)
    # DeviceConfig has a Response; the device applies it.
    cfg = DeviceConfig(sn=0, device_id=NVR, basic_param=BasicParam(name="大门NVR", expiration=1800))
    answer = await dl.configure(NVR, cfg)
    assert answer.result == "OK" and dev.basic_param is not None
    assert dev.basic_param.name == "大门NVR"
    # TeleBoot has no answer; the device reboots and registers anew.
    reboots = dev.reboots
    assert await dl.control(NVR, DeviceControl(sn=0, device_id=NVR, tele_boot="Boot")) is None
    await wait_for(lambda: dev.reboots == reboots + 1 and dev.registered, 5, "reboot")


async def test_record_info_with_300_records_in_many_messages(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=2, record_count=300, items_per_message=8)
    assert (await dev.register()).status == 200
    gw.catalog.apply_sync(NVR, list(dev.catalog_items()), partial=False)
    dl = gw.downlink
    assert dl is not None
    cam = dev.channel_id(1)
    res = await dl.record_info(cam, "2024-05-20T00:00:00", "2024-05-20T23:59:59")
    assert not res.partial and res.sum_num == 300 and len(res.items) == 300
    assert len(res.responses) == 38  # 300 records, 8 per message
    query = next(q for q in dev.queries if q.CMD == "RecordInfo")
    assert query.type == "all" and query.device_id == cam  # type: ignore[attr-defined]
    starts = sorted(r.start_time for r in res.items)
    assert starts[0] >= "2024-05-20T00:00:00" and starts[-1] <= "2024-05-20T23:59:59"


async def test_other_queries_return_typed_results(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=2, gb_version="3.0")
    assert (await dev.register()).status == 200
    gw.catalog.apply_sync(NVR, list(dev.catalog_items()), partial=False)
    dl = gw.downlink
    assert dl is not None
    cam = dev.channel_id(1)
    status = await dl.device_status(NVR)
    assert status.result == "OK" and status.online == "ONLINE"
    info = await dl.device_info(NVR)
    assert info.device_name == dev.name and info.channel == 2
    cfg = await dl.config_download(NVR, "BasicParam/VideoParamOpt")
    assert not cfg.partial and len(cfg.responses) == 2
    basic = next(
        r for r in cfg.responses if isinstance(r, ConfigDownloadResponse) and r.basic_param
    )
    assert basic.basic_param is not None and basic.basic_param.name == dev.name  # type: ignore[union-attr]
    presets = await dl.preset_query(cam)
    assert [p.preset_id for p in presets.items] == [p.preset_id for p in dev.presets]
    home = await dl.home_position(cam)
    assert isinstance(home, HomePositionResponse) and home.result == "OK"
    tracks = await dl.cruise_track_list(cam)
    assert isinstance(tracks, CruiseTrackListResponse) and tracks.items
    track = await dl.cruise_track(cam, tracks.items[0].number or 0)
    assert isinstance(track, CruiseTrackResponse) and track.items
    pos = await dl.ptz_position(cam)
    assert isinstance(pos, PtzPositionResponse) and pos.zoom is not None
    sd = await dl.sd_card_status(NVR)
    assert isinstance(sd, SDCardStatusResponse) and sd.items
    assert {q.CMD for q in dev.queries} >= {
        "HomePositionQuery",
        "CruiseTrackListQuery",
        "CruiseTrackQuery",
        "PTZPosition",
        "SDCardStatus",
    }


async def test_alarm_arrives_as_an_event_is_answered_and_stored(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    alarms: list[AlarmReceived] = []
    gw.events.subscribe(AlarmReceived, alarms.append)
    dev = nvr(device_endpoint, gw, channel_count=2)
    assert (await dev.register()).status == 200
    resp = await dev.send_alarm(dev.channel_id(2), priority=1, method=5, alarm_type=2)
    assert resp is not None and resp.status == 200
    await wait_for(lambda: bool(alarms) and bool(dev.alarm_responses), 3, "alarm + response")
    alarm = alarms[0].alarm
    assert (alarm.device_id, alarm.channel_id, alarm.priority, alarm.method, alarm.alarm_type) == (
        NVR,
        dev.channel_id(2),
        1,
        5,
        2,
    )
    assert alarm.description == "移动侦测报警"
    assert dev.alarm_responses[0].result == "OK"
    await gw.store.flush()
    assert gw.store.load_alarms()[0].channel_id == dev.channel_id(2)


async def test_alarm_and_position_subscriptions(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(
        downlink={**FAST, "alarm_subscription": True, "mobile_position_subscription": True}
    )
    alarms: list[AlarmReceived] = []
    positions: list[MobilePositionReceived] = []
    gw.events.subscribe(AlarmReceived, alarms.append)
    gw.events.subscribe(MobilePositionReceived, positions.append)
    # Positions are sent by hand here, not every Interval.
    dev = nvr(device_endpoint, gw, channel_count=1, no_position_reports=True)
    assert (await dev.register()).status == 200
    await wait_for(
        lambda: all(dev.subscription(k) for k in ("Catalog", "Alarm", "MobilePosition")), 10, "subs"
    )
    await dev.send_alarm(via="notify")
    await dev.send_position(117.2275, 31.8207, form="2022", via="notify")
    await dev.send_position(117.1, 31.1, form="2016", via="notify")
    await wait_for(lambda: len(alarms) == 1 and len(positions) == 2, 3, "notifies")
    assert positions[0].positions[0].longitude == 117.2275
    assert positions[1].positions[0].latitude == 31.1
    assert gw.metrics.get("notify.outside_dialog") == 0


async def test_gb2312_declared_utf8_sent_is_stored_right_and_answered_in_kind(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=3, charset_lie=True)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "sync")
    assert channels_of(gw)[dev.channel_id(3)].name == "通道3"
    record = gw.registrar.devices[NVR]  # type: ignore[union-attr]
    assert (record.charset, record.declared_charset) == ("UTF-8", "GB2312")
    dl = gw.downlink
    assert dl is not None
    body = dl.body_for(record, DeviceInfoQuery(sn=1, device_id="通道"))
    assert body.startswith(b'<?xml version="1.0" encoding="GB2312"?>')
    assert "通道".encode() in body  # UTF-8 bytes, as the device itself sends


async def test_slow_device_gets_at_most_the_configured_queries_at_once(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(
        downlink={**FAST, "sync_on_register": False, "max_queries_per_device": 2}
    )
    dev = nvr(device_endpoint, gw, channel_count=1, response_delay=0.4)
    assert (await dev.register()).status == 200
    dl = gw.downlink
    assert dl is not None
    tasks = [asyncio.create_task(dl.device_status(NVR)) for _ in range(6)]
    await wait_for(lambda: len(dev.queries) == 2, 3, "two queries")
    await asyncio.sleep(0.1)
    assert len(dev.queries) == 2  # the others wait their turn
    results = await asyncio.gather(*tasks)
    assert all(r.result == "OK" for r in results) and len(dev.queries) == 6


async def test_failures_are_clear_errors_and_garbage_is_refused(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dl = gw.downlink
    assert dl is not None
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        await dl.device_info(NVR)
    dev = nvr(device_endpoint, gw, channel_count=1, mute=True)
    assert (await dev.register()).status == 200
    with pytest.raises(QueryTimeout, match="no answer"):
        await dl.device_status(NVR)
    dev.mute, dev.garbage = False, True
    with pytest.raises(QueryTimeout):
        await dl.device_status(NVR)
    await wait_for(lambda: gw.metrics.get("message.bad_body") >= 1, 3, "garbage counted")
    dev.garbage = False
    assert (await dl.device_status(NVR)).result == "OK"  # and it keeps serving
    assert (await dev.unregister()).status == 200
    with pytest.raises(DeviceUnavailable, match="offline"):
        await dl.device_status(NVR)


async def test_catalog_cli_prints_the_stored_catalog_while_running(
    start_gateway, device_endpoint, tmp_path: Path
) -> None:
    config = make_config(tmp_path, downlink=FAST)
    gw = await start_gateway(config)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=3, with_groups=True)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "sync")
    await gw.store.flush()
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{config.store.path}"\n', encoding="utf-8"
    )
    cmd = [sys.executable, "-m", "gateway.cli", "catalog", "--config", str(cfg_file)]
    out = await asyncio.to_thread(
        subprocess.run, [*cmd, "--json"], capture_output=True, text=True, timeout=30, check=True
    )
    rows = json.loads(out.stdout)
    by_id = {r["DeviceID"]: r for r in rows}
    assert by_id[dev.channel_id(2)]["Name"] == "通道2"
    assert (
        by_id[dev.channel_id(2)]["kind"] == "channel"
        and by_id[dev.channel_id(2)]["owner_id"] == NVR
    )
    assert by_id[dev.group_ids()[0]]["kind"] == "business_group"
    table = await asyncio.to_thread(
        subprocess.run,
        [*cmd, "--device", NVR],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "通道1" in table.stdout and "3 channels" in table.stdout


async def test_restart_keeps_the_catalog_and_subscribes_again(
    tmp_path: Path, device_endpoint
) -> None:
    config = make_config(tmp_path, downlink=FAST)
    gw = Gateway(config)
    await gw.start()
    try:
        done = synced(gw)
        dev = nvr(device_endpoint, gw, channel_count=4)
        assert (await dev.register()).status == 200
        await wait_for(lambda: bool(done) and len(dev.subscribes) == 1, 10, "sync + sub")
        port = gw.port
    finally:
        await gw.close()
    again = Gateway(make_config(tmp_path, downlink=FAST, sip={"port": port}))
    await again.start()
    try:
        assert set(channels_of(again)) == set(dev.channel_ids())
        await wait_for(lambda: len({r.call_id for r in dev.subscribes}) == 2, 10, "resubscribe")
    finally:
        await again.close()


# -- what a review found: each of these failed on the first version ---------------------------


async def test_another_device_cannot_answer_or_wipe_a_pending_query(
    start_gateway, device_endpoint
) -> None:
    """An answer is only taken from the queried device's registered address."""
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    victim = nvr(device_endpoint, gw, channel_count=3, mute=True)
    assert (await victim.register()).status == 200
    gw.catalog.apply_sync(NVR, list(victim.catalog_items()), partial=False)
    other_ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await other_ep.start("127.0.0.1", 0)
    try:
        attacker = nvr(other_ep, gw, device_id="34020000001180000002", channel_count=1)
        assert (await attacker.register()).status == 200
        dl = gw.downlink
        assert dl is not None
        query = asyncio.create_task(dl.catalog_query(NVR))
        await wait_for(lambda: bool(dl.pending), 3, "query pending")
        ((_, sn),) = dl.pending
        forged = CatalogResponse(sn=sn, device_id=NVR, sum_num=0)
        body = encode(forged)
        req = attacker.build_message(body)
        req.set_header("From", f"<sip:{NVR}@3402000000>;tag=forged")  # even claiming to be A
        assert (await other_ep.request(req, attacker.server)).status == 200
        with pytest.raises(QueryTimeout):
            await query
        assert gw.metrics.get("message.stray_response") == 1
        assert len(channels_of(gw)) == 3  # nothing was removed
    finally:
        await other_ep.close()


@pytest.mark.parametrize("sum_num", [-1, 10**9, 1])
async def test_impossible_sum_num_is_partial_and_removes_nothing(
    start_gateway, device_endpoint, sum_num: int
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False, "max_items": 1000})
    dev = nvr(device_endpoint, gw, channel_count=4, items_per_message=2, wrong_sum_num=sum_num)
    assert (await dev.register()).status == 200
    gw.catalog.apply_sync(NVR, list(dev.catalog_items()), partial=False)
    dl = gw.downlink
    assert dl is not None
    res = await dl.catalog_query(NVR)
    assert res.partial and res.sum_num == sum_num
    assert gw.catalog.apply_sync(NVR, res.items, partial=res.partial).removed == 0


def rewrite_catalog_bodies(ep: Endpoint, rewrite: Any) -> None:
    """Make every Catalog Response MESSAGE sent from ``ep`` carry ``rewrite(body)``: bytes the
    simulated device's own (sanitising) encoder would not write."""
    send = ep.request

    async def rewriting(req: Request, peer: Peer, **kw: Any) -> Response:
        if req.method == "MESSAGE" and sniff_cmd_type(req.body) == "Catalog":
            req.body = rewrite(req.body)
        return await send(req, peer, **kw)

    ep.request = rewriting  # type: ignore[method-assign]


STALE = "34020000001310009999"  # a channel stored before, which the device does not list now


@pytest.mark.parametrize("sum_num", ["1000000000000", "-5", "abc", "over max_items"])
async def test_a_sync_with_an_impossible_sum_num_applies_every_item_and_removes_nothing(
    start_gateway, device_endpoint, sum_num: str
) -> None:
    """Issue 13 item 6: such a sync ended as ``catalog.synced items=0``. The items that came
    are applied (up to ``max_items``: a real NVR with more channels than that), nothing is
    removed, the sync is partial, and the bad count is logged and counted."""
    gw = await start_gateway(downlink={**FAST, "max_items": 4})
    done = synced(gw)
    if sum_num == "over max_items":
        # SumNum 6 > max_items 4, in parts of 3: channels 1-4 are kept, 5 and 6 dropped.
        dev = nvr(device_endpoint, gw, channel_count=6, items_per_message=3)
    else:
        dev = nvr(device_endpoint, gw, channel_count=4, items_per_message=1)
        wrong = f"<SumNum>{sum_num}</SumNum>".encode()
        rewrite_catalog_bodies(device_endpoint, lambda b: b.replace(b"<SumNum>4</SumNum>", wrong))
    stale = CatalogItem(device_id=STALE, name="旧通道", parent_id=NVR, status="ON")
    gw.catalog.apply_sync(NVR, [stale], partial=False)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "catalog sync")
    kept = {dev.channel_id(n) for n in (1, 2, 3, 4)}
    assert {i.device_id for i in gw.catalog.items_of(NVR)} == {*kept, STALE}
    assert done[0].partial is True and done[0].added == 4 and done[0].removed == 0
    assert gw.metrics.get("query.bad_sum_num") == 1
    if sum_num == "over max_items":
        assert gw.metrics.get("query.items_dropped") == 2


async def test_a_catalog_with_control_characters_is_stored_clean_and_goes_up_well_formed(
    start_gateway, device_endpoint, upper_endpoint
) -> None:
    """Issue 13 item 7: names with C0 and C1 controls (``\\x01``, ``\\x1b``, U+009B). Before,
    a C0 control made the device's whole part refused, and a C1 one was stored raw and made
    the catalog answer to the upper not well-formed (a GB 2312 document with GB 18030 bytes)."""
    upper_id = "34010000002000000001"
    p = SimPlatform(upper_endpoint, platform_id=upper_id, domain=upper_id[:10]).start()
    gw = await start_gateway(
        downlink=FAST,
        uplink={
            "platforms": [
                {
                    "id": upper_id,
                    "domain": upper_id[:10],
                    "host": "127.0.0.1",
                    "port": upper_endpoint.port,
                    "password": "12345678",
                    "transport": "tcp",
                }
            ]
        },
    )
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=3, items_per_message=3)
    evil = {
        "通道1": "通\x01道\x1b[31m1".encode("gb18030"),
        "通道2": "通道\u009b2".encode("gb18030"),
        "通道3": "通道&#x1b;&#155;3".encode("gb18030"),
    }

    def inject(body: bytes) -> bytes:
        for name, raw in evil.items():
            body = body.replace(
                f"<Name>{name}</Name>".encode("gb18030"), b"<Name>" + raw + b"</Name>"
            )
        return body

    rewrite_catalog_bodies(device_endpoint, inject)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "catalog sync")
    names = {i.device_id: i.name for i in gw.catalog.items_of(NVR)}
    assert names[dev.channel_id(1)] == "通道[31m1"
    assert names[dev.channel_id(2)] == "通道2"
    assert names[dev.channel_id(3)] == "通道3"
    await wait_for(
        lambda: gw.config.gateway.id in p.lowers and p.lowers[gw.config.gateway.id].online,
        5,
        "upper",
    )
    res = await p.catalog(gw.config.gateway.id)
    assert not res.partial and res.raw
    strict = etree.XMLParser(recover=False, resolve_entities=False)
    for raw in res.raw:
        etree.fromstring(parse(raw).body, strict)  # raises unless well-formed
    up = {i.device_id: i.name for i in res.items}
    assert up[dev.channel_id(1)] == "通道[31m1" and up[dev.channel_id(2)] == "通道2"


async def test_items_with_a_bad_device_id_are_refused_and_the_others_synced(
    start_gateway, device_endpoint
) -> None:
    """Issue 13 item 7: an item with DeviceID ``../../etc/passwd'";--`` was stored."""
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    bad = CatalogItem(device_id="../../etc/passwd'\";--", name="x", parent_id=NVR)
    dev = nvr(device_endpoint, gw, channel_count=3, items_per_message=2, catalog_extra_items=[bad])
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 10, "catalog sync")
    assert set(channels_of(gw)) == set(dev.channel_ids())
    assert gw.catalog.get(bad.device_id) is None
    assert done[0].partial is False and done[0].added == 3
    assert gw.metrics.get("catalog.bad_item_id") == 1
    await gw.store.flush()
    assert bad.device_id not in {i.device_id for _, i in gw.store.load_items()}


async def test_restart_after_expiry_turns_the_channels_off(tmp_path: Path, device_endpoint) -> None:
    config = make_config(tmp_path, downlink=FAST)
    gw = Gateway(config)
    await gw.start()
    try:
        done = synced(gw)
        dev = nvr(device_endpoint, gw, channel_count=2, expires=60)
        assert (await dev.register()).status == 200
        await wait_for(lambda: bool(done), 10, "sync")
    finally:
        await gw.close()
    later = Gateway(make_config(tmp_path, downlink=FAST), clock=lambda: time.time() + 3600)
    await later.start()
    try:
        assert not later.registrar.devices[NVR].online  # type: ignore[union-attr]
        assert {i.status for i in channels_of(later).values()} == {"OFF"}
    finally:
        await later.close()


async def test_refresh_answered_481_starts_a_new_dialog(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=1)
    assert (await dev.register()).status == 200
    subs = gw.subscriptions
    assert subs is not None

    def active() -> bool:
        sub = subs.get(NVR, "Catalog")
        return sub is not None and sub.active

    await wait_for(lambda: bool(done) and active(), 10, "subscribed")
    first = dev.subscribes[0].call_id
    dev.subscriptions.clear()  # the device forgot the dialog (it will answer 481)
    assert not await subs.subscribe(NVR, "Catalog", 600)
    await wait_for(lambda: dev.subscription("Catalog") is not None and active(), 5, "new dialog")
    assert dev.subscribes[-1].call_id != first and not dev.subscribes[-1].to.tag
    fresh = subs.get(NVR, "Catalog")
    assert fresh is not None and fresh.active


async def test_undecodable_notify_is_still_answered_200(start_gateway, device_endpoint) -> None:
    """An error would make the device drop the subscription (RFC 6665 §4.2.2)."""
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=1)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done) and subscribed(gw), 10, "sub")
    sub = dev.subscription("Catalog")
    assert sub is not None
    resp = await dev.notify(sub, b"<Notify><CmdType>Catalog</CmdType><SN>x")
    assert resp is not None and resp.status == 200
    assert gw.metrics.get("notify.bad_body") == 1


async def test_unsubscribe_is_not_undone_by_a_terminating_notify(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, channel_count=1)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done) and subscribed(gw), 10, "sub")
    subs = gw.subscriptions
    assert subs is not None
    assert await subs.unsubscribe(NVR, "Catalog")
    assert subs.get(NVR, "Catalog") is None
    await asyncio.sleep(0.3)
    assert subs.get(NVR, "Catalog") is None and dev.subscription("Catalog") is None


async def test_media_status_is_handed_to_the_session_layer(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    seen: list[MediaStatusReceived] = []
    gw.events.subscribe(MediaStatusReceived, seen.append)
    dev = nvr(device_endpoint, gw, channel_count=1)
    assert (await dev.register()).status == 200
    req = dev.build_message(encode(MediaStatus(sn=5, device_id=dev.channel_id(1), notify_type=121)))
    req.set_header("Call-ID", "playback-dialog-1")  # MediaStatus travels inside the INVITE dialog
    assert (await device_endpoint.request(req, dev.server)).status == 200
    assert [(e.device_id, e.call_id, e.notify_type) for e in seen] == [
        (NVR, "playback-dialog-1", 121)
    ]


async def test_gb28181_sim_command_against_the_gateway(start_gateway) -> None:
    """The hand-run simulator: three NVRs register, sync and keep alive against the gateway."""
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    exe = Path(sys.executable).parent / "gb28181-sim"
    cmd = [str(exe), "device", "--server", f"127.0.0.1:{gw.port}", "--count", "3"]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        "--channels",
        "5",
        "--groups",
        "--keepalive",
        "1",
        "--duration",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: len(done) == 3, 15, "three syncs")
        assert sorted(d.added for d in done) == [8, 8, 8]  # 5 channels + 3 group nodes
        await wait_for(lambda: gw.metrics.get("keepalive.ok") >= 3, 5, "keepalives")
    finally:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "34020000001180000001" in text and "Catalog" in text


async def test_alarm_from_an_offline_device_or_another_host_is_refused(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=1)
    assert (await dev.register()).status == 200
    other = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await other.start("127.0.0.2", 0)  # another host on the loopback network
    try:
        forged = nvr(other, gw, channel_count=1)
        resp = await forged.send_alarm(dev.channel_id(1))
        assert resp is not None and resp.status == 404
        assert gw.metrics.get("message.address_mismatch") == 1
    finally:
        await other.close()
    assert (await dev.unregister()).status == 200
    resp = await dev.send_alarm(dev.channel_id(1))
    assert resp is not None and resp.status == 404
    assert gw.metrics.get("alarm.received") == 0


# -- RFC 3261 §18.1.1: large answers over TCP from a device registered over UDP ---------------


def record_transports(ep: Endpoint) -> list[tuple[str, str, int, int]]:
    """(CmdType, transport, bytes, SIP status) of each MESSAGE sent from ``ep``."""
    seen: list[tuple[str, str, int, int]] = []
    send = ep.request

    async def recording(req: Request, peer: Peer, **kw: Any) -> Response:
        size = len(req.to_bytes())
        resp = await send(req, peer, **kw)
        if req.method == "MESSAGE":
            seen.append((sniff_cmd_type(req.body) or "?", peer.transport, size, resp.status))
        return resp

    ep.request = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("per_message", [1, 5])
async def test_udp_device_sending_large_catalog_parts_over_tcp_is_fully_synced(
    start_gateway, device_endpoint, per_message: int
) -> None:
    """A device registered over UDP sends each catalog part above 1300 bytes over TCP (2022
    items with every Info field, one with a long name and address): every part is taken, from
    a port that is not the registered one, and every field arrives."""
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    long_one = CatalogItem(
        device_id="34020000001310009999",
        name="东门停车场入口枪机" * 12,
        address="北京市海淀区中关村大街" * 40,
        parent_id=NVR,
        civil_code="340200",
        status="ON",
    )
    dev = nvr(
        device_endpoint,
        gw,
        channel_count=12,
        with_groups=True,
        gb_version="3.0",
        large_over_tcp=True,
        items_per_message=per_message,
        catalog_extra_items=[long_one],
    )
    sent = record_transports(device_endpoint)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    assert not done[0].partial and done[0].total == dev.catalog_size() == 12 + 3 + 1
    parts = [(t, size, status) for cmd, t, size, status in sent if cmd == "Catalog"]
    assert {t for t, size, _ in parts if size > 1300} == {"tcp"}  # really sent over TCP
    assert all(status == 200 for _, _, status in parts)
    stored = {i.device_id: i for i in gw.catalog.items_of(NVR)}
    for item in dev.catalog_items():
        assert stored[item.device_id] == item, item.device_id
    assert stored[dev.channel_id(1)].info.grassroots_code == "340200"  # type: ignore[union-attr]
    assert gw.metrics.get("message.stray_response") == 0
    # The device is still where it registered: a TCP answer does not move it.
    info = gw.registrar.devices[NVR]
    assert info.online and info.transport == "udp" and info.port == device_endpoint.port


async def test_answer_over_tcp_from_another_host_is_refused(start_gateway, device_endpoint) -> None:
    """TCP answers are taken from the queried device's host only: a forged one over TCP from
    another host (claiming to be the device, with the right SN) is a stray and wipes nothing."""
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    victim = nvr(device_endpoint, gw, channel_count=3, mute=True)
    assert (await victim.register()).status == 200
    gw.catalog.apply_sync(NVR, list(victim.catalog_items()), partial=False)
    dl = gw.downlink
    assert dl is not None
    query = asyncio.create_task(dl.catalog_query(NVR))
    await wait_for(lambda: bool(dl.pending), 3, "query pending")
    ((_, sn),) = dl.pending
    # A connection from another host on the loopback network (an Endpoint would dial from
    # 127.0.0.1 whatever address it listens on).
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", gw.port, local_addr=("127.0.0.2", 0)
    )
    try:
        port = writer.get_extra_info("sockname")[1]
        req = victim.build_message(encode(CatalogResponse(sn=sn, device_id=NVR, sum_num=0)))
        req.prepend_header("Via", f"SIP/2.0/TCP 127.0.0.2:{port};branch=z9hG4bKforged1")
        writer.write(req.to_bytes())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"SIP/2.0 200 ")
        with pytest.raises(QueryTimeout):
            await query
    finally:
        writer.close()
    assert gw.metrics.get("message.stray_response") == 1
    assert len(channels_of(gw)) == 3  # nothing was removed
