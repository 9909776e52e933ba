"""Node-to-node requests and events over Redis Streams: how any node serves any request.

**Requests** (a query, a control or an INVITE for a device another node holds) go to the
holding node's inbox, the stream ``P inbox:{node_id}`` (``XADD`` with ``MAXLEN ~``, read with
``XREAD BLOCK`` by that node alone). A request is ``{"id", "from", "kind", "body", "deadline"}``
(``body`` JSON, ``deadline`` UNIX seconds); its reply ``{"id", "reply_to", "status", "body"}``
goes to the sender's inbox, ``reply_to`` naming the request. The sender waits at most its
timeout and then raises :class:`ClusterTimeout`; a request read after its deadline (the node
was behind, or Redis was away) is dropped unanswered and counted, since its sender has given up.
A handler's failure comes back as :class:`ClusterError` with the handler's message and a
``code`` the caller may act on. Streams, not pub/sub, for requests: an entry waits in the
inbox while its node reads something else or reconnects, so a request is not lost to a
reconnection; and the trimming keeps every inbox bounded. The timeout covers the whole request,
its ``XADD`` included: a Redis that stops answering costs the caller its timeout, not the
client's socket timeout.

An entry a node cannot read (a peer on another version, a stray ``XADD``), in its inbox or in
the events stream, is logged (``cluster.bad_entry``), counted (``cluster.bus.bad_entries``) and
skipped: the readers go on; a reader task that still ends on an exception is logged
(``cluster.bus.task_failed``) rather than lost.

**Events** (devices going on or offline, catalog changes, alarms: what the replicas and the
console's live updates of other nodes need) go on one stream, ``P events``, in batches: each
entry carries ``{"from", "seq", "events"}``, ``seq`` growing by one per entry of that node. A
stream rather than pub/sub because a replica must never silently miss a change: a reader that
loses its connection resumes from the last entry it read, and a gap (entries trimmed away, an
outgoing queue that overflowed, Redis restarted empty) shows as a jump in a node's ``seq``, for
which :meth:`Bus.on_gap` listeners fetch that node's whole state again. Pub/sub would drop
everything published while a node reconnects, with no way to notice. The stream is bounded
(``MAXLEN ~``), events are batched (one ``XADD`` per batch, not per catalog item) so a sync of
200,000 channels costs a few hundred entries, and the outgoing queue is bounded too.

The clocks of the nodes are assumed synchronised (NTP) to well under a request timeout: the
deadline travels as wall-clock time. Without Redis (``backend != "redis"``) there is no Bus:
:class:`gateway.cluster.Replica` is then not built and every device is local.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.metrics import Metrics

log = structlog.get_logger("gateway.cluster.bus")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
EventHandler = Callable[[str, dict[str, Any]], None]

INBOX_MAXLEN = 10_000
"""Entries kept in each node's inbox (approximate trim)."""
EVENTS_MAXLEN = 300
"""Batches kept in the events stream (approximate trim): about 150,000 events of a catalog
burst (some 90 MB in Redis at its peak); a reader further behind sees a gap and re-fetches."""
BATCH_EVENTS = 500
"""Events in one entry of the events stream at most."""
MAX_QUEUED_EVENTS = 1_000_000
"""Events waiting to be written; beyond, they are dropped and the gap is signalled."""
MAX_PENDING = 10_000
"""Requests of this node waiting for their replies."""
MAX_HANDLING = 512
"""Requests from other nodes handled at once; the rest wait in the inbox."""
READ_BLOCK_MS = 500
"""How long one ``XREAD`` blocks: the readers look at ``close()`` this often."""


class ClusterError(Exception):
    """A node-to-node request failed: the other node's handler said why (``code``: a short
    word the caller may act on, such as ``unavailable``), or Redis could not carry it."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class ClusterTimeout(ClusterError):
    """No reply within the request's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


def _new_id() -> str:
    return os.urandom(8).hex()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback of a task nobody may await any more: take its outcome, so that asyncio
    does not report an exception "never retrieved"."""
    if not task.cancelled():
        task.exception()


async def _bounded(coro: Awaitable[Any], seconds: float) -> None:
    """Run ``coro`` for at most ``seconds``; never wait on its cancellation (see
    :meth:`Bus.close`), never raise."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        try:
            task.result()
        except (RedisError, OSError, RuntimeError):
            pass
    else:
        task.cancel()


class _Backoff:
    """The wait between two attempts while Redis does not answer: 50 ms, doubling up to 1 s,
    back to 50 ms once it answers."""

    def __init__(self) -> None:
        self.delay = 0.05

    def reset(self) -> None:
        self.delay = 0.05

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 1.0)


class Bus:
    """This node's end of the bus: its inbox reader, its pending requests, its handlers, the
    events it publishes (batched) and the events of the others it hears."""

    def __init__(
        self,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "gb:",
        node_id: str,
        metrics: Metrics | None = None,
        client: aioredis.Redis | None = None,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.prefix = prefix
        self.metrics = metrics if metrics is not None else Metrics()
        self.redis: aioredis.Redis = (
            client if client is not None else aioredis.Redis.from_url(url, socket_timeout=30)
        )
        self._own_client = client is None
        self.request_timeout = request_timeout
        self.clock = clock
        self.inbox = f"{prefix}inbox:{node_id}"
        self.events_key = f"{prefix}events"
        self._handlers: dict[str, Handler] = {}
        self._event_handlers: dict[str, list[EventHandler]] = {}
        self._gap_handlers: list[Callable[[str], None]] = []
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outgoing: list[tuple[str, dict[str, Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        self._dropped_events = 0
        self.seq = 0  # the seq of the last batch this node wrote
        self._last_seq: dict[str, int] = {}  # the last seq heard of each other node
        self._events_from = "$"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving = 0  # requests of other nodes being handled (at most MAX_HANDLING)
        self._room = asyncio.Event()
        self._down = False
        self._closing = False

    # -- the contract's interface -------------------------------------------------------------
    def handle(self, kind: str, handler: Handler) -> None:
        """``handler(body) -> reply body`` serves requests of ``kind`` from other nodes. It may
        raise :class:`ClusterError` (its message and code go back) or anything else (its text
        goes back with code ``error``)."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already there")
        self._handlers[kind] = handler

    async def request(
        self, node_id: str, kind: str, body: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Ask ``node_id`` to do ``kind`` and return its reply's body. Raises
        :class:`ClusterTimeout` when no reply came within ``timeout`` (default
        ``[cluster] request_timeout``) and :class:`ClusterError` when the other node refused
        or Redis could not carry the request."""
        wait = self.request_timeout if timeout is None else timeout
        if node_id == self.node_id:
            return await asyncio.wait_for(self._serve_here(kind, body), wait)
        if len(self._pending) >= MAX_PENDING:
            self.metrics.inc("cluster.bus.refused_busy")
            raise ClusterError(f"{kind} to node {node_id}: too many requests in flight", "busy")
        req_id = _new_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        fields = {
            "id": req_id,
            "from": self.node_id,
            "kind": kind,
            "body": json.dumps(body, separators=(",", ":")),
            "deadline": repr(self.clock() + wait),
        }
        # One deadline for the XADD and the reply: a Redis that stops answering (without
        # closing the connection) must not hold the caller for the client's socket timeout.
        # The XADD runs as a task of its own that is abandoned, not awaited, past the deadline
        # (see _bounded); if it lands late, the request's deadline makes the other node drop it.
        expires = asyncio.get_running_loop().time() + wait
        sending = asyncio.ensure_future(self._to_inbox(node_id, fields))
        sending.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait({sending}, timeout=wait)
            if not done:
                sending.cancel()
                raise self._timed_out(kind, node_id, wait)
            try:
                sending.result()
            except (RedisError, OSError) as exc:
                self.metrics.inc("cluster.bus.send_failed")
                raise ClusterError(f"{kind} to node {node_id}: Redis unreachable ({exc})") from None
            self.metrics.inc("cluster.bus.requests")
            left = max(0.0, expires - asyncio.get_running_loop().time())
            try:
                reply = await asyncio.wait_for(fut, left)
            except TimeoutError:
                raise self._timed_out(kind, node_id, wait) from None
        finally:
            self._pending.pop(req_id, None)
        status = reply.get("status")
        data = reply.get("body")
        if status != "ok":
            detail = data if isinstance(data, dict) else {}
            raise ClusterError(
                f"{kind} at node {node_id}: {detail.get('error', 'failed')}",
                str(detail.get("code", "error")),
            )
        return data if isinstance(data, dict) else {}

    def _timed_out(self, kind: str, node_id: str, wait: float) -> ClusterTimeout:
        self.metrics.inc("cluster.bus.timeouts")
        return ClusterTimeout(f"{kind} to node {node_id}: no answer within {wait:g} s")

    def publish(self, event: str, body: dict[str, Any]) -> None:
        """Send ``event`` to every other node (batched: written within the loop's next turns).
        Beyond :data:`MAX_QUEUED_EVENTS` waiting, the event is dropped and counted, and the
        others see a gap in this node's ``seq`` and fetch its state again."""
        if len(self._outgoing) >= MAX_QUEUED_EVENTS:
            self._dropped_events += 1
            self.metrics.inc("cluster.bus.events_dropped")
            return
        self._outgoing.append((event, body))
        if self._flushing is None or self._flushing.done():
            self._flushed.clear()
            self._flushing = asyncio.ensure_future(self._flush())

    def on_event(self, event: str, handler: EventHandler) -> None:
        """``handler(from_node, body)`` hears ``event`` from every other node, in their order."""
        self._event_handlers.setdefault(event, []).append(handler)

    def on_gap(self, handler: Callable[[str], None]) -> None:
        """``handler(node_id)``: events of ``node_id`` were lost (or may have been: Redis was
        away); whoever mirrors that node's state fetches it again."""
        self._gap_handlers.append(handler)

    # -- lifecycle ------------------------------------------------------------------------
    async def nodes(self) -> set[str]:
        """The nodes that have joined (``P nodes``; the membership's leases say which live)."""
        got: Any = await self.redis.smembers(f"{self.prefix}nodes")
        return {n.decode() if isinstance(n, bytes) else str(n) for n in got}

    async def start(self) -> None:
        """Start reading the inbox and the events (from now on); join ``P nodes``."""
        self._spawn(self._read_inbox())
        try:
            await self.redis.sadd(f"{self.prefix}nodes", self.node_id)
        except (RedisError, OSError) as exc:
            self._redis_down(exc)
        try:
            last: Any = await self.redis.xrevrange(self.events_key, count=1)
            self._events_from = last[0][0].decode() if last else "0-0"
        except (RedisError, OSError) as exc:
            self._redis_down(exc)
            self._events_from = "$"
        self._spawn(self._read_events())

    async def close(self) -> None:
        """Write what is queued (2 s at most), stop the readers, fail the requests waiting.

        The readers are stopped by closing the client's connections under them, not by
        cancelling them: redis-py can lose a cancellation that lands in a blocking ``XREAD``,
        and a task that never ends hangs the loop's shutdown. Nothing here waits unbounded."""
        self._closing = True
        try:
            await asyncio.wait_for(self.drain(), 2.0)
        except (TimeoutError, RedisError, OSError):
            pass
        tasks = list(self._tasks)
        if self._flushing is not None and not self._flushing.done():
            tasks.append(self._flushing)
        if self._own_client:
            await _bounded(self.redis.connection_pool.disconnect(), 2.0)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=READ_BLOCK_MS / 1000 + 1.5)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ClusterError("the node is shutting down", "closing"))
                fut.exception()
        if self._own_client:
            await _bounded(self.redis.aclose(), 2.0)

    async def drain(self) -> None:
        """Wait until every event published so far is written (tests, snapshots)."""
        while self._outgoing or (self._flushing is not None and not self._flushing.done()):
            await self._flushed.wait()

    @property
    def healthy(self) -> bool:
        return not self._down

    # -- inside ---------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A reader or a handler ended: an exception here is a bug (each entry is handled on
        its own), logged rather than lost with the task."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.metrics.inc("cluster.bus.task_failed")
            log.error(
                "cluster.bus.task_failed",
                node=self.node_id,
                task=getattr(task.get_coro(), "__qualname__", "?"),
                error=repr(exc),
                exc_info=exc,
            )

    def _bad_entry(self, stream: str, exc: BaseException | None = None) -> None:
        """An entry (or an item of an events batch) this node cannot read: another version of
        the gateway, or a stray ``XADD``. Counted, logged and skipped; the reader goes on."""
        self.metrics.inc("cluster.bus.bad_entries")
        log.warning(
            "cluster.bad_entry",
            stream=stream,
            # A stranger's field can be long (float() quotes it): the first 200 characters.
            error=None if exc is None else f"{type(exc).__name__}: {exc}"[:200],
        )

    async def _to_inbox(self, node_id: str, fields: dict[str, str]) -> None:
        """``XADD`` to ``node_id``'s inbox (trimmed to about :data:`INBOX_MAXLEN`)."""
        await self.redis.xadd(
            f"{self.prefix}inbox:{node_id}",
            fields,  # type: ignore[arg-type]
            maxlen=INBOX_MAXLEN,
            approximate=True,
        )

    async def _xread(self, streams: dict[str, str], count: int, backoff: _Backoff) -> Any:
        """One blocking ``XREAD`` of ``streams``; when Redis fails it (and the bus is not
        closing), the outage is noted and ``backoff`` waited out; ``None`` then."""
        try:
            got: Any = await self.redis.xread(
                streams,  # type: ignore[arg-type]
                count=count,
                block=READ_BLOCK_MS,
            )
        except (RedisError, OSError) as exc:
            if not self._closing:
                self._redis_down(exc)
                await backoff.wait()
            return None
        self._redis_up()
        backoff.reset()
        return got

    def _redis_down(self, exc: BaseException) -> None:
        # Each failed call; the outage itself is counted once by the cluster (cluster.redis_down).
        self.metrics.inc("cluster.bus.redis_errors")
        if not self._down:
            self._down = True
            log.warning("cluster.bus.redis_down", node=self.node_id, error=str(exc))

    def _redis_up(self) -> None:
        if self._down:
            self._down = False
            log.info("cluster.bus.redis_back", node=self.node_id)
            # What was published meanwhile may be lost: every mirror fetches again.
            for node in list(self._last_seq):
                self._gap(node)

    def _gap(self, node: str) -> None:
        self.metrics.inc("cluster.bus.gaps")
        log.info("cluster.events_gap", node=node)
        for hear in list(self._gap_handlers):
            try:
                hear(node)
            except Exception:
                log.exception("cluster.gap_handler_failed", node=node)

    async def _flush(self) -> None:
        """Write the waiting events in batches (one ``XADD`` each), retrying while Redis is
        away; a batch keeps its ``seq`` through the retries."""
        try:
            while self._outgoing:
                batch = self._outgoing[:BATCH_EVENTS]
                del self._outgoing[:BATCH_EVENTS]
                self.seq += 1 + self._dropped_events  # a dropped event makes a gap
                self._dropped_events = 0
                fields = {
                    "from": self.node_id,
                    "seq": str(self.seq),
                    "events": json.dumps(batch, separators=(",", ":")),
                }
                backoff = _Backoff()
                while True:
                    try:
                        await self.redis.xadd(
                            self.events_key,
                            fields,  # type: ignore[arg-type]
                            maxlen=EVENTS_MAXLEN,
                            approximate=True,
                        )
                        self._redis_up()
                        break
                    except (RedisError, OSError) as exc:
                        if self._closing:
                            self.metrics.inc("cluster.bus.events_dropped", len(batch))
                            self._outgoing.clear()
                            return
                        self._redis_down(exc)
                        await backoff.wait()
                self.metrics.inc("cluster.bus.events_sent", len(batch))
                # Let the publishers add more before the next batch is cut.
                await asyncio.sleep(0)
        finally:
            self._flushed.set()

    async def _read_inbox(self) -> None:
        last = "$"
        backoff = _Backoff()
        while not self._closing:
            while self._serving >= MAX_HANDLING:
                # Every handler slot is taken: the requests wait in the inbox (bounded there),
                # not as tasks here.
                self._room.clear()
                await self._room.wait()
            got = await self._xread(
                {self.inbox: last}, min(200, MAX_HANDLING - self._serving), backoff
            )
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    try:
                        self._take(fields)
                    except Exception as exc:  # one bad entry must not end the reader
                        self._bad_entry(self.inbox, exc)

    def _take(self, raw: dict[bytes, bytes]) -> None:
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
        except UnicodeDecodeError as exc:
            self._bad_entry(self.inbox, exc)
            return
        if "reply_to" in fields:
            fut = self._pending.get(fields["reply_to"])
            if fut is None or fut.done():
                self.metrics.inc("cluster.bus.late_replies")
                return
            try:
                fut.set_result(
                    {"status": fields.get("status"), "body": json.loads(fields.get("body", "{}"))}
                )
            except ValueError:
                fut.set_result({"status": "error", "body": {"error": "unreadable reply"}})
            return
        try:
            deadline = float(fields["deadline"])
            if not math.isfinite(deadline):
                raise ValueError(f"deadline {fields['deadline']!r}")
            req_id, sender, kind = fields["id"], fields["from"], fields["kind"]
            body = json.loads(fields["body"])
        except (KeyError, ValueError) as exc:
            self._bad_entry(self.inbox, exc)
            return
        if deadline < self.clock():
            self.metrics.inc("cluster.bus.expired")
            log.info("cluster.request_expired", kind=kind, sender=sender)
            return
        self._serving += 1
        self._spawn(self._serve(req_id, sender, kind, body, deadline))

    async def _serve_here(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(kind)
        if handler is None:
            raise ClusterError(f"{kind}: no such request", "unknown")
        return await handler(body)

    async def _serve(self, req_id: str, sender: str, kind: str, body: Any, deadline: float) -> None:
        try:
            await self._handle(req_id, sender, kind, body, deadline)
        finally:
            self._serving -= 1
            self._room.set()

    async def _handle(
        self, req_id: str, sender: str, kind: str, body: Any, deadline: float
    ) -> None:
        left = deadline - self.clock()
        if left <= 0:
            self.metrics.inc("cluster.bus.expired")
            return
        status, reply = "ok", {}
        try:
            if not isinstance(body, dict):
                raise ClusterError("the body is not an object", "bad")
            reply = await asyncio.wait_for(self._serve_here(kind, body), left)
            self.metrics.inc("cluster.bus.served")
        except TimeoutError:
            self.metrics.inc("cluster.bus.expired")
            return
        except ClusterError as exc:
            status, reply = "error", {"error": str(exc), "code": exc.code}
        except Exception as exc:
            log.exception("cluster.handler_failed", kind=kind, sender=sender)
            status, reply = "error", {"error": str(exc) or type(exc).__name__}
        fields = {
            "id": _new_id(),
            "reply_to": req_id,
            "status": status,
            "body": json.dumps(reply, separators=(",", ":")),
        }
        try:
            await self._to_inbox(sender, fields)
        except (RedisError, OSError) as exc:
            self._redis_down(exc)

    async def _read_events(self) -> None:
        backoff = _Backoff()
        while not self._closing:
            got = await self._xread({self.events_key: self._events_from}, 100, backoff)
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    if self._closing:
                        return
                    self._events_from = entry_id.decode()
                    try:
                        self._heard(fields)
                    except Exception as exc:  # one bad entry must not end the reader
                        self._bad_entry(self.events_key, exc)

    def _heard(self, raw: dict[bytes, bytes]) -> None:
        """One batch of another node's events. An unreadable batch is skipped without taking
        its ``seq``, so that the node's next batch shows the loss as a gap; an unreadable item
        of a readable batch is skipped, and the batch then signals a gap itself."""
        try:
            sender = raw[b"from"].decode()
            seq = int(raw[b"seq"])
            events = json.loads(raw[b"events"])
            if not isinstance(events, list):
                raise ValueError(f"events are a {type(events).__name__}, not a list")
        except (KeyError, ValueError) as exc:
            self._bad_entry(self.events_key, exc)
            return
        if sender == self.node_id:
            return
        last = self._last_seq.get(sender)
        self._last_seq[sender] = seq
        if last is not None and seq != last + 1:
            self._gap(sender)
        self.metrics.inc("cluster.bus.events_heard", len(events))
        lost = False
        for item in events:
            # The shape only: a body is the listeners' to judge (the replica counts its own).
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                self._bad_entry(self.events_key, ValueError(f"event {str(item)[:80]}"))
                lost = True
                continue
            event, body = item
            for hear in self._event_handlers.get(event, ()):
                try:
                    hear(sender, body)
                except Exception:
                    log.exception("cluster.event_handler_failed", event=event, sender=sender)
        if lost:
            self._gap(sender)
