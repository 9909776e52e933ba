"""Fault: the gateway is killed with SIGKILL in the middle of a registration storm, then started
again on the same SQLite file (issue 14).

Pass: every device that got its 200 OK before the kill is in the store after the restart, with
the address it registered from, and is served by the new process (its keepalive gets 200, no
re-registration); the ID mapping the upper knows the channels by is the same row for row, and
the upper's catalog query after the restart answers with the same IDs.

Catches: a 200 OK sent before the binding was committed (the SQLite store writes in batches
every ``store.flush_interval``: without the group commit a SIGKILL loses the registrations of
the last interval, which this test sees as acknowledged devices missing after the restart), and
an ID mapping rewritten or lost across the crash.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import DeviceHub, SimDevice
from conformance.peers.platform import SimPlatform
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer
from gateway.store import read_devices, read_id_map
from tests.conftest import wait_for
from tests.gateway_process import GatewayProcess
from tests.media.rig import GW, UP, fast_timers

pytestmark = pytest.mark.reliability

NVR = "34020000001180000001"
STORM = 300


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    up, down = (Endpoint(metrics=Metrics(), timers=fast_timers()) for _ in range(2))
    await up.start("127.0.0.1", 0)
    await down.start("127.0.0.1", 0)
    yield up, down
    await up.close()
    await down.close()


def sections(db: Path, upper_port: int) -> dict[str, Any]:
    return {
        "store": {"backend": "sqlite", "path": str(db), "flush_interval": 0.2},
        "log": {"level": "warning"},
        "downlink": {"response_timeout": 3.0, "idle_timeout": 0.5},
        "uplink": {
            "platforms": [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": upper_port,
                    "password": "12345678",
                    "keepalive_interval": 1.0,
                    "retry_interval": 0.2,
                    "id_policy": "recode",
                    "civil_code": "3401",
                }
            ]
        },
    }


async def start(tmp_path: Path, config: dict[str, Any]) -> GatewayProcess:
    # GatewayProcess waits for gateway.started, an info line: let that one through.
    gw = await GatewayProcess.start(tmp_path, **{**config, "log": {"level": "info"}})
    return gw


@pytest.mark.timeout(120)
async def test_sigkill_in_a_registration_storm_loses_no_acknowledged_device(
    tmp_path: Path, endpoints: tuple[Endpoint, Endpoint]
) -> None:
    up_ep, down_ep = endpoints
    db = tmp_path / "gw.db"
    config = sections(db, up_ep.port)
    platform = SimPlatform(up_ep, platform_id=UP, domain=UP[:10]).start()
    hub = DeviceHub(down_ep)
    gw = await start(tmp_path, config)
    storm: asyncio.Future[Any] | None = None
    try:
        server = Peer("udp", "127.0.0.1", gw.port)
        nvr = hub.add(SimDevice(down_ep, NVR, server, channel_count=4, with_groups=True))
        assert (await nvr.register()).status == 200
        await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 10, "upper")
        # The upper sees the NVR's channels under recoded IDs; the mapping is stored.
        local = {NVR, *nvr.channel_ids(), *nvr.group_ids()}

        async def shared() -> list[str]:
            res = await platform.catalog(GW)
            return sorted(i.device_id for i in res.items if i.device_id != GW)

        async def all_shared() -> None:
            for _ in range(50):  # the sync may still be running: bounded retries
                if len(await shared()) == len(local):
                    return
            raise AssertionError("the NVR's catalog never reached the upper")

        await asyncio.wait_for(all_shared(), 30)
        before_ids = await shared()
        await wait_for(
            lambda: {r[1] for r in read_id_map(db)} >= local, 10, "the ID mapping committed"
        )
        mapping = sorted(r for r in read_id_map(db) if r[1] in local)
        assert sorted(r[2] for r in mapping) == before_ids

        storm_devices = [
            hub.add(SimDevice(down_ep, f"3402000000132{n:07d}", server))
            for n in range(1001, 1001 + STORM)
        ]
        storm = asyncio.ensure_future(hub.register_all(concurrency=64))
        await wait_for(
            lambda: sum(d.registered for d in storm_devices) >= STORM // 3, 30, "storm under way"
        )
        registered = platform.lowers[GW].registrations
        await gw.kill()  # SIGKILL to the process group, mid-storm
        await asyncio.sleep(0)  # let answers already read be handled (no waiting on time)
        acked = {d.device_id: d for d in storm_devices if d.registered}
        assert len(acked) < STORM, "the storm ended before the kill: nothing was tested"
        storm.cancel()

        gw = await start(tmp_path, config)
        stored = {d.device_id: d for d in read_devices(db)}
        missing = sorted(set(acked) - set(stored))
        assert not missing, f"{len(missing)} acknowledged registrations lost: {missing[:5]}"
        assert all(stored[i].port == down_ep.port and stored[i].online for i in acked)
        assert stored[NVR].online
        assert sorted(r for r in read_id_map(db) if r[1] in local) == mapping

        # Served by the new process: keepalives of the unexpired registrations get 200.
        server = Peer("udp", "127.0.0.1", gw.port)
        checked = [*acked.values(), nvr]
        for d in checked:
            d.server = server
        answers = await asyncio.gather(*(d.keepalive() for d in checked))
        assert [r.status for r in answers] == [200] * len(checked)
        # The upper, registered to anew, gets the same IDs for the same channels.
        await wait_for(
            lambda: platform.lowers[GW].registrations > registered, 10, "registered again"
        )
        # (storm devices synced since add their own channels to the answer)
        assert set(before_ids) <= set(await shared())
        assert await gw.stop(signal.SIGTERM) == 0
    finally:
        if storm is not None:
            storm.cancel()
            await asyncio.gather(storm, return_exceptions=True)
        hub.stop()
        await platform.close()
        await gw.kill()
