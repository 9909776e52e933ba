"""The queued scheduler for long SIP timers: order, cancellation, short delays, errors."""

from __future__ import annotations

import asyncio

from gateway.sip.timers import QueuedTimer, TimerQueues
from tests.conftest import wait_for


async def test_fires_in_order_and_skips_cancelled() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueues(loop, resolution=0.01, min_delay=0.05)
    fired: list[str] = []
    timers.call_later(0.1, fired.append, "a")
    cancelled = timers.call_later(0.1, fired.append, "b")
    timers.call_later(0.06, fired.append, "early")
    timers.call_later(0.1, fired.append, "c")
    cancelled.cancel()
    assert len(timers) == 4
    await wait_for(lambda: fired == ["early", "a", "c"], 2, "timers")
    await wait_for(lambda: len(timers) == 0, 1, "queues emptied")
    assert timers._sweep is None  # nothing left to sweep: no loop timer either


async def test_short_delays_use_the_loop_and_errors_do_not_stop_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["exception"]))
    timers = TimerQueues(loop, resolution=0.01, min_delay=0.05)
    fired: list[str] = []
    handle = timers.call_later(0.01, fired.append, "short")
    assert not isinstance(handle, QueuedTimer)  # the loop's own handle

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.06, boom)
    timers.call_later(0.06, fired.append, "after")
    await wait_for(lambda: fired == ["short", "after"], 2, "timers")
    assert [str(e) for e in errors] == ["boom"]
    timers.close()
    loop.set_exception_handler(None)
