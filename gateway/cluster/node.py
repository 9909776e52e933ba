"""This node's part in a cluster of gateways on one Redis: its client, its membership record,
the leases it holds, and whether Redis answers.

The cluster is active when ``app.py`` gives it a Redis URL (it does when ``[store] backend =
"redis"``); otherwise :class:`Cluster` is the single-node form: every lease is held from the
start and never lost, membership lists this node alone, nothing is sent anywhere.

Redis unreachable: the leases are lost at their local deadlines (so with Redis down for every
node, nobody acts for an upper), ``healthy()`` is False, the metric ``cluster.redis_down``
counts each outage and the log says so once per outage (``cluster.redis_down``, then
``cluster.redis_back``); everything resumes by itself when Redis answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.cluster.leases import HeldLease, Lease, LeaseLike, OnGained, OnLost
from gateway.cluster.membership import Membership, NodeInfo
from gateway.cluster.uppers import UpperState
from gateway.metrics import Metrics

log = structlog.get_logger("gateway.cluster")


class Cluster:
    """Leases, membership and the shared per-upper state of one node (module docstring)."""

    def __init__(
        self,
        *,
        url: str | None,
        prefix: str,
        node_id: str,
        lease_seconds: float,
        info: NodeInfo | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.leases: dict[str, LeaseLike] = {}
        self._up = True
        self.client: aioredis.Redis | None = None
        self.membership: Membership | None = None
        self.uppers: UpperState | None = None
        if url is not None:
            # One immediate retry inside the client (a pooled connection that died with a
            # restarted server is replaced at once, not reported as an outage); the lease keeps
            # its own deadline, and a request that hangs on a dead server fails within a
            # third of the lease time.
            timeout = max(0.2, lease_seconds / 3)
            self.client = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
            self.membership = Membership(
                self.client,
                prefix=prefix,
                node_id=node_id,
                lease_seconds=lease_seconds,
                info=info or {},
                metrics=self.metrics,
                on_redis=self.redis_state,
            )
            self.uppers = UpperState(self.client, prefix=prefix)

    @property
    def active(self) -> bool:
        """Several nodes on Redis (False: the single-node form)."""
        return self.client is not None

    def lease(self, name: str, *, on_gained: OnGained, on_lost: OnLost) -> LeaseLike:
        """A lease named ``name`` (``upper:{id}``, ``addr:{host}``), not started yet."""
        lease: LeaseLike
        if self.client is None:
            lease = HeldLease(name, on_gained=on_gained, on_lost=on_lost)
        else:
            lease = Lease(
                self.client,
                prefix=self.prefix,
                name=name,
                node_id=self.node_id,
                seconds=self.lease_seconds,
                on_gained=on_gained,
                on_lost=on_lost,
                metrics=self.metrics,
                clock=self.clock,
                on_redis=self.redis_state,
            )
        self.leases[name] = lease
        return lease

    async def drop_lease(self, name: str, *, release: bool = True) -> None:
        lease = self.leases.pop(name, None)
        if lease is not None:
            await lease.close(release=release)

    def start(self) -> None:
        if self.membership is not None:
            self.membership.start()
            log.info("cluster.started", node=self.node_id, lease_seconds=self.lease_seconds)

    async def close(self) -> None:
        """Release every lease (the others take over at once), drop the membership record."""
        for name in list(self.leases):
            await self.drop_lease(name)
        if self.membership is not None:
            await self.membership.close()
        if self.client is not None:
            await self.client.aclose()

    def healthy(self) -> bool:
        """False while Redis does not answer (``/readyz``)."""
        return self._up

    def redis_state(self, up: bool) -> None:
        """What the last request to Redis found; logged and counted once per outage."""
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("cluster.redis_back", node=self.node_id)
        else:
            self.metrics.inc("cluster.redis_down")
            log.warning("cluster.redis_down", node=self.node_id, url=_safe(self.url or ""))


def _safe(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
