"""Background tasks of one part of the gateway: kept referenced until done (asyncio holds only
weak references), failures logged under the part's event name, cancelled together at close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog


class TaskSet:
    __slots__ = ("_event", "_log", "_tasks")

    def __init__(self, log: structlog.typing.FilteringBoundLogger, event: str) -> None:
        self._log = log
        self._event = event
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.warning(self._event, error=f"{type(exc).__name__}: {exc}")

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            if not task.done():
                task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended; its cancellation is not raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
