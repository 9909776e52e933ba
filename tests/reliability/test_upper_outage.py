"""Fault: the upper platform disappears for "a minute" and comes back (issue 14).

The upper's process goes away: its SIP socket and its media sockets close, so the gateway's
keepalives and REGISTERs meet ICMP port-unreachable (on Linux, read at once) and its relay
outputs meet refused datagrams. "A minute" is scaled by the configuration: the registration
back-off starts at ``retry_interval`` = 0.1 s (60 s by default) and the outage lasts until
four REGISTERs have failed (about 1.5 s), long enough to see the back-off double.

Pass:

* the upper is seen offline, the live sessions forwarded to it end (the device's leg with a BYE
  to the device), and every relay port, SSRC and session entry is back to its resting count;
* while it is away the gateway retries registration with back-off: each gap between failed
  REGISTERs at least ``retry_interval × 2^k`` (k = 0, 1, 2, capped at 8×) and the gaps grow;
* when the upper is back (a new process on the same port, knowing nothing) the gateway
  registers again; its new catalog subscription gets the initial report of every offline item
  (Annex N) including a channel that went off while it was away, and its catalog query gets
  the whole shared tree, with a channel added while it was away: its view equals the
  gateway's;
* a new live session works and ends at rest again.

Catches: a retry loop without back-off (or a tight loop), a session or port left behind when
the upper vanished, catalog changes made during the outage missing after the return.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from conformance.peers.platform import SimPlatform
from gateway.manscdp import CatalogItem
from gateway.metrics import Metrics
from gateway.sip import Endpoint
from tests.conftest import wait_for
from tests.media.rig import GW, NVR, UP, device_session, fast_timers

pytestmark = pytest.mark.reliability

RETRY = 0.1
ADDED = "34020000001310009999"


@pytest.mark.timeout(60)
async def test_upper_gone_and_back_backoff_full_catalog_and_no_leak(
    rig_factory, upper_endpoint: Endpoint
) -> None:
    rig = await rig_factory(
        live_frames=None, upper={"retry_interval": RETRY, "keepalive_interval": 0.3}
    )
    gw, media = rig.gw, rig.media
    assert gw.uplink is not None
    if not gw.endpoint.transports.reports_icmp:
        pytest.skip("ICMP errors are read on Linux only")
    link = gw.uplink.sessions[UP].link
    await wait_for(lambda: rig.nvr.subscription("Catalog") is not None, 5, "subscribed down")
    calls = [await rig.invite(channel=rig.nvr.channel_id(n)) for n in (1, 2)]
    for call in calls:
        assert call.status == 200
        await call.receiver.wait_frames(3, timeout=10)
    assert len(media.legs) == 2

    # The upper's process goes away: SIP socket and media sockets closed, no BYE.
    port = upper_endpoint.port
    await rig.platform.close()
    await upper_endpoint.close()
    await wait_for(lambda: not link.online, 10, "the upper seen offline")
    await rig.at_rest()  # both forwarded sessions ended, every port and SSRC back
    for session in rig.nvr.media_sessions.values():
        assert session.ended and session.ended_by == "remote"  # the gateway BYEd the NVR

    # Meanwhile the catalog changes: a channel goes off, one is added.
    off = rig.nvr.channel_id(3)
    added = CatalogItem(device_id=ADDED, name="新通道", parent_id=NVR, status="ON")
    await rig.nvr.notify_catalog([("OFF", off), ("ADD", added)])
    await wait_for(lambda: gw.catalog.get(ADDED) is not None, 5, "catalog changed")

    # Back-off: the times at which registrations failed, until four have.
    failed_at: list[float] = []
    deadline = time.monotonic() + 20
    seen = link.failures
    while len(failed_at) < 4:
        assert time.monotonic() < deadline, f"retries stalled: {failed_at}"
        if link.failures != seen:
            seen = link.failures
            failed_at.append(time.monotonic())
        await asyncio.sleep(0.005)
    gaps = [b - a for a, b in itertools.pairwise(failed_at)]
    for k, gap in enumerate(gaps, start=1):  # the sleep after failure k is RETRY·2^(k-1)·[1, 1.5)
        assert gap >= RETRY * min(2 ** (k - 1), 8) * 0.95, gaps
    assert gaps[-1] > gaps[0], gaps
    assert not link.online

    # The upper comes back on the same port, as a new process that knows nothing.
    back = Endpoint(metrics=Metrics(), timers=fast_timers())
    await back.start("127.0.0.1", port)
    platform = SimPlatform(back, platform_id=UP, domain=UP[:10]).start()
    try:
        await wait_for(
            lambda: GW in platform.lowers and platform.lowers[GW].online, 10, "registered again"
        )
        sub = await platform.subscribe(GW, "Catalog")
        assert sub.active
        await wait_for(lambda: ("OFF", off) in platform.catalog_events, 5, "initial report")
        res = await platform.catalog(GW)
        assert not res.partial and res.sum_num == len(res.items)
        theirs = {i.device_id: i.status for i in res.items}
        shared = await gw.uplink.sessions[UP].view.build_async(None)
        assert theirs == {i.device_id: i.status for i in shared}
        assert {NVR, *rig.nvr.channel_ids(), ADDED} <= set(theirs) and theirs[off] == "OFF"
        # The initial report names exactly the offline items (2022 Annex N).
        offline = {i.device_id for i in shared if i.status == "OFF"}
        assert {d for e, d in platform.catalog_events if e == "OFF"} == offline

        # The pools work again: a new session, ended, back at rest.
        call = await platform.invite(GW, rig.nvr.channel_id(1))
        assert call.status == 200
        await call.receiver.wait_frames(3, timeout=10)
        await call.bye()
        await rig.at_rest()
        assert device_session(rig).ended
    finally:
        await platform.close()
        await back.close()
