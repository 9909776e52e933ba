"""A dead node's floating SIP address taken over by a survivor, and its devices with it.

Devices are configured with one address per node, and a node with ``[cluster]
floating_host`` set advertises it (with its SIP port) in its membership record. In production
that address is a virtual IP that keepalived (VRRP) moves to a surviving machine when its
owner dies; the survivor's gateway must then listen on it. Here the same happens on one
machine: when a node's record expires (:class:`~gateway.cluster.Membership`), every survivor
tries for the lease ``addr:{host}``; the one granted it starts listening on ``host:port``
(UDP and TCP, :meth:`gateway.sip.Endpoint.listen_also`) and calls ``on_taken`` so the devices
registered through the dead node (in the shared store) are served as its own: UDP devices go
on with their keepalives without registering again, TCP devices reconnect and register.

The owner holds ``addr:{host}`` itself while alive, so nobody can be granted it before the
owner's lease has run out. A survivor that loses the lease (Redis unreachable) gives the
address back (stops listening); one that cannot bind it (its owner is back, or in production
the address is on another machine) gives the lease back and tries again a lease time later,
:data:`BIND_TRIES` times at most while the owner stays away. With keepalived, either give each
floating address one backup machine (only its gateway can bind the address, the others give
the lease back), or set ``net.ipv4.ip_nonlocal_bind = 1`` and let keepalived follow the
lease holder (a ``track_script`` that checks the holder, ``gb:lease:addr:{host}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.cluster.leases import LeaseLike
from gateway.cluster.membership import NodeInfo
from gateway.cluster.node import Cluster
from gateway.sip import Endpoint

log = structlog.get_logger("gateway.cluster.floating")

OnTaken = Callable[[str, NodeInfo], Awaitable[None]]
BIND_TRIES = 30  # lease times a survivor keeps trying for an address it cannot bind


class FloatingAddresses:
    """This node's own floating address lease, and the takeover of dead nodes' addresses."""

    def __init__(
        self, cluster: Cluster, endpoint: Endpoint, *, own_host: str, on_taken: OnTaken
    ) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.own_host = own_host
        self.on_taken = on_taken
        self.taken: dict[str, int] = {}  # host -> port listened on for a dead node
        self._leases: dict[str, LeaseLike] = {}
        self._dropping: set[asyncio.Future[None]] = set()
        self._closed = False

    def start(self) -> None:
        if self.cluster.membership is None:
            return
        if self.own_host:
            lease = self.cluster.lease(
                f"addr:{self.own_host}", on_gained=lambda token: None, on_lost=lambda why: None
            )
            self._leases[self.own_host] = lease
            lease.start()
        self.cluster.membership.on_node_lost(self._node_lost)

    def close(self) -> None:
        """No more attempts (the leases themselves close with the cluster)."""
        self._closed = True

    def _node_lost(self, node_id: str, info: NodeInfo, tries: int = 0) -> None:
        host = str(info.get("floating_host") or "")
        port = info.get("sip_port")
        if not host or host == self.own_host or host in self._leases:
            return
        if not isinstance(port, int) or not 0 < port < 65536:
            log.warning("cluster.floating_no_port", node=node_id, host=host)
            return

        async def gained(token: int) -> None:
            await self._take(node_id, info, host, port, tries)

        def lost(reason: str) -> None:
            if self.taken.pop(host, None) is not None:
                self.endpoint.stop_listening(host, port)
                log.warning("cluster.address_given_back", host=host, reason=reason)

        lease = self.cluster.lease(f"addr:{host}", on_gained=gained, on_lost=lost)
        self._leases[host] = lease
        lease.start()

    def _retry(self, node_id: str, info: NodeInfo, tries: int) -> None:
        membership = self.cluster.membership
        if membership is None or node_id in membership.alive() or self._closed:
            return
        self._node_lost(node_id, info, tries)

    async def _take(self, node_id: str, info: NodeInfo, host: str, port: int, tries: int) -> None:
        try:
            await self.endpoint.listen_also(host, port)
        except OSError as exc:
            # In use (its owner is back) or not on this machine (keepalived moved it to
            # another survivor, or has not moved it yet): give the lease back, so the
            # survivor that can bind it gets it, and try again a lease time later while the
            # owner stays away.
            log.warning("cluster.address_busy", host=host, port=port, error=str(exc))
            self._leases.pop(host, None)
            task = asyncio.ensure_future(self.cluster.drop_lease(f"addr:{host}"))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)
            if tries + 1 < BIND_TRIES:
                loop = asyncio.get_running_loop()
                loop.call_later(self.cluster.lease_seconds, self._retry, node_id, info, tries + 1)
            return
        self.taken[host] = port
        self.cluster.metrics.inc("cluster.address_taken_over")
        log.warning("cluster.address_taken_over", host=host, port=port, dead_node=node_id)
        try:
            await self.on_taken(node_id, info)
        except Exception:
            log.exception("cluster.adopt_failed", node=node_id)
