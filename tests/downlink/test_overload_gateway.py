"""Overload in the whole gateway: while it sheds, the devices it has registered keep alive and
refresh, an upper is served, and a device it does not know is told to come back later."""

from __future__ import annotations

import time

from conformance.peers.device import SimDevice
from gateway.sip import Endpoint
from tests.conftest import sim, wait_for

KNOWN = "34020000001320000001"
STRANGER = "34020000001320000002"


async def test_while_shedding_the_known_are_served_and_a_stranger_comes_back_later(
    start_gateway, device_endpoint: Endpoint
) -> None:
    gw = await start_gateway(downlink={"sync_on_register": False, "catalog_subscription": False})
    known: SimDevice = sim(device_endpoint, gw, KNOWN)
    assert (await known.register()).status == 200
    guard = gw.load_guard
    guard.share, guard.increase = 0.0, 0.0  # held in overload

    assert (await known.keepalive()).status == 200
    assert (await known.register()).status == 200  # its refresh, which starts unauthenticated
    stranger: SimDevice = sim(device_endpoint, gw, STRANGER)
    resp = await stranger.register()
    assert resp.status == 503, resp.status
    assert int(resp.get_header("Retry-After") or 0) >= guard.retry_after_min
    assert STRANGER not in gw.registrar
    assert gw.metrics.get("sip.rx.shed") == 1

    guard.increase = 0.05  # the overload passes
    await wait_for(lambda: guard.share == 1.0, 10, "shedding to stop")
    assert (await stranger.register()).status == 200
    assert gw.registrar.get(STRANGER) is not None


async def test_no_device_is_judged_silent_while_the_gateway_is_behind(
    start_gateway, device_endpoint: Endpoint
) -> None:
    # Its keepalives may be waiting in the gateway's own socket queue: judging it then would
    # turn the gateway's overload into false offlines (and re-registrations: more load).
    gw = await start_gateway(
        keepalive={"interval": 1.0, "timeout_count": 2, "check_interval": 0.05},
        downlink={"sync_on_register": False, "catalog_subscription": False},
    )
    dev: SimDevice = sim(device_endpoint, gw, KNOWN)
    assert (await dev.register()).status == 200
    record = gw.registrar.get(KNOWN)
    assert record is not None

    def silent() -> float:
        return time.time() - record.last_seen

    await wait_for(lambda: silent() >= 1.5, 5, "1.5 s of silence")
    guard = gw.load_guard
    guard.behind = True  # held behind: the ticks see an idle socket and would clear it
    guard.tick = lambda lag: None  # type: ignore[method-assign]
    await wait_for(lambda: silent() >= 2.5, 5, "2.5 s of silence")
    assert record.online  # past the 2 s timeout, but not judged while behind
    assert gw.metrics.get("keepalive.check_deferred") > 0
    # Deferred at most one timeout (2 s) in a row: a device really gone still goes offline.
    await wait_for(lambda: not record.online, 5, "the offline judgement")
    assert silent() < 5.0
