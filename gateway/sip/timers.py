"""A scheduler for the long, repeating SIP timers (B, D, F, H, I, J, K, L, M).

Every answered UDP request keeps its server transaction for timer J (64·T1 = 32 s), so a gateway
taking 10,000 keepalives a second holds some 320,000 timers. An event-loop timer handle costs
about 700 bytes of Python heap each; here a timer is a small record appended to a FIFO queue per
distinct delay. Since every record in one queue has the same delay, the queue is already in
deadline order: one loop timer pops the due records from the front of each queue. Timers fire
up to ``resolution`` seconds late, which RFC 3261's 32 s and 5 s timers do not notice; delays
under ``min_delay`` (the retransmission timers A, E, G at T1) go straight to the loop.

It has the same ``call_later(delay, callback, *args)`` shape as an event loop, so the transaction
state machines take either. Built without a loop, it takes the running one at its first timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any


class QueuedTimer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _noop  # drop references now, not when the record leaves the queue
        self.args = ()


def _noop(*_: Any) -> None:
    return None


class TimerQueues:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        resolution: float = 0.05,
        min_delay: float = 1.0,
    ) -> None:
        self._loop = loop
        self.resolution = resolution
        self.min_delay = min_delay
        self._queues: dict[float, deque[QueuedTimer]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any
    ) -> QueuedTimer | asyncio.TimerHandle:
        loop = self._loop or self.loop
        if delay < self.min_delay:
            return loop.call_later(delay, callback, *args)
        timer = QueuedTimer(loop.time() + delay, callback, args)
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = deque()
        queue.append(timer)
        if self._sweep is None:
            self._sweep = loop.call_later(self.resolution, self._run)
        return timer

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _run(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for delay, queue in list(self._queues.items()):
            while queue and queue[0].when <= now:
                timer = queue.popleft()
                if not timer.cancelled:
                    try:
                        timer.callback(*timer.args)
                    except Exception as exc:  # one broken callback must not stop the others
                        self.loop.call_exception_handler(
                            {"message": "timer callback failed", "exception": exc}
                        )
            if not queue and self._queues.get(delay) is queue:
                del self._queues[delay]
        if self._queues:
            self._sweep = self.loop.call_later(self.resolution, self._run)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._queues.clear()
