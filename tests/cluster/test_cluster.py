"""Any node serves any request (issue 18): three gateway nodes on 127.0.0.2, .3 and .4 with one
real redis-server between them, an NVR registered at each, one simulated upper registered at the
first node only. Each node has its own store, so everything the first node knows of the others
came over the bus (gateway.cluster: the replica's events and snapshots, node-to-node requests).

The upper sees one complete catalog; its query and control for a device on another node are
answered; its INVITE for a channel on another node streams (frames decoded at the upper) with
the relay on the device's node, and BYE from either side ends both; its catalog subscription
hears a device registering at another node; the console's live stream on the first node shows
a device going online at another node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance.peers.platform import RequestFailed, SimPlatform
from gateway.manscdp import DeviceControl
from gateway.media import MediaError
from gateway.metrics import Metrics
from gateway.sip import Endpoint
from tests.api.test_live import next_of, read_events
from tests.cluster.rig import GW, HOSTS, UP, Cluster, fast_timers, nvr_id, start_cluster
from tests.conftest import wait_for
from tests.redisrig import RedisServer

pytestmark = pytest.mark.timeout(90)

FRAMES = 30
TOKEN = "cluster-viewer-token-0123456789"


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    upper_ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await upper_ep.start("127.0.0.1", 0)
    c = await start_cluster(
        tmp_path, redis_server.url, upper_port=upper_ep.port, token=TOKEN, request_timeout=2
    )
    c.endpoints.append(upper_ep)
    c.platform = p = SimPlatform(upper_ep, platform_id=UP, domain=UP[:10]).start()
    try:
        for i, host in enumerate(HOSTS):
            ep = await c.endpoint()
            dev = c.nvr(ep, c.node(host), nvr_id(i + 1), channel_count=4, live_frames=FRAMES)
            assert (await dev.register()).status == 200
        for i, host in enumerate(HOSTS):
            await wait_for(lambda h=host, i=i: nvr_id(i + 1) in c.synced[h], 15, f"sync at {host}")
        x = c.node(HOSTS[0])
        want = {ch for d in c.devices for ch in d.channel_ids()}
        await wait_for(lambda: want <= set(x.catalog._owner), 10, "every channel at X")
        await wait_for(lambda: GW in p.lowers and p.lowers[GW].online, 10, "upper registered")
        yield c
    finally:
        await c.close()


async def test_the_upper_sees_one_complete_catalog(cluster: Cluster) -> None:
    p = cluster.upper
    res = await p.catalog(GW)
    assert res.ok
    ids = {i.device_id for i in res.items}
    for dev in cluster.devices:
        assert dev.device_id in ids
        assert set(dev.channel_ids()) <= ids
    x, y, _ = cluster.nodes
    # Remote devices are the replica's, never the registrar's: X does not judge their liveness.
    assert nvr_id(2) not in x.registrar.devices
    assert x.replica is not None and x.replica.holder(nvr_id(2)) == "node3"
    assert x.replica.holder(nvr_id(1)) is None
    # What Y's sync learnt of its NVR (DeviceInfo) reached X's record of it.
    await wait_for(lambda: x.replica.devices[nvr_id(2)].manufacturer == "SimVision", 5)
    # Nothing of another node's went into X's own store.
    assert {o for o, _ in x.store.load_items()} == {nvr_id(1)}
    assert y.metrics.get("cluster.bus.served") >= 1  # X's snapshot request, at least


async def test_query_and_control_for_a_device_on_another_node(cluster: Cluster) -> None:
    p = cluster.upper
    nvr_y, nvr_z = cluster.devices[1], cluster.devices[2]
    x, y, z = cluster.nodes
    before = y.metrics.get("query.sent.DeviceInfo")
    info = await p.device_info(GW, nvr_y.device_id)
    assert info.ok and info.responses[0].device_id == nvr_y.device_id
    status = await p.device_status(GW, nvr_z.channel_id(2))
    assert status.responses and status.responses[0].result == "OK"  # type: ignore[attr-defined]
    await p.ptz(GW, nvr_z.channel_id(1), "A50F0101808000B6")
    await wait_for(lambda: nvr_z.ptz_commands == ["A50F0101808000B6"], 5, "PTZ at the NVR")
    answer = await p.control(
        GW, DeviceControl(sn=0, device_id=nvr_y.channel_id(3), record_cmd="Record")
    )
    assert answer is not None and answer.result == "OK"
    assert x.metrics.get("query.remote.DeviceInfo") == 1
    assert x.metrics.get("control.remote") == 2
    # The device's own node talked to it.
    assert y.metrics.get("query.sent.DeviceInfo") == before + 1
    assert z.metrics.get("control.sent") == 1


async def test_invite_for_a_channel_on_another_node(cluster: Cluster) -> None:
    p = cluster.upper
    x, y, _ = cluster.nodes
    nvr_y = cluster.devices[1]
    call = await p.invite(GW, nvr_y.channel_id(2))
    assert call.status == 200
    assert await call.receiver.wait_frames(FRAMES, timeout=15) == FRAMES
    # The relay runs on Y (its address in the answer), none on X: one hop for the RTP.
    assert call.answer.host == HOSTS[1]
    assert len(y.media.legs) == 1 and not x.media.legs
    dev_session = next(iter(nvr_y.media_sessions.values()))
    assert dev_session.sender.frames_sent == FRAMES
    # The upper's BYE at X ends Y's leg: the NVR gets BYE.
    await call.bye()
    await wait_for(lambda: dev_session.ended, 5, "BYE reached the NVR")
    await wait_for(lambda: not y.media.legs and not y.media.local, 5, "Y's session ended")
    assert x.calls.relayed is not None and not x.calls.relayed.upstream

    # And the other way: the NVR's BYE ends the upper's session (X says BYE up).
    nvr_z = cluster.devices[2]
    nvr_z.live_frames = None
    call = await p.invite(GW, nvr_z.channel_id(1))
    await call.receiver.wait_frames(5, timeout=15)
    await nvr_z.bye(next(iter(nvr_z.media_sessions.values())).call_id)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.ended_by == "lower"
    await wait_for(lambda: not x.calls.relayed.upstream, 5)  # type: ignore[union-attr]


async def test_catalog_subscription_and_live_updates_hear_other_nodes(cluster: Cluster) -> None:
    p = cluster.upper
    x, _, z = cluster.nodes
    assert (await p.subscribe(GW, "Catalog")).status == 200
    new = nvr_id(9)
    async with httpx.AsyncClient(base_url=f"http://{HOSTS[0]}:{_http_port(x)}") as client:
        url = f"/api/v1/events?access_token={TOKEN}"
        async with client.stream("GET", url, timeout=30) as resp:
            assert resp.status_code == 200
            events = read_events(resp)
            assert await next_of(events, "sessions") == {"active": 0}
            dev = cluster.nvr(await cluster.endpoint(), z, new, channel_count=2)
            assert (await dev.register()).status == 200
            got = await next_of(events, "devices", timeout=10)
            assert {"id": new, "online": True} in got["changes"]
            got = await next_of(events, "catalog", timeout=10)
            assert new in got["devices"]
    # The upper's subscription at X hears the channels added at Z.
    want = {("ADD", ch) for ch in dev.channel_ids()}
    await wait_for(lambda: want <= set(p.catalog_events), 10, "ADD NOTIFYs from Z's device")
    # And Z's device going offline: OFF upward, from X.
    assert (await dev.unregister()).status == 200
    await wait_for(lambda: ("OFF", dev.channel_id(1)) in p.catalog_events, 10, "OFF upward")


def _http_port(gw: Any) -> int:
    assert gw.api is not None
    return int(gw.api.port)


async def test_a_node_that_does_not_answer(cluster: Cluster) -> None:
    """Z stops reading its inbox (hung, or cut from Redis): the upper's query for Z's device
    gets Result ERROR and its INVITE 504, after the bus timeout, not never."""
    p = cluster.upper
    x, _, z = cluster.nodes
    assert z.bus is not None
    for task in list(z.bus._tasks):
        task.cancel()
    nvr_z = cluster.devices[2]
    status = await p.device_status(GW, nvr_z.channel_id(1), timeout=15)
    assert status.responses and status.responses[0].result == "ERROR"  # type: ignore[attr-defined]
    with pytest.raises(RequestFailed) as failed:
        await p.invite(GW, nvr_z.channel_id(1), timeout=15)
    assert failed.value.status == 504
    assert x.metrics.get("cluster.bus.timeouts") == 2
    assert x.calls.relayed is not None and not x.calls.relayed.upstream


async def test_a_node_that_stops_takes_its_devices_offline(cluster: Cluster) -> None:
    p = cluster.upper
    x, _, z = cluster.nodes
    assert (await p.subscribe(GW, "Catalog")).status == 200
    nvr_z = cluster.devices[2]
    await z.close()
    cluster.nodes.remove(z)
    await wait_for(
        lambda: x.replica is not None and not x.replica.devices[nvr_z.device_id].online,
        5,
        "Z's NVR offline at X",
    )
    want = {("OFF", ch) for ch in nvr_z.channel_ids()}
    await wait_for(lambda: want <= set(p.catalog_events), 5, "OFF NOTIFYs upward")
    with pytest.raises(RequestFailed) as failed:
        await p.invite(GW, nvr_z.channel_id(1))
    assert failed.value.status == 480


async def test_relayed_playback_info_and_end_of_file(cluster: Cluster) -> None:
    """MANSRTSP INFO at the upper's node reaches the device on its node, and the device's end
    of file (MediaStatus 121) reaches the upper in its dialog."""
    p = cluster.upper
    x, y, _ = cluster.nodes
    nvr_y = cluster.devices[1]
    nvr_y.playback_frames = 100
    call = await p.invite(
        GW, nvr_y.channel_id(1), kind="Playback", start=1716163200, stop=1716163204
    )
    await call.receiver.wait_frames(5, timeout=15)
    dev = next(iter(nvr_y.media_sessions.values()))
    status, body = await call.pause()
    assert status == 200 and "RTSP/1.0 200" in body
    await wait_for(lambda: dev.sender.paused, 5, "paused at the device")
    status, _ = await call.play(range="now")
    assert status == 200
    await wait_for(lambda: not dev.sender.paused, 5, "resumed")
    assert [r.method for r in dev.infos] == ["PAUSE", "PLAY"]
    await wait_for(lambda: 121 in call.media_status, 20, "MediaStatus 121 at the upper")
    assert x.metrics.get("media.info.relayed") == 2
    await call.bye()
    await wait_for(lambda: not y.media.legs, 5, "Y's leg ended")


async def test_cancel_while_the_devices_node_sets_up(cluster: Cluster) -> None:
    """The upper CANCELs before the device (on another node) answered: nothing is left
    streaming on the device's node."""
    p = cluster.upper
    _, y, _ = cluster.nodes
    nvr_y = cluster.devices[1]
    nvr_y.invite_delay = 1.0
    status = await p.invite_cancel(GW, nvr_y.channel_id(4), delay=0.2)
    assert status == 487
    await wait_for(lambda: bool(nvr_y.media_sessions), 5, "the device was INVITEd")
    dev = next(iter(nvr_y.media_sessions.values()))
    await wait_for(lambda: dev.cancelled or dev.ended, 10, "the device's session ended")
    # Called off as soon as it was set up, never handed out as a relayed session.
    assert y.metrics.get("media.relayed.served") == 0
    await wait_for(
        lambda: not y.media.legs and not y.media.local and not y.calls.relayed.served,  # type: ignore[union-attr]
        10,
        "nothing left on Y",
    )


async def test_a_local_session_for_another_nodes_device_is_refused(cluster: Cluster) -> None:
    """A preview (local session) is not relayed across nodes: refused with the holder named,
    rather than this node INVITing a device that keeps alive to another."""
    x, _, _ = cluster.nodes
    with pytest.raises(MediaError) as refused:
        await x.calls.start_local(cluster.devices[1].channel_id(1), ("127.0.0.1", 9))
    assert refused.value.status == 503 and "node3" in refused.value.reason
    assert not x.media.legs


async def test_a_sync_asked_at_another_node_runs_at_the_devices_node(cluster: Cluster) -> None:
    """``POST /devices/{id}/sync`` (CatalogSync.schedule) at X for Y's NVR: Y syncs it and
    stores it; X never writes Y's device or items into its own store."""
    x, y, _ = cluster.nodes
    nvr_y = cluster.devices[1]
    synced_at_y = cluster.synced[HOSTS[1]]
    before = synced_at_y.count(nvr_y.device_id)
    await x.sync.schedule(nvr_y.device_id)
    await wait_for(lambda: synced_at_y.count(nvr_y.device_id) == before + 1, 10, "synced at Y")
    assert {o for o, _ in x.store.load_items()} == {nvr_id(1)}
    assert {d.device_id for d in x.store.load_devices()} == {nvr_id(1)}
    assert y.metrics.get("cluster.bus.served") >= 1
