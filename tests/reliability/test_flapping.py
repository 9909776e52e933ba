"""Fault: a thousand devices flap (go offline and register again) every few seconds while an
upper holds a catalog subscription (issue 14).

1,000 simulated devices (two :class:`DeviceHub` sockets of 500) register, then each round half
of them unregister and the other half fall silent and are judged offline by the keepalive
timeout, and all register again the next round. Catalog sync is off, so each device is its own
catalog entry upward: every ON and OFF reaches the upper as a catalog NOTIFY event (2022 §9.11).
Timings are scaled down: a keepalive timeout of 2 s, rounds of a few seconds, T1 = 30 ms and
T4 = 0.2 s so finished transactions are gone within 2 s.

Pass:

* ordered: the NOTIFYs of the subscription carry strictly increasing CSeq and SN, and each
  device's ON/OFF events reach the upper in exactly the order the gateway saw them happen
  (its DeviceOnline/DeviceOffline events);
* complete: nothing missing, nothing extra, and at the end the upper's view (each device's last
  event) equals the gateway's (who is online), with some devices online and some not;
* memory flat: no table (dict, list, set, deque) reachable from the gateway's parts grew, from
  the quiet end of the second round to the quiet end of the fourth, by as much as half an entry
  per device (a leak of one entry per flap would add 2,000).

Catches: NOTIFYs reordered or lost under churn (an OFF overtaking the ON before it), a per-flap
entry that is never removed (transactions, nonces, expiry heap, NOTIFY queues, lock-out or
liveness tables).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conformance.peers.device import DeviceHub, SimDevice
from conformance.peers.platform import SimPlatform
from gateway.app import Gateway
from gateway.events import DeviceOffline, DeviceOnline
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer
from tests.conftest import wait_for
from tests.media.rig import GW, UP, fast_timers

# Serial: 1,000 devices and nonces that live 1 s; on a machine other tests of the run load, a
# device's answer to its challenge can come after its nonce expired (401 stale, not 200).
pytestmark = [pytest.mark.reliability, pytest.mark.serial]

DEVICES = 1000
ROUNDS = 4
KEEPALIVE = {"interval": 1.0, "timeout_count": 2, "check_interval": 0.1}  # offline after 2 s


@pytest.fixture
async def hubs() -> AsyncIterator[list[DeviceHub]]:
    made: list[DeviceHub] = []
    for _ in range(2):
        ep = Endpoint(metrics=Metrics(), timers=fast_timers())
        await ep.start("127.0.0.1", 0)
        made.append(DeviceHub(ep))
    yield made
    for hub in made:
        hub.stop()
        await hub.endpoint.close()


def table_sizes(gw: Gateway) -> dict[str, int]:
    """The size of every container reachable from the gateway's parts (objects of the
    ``gateway`` package, a few levels deep, and the values of small dicts of them)."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()

    def fields(obj: Any) -> dict[str, Any]:
        out = dict(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    out[name] = getattr(obj, name)
        return out

    def walk(obj: Any, path: str, depth: int) -> None:
        if depth < 0 or id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in fields(obj).items():
            where = f"{path}.{name}"
            if isinstance(value, (dict, list, set, deque)):
                sizes[where] = len(value)
                if isinstance(value, dict) and len(value) <= 8:
                    for key, item in value.items():
                        if type(item).__module__.startswith("gateway."):
                            walk(item, f"{where}[{key}]", depth - 1)
            elif type(value).__module__.startswith("gateway."):
                walk(value, where, depth - 1)

    walk(gw, "gw", 4)
    return sizes


@pytest.mark.timeout(120)
async def test_a_thousand_flapping_devices_keep_notifies_ordered_complete_and_memory_flat(
    start_gateway, upper_endpoint: Endpoint, hubs: list[DeviceHub]
) -> None:
    platform = SimPlatform(upper_endpoint, platform_id=UP, domain=UP[:10]).start()
    gw = await start_gateway(
        sip={"t1": 0.03, "t4": 0.2},
        auth={"nonce_ttl": 1.0},
        keepalive=KEEPALIVE,
        downlink={"sync_on_register": False, "catalog_subscription": False},
        # Not an overload test: on a busy machine (parallel tests) the storms of 1,000
        # REGISTERs lag the loop past the load guard's bound, which would shed some with 503.
        overload={"enabled": False},
        uplink={
            "platforms": [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": upper_endpoint.port,
                    "password": "12345678",
                    "keepalive_interval": 1.0,
                    "retry_interval": 0.2,
                }
            ]
        },
    )
    server = Peer("udp", "127.0.0.1", gw.port)
    leaving = hubs[0]  # unregisters each round; the devices of hubs[1] go quiet and time out
    for n in range(DEVICES):
        hub = hubs[n % 2]
        hub.add(SimDevice(hub.endpoint, f"3402000000132{n + 1:07d}", server))
    try:
        await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 10, "upper")

        async def register_all() -> None:
            statuses = await asyncio.gather(*(h.register_all(concurrency=100) for h in hubs))
            assert all(s == 200 for by_id in statuses for s in by_id.values())

        async def all_offline() -> None:
            await leaving.unregister_all(concurrency=100)
            await wait_for(lambda: gw.registrar.online_count() == 0, 20, "every device offline")

        # Subscribed before any device exists: every ON and OFF from now on must go up.
        sub = await platform.subscribe(GW, "Catalog")
        assert sub.active
        start = len(platform.catalog_events)
        truth: dict[str, list[str]] = defaultdict(list)
        gw.events.subscribe(DeviceOnline, lambda e: truth[e.device_id].append("ON"))
        gw.events.subscribe(DeviceOffline, lambda e: truth[e.device_id].append("OFF"))

        def events_reached() -> bool:
            return len(platform.catalog_events) - start == sum(map(len, truth.values()))

        async def quiet_sizes() -> dict[str, int]:
            """Table sizes once every event went up and finished transactions are gone."""
            await wait_for(events_reached, 20, "every event notified")
            core = gw.endpoint.core
            await wait_for(
                lambda: len(core._server_txns) + len(core._client_txns) <= 2,
                20,
                "transactions expired",
            )
            return table_sizes(gw)

        warm: dict[str, int] = {}
        for r in range(ROUNDS):
            await register_all()
            await all_offline()
            if r == 1:
                warm = await quiet_sizes()
        # A leak of one entry per flap adds 2,000 over two rounds; caches bounded in time (nonces
        # within their TTL, transactions until timer J/K) move by less than half a round.
        grown = {
            k: (warm.get(k, 0), v)
            for k, v in (await quiet_sizes()).items()
            if v > warm.get(k, 0) + DEVICES // 2
        }
        assert not grown, f"tables that grew over two rounds of {DEVICES} flaps: {grown}"

        # The end: half the devices online again, keeping alive; the upper's view must equal
        # the gateway's.
        await leaving.register_all(concurrency=100)
        leaving.start_keepalive(0.5)

        def upper_view() -> dict[str, str]:
            return {d: e for e, d in platform.catalog_events[start:]}

        def gateway_view() -> dict[str, str]:
            return {d.device_id: "ON" if d.online else "OFF" for d in gw.registrar.values()}

        await wait_for(lambda: upper_view() == gateway_view(), 10, "the views agree")
        assert set(gateway_view().values()) == {"ON", "OFF"}

        # Ordered and complete, device by device: exactly what happened, in that order.
        assert len(truth) == DEVICES and all(len(seq) >= 2 * ROUNDS for seq in truth.values())
        upper: dict[str, list[str]] = defaultdict(list)
        for event, device_id in platform.catalog_events[start:]:
            upper[device_id].append(event)
        wrong = [d for d in truth if upper[d] != truth[d]]
        assert not wrong, (
            f"{len(wrong)} devices, e.g. {wrong[0]}: {upper[wrong[0]]} {truth[wrong[0]]}"
        )
        # NOTIFYs in the dialog: CSeq and SN strictly increasing, in arrival order.
        ours = [(r, m) for r, m in platform.notifies if r.call_id == sub.call_id]
        cseqs = [r.cseq.seq for r, _ in ours]
        sns = [m.sn for _, m in ours if m is not None]
        assert cseqs == sorted(set(cseqs)) and sns == sorted(set(sns))
        assert len(sns) == len(ours)
    finally:
        await platform.close()
