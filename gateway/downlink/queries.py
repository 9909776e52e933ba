"""The asyncio side of queries to devices: pending answers, per-device limits, query errors.

GB/T 28181-2022 §9.5; reference §3. A query is matched to its answers on (CmdType, SN) — SNs
are the gateway's own, unique while pending. :class:`PendingQueries` holds one
:class:`~gateway.downlink.collector.Collector` per pending query, feeds it the answers that come
and wakes the query waiting on it; the collector decides, this module only waits. A per-device
limit on concurrent queries (:class:`QueryLimits`) keeps one slow NVR from holding the gateway's
resources, with a bounded queue behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

from gateway.downlink.collector import Collector, Outcome, QueryResult
from gateway.manscdp import Message
from gateway.metrics import Metrics
from gateway.sip import Peer, Response

__all__ = [
    "DeviceUnavailable",
    "PendingQueries",
    "QueryError",
    "QueryLimits",
    "QueryRejected",
    "QueryTimeout",
]

# The Downlink's own logger: these events are the Downlink's.
log = structlog.get_logger("gateway.downlink")


class QueryError(Exception):
    """A request to a device failed; the message says why."""


class DeviceUnavailable(QueryError):
    """The device is unknown or offline."""


class QueryTimeout(QueryError):
    """No answer in time."""


class QueryRejected(QueryError):
    """The device refused the MESSAGE with a SIP error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"device answered {status} {reason}")
        self.status = status
        self.reason = reason


class _Limit:
    """A per-device semaphore that disappears when nobody uses it."""

    __slots__ = ("sem", "users")

    def __init__(self, n: int) -> None:
        self.sem = asyncio.Semaphore(n)
        self.users = 0


class QueryLimits:
    """At most ``concurrent`` queries to one device at a time, ``queued`` more waiting; a query
    beyond that is refused at once (503) rather than queued without bound."""

    def __init__(self, concurrent: int, queued: int, metrics: Metrics) -> None:
        self.concurrent = concurrent
        self.queued = queued
        self.metrics = metrics
        self._limits: dict[str, _Limit] = {}

    @asynccontextmanager
    async def slot(self, device_id: str) -> AsyncIterator[None]:
        """Hold one of ``device_id``'s query slots, waiting for it in the queue."""
        limit = self._limits.get(device_id)
        if limit is None:
            limit = self._limits[device_id] = _Limit(self.concurrent)
        if limit.users >= self.concurrent + self.queued:
            self.metrics.inc("query.queue_full")
            raise QueryRejected(503, f"too many queries queued for {device_id}")
        limit.users += 1
        try:
            async with limit.sem:
                yield
        finally:
            limit.users -= 1
            if limit.users == 0:
                self._limits.pop(device_id, None)


class _Waiting:
    """A pending query: its collector and the future its query awaits (set when the collector
    decides, or failed when the gateway closes)."""

    __slots__ = ("collector", "wake")

    def __init__(self, collector: Collector, wake: asyncio.Future[None]) -> None:
        self.collector = collector
        self.wake = wake


class PendingQueries:
    """The queries waiting for answers, by (CmdType, SN)."""

    def __init__(self, metrics: Metrics, *, busy: Callable[[], bool] | None = None) -> None:
        self.metrics = metrics
        # While the gateway is behind (shedding, its socket queue backlogged), the next part of
        # a multi-part answer may be waiting in its own queue: the idle timeout then starts
        # again rather than end the query (never past the query's ``max_time``).
        self.busy = busy
        self._waiting: dict[tuple[str, int], _Waiting] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._waiting

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """The (CmdType, SN) of every pending query."""
        return iter(list(self._waiting))

    def __len__(self) -> int:
        return len(self._waiting)

    def deliver(self, msg: Message, sender: str, peer: Peer, now: float) -> bool:
        """Feed an answer to the query waiting for it; False (a stray, counted and logged) when
        none is, or it does not come from the queried device."""
        w = self._waiting.get((msg.CMD, msg.sn))
        if w is None or not w.collector.accepts(sender, msg.device_id, peer):
            self.metrics.inc("message.stray_response")
            log.info(
                "message.stray_response",
                sender=sender,
                peer=str(peer),
                cmd_type=msg.CMD,
                sn=msg.sn,
                expected=None if w is None else str(w.collector.peer),
            )
            return False
        if w.collector.feed(msg, now) is not Outcome.PENDING and not w.wake.done():
            w.wake.set_result(None)
        return True

    async def collect(self, c: Collector, request: Awaitable[Response]) -> QueryResult:
        """Send the query (``request``: the MESSAGE's SIP transaction, not started yet) and
        wait for ``c``'s outcome, registered under its CmdType and SN meanwhile; ``c``'s times
        are the running loop's. Raises :class:`QueryTimeout` or :class:`QueryRejected` when
        nothing usable came back, :class:`DeviceUnavailable` when the gateway closes."""
        loop = asyncio.get_running_loop()
        res = c.result
        key = (res.cmd_type, res.sn)
        w = self._waiting[key] = _Waiting(c, loop.create_future())
        sip = asyncio.ensure_future(request)
        sip.add_done_callback(_consume)
        try:
            return await self._wait(w, sip)
        finally:
            self._waiting.pop(key, None)
            if not w.wake.done():
                w.wake.cancel()
            if not sip.done():
                sip.cancel()  # the answer is in (or given up): stop retransmitting the MESSAGE

    async def _wait(self, w: _Waiting, sip: asyncio.Future[Response]) -> QueryResult:
        loop = asyncio.get_running_loop()
        c, res = w.collector, w.collector.result
        waiting: set[asyncio.Future[Any]] = {w.wake, sip}
        while True:
            now = loop.time()
            if (
                self.busy is not None
                and res.responses
                and not c.done
                and c.deadline <= now
                and c.deadline < c.started + c.max_time
                and self.busy()
            ):
                c.last = now  # the parts may be in our own socket queue: one more idle period
                self.metrics.inc("query.idle_deferred")
            outcome = c.expire(now)
            if outcome is Outcome.PARTIAL:
                return res
            if outcome is Outcome.EXPIRED:
                self.metrics.inc("query.timeout")
                raise QueryTimeout(f"{res.cmd_type} to {res.device_id}: no answer in time")
            done, _ = await asyncio.wait(
                waiting, timeout=c.deadline - now, return_when=asyncio.FIRST_COMPLETED
            )
            if w.wake.done():
                w.wake.result()  # raises when the gateway is closing
                self.metrics.inc("query.completed")
                return res
            if sip in done:
                waiting.discard(sip)
                self._check_sip(sip, res)

    def _check_sip(self, sip: asyncio.Future[Response], res: QueryResult) -> None:
        """A MESSAGE the device refused, or that never got a final response, ends the wait
        unless answers already came."""
        exc = sip.exception()
        if exc is not None:
            if not res.responses:
                self.metrics.inc("downlink.send_failed")
                raise QueryTimeout(f"{res.cmd_type} to {res.device_id}: {exc}")
            return
        resp = sip.result()
        if resp.status >= 300 and not res.responses:
            self.metrics.inc("downlink.rejected")
            raise QueryRejected(resp.status, resp.reason)

    def close(self) -> None:
        """Fail every pending query: the gateway is shutting down. The exception only wakes the
        query's task, which raises it again; that task may have been cancelled in the same
        stop and never look, so it is marked seen here (no "Future exception was never
        retrieved" at exit)."""
        for w in self._waiting.values():
            if not w.wake.done():
                w.wake.set_exception(DeviceUnavailable("the gateway is shutting down"))
                _consume(w.wake)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a background request's exception so asyncio does not log it as lost."""
    if not fut.cancelled():
        fut.exception()
