"""Queries and controls for devices another node holds, over the cluster's bus.

Any node serves any request (issue 18): an upper's query or control reaches the node it is
registered at, which may not hold the device. :class:`RemoteDevices` is the downlink's
:class:`~gateway.downlink.downlink.Elsewhere`: it sends the request to the holding node
(``downlink.query``, ``downlink.control`` on :class:`gateway.cluster.Bus`), whose downlink
talks to the device, and turns the answer (a :class:`QueryResult`: every Response, the items
of a list answer, partial or not) or the failure (device unavailable, no answer, refused with a
SIP status) back into what a local request gives, so the callers above cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import structlog

from gateway.cluster import (
    Bus,
    ClusterError,
    ClusterTimeout,
    Replica,
    items_from_wire,
    items_to_wire,
    message_from_wire,
    message_to_wire,
)
from gateway.downlink.collector import QueryResult
from gateway.downlink.downlink import Downlink
from gateway.downlink.queries import DeviceUnavailable, QueryError, QueryRejected, QueryTimeout
from gateway.manscdp import DeviceControl, DeviceControlResponse, Message

log = structlog.get_logger("gateway.downlink.remote")

MARGIN = 2.0
"""Seconds a node-to-node request waits beyond the device's own timeout."""


def _error(exc: QueryError) -> ClusterError:
    if isinstance(exc, QueryRejected):
        return ClusterError(f"{exc.status} {exc.reason}", f"rejected:{exc.status}")
    if isinstance(exc, DeviceUnavailable):
        return ClusterError(str(exc), "unavailable")
    if isinstance(exc, QueryTimeout):
        return ClusterError(str(exc), "no_answer")
    return ClusterError(str(exc), "query")


def _query_error(exc: ClusterError) -> QueryError:
    code = exc.code
    text = str(exc)
    if code.startswith("rejected:"):
        status, _, reason = text.split(": ", 1)[-1].partition(" ")
        try:
            return QueryRejected(int(status), reason)
        except ValueError:
            return QueryError(text)
    if code == "unavailable":
        return DeviceUnavailable(text)
    if code in ("no_answer", "timeout") or isinstance(exc, ClusterTimeout):
        return QueryTimeout(text)
    return QueryError(text)


def result_to_wire(res: QueryResult) -> dict[str, Any]:
    return {
        "device_id": res.device_id,
        "cmd_type": res.cmd_type,
        "sn": res.sn,
        "responses": [message_to_wire(m) for m in res.responses],
        "items": items_to_wire(res.items),
        "sum_num": res.sum_num,
        "partial": res.partial,
        "listed": res.listed,
        "count_error": res.count_error,
        "dropped": res.dropped,
    }


def result_from_wire(data: dict[str, Any]) -> QueryResult:
    responses = [message_from_wire(m) for m in data.get("responses", ())]
    if not responses:
        raise ClusterError("an answer without a response", "bad")
    items = items_from_wire(responses[0], data.get("items", []))
    sum_num = data.get("sum_num")
    return QueryResult(
        str(data.get("device_id", "")),
        str(data.get("cmd_type", "")),
        int(data.get("sn", 0)),
        responses=responses,
        items=items,
        sum_num=sum_num if isinstance(sum_num, int) else None,
        partial=bool(data.get("partial")),
        listed=bool(data.get("listed")),
        count_error=data.get("count_error"),
        dropped=int(data.get("dropped", 0)),
    )


class RemoteDevices:
    """Both ends: sends this node's requests for other nodes' devices, and serves theirs for
    this node's devices (registered on the bus at construction)."""

    def __init__(self, *, bus: Bus, replica: Replica, downlink: Downlink) -> None:
        self.bus = bus
        self.replica = replica
        self.downlink = downlink
        bus.handle("downlink.query", self._serve_query)
        bus.handle("downlink.control", self._serve_control)
        bus.handle("downlink.sync", self._serve_sync)
        # Starts a catalog sync of a device of this node's (CatalogSync.schedule), set by the
        # composition root.
        self.schedule_sync: Callable[[str], object] | None = None

    def holder(self, device_id: str) -> str | None:
        return self.replica.holder(device_id)

    def _wait(self, timeout: float | None) -> float:
        own = timeout or self.downlink.cfg.response_timeout
        return max(self.bus.request_timeout, own + MARGIN)

    async def query(
        self,
        node: str,
        device_id: str,
        q: Message,
        *,
        timeout: float | None,
        expected_parts: int,
        config_types: tuple[str, ...],
    ) -> QueryResult:
        self.downlink.metrics.inc(f"query.remote.{q.CMD}")
        body = {
            "target": device_id,
            "query": message_to_wire(q),
            "timeout": timeout,
            "expected_parts": expected_parts,
            "config_types": list(config_types),
        }
        try:
            reply = await self.bus.request(node, "downlink.query", body, self._wait(timeout))
            return result_from_wire(reply)
        except ClusterError as exc:
            raise _query_error(exc) from None

    async def control(
        self, node: str, target_id: str, c: DeviceControl
    ) -> DeviceControlResponse | None:
        self.downlink.metrics.inc("control.remote")
        body = {"target": target_id, "control": message_to_wire(c)}
        try:
            reply = await self.bus.request(node, "downlink.control", body, self._wait(None))
        except ClusterError as exc:
            raise _query_error(exc) from None
        answer = reply.get("answer")
        if answer is None:
            return None
        try:
            return cast(DeviceControlResponse, message_from_wire(answer))
        except ClusterError as exc:
            raise _query_error(exc) from None

    async def sync(self, node: str, device_id: str) -> None:
        """Ask the holding node to sync ``device_id``'s catalog (its changes come back as
        events)."""
        try:
            await self.bus.request(node, "downlink.sync", {"target": device_id})
        except ClusterError as exc:
            log.info("sync.remote_failed", device_id=device_id, node=node, error=str(exc))

    # -- serving the other nodes -------------------------------------------------------------
    def _target(self, body: dict[str, Any]) -> str:
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise ClusterError("no target", "bad")
        dev = self.downlink.device(target)
        if dev is None or self.replica.holder(dev.device_id) is not None:
            # Never sent on again: the nodes disagree on who holds it for a moment.
            raise ClusterError(f"device of {target} is not held by this node", "unavailable")
        return target

    async def _serve_query(self, body: dict[str, Any]) -> dict[str, Any]:
        target = self._target(body)
        q = message_from_wire(body.get("query"))
        timeout = body.get("timeout")
        parts = body.get("expected_parts", 1)
        types = body.get("config_types", [])
        try:
            res = await self.downlink.query(
                target,
                q,
                timeout=float(timeout) if isinstance(timeout, (int, float)) else None,
                expected_parts=parts if isinstance(parts, int) and parts > 0 else 1,
                config_types=tuple(str(t) for t in types) if isinstance(types, list) else (),
            )
        except QueryError as exc:
            raise _error(exc) from None
        return result_to_wire(res)

    async def _serve_sync(self, body: dict[str, Any]) -> dict[str, Any]:
        target = self._target(body)
        if self.schedule_sync is None:
            raise ClusterError("catalog sync is not served here", "unknown")
        self.schedule_sync(target)
        return {"scheduled": True}

    async def _serve_control(self, body: dict[str, Any]) -> dict[str, Any]:
        target = self._target(body)
        c = message_from_wire(body.get("control"))
        if not isinstance(c, DeviceControl):
            raise ClusterError(f"{c.CMD} is not a DeviceControl", "bad")
        try:
            answer = await self.downlink.control(target, c)
        except QueryError as exc:
            raise _error(exc) from None
        return {"answer": None if answer is None else message_to_wire(answer)}
