"""The bus between nodes (gateway.cluster.bus) against a real redis-server: requests to a
node's inbox and replies to the sender's, timeouts, handler errors, expired requests dropped,
bounded streams, events in order to every other node, gaps noticed."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.cluster import Bus, ClusterError, ClusterTimeout
from gateway.cluster import bus as bus_module
from tests.conftest import wait_for
from tests.redisrig import RedisServer

_prefixes = itertools.count()

MakeBus = Callable[..., Awaitable[Bus]]


@pytest.fixture
async def make_bus(redis_server: RedisServer) -> AsyncIterator[MakeBus]:
    prefix = f"t{next(_prefixes)}:"
    made: list[Bus] = []

    async def make(node_id: str, **kw: Any) -> Bus:
        bus = Bus(url=redis_server.url, prefix=prefix, node_id=node_id, **kw)
        await bus.start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


async def test_request_reaches_the_node_and_the_reply_comes_back(make_bus: MakeBus) -> None:
    a = await make_bus("a")
    b = await make_bus("b")
    seen: list[dict[str, Any]] = []

    async def double(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"twice": body["n"] * 2, "at": "b"}

    b.handle("double", double)
    assert await a.request("b", "double", {"n": 21}, timeout=5) == {"twice": 42, "at": "b"}
    assert seen == [{"n": 21}]
    # A node asking itself is served at once, without Redis.
    assert await b.request("b", "double", {"n": 1}) == {"twice": 2, "at": "b"}
    assert b.metrics.get("cluster.bus.served") == 1


async def test_no_answer_times_out_with_a_clear_error(make_bus: MakeBus) -> None:
    a = await make_bus("a")
    with pytest.raises(ClusterTimeout, match=r"ping to node nobody: no answer within 0\.3 s"):
        await a.request("nobody", "ping", {}, timeout=0.3)
    assert a.metrics.get("cluster.bus.timeouts") == 1
    assert not a._pending  # nothing left behind


async def test_handler_errors_come_back(make_bus: MakeBus) -> None:
    a = await make_bus("a")
    b = await make_bus("b")

    async def refuse(body: dict[str, Any]) -> dict[str, Any]:
        raise ClusterError("device 1 is offline", "unavailable")

    async def crash(body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    b.handle("refuse", refuse)
    b.handle("crash", crash)
    with pytest.raises(ClusterError, match="refuse at node b: device 1 is offline") as err:
        await a.request("b", "refuse", {}, timeout=5)
    assert err.value.code == "unavailable"
    with pytest.raises(ClusterError, match="crash at node b: boom") as err:
        await a.request("b", "crash", {}, timeout=5)
    assert err.value.code == "error"
    with pytest.raises(ClusterError, match="nothing: no such request") as err:
        await a.request("b", "nothing", {}, timeout=5)
    assert err.value.code == "unknown"
    with pytest.raises(ValueError):
        b.handle("refuse", refuse)


async def test_a_request_past_its_deadline_is_dropped(
    make_bus: MakeBus, redis_server: RedisServer
) -> None:
    b = await make_bus("b")
    served: list[dict[str, Any]] = []

    async def work(body: dict[str, Any]) -> dict[str, Any]:
        served.append(body)
        return {}

    b.handle("work", work)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for deadline, n in ((1.0, 1), (b.clock() + 30, 2)):  # 1970: long past
            await client.xadd(
                b.inbox,
                {
                    "id": f"x{n}",
                    "from": "ghost",
                    "kind": "work",
                    "body": json.dumps({"n": n}),
                    "deadline": repr(deadline),
                },
            )
        await wait_for(lambda: served == [{"n": 2}], what="the live request served")
        assert b.metrics.get("cluster.bus.expired") == 1
        # The reply went to the sender's inbox, naming the request.
        got = await client.xrange(f"{b.prefix}inbox:ghost")
        assert [e[1][b"reply_to"] for e in got] == [b"x2"]
        # Garbage in an inbox is counted and skipped.
        await client.xadd(b.inbox, {"junk": "1"})
        await wait_for(lambda: b.metrics.get("cluster.bus.bad_entries") == 1)
    finally:
        await client.aclose()


async def test_inboxes_and_the_events_stream_are_bounded(
    make_bus: MakeBus, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "INBOX_MAXLEN", 50)
    monkeypatch.setattr(bus_module, "EVENTS_MAXLEN", 50)
    monkeypatch.setattr(bus_module, "BATCH_EVENTS", 1)
    a = await make_bus("a")
    for _ in range(400):
        with pytest.raises(ClusterTimeout):
            await a.request("gone", "x", {}, timeout=0.001)
    for n in range(400):
        a.publish("e", {"n": n})
    await a.drain()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        # MAXLEN ~ trims whole macro nodes (100 entries by default): near the bound, not at it.
        assert await client.xlen(f"{a.prefix}inbox:gone") < 400
        assert await client.xlen(a.events_key) < 400
    finally:
        await client.aclose()


async def test_events_reach_every_other_node_in_order(make_bus: MakeBus) -> None:
    a = await make_bus("a")
    b = await make_bus("b")
    c = await make_bus("c")
    heard: dict[str, list[tuple[str, int]]] = {"a": [], "b": [], "c": []}
    for name, bus in (("a", a), ("b", b), ("c", c)):
        bus.on_event(
            "tick", lambda sender, body, name=name: heard[name].append((sender, body["n"]))
        )
    for n in range(5000):  # several batches
        a.publish("tick", {"n": n})
    await a.drain()
    want = [("a", n) for n in range(5000)]
    await wait_for(lambda: heard["b"] == want and heard["c"] == want, what="every event heard")
    assert heard["a"] == []  # not to itself
    assert a.seq >= 3


async def test_a_gap_in_a_nodes_events_is_noticed(
    make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await make_bus("a")
    b = await make_bus("b")
    gaps: list[str] = []
    heard: list[int] = []
    b.on_gap(gaps.append)
    b.on_event("e", lambda sender, body: heard.append(body["n"]))
    a.publish("e", {"n": 1})
    await a.drain()
    await wait_for(lambda: heard == [1])
    monkeypatch.setattr(bus_module, "MAX_QUEUED_EVENTS", 0)
    a.publish("e", {"n": 2})  # dropped: the queue is "full"
    monkeypatch.setattr(bus_module, "MAX_QUEUED_EVENTS", 10)
    a.publish("e", {"n": 3})
    await a.drain()
    await wait_for(lambda: heard == [1, 3])
    assert gaps == ["a"]
    assert a.metrics.get("cluster.bus.events_dropped") == 1


async def test_redis_away_and_back(make_bus: MakeBus, redis_server: RedisServer) -> None:
    """Requests fail clearly while Redis is away; events published meanwhile are written when
    it is back; the readers resume by themselves and the listeners hear of a possible gap."""
    a = await make_bus("a")
    b = await make_bus("b")

    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    b.handle("echo", echo)
    heard: list[int] = []
    gaps: list[str] = []
    b.on_event("e", lambda sender, body: heard.append(body["n"]))
    b.on_gap(gaps.append)
    a.publish("e", {"n": 0})
    await wait_for(lambda: heard == [0])
    redis_server.kill()
    try:
        with pytest.raises(ClusterError, match="Redis unreachable"):
            await a.request("b", "echo", {"x": 1}, timeout=1)
        a.publish("e", {"n": 1})
        await wait_for(lambda: not a.healthy, what="a says Redis is down")
    finally:
        redis_server.start()
    await wait_for(lambda: heard == [0, 1], timeout=15, what="the queued event written")
    assert await a.request("b", "echo", {"x": 2}, timeout=5) == {"x": 2}
    await wait_for(lambda: a.healthy and b.healthy)
    assert a.metrics.get("cluster.bus.redis_errors") >= 1
    assert "a" in gaps  # b may have missed something of a's while away: it fetches again


async def test_requests_beyond_the_handler_limit_wait_in_the_inbox(
    make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only MAX_HANDLING requests of other nodes are taken at once: the rest stay in the
    (bounded) inbox stream rather than piling up as tasks; all are served in the end."""
    monkeypatch.setattr(bus_module, "MAX_HANDLING", 2)
    a = await make_bus("a")
    b = await make_bus("b")
    gate = asyncio.Event()
    running: list[int] = []
    peak = 0

    async def slow(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal peak
        running.append(body["n"])
        peak = max(peak, b._serving)
        await gate.wait()
        return {"n": body["n"]}

    b.handle("slow", slow)
    calls = [asyncio.ensure_future(a.request("b", "slow", {"n": n}, timeout=10)) for n in range(6)]
    await wait_for(lambda: len(running) == 2, 5, "two handlers running")
    await a.drain()
    assert b._serving == 2  # the other four were not read from the inbox
    gate.set()
    assert [r["n"] for r in await asyncio.gather(*calls)] == list(range(6))
    assert peak == 2 and len(running) == 6


async def test_close_ends_the_readers_without_cancelling_them(redis_server: RedisServer) -> None:
    """A cancellation that lands in a blocking XREAD can be lost in redis-py, and a task that
    never ends hangs the loop's shutdown: close() breaks the reads by closing the connections,
    and the readers end by themselves."""
    bus = Bus(url=redis_server.url, prefix="close:", node_id="a")
    await bus.start()
    readers = list(bus._tasks)
    assert len(readers) == 2
    bus.publish("e", {"n": 1})
    await bus.close()
    assert all(t.done() and not t.cancelled() for t in readers)
    with pytest.raises(ClusterError):
        await bus.request("b", "x", {}, timeout=1)


@pytest.mark.timeout(60)
async def test_garbage_in_the_streams_does_not_stop_the_readers(
    make_bus: MakeBus, redis_server: RedisServer
) -> None:
    """A peer on another version or any stray XADD must not end a node's readers: each bad
    entry (or bad item of an events batch) is counted and skipped, and the node still answers
    requests and still applies the good events that follow."""
    a = await make_bus("a")
    b = await make_bus("b")
    readers = list(b._tasks)

    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    b.handle("echo", echo)
    heard: list[tuple[str, Any]] = []
    b.on_event("e", lambda sender, body: heard.append((sender, body.get("n"))))
    client = aioredis.Redis.from_url(redis_server.url)
    request = {"id": "x", "from": "ghost", "kind": "echo", "body": "{}", "deadline": "9e9"}
    bad_inbox: list[dict[str, Any]] = [
        {"junk": "1"},  # no field the bus knows
        {**request, "body": "not json"},
        {**request, "deadline": "soon"},
        {**request, "deadline": "nan"},
        {k: v for k, v in request.items() if k != "kind"},
        {**request, "kind": b"\xff\xfe"},  # not UTF-8
        {"reply_to": b"\xff", "status": "ok", "body": "{}"},
    ]
    bad_events: list[dict[str, Any]] = [
        {"junk": "1"},
        {"from": "z", "seq": "one", "events": "[]"},
        {"from": "z", "seq": "1", "events": "not json"},
        {"from": "z", "seq": "2", "events": '{"e": 1}'},  # not a list
        {"from": "z", "seq": "3", "events": "7"},
        {"from": "z", "seq": "4", "events": '[["e", {"n": 1}], 5, ["e"], [1, {}], ["e", {}, 4]]'},
        {"from": b"\xff", "seq": "5", "events": "[]"},
    ]
    try:
        for fields in bad_inbox:
            await client.xadd(b.inbox, fields)
        for fields in bad_events:
            await client.xadd(b.events_key, fields)
        # The good item of the mixed batch is heard; the four bad ones are counted.
        want_bad = len(bad_inbox) + len(bad_events) - 1 + 4
        await wait_for(
            lambda: b.metrics.get("cluster.bus.bad_entries") == want_bad,
            what="every bad entry counted",
        )
        assert await a.request("b", "echo", {"still": "here"}, timeout=5) == {"still": "here"}
        a.publish("e", {"n": 2})
        await a.drain()
        await wait_for(lambda: ("a", 2) in heard, what="a good event after the bad ones")
        assert heard == [("z", 1), ("a", 2)]
        assert len(readers) == 2 and not any(t.done() for t in readers)
        assert b.metrics.get("cluster.bus.task_failed") == 0
    finally:
        await client.aclose()


@pytest.mark.timeout(60)
async def test_a_request_keeps_its_timeout_when_redis_stops_answering(
    make_bus: MakeBus, redis_server: RedisServer
) -> None:
    """Redis stops answering without closing its connections (SIGSTOP): the XADD of the
    request is under the request's deadline too, so the caller hears ClusterTimeout after
    about its timeout, not after the client's 30 s socket timeout."""
    a = await make_bus("a")
    await make_bus("b")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ClusterTimeout, match=r"echo to node b: no answer within 1 s"):
            await a.request("b", "echo", {}, timeout=1)
        assert time.monotonic() - started < 10  # not the 30 s socket timeout
        assert a.metrics.get("cluster.bus.timeouts") == 1
        assert not a._pending
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
