"""Several gateway processes on one redis-server, a simulated upper above them (issue 18).

Each node is ``python -m gateway.cli run --config FILE`` (:class:`tests.gateway_process.
GatewayProcess`) on its own loopback address (127.0.0.2, .3, .4), with ``[store] backend =
"redis"``: the cluster is active, and the store is the shared Redis store where it is built
(on a checkout without it, each node keeps its own SQLite file at ``path`` and only the
cluster's leases, membership and per-upper state are in Redis). The upper is a
:class:`~conformance.peers.platform.SimPlatform` on 127.0.0.1 in the test's own loop.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from conformance.peers.platform import SimPlatform
from gateway.metrics import Metrics
from gateway.sip import Endpoint, TimerConfig
from tests.conftest import wait_for
from tests.gateway_process import GatewayProcess
from tests.redisrig import RedisServer

GW = "34020000002000000001"
UP = "34010000002000000001"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Node:
    """One gateway process of the cluster; restartable on the same address and folder."""

    def __init__(self, rig: ClusterRig, index: int, **sections: dict[str, Any]) -> None:
        self.rig = rig
        self.name = f"n{index + 1}"
        self.host = HOSTS[index]
        self.folder = rig.folder / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sections = sections
        self.proc: GatewayProcess | None = None
        self.port = 0

    async def start(self) -> Node:
        rig = self.rig
        index = HOSTS.index(self.host)
        sections: dict[str, dict[str, Any]] = {
            "gateway": {"id": GW, "domain": GW[:10]},
            "sip": {"host": self.host, "port": 0},
            "store": {
                "backend": "redis",
                "url": rig.redis.url,
                "prefix": "gb:",
                "path": str(self.folder / "gateway.db"),
                "flush_interval": 0.05,
            },
            "cluster": {"node_id": self.name, "lease_seconds": rig.lease_seconds},
            "media": {
                "host": self.host,
                "port_min": 41000 + 200 * index,
                "port_max": 41199 + 200 * index,
            },
            "http": {"host": self.host, "port": 0},
            "uplink": {"platforms": [rig.upper_config()]},
        }
        for name, values in self.sections.items():
            sections.setdefault(name, {}).update(values)
        self.proc = await GatewayProcess.start(self.folder, **sections)
        self.port = self.proc.port
        return self

    async def kill(self) -> None:
        """SIGKILL to the node's process group (the gateway and its relay workers)."""
        if self.proc is not None:
            await self.proc.stop(signal.SIGKILL, group=True)

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.kill()
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.returncode is None


class ClusterRig:
    """A redis-server, ``n`` nodes and the simulated upper they register to."""

    def __init__(self, folder: Path, *, nodes: int = 3, lease_seconds: float = 2.0) -> None:
        self.folder = folder
        self.lease_seconds = lease_seconds
        self.redis = RedisServer(folder / "redis")
        self.endpoint = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
        self.platform: SimPlatform | None = None
        self.nodes = [Node(self, i) for i in range(nodes)]

    def upper_config(self) -> dict[str, Any]:
        return {
            "id": UP,
            "domain": UP[:10],
            "host": "127.0.0.1",
            "port": self.endpoint.port,
            "password": "12345678",
            "keepalive_interval": 1.0,
            "keepalive_timeout_count": 3,
            "retry_interval": 0.2,
        }

    async def start(self) -> ClusterRig:
        self.redis.start()
        await self.endpoint.start("127.0.0.1", 0)
        self.platform = SimPlatform(self.endpoint, platform_id=UP, domain=UP[:10]).start()
        for node in self.nodes:
            await node.start()
        return self

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
        if self.platform is not None:
            self.platform.stop()
        await self.endpoint.close()
        self.redis.stop()

    @property
    def upper(self) -> SimPlatform:
        assert self.platform is not None
        return self.platform

    def registered_from(self) -> str | None:
        """The host the upper last took our registration from (``None``: not registered)."""
        lower = self.upper.lowers.get(GW)
        return lower.peer.host if lower is not None and lower.registered else None

    async def holder(self, timeout: float = 20.0) -> Node:
        """The node registered to the upper now."""
        await wait_for(lambda: self.registered_from() is not None, timeout, "registered")
        host = self.registered_from()
        return next(n for n in self.nodes if n.host == host)

    async def failover(
        self, dead: Node, timeout: float = 30.0, *, killed: float | None = None
    ) -> tuple[Node, float]:
        """After ``dead`` was killed (at monotonic time ``killed``, default now): the node
        that registered in its place, and how long after the kill the upper's next query was
        answered from it."""
        if killed is None:
            killed = time.monotonic()
        await wait_for(
            lambda: self.registered_from() not in (None, dead.host), timeout, "taken over"
        )
        survivor = await self.holder()
        while True:
            result = await self.upper.device_info(GW, timeout=2.0, idle=0.5)
            if result.ok:
                return survivor, time.monotonic() - killed
            if time.monotonic() - killed > timeout:
                raise AssertionError(f"no answer to DeviceInfo from {survivor.name}")
