"""Fault: a device vanishes (its process and sockets are gone, nothing more is sent) in the
middle of a catalog sync, of a live session and of a playback (issue 14).

Pass:

* mid catalog sync over UDP: the device answered part of its catalog and went quiet; the answer
  idles out and is applied as a *partial* answer (``CatalogSynced.partial``, ``sync.partial``):
  the items that came are kept, nothing is removed, and once the device is judged offline its
  channels are OFF;
* mid catalog sync over TCP: the connection drops, the device is offline at once and the sync
  is cancelled; the unfinished answer is marked as interrupted (``sync.interrupted``, a
  ``catalog.sync_interrupted`` warning), never reported complete, and no channel of the device
  is left ON;
* mid live session and mid playback: the device stops keeping alive and its media stops; when it
  is judged offline both sessions end on both legs: the upper gets a BYE for each (the device
  leg ends without one: nobody is there to answer), and every relay port and SSRC is back in
  its pool. The relay's own RTP timeout is set far beyond the test's bounds, so only the
  offline path can end the sessions in time.

Catches: a vanished device's sessions left open towards the upper (or holding ports and SSRCs),
a half-received catalog reported as complete or dropped without a trace, channels of a vanished
device left ON.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.downlink import sync as sync_module
from gateway.events import DeviceOffline
from gateway.sip import Endpoint
from tests.conftest import wait_for
from tests.downlink.test_downlink import FAST, NVR, channels_of, nvr, synced
from tests.sip.test_transport import LogRecorder

pytestmark = pytest.mark.reliability

CHANNELS = 20
SENT = 8  # catalog parts (one channel each) the device sends before it vanishes


def offline_events(gw) -> list[DeviceOffline]:  # type: ignore[no-untyped-def]
    seen: list[DeviceOffline] = []
    gw.events.subscribe(DeviceOffline, seen.append)
    return seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_device_vanishing_mid_catalog_sync(
    start_gateway, device_endpoint: Endpoint, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = LogRecorder()
    monkeypatch.setattr(sync_module, "log", logged)
    gw = await start_gateway(
        downlink=FAST, keepalive={"interval": 1.0, "timeout_count": 2, "check_interval": 0.05}
    )
    done = synced(gw)
    gone = offline_events(gw)
    dev = nvr(
        device_endpoint,
        gw,
        transport,
        channel_count=CHANNELS,
        items_per_message=1,
        drop_parts=frozenset(range(SENT, 10 * CHANNELS)),  # then nothing more is sent
    )
    assert (await dev.register()).status == 200
    dev.start_keepalive(0.2)
    await wait_for(
        lambda: sum(cmd == "Catalog" for cmd, _, _ in dev.answer_statuses) >= SENT,
        10,
        "part of the catalog sent",
    )
    # The device vanishes: no more keepalives, its socket (and TCP connection) closed.
    dev.stop()
    await device_endpoint.close()
    await wait_for(lambda: bool(gone), 10, "the device judged offline")
    sent = {dev.channel_id(n) for n in range(1, SENT + 1)}
    channels = channels_of(gw)
    if transport == "udp":
        # Quiet before it was judged offline: the answer idled out and was applied as partial.
        assert [(d.partial, d.total) for d in done] == [(True, SENT)]
        assert gw.metrics.get("sync.partial") == 1 and gw.metrics.get("sync.complete") == 0
        assert set(channels) == sent
        assert gone[0].reason == "keepalive timeout"
    else:
        # Gone at once with its connection: the unfinished sync is marked, nothing applied.
        assert gone[0].reason == "connection lost"
        assert gw.metrics.get("sync.interrupted") == 1
        assert not any(not d.partial for d in done)
        marks = [(lv, f) for lv, e, f in logged.lines if e == "catalog.sync_interrupted"]
        assert marks == [("warning", {"device_id": NVR, "reason": "connection lost"})]
        assert set(channels) <= sent
    assert gw.metrics.get("sync.complete") == 0
    assert all(item.status == "OFF" for item in channels.values())


@pytest.mark.timeout(60)
async def test_device_vanishing_mid_live_and_playback_ends_both_legs(
    rig_factory, nvr_endpoint: Endpoint
) -> None:
    rig = await rig_factory(
        live_frames=None,
        playback_frames=100_000,
        media={"rtp_timeout": 60.0},
        gateway={"keepalive": {"interval": 0.5, "timeout_count": 2, "check_interval": 0.05}},
    )
    rig.nvr.start_keepalive(0.1)
    live = await rig.invite(channel=rig.nvr.channel_id(1))
    playback = await rig.invite(
        channel=rig.nvr.channel_id(2), kind="Playback", start=1716163200, stop=1716170400
    )
    calls = [live, playback]
    for call in calls:
        assert call.status == 200
        await call.receiver.wait_frames(3, timeout=10)
    assert len(rig.media.legs) == 2 and rig.media.ssrcs.in_use() >= 2
    assert {s.kind for s in rig.nvr.media_sessions.values()} == {"Play", "Playback"}

    # The NVR vanishes: keepalives stop, its media and SIP sockets close, no BYE from it.
    rig.nvr.stop()
    await rig.nvr.close_media()
    await nvr_endpoint.close()
    await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in calls)), 10)
    assert [c.ended_by for c in calls] == ["lower", "lower"]  # the gateway's BYE to the upper
    await rig.at_rest()  # the device legs ended too: relay streams closed, ports and SSRCs back
    assert not rig.gw.registrar.devices[rig.nvr.device_id].online
