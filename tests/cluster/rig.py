"""Three in-process gateway nodes on 127.0.0.2, .3 and .4 sharing one real redis-server (for the
bus only: each node keeps its own store, so what a node knows of the others comes through the
bus), simulated NVRs spread over them and one simulated upper registered at the first node.
Used by tests/cluster and bench/_cluster_sync.py."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from gateway.app import Gateway
from gateway.events import CatalogSynced
from gateway.metrics import Metrics
from gateway.settings import config_from_dict
from gateway.sip import Endpoint, Peer, TimerConfig
from gateway.store import MemoryStore

GW = "34020000002000000001"
UP = "34010000002000000001"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

_prefixes = itertools.count()


def hosts(nodes: int) -> tuple[str, ...]:
    return tuple(f"127.0.0.{i + 2}" for i in range(nodes))


def fast_timers() -> TimerConfig:
    return TimerConfig(t1=0.1, t2=0.4, t4=0.5)


def nvr_id(n: int) -> str:
    return f"3402000000118{n:07d}"


@dataclass
class Cluster:
    nodes: list[Gateway]
    redis_url: str
    prefix: str
    endpoints: list[Endpoint] = field(default_factory=list)
    devices: list[SimDevice] = field(default_factory=list)
    platform: SimPlatform | None = None
    synced: dict[str, list[str]] = field(default_factory=dict)

    @property
    def upper(self) -> SimPlatform:
        """The upper platform (the rig was started with one)."""
        assert self.platform is not None
        return self.platform

    def node(self, host: str) -> Gateway:
        return next(gw for gw in self.nodes if gw.config.sip.host == host)

    async def endpoint(self, host: str = "127.0.0.1") -> Endpoint:
        ep = Endpoint(metrics=Metrics(), timers=fast_timers())
        await ep.start(host, 0)
        self.endpoints.append(ep)
        return ep

    def nvr(self, ep: Endpoint, node: Gateway, device_id: str, **kw: Any) -> SimDevice:
        dev = SimDevice(ep, device_id, Peer("udp", node.config.sip.host, node.port), **kw)
        dev.install()
        self.devices.append(dev)
        return dev

    async def close(self) -> None:
        if self.platform is not None:
            await self.platform.close()
        for dev in self.devices:
            await dev.close_media()
        for gw in self.nodes:
            await gw.close()
        for ep in self.endpoints:
            await ep.close()


async def start_cluster(
    tmp: Path,
    redis_url: str,
    *,
    upper_port: int | None = None,
    downlink: dict[str, Any] | None = None,
    http: bool = True,
    token: str = "",
    token_role: str = "viewer",
    request_timeout: float = 10.0,
    log_level: str = "warning",
    nodes: int = 3,
) -> Cluster:
    """``nodes`` nodes on 127.0.0.2, .3...; the upper (when ``upper_port``) is configured on
    the first only."""
    prefix = f"c{next(_prefixes)}:"
    made: list[Gateway] = []
    cluster = Cluster(made, redis_url, prefix)
    try:
        for i, host in enumerate(hosts(nodes)):
            data: dict[str, Any] = {
                "sip": {"host": host, "port": 0},
                "store": {"backend": "redis", "url": redis_url, "prefix": prefix},
                "cluster": {"node_id": f"node{i + 2}", "request_timeout": request_timeout},
                "log": {"level": log_level},
                "http": {
                    "enabled": http,
                    "host": host,
                    "port": 0,
                    "sse_interval": 0.1,
                    "tokens": [{"name": token_role, "role": token_role, "token": token}]
                    if token
                    else [],
                },
                "media": {
                    "host": host,
                    "port_min": 46000 + 200 * i,
                    "port_max": 46199 + 200 * i,
                    "rtp_timeout": 3.0,
                    "invite_timeout": 3.0,
                },
                "downlink": {"response_timeout": 3.0, "idle_timeout": 0.5, **(downlink or {})},
                "overload": {"enabled": False},
            }
            if i == 0 and upper_port is not None:
                data["uplink"] = {
                    "platforms": [
                        {
                            "id": UP,
                            "domain": UP[:10],
                            "host": "127.0.0.1",
                            "port": upper_port,
                            "password": "12345678",
                            "keepalive_interval": 0.5,
                            "keepalive_timeout_count": 4,
                            "retry_interval": 0.2,
                        }
                    ]
                }
            (tmp / host).mkdir(exist_ok=True)
            gw = Gateway(config_from_dict(data), store=MemoryStore())
            synced: list[str] = []
            cluster.synced[host] = synced
            gw.events.subscribe(
                CatalogSynced, lambda e, s=synced: s.append(e.device_id) if not e.node else None
            )
            await gw.start()
            made.append(gw)
    except BaseException:
        await cluster.close()
        raise
    return cluster
