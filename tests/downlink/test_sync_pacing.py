"""Catalog syncs after a storm: they start one at a time in the order asked, at most
``downlink.sync_rate`` per second, and none while the gateway sheds load."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from gateway.downlink import CatalogSync
from gateway.metrics import Metrics
from gateway.settings import DownlinkSection


def pacer(rate: float, busy: Any) -> CatalogSync:
    # _turn() needs only the settings, the metrics and the busy signal.
    none: Any = None
    return CatalogSync(
        settings=DownlinkSection(sync_rate=rate),
        downlink=none,
        subscriptions=none,
        catalog=none,
        events=none,
        metrics=Metrics(),
        busy=busy,
    )


async def test_syncs_wait_while_the_gateway_sheds_then_start_in_turn_paced() -> None:
    shedding = True
    sync = pacer(50.0, lambda: shedding)
    loop = asyncio.get_running_loop()
    started: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        await sync._turn()
        started.append((i, loop.time()))

    tasks = [asyncio.create_task(one(i)) for i in range(10)]
    await asyncio.sleep(0.6)  # three polls of the head of the line: none may start meanwhile
    assert started == []
    assert sync.metrics.get("sync.paused") == 1  # one waiter polls, the rest queue behind it
    shedding = False
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [i for i, _ in started] == list(range(10))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(started)]
    assert min(gaps) >= 1 / 50 - 0.003


async def test_a_long_overload_does_not_hold_syncs_back_forever() -> None:
    sync = pacer(1000.0, lambda: True)
    sync.max_busy_wait = 0.3
    await asyncio.wait_for(sync._turn(), 5)
    assert sync.metrics.get("sync.paused") == 1
