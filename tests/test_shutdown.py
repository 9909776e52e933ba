"""A clean stop: SIGTERM with work in flight leaves only the gateway's own log lines.

A gateway in its own process (started as an operator starts it) is given work that cannot finish
before it is told to stop: a catalog sync waiting for a mute device, a query and a live INVITE an
upper sent to a device that does not answer, a Broadcast waiting for the device's Response, and a
device's INVITE for broadcast audio waiting for the upper. Then SIGTERM. Nothing asyncio reports
about lost futures, unawaited coroutines or pending tasks may reach the output, nor a traceback,
and the process exits 0. The last test checks an INVITE that is stopped before its set-up task
ever ran, in-process, where the timing is certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import socket
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from gateway.manscdp import DeviceStatusQuery
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, Request, ServerContext, TimerConfig, build_request
from tests.conftest import sim, wait_for
from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.timeout(120)

GW = "34020000002000000001"
UP = "34010000002000000001"
NVR = "34020000001180000001"  # answers nothing once synced; rings the upper for audio
MUTE = "34020000001320000002"  # never answers a query: its first sync is still waiting
SLOW = "34020000001180000003"  # takes a minute to answer a Broadcast

NOISE = (
    "was never retrieved",
    "was never awaited",
    "Task was destroyed but it is pending",
    "Traceback",
    "Exception ignored",
    "unhandled exception",
)


class SilentPlatform(SimPlatform):
    """An upper that never answers the INVITEs it gets (the gateway's INVITE for broadcast
    audio stays pending)."""

    def _on_invite(self, req: Request, ctx: ServerContext) -> None:
        return None


def free_media_ports(width: int = 100) -> tuple[int, int]:
    """A slice of ports (even start) that are all free for UDP and TCP on loopback now, picked at
    random below the kernel's ephemeral range, so tests and gateways running side by side do not
    meet on a fixed range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    top = max(ephemeral_low, 20000 + 4 * width)
    for _ in range(50):
        low = random.randrange(20000, top - width) & ~1
        with contextlib.ExitStack() as held:
            try:
                for port in range(low, low + width):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        sock = held.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return low, low + width - 1
    raise RuntimeError(f"no {width} free ports in a row below {top}")


def fast() -> TimerConfig:
    return TimerConfig(t1=0.1, t2=0.4, t4=0.5)


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    up = Endpoint(metrics=Metrics(), timers=fast())
    down = Endpoint(metrics=Metrics(), timers=fast())
    await up.start("127.0.0.1", 0)
    await down.start("127.0.0.1", 0)
    yield up, down
    await up.close()
    await down.close()


async def test_sigterm_with_work_in_flight_stops_quietly(
    tmp_path: Path, endpoints: tuple[Endpoint, Endpoint]
) -> None:
    up_ep, down_ep = endpoints
    platform = SilentPlatform(up_ep, platform_id=UP, domain=UP[:10]).start()
    low, high = free_media_ports()
    gw = await GatewayProcess.start(
        tmp_path,
        media={"host": "127.0.0.1", "port_min": low, "port_max": high, "invite_timeout": 60},
        downlink={"response_timeout": 60},
        uplink={
            "platforms": [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": up_ep.port,
                    "password": "12345678",
                    "keepalive_interval": 5,
                    "retry_interval": 0.2,
                }
            ]
        },
    )
    work: list[asyncio.Future[Any]] = []
    try:
        server = Peer("udp", "127.0.0.1", gw.port)
        nvr = SimDevice(down_ep, NVR, server, channel_count=2, audio_outputs=1)
        slow = SimDevice(down_ep, SLOW, server, channel_count=1, audio_outputs=1)
        mute = SimDevice(down_ep, MUTE, server, mute=True)
        for dev in (nvr, slow, mute):
            dev.install()
        for dev in (nvr, slow):
            assert (await dev.register()).status == 200
        await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 10, "upper")
        await gw.wait_event("catalog.synced")
        await wait_for(lambda: len(gw.named("catalog.synced")) == 2, 10, "both catalogs synced")
        # Now nothing gets an answer.
        nvr.mute = nvr.invite_mute = True
        slow.response_delay = 60.0
        assert (await mute.register()).status == 200
        await wait_for(lambda: bool(mute.queries), 10, "the mute device's first query")
        status = DeviceStatusQuery(sn=0, device_id=NVR)
        work.append(asyncio.ensure_future(platform.query(GW, status)))
        work.append(asyncio.ensure_future(platform.invite(GW, nvr.channel_id(1), timeout=60)))
        work.append(asyncio.ensure_future(platform.broadcast(GW, nvr.audio_output_id(1))))
        work.append(asyncio.ensure_future(platform.broadcast(GW, slow.audio_output_id(1))))

        def in_flight() -> bool:
            return (
                any(isinstance(q, DeviceStatusQuery) for q in nvr.queries)
                and len(nvr.invites) == 1  # the upper's live INVITE, unanswered
                and len(nvr.broadcast_sessions) == 1  # the INVITE for audio, pending upstream
                and len(slow.broadcasts) == 1  # the Broadcast, its Response a minute away
            )

        await wait_for(in_flight, 15, "work in flight")
        assert await gw.stop() == 0
    finally:
        for f in work:
            f.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        await platform.close()
        await nvr.close_media()
        await gw.kill()
    text = gw.text
    assert gw.named("gateway.stopped"), text
    noise = [line for line in text.splitlines() if any(n in line for n in NOISE)]
    assert noise == [], text
    failed = [e for e in gw.events if e.get("level") in ("error", "critical")]
    assert failed == [], text


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm", "sigterm-to-group", "ctrl-c"],
)
async def test_a_signal_at_once_after_start_stops_quietly_with_relay_workers(
    tmp_path: Path, sig: int, group: bool
) -> None:
    """The signal comes the moment ``gateway.started`` is written (a service restarted at once,
    a hasty Ctrl-C), and reaches the relay workers too when it goes to the process group as a
    terminal or a service manager sends it. The gateway stops as it would later: exit 0, its
    last line written, the workers stopped by it rather than killed under it."""
    low, high = free_media_ports()
    gw = await GatewayProcess.start(
        tmp_path, media={"host": "127.0.0.1", "port_min": low, "port_max": high, "workers": 2}
    )
    try:
        code = await gw.stop(sig, group=group)
    finally:
        await gw.kill()
    text = gw.text
    assert code == 0, text
    assert gw.named("gateway.stopped"), text
    assert gw.named("relay.workers_stopped"), text
    assert not gw.named("relay.worker_died"), text
    noise = [line for line in text.splitlines() if any(n in line for n in NOISE)]
    assert noise == [], text
    assert "KeyboardInterrupt" not in text


async def test_an_invite_stopped_before_its_task_ran_leaves_no_unawaited_coroutine(
    start_gateway: Any, device_endpoint: Endpoint
) -> None:
    """A device's INVITE (for voice broadcast audio) arrives in the same loop turn as the stop:
    its set-up coroutine was made, its task never ran. Closing must not leave the coroutine
    unawaited (``RuntimeWarning: coroutine 'VoiceBroadcast.on_invite' was never awaited``)."""
    gw = await start_gateway(downlink={"sync_on_register": False})
    dev = sim(device_endpoint, gw, NVR)
    assert (await dev.register()).status == 200
    invite = build_request(
        "INVITE",
        f"sip:{GW}@127.0.0.1:{gw.port}",
        from_uri=f"sip:{NVR}@3402000000",
        to_uri=f"sip:{GW}@3402000000",
    )
    ctx = ServerContext(gw.endpoint, Peer("udp", "127.0.0.1", device_endpoint.port), None, invite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert gw.calls.on_invite(invite, ctx) is None  # answered later, by a task
        await gw.calls.close()  # in the same turn: the task is cancelled before it starts
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
    unawaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert unawaited == []
