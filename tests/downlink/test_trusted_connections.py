"""A registered device's TCP connection survives an attacker holding the rest (issue 13, item
4): the registrar marks the connection trusted when the REGISTER succeeds
(``Registrar._bind`` → ``Endpoint.mark_trusted``), so the connection cap evicts idle strangers
for new connections, never the device's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.app import Gateway
from gateway.metrics import Metrics
from gateway.sip import Endpoint
from tests.conftest import sim, wait_for

DEV = "34020000001320000001"
NEW = "34020000001320000002"


@pytest.mark.timeout(60)
async def test_a_registered_devices_connection_is_kept_at_the_cap(
    start_gateway: Callable[..., Awaitable[Gateway]], device_endpoint: Endpoint
) -> None:
    cap = 20
    gw = await start_gateway(sip={"max_connections": cap})
    dev = sim(device_endpoint, gw, DEV, transport="tcp")
    assert (await dev.register()).status == 200
    assert gw.registrar.devices[DEV].online

    idle: list[asyncio.StreamWriter] = []
    try:
        for i in range(3 * cap):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", gw.port, local_addr=(f"127.0.0.{2 + i % 4}", 0)
            )
            idle.append(writer)
        await wait_for(
            lambda: gw.metrics.get("sip.tcp.evicted") >= 2 * cap, 10, "strangers evicted"
        )
        # A new device from a new address registers, then both keep working.
        other = Endpoint(metrics=Metrics())
        await other.start("127.0.0.30", 0)
        try:
            new = sim(other, gw, NEW, transport="tcp")
            assert (await new.register()).status == 200
        finally:
            await other.close()
        assert (await dev.keepalive()).status == 200
        assert gw.registrar.devices[DEV].online  # its connection was never lost
        assert gw.metrics.get("sip.tcp.refused_cap") == 0
    finally:
        for writer in idle:
            writer.close()
