"""Fenced leases and membership against a real redis-server (tests/redisrig.py): exclusivity,
takeover after expiry, fencing (the old holder stops before the new one starts, tokens grow),
Redis killed while a lease is held, the single-node form."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.cluster import Cluster, HeldLease, Lease, Membership
from gateway.metrics import Metrics
from tests.conftest import wait_for
from tests.redisrig import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server is not installed (make test installs it)"
)

LEASE = 1.0


class Proxy:
    """A TCP relay between one client and Redis that can be cut (a partition): while cut, it
    reads and drops what either side sends, so requests hang rather than fail."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.cut = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not self.cut:
                        dst.write(data)
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Holder:
    """A lease with a record of what happened to it (local monotonic times)."""

    def __init__(
        self,
        client: aioredis.Redis,
        node: str,
        name: str = "upper:1",
        *,
        seconds: float = LEASE,
    ) -> None:
        self.events: list[tuple[str, float, int | str]] = []
        self.lease = Lease(
            client,
            prefix="t:",
            name=name,
            node_id=node,
            seconds=seconds,
            on_gained=lambda token: self.events.append(("gained", time.monotonic(), token)),
            on_lost=lambda why: self.events.append(("lost", time.monotonic(), why)),
            metrics=Metrics(),
        )

    def times(self, what: str) -> list[float]:
        return [t for kind, t, _ in self.events if kind == what]

    def tokens(self) -> list[int]:
        return [int(v) for kind, _, v in self.events if kind == "gained"]


def client(port: int) -> aioredis.Redis:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.mark.timeout(30)
async def test_one_holder_at_a_time(redis_server: RedisServer) -> None:
    ca, cb = client(redis_server.port), client(redis_server.port)
    a, b = Holder(ca, "a"), Holder(cb, "b")
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    b.lease.start()
    # Three lease times of renewals: b never gets it while a renews.
    until = time.monotonic() + 3 * LEASE
    while time.monotonic() < until:
        assert not (a.lease.holder and b.lease.holder)
        assert a.lease.holder
        await asyncio.sleep(0.02)
    assert b.tokens() == []
    assert await ca.get("t:lease:upper:1") == f"a:{a.lease.token}".encode()
    # A clean release hands it over at once (no expiry to wait for).
    await a.lease.close()
    await wait_for(lambda: b.lease.holder, 2 * LEASE, "b takes over")
    assert b.tokens()[0] > a.tokens()[0]
    await b.lease.close()
    await ca.aclose()
    await cb.aclose()


@pytest.mark.timeout(30)
async def test_takeover_after_expiry_with_fencing(redis_server: RedisServer) -> None:
    """a is cut off from Redis (its requests hang): it stops holding at its local deadline,
    which comes before b is granted the lease; b's token is higher."""
    proxy = await Proxy(redis_server.port).start()
    ca, cb = client(proxy.port), client(redis_server.port)
    a, b = Holder(ca, "a"), Holder(cb, "b")
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    b.lease.start()
    proxy.cut = True
    await wait_for(lambda: bool(b.lease.holder), 5 * LEASE, "b takes over")
    lost, gained = a.times("lost"), b.times("gained")
    assert lost and gained
    assert lost[0] <= gained[0], "the old holder must stop before the new one may act"
    assert not a.lease.holder
    assert b.tokens()[0] > a.tokens()[0]
    # a cannot get it back while b renews, even with Redis reachable again.
    proxy.cut = False
    until = time.monotonic() + 2 * LEASE
    while time.monotonic() < until:
        assert not a.lease.holder
        await asyncio.sleep(0.05)
    await a.lease.close()
    await b.lease.close()
    await proxy.close()
    await ca.aclose()
    await cb.aclose()


@pytest.mark.timeout(30)
async def test_a_renewal_refused_loses_at_once(redis_server: RedisServer) -> None:
    """Someone else's value in the key (an operator, a split brain): the next renewal finds
    it and the holder stops then, without waiting for its deadline."""
    c = client(redis_server.port)
    a = Holder(c, "a")
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    await c.set("t:lease:upper:1", "z:999", px=60_000)
    await wait_for(lambda: not a.lease.holder, LEASE, "a loses")
    assert a.events[-1][2] == "taken by another node"
    await a.lease.close()
    assert await c.get("t:lease:upper:1") == b"z:999", "a release never removes another's lease"
    await c.aclose()


@pytest.mark.timeout(60)
async def test_redis_killed_mid_lease(redis_server: RedisServer) -> None:
    """Redis dies: the holder stops at its deadline (nobody holds), the cluster says Redis is
    down once; Redis back: the lease is held again with a higher token."""
    metrics = Metrics()
    cluster = Cluster(
        url=redis_server.url, prefix="t:", node_id="a", lease_seconds=LEASE, metrics=metrics
    )
    events: list[str] = []
    lease = cluster.lease(
        "upper:1", on_gained=lambda t: events.append(f"gained {t}"), on_lost=events.append
    )
    cluster.start()
    lease.start()
    await wait_for(lambda: lease.holder, 5, "held")
    first = lease.token
    assert first is not None
    redis_server.kill()
    await wait_for(lambda: not lease.holder, 3 * LEASE, "lost with Redis gone")
    assert events[-1] == "not renewed in time"
    await wait_for(lambda: not cluster.healthy(), 2 * LEASE, "Redis down noticed")
    assert metrics.get("cluster.redis_down") == 1
    redis_server.start()
    await wait_for(lambda: lease.holder, 10 * LEASE, "held again")
    assert lease.token is not None and lease.token > first
    await wait_for(cluster.healthy, 5 * LEASE, "Redis back noticed")
    await cluster.close()


@pytest.mark.timeout(30)
async def test_membership_alive_and_lost(redis_server: RedisServer) -> None:
    ca, cb = client(redis_server.port), client(redis_server.port)
    a = Membership(ca, prefix="t:", node_id="a", lease_seconds=LEASE, info={"sip_port": 1})
    b = Membership(cb, prefix="t:", node_id="b", lease_seconds=LEASE, info={"sip_port": 2})
    lost: list[tuple[str, dict[str, object]]] = []
    a.on_node_lost(lambda node, info: lost.append((node, info)))
    a.start()
    b.start()
    await wait_for(lambda: "b" in a.alive(), 5, "a sees b")
    assert a.alive()["b"]["sip_port"] == 2
    assert set(a.alive()) == {"a", "b"}
    # b dies without a word (its task stops; its record is left to expire).
    assert b._task is not None
    b._task.cancel()
    await wait_for(lambda: bool(lost), 10 * LEASE, "b lost")  # a busy machine: margin
    assert lost[0][0] == "b" and lost[0][1]["sip_port"] == 2
    assert "b" not in a.alive()
    assert await ca.sismember("t:nodes", "b") == 0
    await a.close()
    assert await ca.exists("t:node:a") == 0
    await ca.aclose()
    await cb.aclose()


async def test_single_node_form_holds_everything() -> None:
    """No Redis URL: every lease is held at start and never lost; nothing is contacted."""
    cluster = Cluster(url=None, prefix="t:", node_id="a", lease_seconds=LEASE)
    assert not cluster.active
    gained: list[int] = []
    lease = cluster.lease("upper:1", on_gained=gained.append, on_lost=lambda r: None)
    assert isinstance(lease, HeldLease)
    cluster.start()
    lease.start()
    assert lease.holder and gained == [1]
    await cluster.close()
    assert cluster.healthy()


@pytest.mark.timeout(60)
async def test_redis_restarted_empty_keeps_the_holder(redis_server: RedisServer) -> None:
    """Redis comes back empty: the holder's next renewal writes its lease back (nobody else
    can hold it), it never stops acting, and the fence counter is raised to its token so a
    later grant is still above it."""
    ca, cb = client(redis_server.port), client(redis_server.port)
    a = Holder(ca, "a")
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    token = a.lease.token
    redis_server.wipe()
    await wait_for(
        lambda: a.lease.metrics.get("cluster.lease_restored") == 1, 5 * LEASE, "restored"
    )
    assert a.lease.holder and a.lease.token == token
    assert [kind for kind, *_ in a.events] == ["gained"]
    assert await cb.get("t:lease:upper:1") == f"a:{token}".encode()
    assert int(await cb.get("t:fence:upper:1") or 0) >= (token or 0)
    # Given back: the next grant's token is above the old holder's.
    b = Holder(cb, "b")
    b.lease.start()
    await a.lease.close()
    await wait_for(lambda: b.lease.holder, 3 * LEASE, "b holds")
    assert b.tokens()[0] > (token or 0)
    await b.lease.close()
    await ca.aclose()
    await cb.aclose()


@pytest.mark.timeout(60)
async def test_redis_restarted_empty_grants_nobody_else_meanwhile(
    redis_server: RedisServer,
) -> None:
    """Redis comes back empty just after the holder renewed, and the standby retries at once
    and then as fast as it can (its sleep cut short), before the holder's next renewal: it is
    refused (the fence counter is gone: a lease time of grace), the holder's renewal writes
    the lease back, there is never a moment with two holders, and tokens never go back."""
    seconds = 2.0  # a third of it (the holder's next renewal) is well above a wipe's time
    ca, cb = client(redis_server.port), client(redis_server.port)
    a, b = Holder(ca, "a", seconds=seconds), Holder(cb, "b", seconds=seconds)
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    token = a.lease.token
    assert token is not None
    b.lease.start()
    both: list[float] = []
    running = True

    async def watch() -> None:
        while running:
            if a.lease.holder and b.lease.holder:
                both.append(time.monotonic())
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    renewed = a.lease.deadline
    await wait_for(lambda: a.lease.deadline != renewed, seconds, "a renewed")
    redis_server.wipe()  # blocks the loop: nobody acts until Redis answers again, empty
    poke_until = time.monotonic() + seconds
    while time.monotonic() < poke_until and not both:
        b.lease._wake.set()  # the standby retries at once, again and again
        await asyncio.sleep(0.02)
    await wait_for(
        lambda: a.lease.metrics.get("cluster.lease_restored") == 1 or not a.lease.holder,
        3 * seconds,
        "restored or lost",
    )
    await asyncio.sleep(0.1)
    running = False
    await watcher
    assert both == [], "two holders at once after Redis came back empty"
    assert a.lease.metrics.get("cluster.lease_restored") == 1
    assert [kind for kind, *_ in a.events] == ["gained"], "the holder kept it throughout"
    assert a.lease.holder and a.lease.token == token
    assert b.tokens() == []
    assert int(await cb.get("t:fence:upper:1") or 0) >= token
    await a.lease.close()
    await wait_for(lambda: b.lease.holder, 3 * seconds, "b holds")
    assert b.tokens()[0] > token, "tokens never go backwards"
    await b.lease.close()
    await ca.aclose()
    await cb.aclose()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("awaited", [False, True])
async def test_a_failed_takeover_gives_the_lease_back(
    redis_server: RedisServer, awaited: bool
) -> None:
    """``on_gained`` raises (or what it returns fails): nobody would serve, so the lease is
    lost at once and released, and a standby takes it (with a higher token)."""
    ca, cb = client(redis_server.port), client(redis_server.port)
    lost: list[str] = []
    tried: list[int] = []

    async def fail_later(token: int) -> None:
        tried.append(token)
        await asyncio.sleep(0)
        raise RuntimeError("takeover failed")

    def fail(token: int) -> None:
        tried.append(token)
        raise RuntimeError("takeover failed")

    a = Lease(
        ca,
        prefix="t:",
        name="upper:1",
        node_id="a",
        seconds=LEASE,
        on_gained=fail_later if awaited else fail,
        on_lost=lost.append,
        metrics=Metrics(),
    )
    a.start()
    await wait_for(lambda: bool(tried), 5, "a granted")
    b = Holder(cb, "b")
    b.lease.start()
    # a gave it back: b has it (a retries only after a lease time), a renewing it would not.
    await wait_for(lambda: b.lease.holder, 2 * LEASE, "b takes over")
    assert not a.holder and lost == ["gain failed"]
    assert a.metrics.get("cluster.lease_gain_failed") == 1
    assert b.tokens()[0] > tried[0]
    assert await cb.get("t:lease:upper:1") == f"b:{b.tokens()[0]}".encode()
    await a.close()
    await b.lease.close()
    await ca.aclose()
    await cb.aclose()


@pytest.mark.timeout(30)
async def test_a_lease_never_seen_in_use_is_granted_at_once(redis_server: RedisServer) -> None:
    """On a fresh Redis a node that has never seen the lease is granted it at once (a single
    node on Redis registers to its upper as soon as one on SQLite would); the grace after an
    emptied Redis is for nodes that saw it in use."""
    ca = client(redis_server.port)
    a = Holder(ca, "a", seconds=10.0)
    started = time.monotonic()
    a.lease.start()
    await wait_for(lambda: a.lease.holder, 5, "a holds")
    # Well under the 10 s grace an emptied Redis would impose.
    assert time.monotonic() - started < 5.0
    assert a.tokens() == [1]
    await a.lease.close()
    await ca.aclose()
