"""Fenced leases in Redis: one node at a time acts for a named thing (an upper platform's
registration, a floating address).

A lease is the key ``{prefix}lease:{name}`` holding ``"{node_id}:{token}"`` with a time to live
of the lease time. It is taken only when the key is absent (``SET NX PX``), with a token from
``INCR {prefix}fence:{name}``: the token grows with every grant, so whoever acts on the holder's
behalf can refuse an older holder (fencing). Acquire (the ``INCR`` and the ``SET``) is one Lua
script so no token is spent on a failed attempt; renew and release compare the value first
(compare-and-``PEXPIRE``, compare-and-``DEL``), so a node never extends or removes a lease
someone else holds. A renewal that finds the key gone (Redis restarted empty) writes it back:
nobody else can hold it (with the fence counter gone too, acquire grants nothing for one lease
time, the longest a holder can go on acting without renewing), and the holder goes on acting
without a gap.

The holder's view is local: before each acquire or renew request it reads a monotonic clock,
and a successful answer makes the lease its own until that reading plus the lease time (less a
small allowance for clock rate). Redis counts the key's life from when it received the request,
later than our reading, so the local deadline always falls before the key can expire and
another node can take it. A renewal that is refused (the value is not ours) loses the lease at
once; one that cannot reach Redis is retried until the local deadline, which then loses it.
``on_lost`` is called synchronously at that moment, so the holder has stopped acting before any
other node can have been granted the lease.

:class:`HeldLease` is the single-node form: held from the start, never lost, nothing sent.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.tasks import stop

log = structlog.get_logger("gateway.cluster.leases")

# KEYS: the lease, its fence counter, its grace key. ARGV: node_id, lease ms, whether this node
# has seen the lease in use ('1': it held it or was refused it). Returns the new
# token, or minus the time (ms) to wait before trying again (at least 1): the holder's lease
# left, or the grace left. A lease this node holds by value already (it lost track of it, e.g.
# after Redis was unreachable, or it restarted with the same node ID) is granted afresh with a
# new token: nobody else can be acting for it. A missing fence counter means Redis lost its
# data (restarted empty, a replica without it took over) or the lease was never granted: a
# holder may still be acting, its lease gone with the rest, and its next renewal (within a
# lease time, or it stops at its deadline) writes it back. So nothing is granted for one lease
# time (the grace key); the counter is created at 0 to mark that the grace was started, and
# the holder's restore raises it to its token, so tokens never go backwards. The grace is kept
# for nodes that have seen the lease in use: a node that never has (a fresh cluster, a newly
# configured upper) is granted at once, as a single node would be.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v then
  local node, tok = string.match(v, '^(.*):(%d+)$')
  if node ~= ARGV[1] then
    local left = redis.call('PTTL', KEYS[1])
    if left < 1 then left = 1 end
    return -left
  end
  local f = tonumber(redis.call('GET', KEYS[2]) or '0')
  if f < tonumber(tok) then redis.call('SET', KEYS[2], tok) end
elseif redis.call('EXISTS', KEYS[2]) == 0 and ARGV[3] == '1' then
  redis.call('SET', KEYS[2], 0)
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[2])
  return -tonumber(ARGV[2])
else
  local g = redis.call('PTTL', KEYS[3])
  if g > 0 then return -g end
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
return t
"""
# KEYS: the lease, its fence counter, its grace key. ARGV: the value held, lease ms, its token.
# 1 when renewed, 0 when the lease is someone else's. 2 when the key was gone (Redis restarted
# empty, or a replica without it took over): nobody else holds it (acquire grants nothing for
# a lease time after losing the counter), so it is written back, the fence counter is raised
# to the token if it fell behind, so later grants stay above it, and the grace is over.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if v then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local f = tonumber(redis.call('GET', KEYS[2]) or '0')
if f < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('DEL', KEYS[3])
return 2
"""
# ARGV: the value held. 1 when released, 0 when it was not ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

OnGained = Callable[[int], Awaitable[None] | None]
OnLost = Callable[[str], None]


class LeaseLike(Protocol):
    """What the parts that act under a lease see of it."""

    name: str

    @property
    def holder(self) -> bool: ...

    @property
    def token(self) -> int | None: ...

    def start(self) -> None: ...

    async def close(self, *, release: bool = True) -> None: ...


def _drift(seconds: float) -> float:
    """Allowance for the two clocks running at slightly different rates over one lease."""
    return min(0.2, seconds * 0.02)


class Lease:
    """One fenced lease, kept renewed by a task while held and tried for while not.

    ``on_gained(token)`` runs (awaited when it returns an awaitable) each time the lease is
    granted; ``on_lost(reason)`` runs synchronously, at once, when it is lost or given up."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        name: str,
        node_id: str,
        seconds: float,
        on_gained: OnGained,
        on_lost: OnLost,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_redis: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.node_id = node_id
        self.seconds = seconds
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.on_redis = on_redis
        self.key = f"{prefix}lease:{name}"
        self.fence_key = f"{prefix}fence:{name}"
        self.grace_key = f"{prefix}lease-grace:{name}"
        self.ms = max(1, int(seconds * 1000))
        self._token: int | None = None
        self.deadline = 0.0  # local (``clock``) time until which the lease is ours
        self._watchdog: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._gaining: asyncio.Future[None] | None = None
        self._give_back: str | None = None  # the value of a grant given up, to release
        self.log = log.bind(lease=name, node=node_id)
        self._acquire: Any = client.register_script(_ACQUIRE)
        # Whether this node has seen the lease in use (see _ACQUIRE's grace).
        self._seen_in_use = False
        self._renew: Any = client.register_script(_RENEW)
        self._release: Any = client.register_script(_RELEASE)

    @property
    def _keys(self) -> list[str]:
        return [self.key, self.fence_key, self.grace_key]

    @property
    def holder(self) -> bool:
        return self._token is not None

    @property
    def token(self) -> int | None:
        """The fencing token of the grant held (``None`` when not held)."""
        return self._token

    @property
    def value(self) -> str:
        return f"{self.node_id}:{self._token}"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, *, release: bool = True) -> None:
        """Stop; with ``release`` (a clean shutdown) the lease is given back at once, so another
        node takes over without waiting for it to expire."""
        self._closing = True
        task, self._task = self._task, None
        await stop(task)
        if self.holder:
            self._give_back = self.value
            self._lose("closed")
        value, self._give_back = self._give_back, None
        if release and value is not None:
            await self._release_value(value)

    async def _release_value(self, value: str) -> None:
        try:
            await asyncio.wait_for(self._release(keys=[self.key], args=[value]), self.seconds / 3)
        except (RedisError, OSError, TimeoutError):
            pass

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            try:
                if self._give_back is not None:
                    await self._gave_up()
                elif self.holder:
                    await self._keep()
                else:
                    await self._try()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the lease loop die silently
                self.log.exception("cluster.lease_crashed")
                self._lose("internal error")
                await self._sleep(self.seconds / 3)

    async def _try(self) -> None:
        """One acquire attempt; then wait until it could succeed (the holder's time left, at
        most a third of the lease time, with a little jitter so survivors do not collide)."""
        sent = self.clock()
        try:
            got = int(
                await asyncio.wait_for(
                    self._acquire(
                        keys=self._keys,
                        args=[self.node_id, self.ms, "1" if self._seen_in_use else "0"],
                    ),
                    self.seconds / 3,
                )
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis(False, exc)
            await self._sleep(self.seconds / 3)
            return
        self._redis(True)
        self._seen_in_use = True  # held now, or refused: the lease exists in this cluster
        if got > 0:
            self._gained(got, sent)
            return
        wait = min(-got / 1000.0, self.seconds / 3)
        await self._sleep(wait + random.uniform(0.005, 0.03))

    def _gained(self, token: int, sent: float) -> None:
        self._token = token
        self._extend(sent)
        self.metrics.inc("cluster.lease_gained")
        self.log.info("cluster.lease_gained", token=token)
        try:
            result = self.on_gained(token)
        except Exception:
            self.log.exception("cluster.lease_gained_failed")
            self._give_up()
            return
        if inspect.isawaitable(result):
            # Run beside the renewals (taking over may take a round trip or more); cancelled
            # if the lease is lost before it is done.
            self._gaining = asyncio.ensure_future(result)
            self._gaining.add_done_callback(self._gain_done)

    def _gain_done(self, task: asyncio.Future[None]) -> None:
        current = self._gaining is task
        if current:
            self._gaining = None
        if task.cancelled() or task.exception() is None:
            return
        self.log.error("cluster.lease_gained_failed", error=repr(task.exception())[:200])
        if current:
            self._give_up()

    def _give_up(self) -> None:
        """Taking over failed (``on_gained`` raised): nobody would serve under the lease, so it
        is lost at once and given back (by the loop, :meth:`_gave_up`) for another node."""
        if not self.holder:
            return
        self.metrics.inc("cluster.lease_gain_failed")
        self._give_back = self.value
        self._lose("gain failed")

    async def _gave_up(self) -> None:
        """Release a grant given up, then wait a lease time before trying again, so a standby
        (retrying every third of it) takes it first."""
        value, self._give_back = self._give_back, None
        if value is not None:
            await self._release_value(value)
        await self._sleep(self.seconds)

    async def _keep(self) -> None:
        """Sleep a third of the lease, then renew; retried (quickly) while Redis does not
        answer, until the local deadline takes the lease away."""
        await self._sleep(self.seconds / 3)
        while self.holder and not self._closing:
            value = self.value
            sent = self.clock()
            left = self.deadline - sent
            if left <= 0:
                return
            try:
                renewed = int(
                    await asyncio.wait_for(
                        self._renew(keys=self._keys, args=[value, self.ms, self._token]),
                        left,
                    )
                )
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis(False, exc)
                self.metrics.inc("cluster.lease_renew_failed")
                await self._sleep(min(0.1, max(0.0, self.deadline - self.clock())))
                continue
            self._redis(True)
            if value != self.value:
                return  # lost while the answer was on its way: not ours to extend
            if renewed:
                self._extend(sent)
                if renewed == 2:
                    self.metrics.inc("cluster.lease_restored")
                    self.log.warning("cluster.lease_restored", token=self._token)
            else:
                self._lose("taken by another node")
            return

    def _extend(self, sent: float) -> None:
        """Ours until ``sent`` + the lease time (less the drift allowance), watched by a timer
        on the loop that loses it then unless renewed."""
        self.deadline = sent + self.seconds - _drift(self.seconds)
        if self._watchdog is not None:
            self._watchdog.cancel()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(max(0.0, self.deadline - self.clock()), self._expire)

    def _expire(self) -> None:
        self._watchdog = None
        if not self.holder:
            return
        if self.clock() >= self.deadline:
            self._lose("not renewed in time")
        else:  # a renewal moved the deadline while this timer was due
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.deadline - self.clock(), self._expire)

    def _lose(self, reason: str) -> None:
        if self._token is None:
            return
        token, self._token = self._token, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._wake.set()
        gaining, self._gaining = self._gaining, None
        if gaining is not None and not gaining.done():
            gaining.cancel()
        self.metrics.inc("cluster.lease_lost")
        self.log.warning("cluster.lease_lost", reason=reason, token=token)
        try:
            self.on_lost(reason)
        except Exception:
            self.log.exception("cluster.lease_lost_failed")

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    def _redis(self, up: bool, exc: BaseException | None = None) -> None:
        if self.on_redis is not None:
            self.on_redis(up)
        if not up:
            self.log.debug("cluster.lease_redis_error", error=str(exc)[:200])


class HeldLease:
    """The single-node form: held from :meth:`start` (``on_gained`` runs then), never lost
    while running; nothing is sent anywhere."""

    def __init__(self, name: str, *, on_gained: OnGained, on_lost: OnLost) -> None:
        self.name = name
        self.on_gained = on_gained
        self.on_lost = on_lost
        self._held = False
        self._task: asyncio.Task[None] | None = None

    @property
    def holder(self) -> bool:
        return self._held

    @property
    def token(self) -> int | None:
        return 1 if self._held else None

    def start(self) -> None:
        if self._held:
            return
        self._held = True
        result = self.on_gained(1)
        if inspect.isawaitable(result):
            self._task = asyncio.ensure_future(result)

    async def close(self, *, release: bool = True) -> None:
        if self._task is not None and not self._task.done():
            await self._task
        self._held = False
