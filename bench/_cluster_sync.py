"""Catalog sync across the nodes of a cluster: how long until the upper's node holds every
node's channels (issue 18's "catalog sync of 200,000 channels across three nodes").

:func:`measure_catalog_sync` starts a redis-server of its own (``tests/redisrig.py``) and
``nodes`` in-process gateway nodes on 127.0.0.2, .3... (each with its own memory store: what
the first node knows of the others comes over the bus, as events and snapshots), and simulated
NVRs with up to 1,000 channels each, spread round-robin over the nodes, each node's on one
``DeviceHub`` socket over TCP (100 items per MESSAGE). From the moment the NVRs start
registering it waits until every node has synced its own NVRs, then until the first node (the
upper's) holds every channel.

Figures: ``seconds_to_local_sync`` (registration start → the last node done with its own
NVRs), ``seconds_to_complete_at_upper_node`` (→ the first node holding every item of every
node), ``replication_lag_seconds`` (the difference: what the bus adds after the last local sync),
``events_sent``/``batches`` (bus traffic), ``redis_used_memory_bytes``.

Everything shares one process and one loop (3 gateways, the NVR simulators, the replication),
so the times are upper bounds for separate machines. Run it: ``python bench/_cluster_sync.py
[channels] [nodes]``; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

PER_DEVICE = 1_000
"""Channels of one simulated NVR (the last one may have fewer)."""


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _wait(predicate: Any, budget: float, what: str) -> float:
    """Seconds until ``predicate()`` (polled every 50 ms); raises after ``budget``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > budget:
            raise TimeoutError(f"{what}: not within {budget:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def measure_catalog_sync(
    channels: int, nodes: int, *, redis_url: str | None = None, budget: float = 1800.0
) -> dict[str, Any]:
    """Sync ``channels`` channels over ``nodes`` nodes; the figures above as a dict."""
    from conformance.peers.device import DeviceHub, SimDevice
    from gateway.metrics import Metrics
    from gateway.sip import Endpoint, Peer, TimerConfig
    from tests.cluster.rig import nvr_id, start_cluster
    from tests.redisrig import RedisServer

    devices = max(1, -(-channels // PER_DEVICE))
    with tempfile.TemporaryDirectory(prefix="cluster-sync-") as tmp:
        server = None
        if redis_url is None:
            server = RedisServer(Path(tmp) / "redis").start()
            redis_url = server.url
        cluster = await start_cluster(
            Path(tmp),
            redis_url,
            http=False,
            nodes=nodes,
            log_level="error",
            downlink={"response_timeout": 30.0, "idle_timeout": 10.0},
        )
        hubs: list[DeviceHub] = []
        try:
            x = cluster.nodes[0]
            for _ in cluster.nodes:
                ep = Endpoint(
                    metrics=Metrics(), timers=TimerConfig(), max_connections_per_ip=100_000
                )
                await ep.start("127.0.0.1", 0)
                cluster.endpoints.append(ep)
                hubs.append(DeviceHub(ep))
            expected: dict[str, int] = {}  # node host -> its NVRs
            left = channels
            for n in range(devices):
                gw = cluster.nodes[n % nodes]
                hub = hubs[n % nodes]
                count = min(PER_DEVICE, left)
                left -= count
                hub.add(
                    SimDevice(
                        hub.endpoint,
                        nvr_id(n + 1),
                        Peer("tcp", gw.config.sip.host, gw.port),
                        server_id=gw.config.gateway.id,
                        domain=gw.config.gateway.domain,
                        channel_count=count,
                        items_per_message=100,
                        channel_base=n * PER_DEVICE,
                    )
                )
                host = gw.config.sip.host
                expected[host] = expected.get(host, 0) + 1
            _log(f"cluster-sync: {channels} channels, {devices} NVRs, {nodes} nodes")
            started = time.monotonic()
            regs = await asyncio.gather(*(h.register_all(concurrency=32) for h in hubs))
            refused = sum(1 for r in regs for s in r.values() if s != 200)
            if refused:
                raise RuntimeError(f"{refused} NVRs were not registered")
            for hub in hubs:
                hub.start_keepalive(30.0)

            def local_done() -> bool:
                return all(len(cluster.synced[h]) >= k for h, k in expected.items())

            await _wait(local_done, budget, "local syncs")
            local = time.monotonic() - started
            _log(f"cluster-sync: every node synced its own NVRs in {local:.1f} s")

            def owned_here(gw: Any) -> int:
                rep = gw.replica
                return sum(
                    len(gw.catalog.items_of(o))
                    for o in gw.catalog.owners()
                    if rep.holder(o) is None
                )

            total = sum(owned_here(gw) for gw in cluster.nodes)
            await _wait(lambda: len(x.catalog) >= total, budget, "complete at the upper's node")
            complete = time.monotonic() - started
            _log(f"cluster-sync: the upper's node holds all {total} items at {complete:.1f} s")
            bus = x.bus
            assert bus is not None
            info: Any = await bus.redis.info("memory")
            sent = sum(gw.metrics.get("cluster.bus.events_sent") for gw in cluster.nodes)
            return {
                "channels": channels,
                "nodes": nodes,
                "devices": devices,
                "channels_per_device": min(PER_DEVICE, channels),
                "items_total": total,
                "seconds_to_local_sync": round(local, 2),
                "seconds_to_complete_at_upper_node": round(complete, 2),
                "replication_lag_seconds": round(complete - local, 2),
                "events_sent": sent,
                "batches": sum(gw.bus.seq for gw in cluster.nodes if gw.bus is not None),
                # Gaps seen by the upper's node (each one a re-fetch of that node's state).
                "gaps_at_upper_node": x.metrics.get("cluster.bus.gaps"),
                "redis_used_memory_bytes": int(info.get("used_memory", 0)),
                "note": "one process, one loop for every node and NVR: upper bounds",
            }
        finally:
            for hub in hubs:
                hub.stop()
            await cluster.close()
            if server is not None:
                server.stop()


def main() -> None:
    channels = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    from gateway.app import configure_logging
    from gateway.settings import config_from_dict

    configure_logging(config_from_dict({"log": {"level": "error"}}))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - not on Linux
        pass
    print(json.dumps(asyncio.run(measure_catalog_sync(channels, nodes)), indent=2))


if __name__ == "__main__":
    main()
