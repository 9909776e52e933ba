"""Which nodes of the cluster are alive, from records in Redis that each node keeps renewed.

Each node writes ``{prefix}node:{node_id}`` (JSON: ``node_id``, ``sip_host``, ``sip_port``,
``http_port``, ``floating_host``, ``started``) with a time to live of the lease time, renews it
every third of that, and lists itself in the set ``{prefix}nodes``. A node whose record has
expired is lost: every survivor that polls sees it (within a third of the lease time of the
expiry) and calls the ``on_node_lost`` callbacks with the last record it read of it; who acts
on it is decided by a lease (a floating address: ``addr:{host}``). The first survivor to see it
takes it out of ``{prefix}nodes`` with ``SREM``; the others, no longer finding it listed,
count it lost because it was in their own view (``known``) and its record is gone, so every
survivor's callbacks run, once each (leases settle who acts). A node that closes (its record
deleted) is lost to the others the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.tasks import stop

log = structlog.get_logger("gateway.cluster.membership")

NodeInfo = dict[str, Any]


class Membership:
    """This node's record in the cluster, and the records of the others."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        node_id: str,
        lease_seconds: float,
        info: NodeInfo,
        metrics: Metrics | None = None,
        on_redis: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.node_id = node_id
        self.seconds = lease_seconds
        self.info: NodeInfo = {**info, "node_id": node_id, "started": time.time()}
        self.metrics = metrics or Metrics()
        self.on_redis = on_redis
        self.nodes_key = f"{prefix}nodes"
        # The others as last read (node ID -> record): what ``alive`` answers from memory.
        self.known: dict[str, NodeInfo] = {}
        self._lost_callbacks: list[Callable[[str, NodeInfo], None]] = []
        self._task: asyncio.Task[None] | None = None

    def key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def on_node_lost(self, callback: Callable[[str, NodeInfo], None]) -> None:
        """``callback(node_id, last_record)`` when a node's record expires."""
        self._lost_callbacks.append(callback)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop renewing; the record is removed so the others see this node go at once."""
        task, self._task = self._task, None
        await stop(task)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(self.node_id))
                pipe.srem(self.nodes_key, self.node_id)
                await asyncio.wait_for(pipe.execute(), self.seconds / 3)
        except (RedisError, OSError, TimeoutError):
            pass

    async def beat(self) -> None:
        """Write this node's record (TTL: the lease time) and read the others'."""
        record = json.dumps(self.info, separators=(",", ":"))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key(self.node_id), record, px=max(1, int(self.seconds * 1000)))
            pipe.sadd(self.nodes_key, self.node_id)
            pipe.smembers(self.nodes_key)
            results = await pipe.execute()
        listed = {_text(m) for m in results[2]}
        # The listed nodes, and those of this view another survivor unlisted already (their
        # record gone, it was the first to see it): both are lost here if their record is gone.
        others = sorted((listed | self.known.keys()) - {self.node_id})
        values = await self.client.mget([self.key(m) for m in others]) if others else []
        seen: dict[str, NodeInfo] = {}
        gone: list[str] = []
        for node_id, raw in zip(others, values, strict=True):
            if raw is None:
                gone.append(node_id)
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            seen[node_id] = data if isinstance(data, dict) else {"node_id": node_id}
        lost = [(n, self.known.get(n, {"node_id": n})) for n in gone]
        unlist = [n for n in gone if n in listed]
        if unlist:
            await self.client.srem(self.nodes_key, *unlist)
        for node_id in seen.keys() - self.known.keys():
            log.info("cluster.node_joined", node=node_id)
        self.known = seen
        for node_id, last in lost:
            self.metrics.inc("cluster.node_lost")
            log.warning("cluster.node_lost", node=node_id)
            for callback in self._lost_callbacks:
                try:
                    callback(node_id, last)
                except Exception:
                    log.exception("cluster.node_lost_callback_failed", node=node_id)

    def alive(self) -> dict[str, NodeInfo]:
        """Every node whose record held at the last beat, this one included."""
        return {self.node_id: self.info, **self.known}

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.beat(), self.seconds / 3)
                if self.on_redis is not None:
                    self.on_redis(True)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.on_redis is not None:
                    self.on_redis(False)
                log.debug("cluster.membership_redis_error", error=str(exc)[:200])
            except Exception:
                log.exception("cluster.membership_crashed")
            await asyncio.sleep(self.seconds / 3)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
