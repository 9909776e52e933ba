"""A dead upper is noticed at once (issue 13, item 19; RFC 3261 §18.4).

The upper's UDP port is closed: the kernel answers the gateway's REGISTER with an ICMP port
unreachable, the REGISTER's client transaction fails with a transport error right away, and the
registration's back-off starts then, not when timer F (64·T1 = 32 s) would have fired.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from gateway.app import Gateway
from tests.conftest import wait_for

UP = "34010000002000000001"


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
async def test_an_unreachable_upper_starts_the_back_off_at_once(
    start_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    upper = {
        "id": UP,
        "domain": UP[:10],
        "host": "127.0.0.1",
        "port": closed_udp_port(),
        "password": "12345678",
        "retry_interval": 60.0,
    }
    # Default timers: T1 0.5 s, so without the ICMP error the REGISTER would end at 32 s.
    gw = await start_gateway(uplink={"platforms": [upper]})
    if not gw.endpoint.transports.reports_icmp:
        pytest.skip("ICMP errors are read on Linux only")
    assert gw.endpoint.timers.timeout == 32.0
    link = gw.uplink.sessions[UP].link
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for(lambda: link.failures >= 1, 20, "the first registration failure")
    assert loop.time() - started < 10  # well before timer F
    assert not link.online
    assert gw.metrics.get("sip.tx.unreachable") >= 1
