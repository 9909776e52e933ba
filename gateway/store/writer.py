"""The queued writer both persistent stores share (SQLite, Redis): saves go into a pending
batch, a background loop writes it every ``flush_interval`` (or ``commit_delay`` after the
first caller of :meth:`QueuedWriter.committed`), and a write that fails is retried, backing off
from ``flush_interval`` up to :data:`MAX_RETRY_DELAY`. How a batch is written and how a
failure and a recovery are reported is each store's own (``_write_batch``, ``_write_failed``,
``_write_recovered``, ``_complete``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Self, TypeVar

from gateway.metrics import Metrics

MAX_RETRY_DELAY = 5.0
"""The longest wait between two attempts at a write that keeps failing."""


@dataclass
class Batch:
    """What a store's batch has in common: the futures done once it is committed (group
    commit: one per caller of ``committed``)."""

    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def merge_older(self, older: Self) -> None:
        """Put back a batch that failed to write, under anything newer queued since."""
        raise NotImplementedError

    def committed(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)


B = TypeVar("B", bound=Batch)


class QueuedWriter(Generic[B]):
    """The pending batch, the one being written, group commit and the writer loop."""

    metrics: Metrics

    def __init__(self, flush_interval: float, new_batch: Callable[[], B]) -> None:
        self.flush_interval = flush_interval
        self.commit_delay = min(0.02, flush_interval)
        self._new_batch = new_batch
        self._pending = new_batch()
        self._writing: B | None = None
        self._failures = 0  # writes failed in a row
        self._wake_soon: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time

    async def flush(self) -> None:
        """Write what is pending as one batch. When that fails, the batch is put back under
        the saves made since (the newest state of a row wins), ``_write_failed`` reports it
        and the error is raised; the futures waiting on it stay pending until it lands."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, self._new_batch()
            self._writing = batch
            started = time.monotonic()
            try:
                complete = await self._write_batch(batch)
            except Exception as exc:
                # Keep what was not written: newer saves win over the failed batch.
                self._writing = None
                self._pending.merge_older(batch)
                self._write_failed(exc)
                raise
            self._writing = None
            self.metrics.observe("store.write_seconds", time.monotonic() - started)
            self._write_recovered()
            batch.committed()
            if not complete:
                await self._complete()

    async def _write_batch(self, batch: B) -> bool:
        """Write ``batch`` all or nothing; False when something must follow (``_complete``,
        called once the batch's waiters are told it is committed, still under the lock)."""
        raise NotImplementedError

    def _write_failed(self, exc: Exception) -> None:
        """Count and log a failed write (``_failures`` grows by one)."""
        raise NotImplementedError

    def _write_recovered(self) -> None:
        """A write went through: the end of a run of failures, if there was one."""
        raise NotImplementedError

    async def _complete(self) -> None:
        """What must follow a write that returned False."""

    def _queued(self) -> list[B]:
        """What is saved but not yet committed, oldest first."""
        return [b for b in (self._writing, self._pending) if b is not None]

    def committed(self) -> asyncio.Future[None] | None:
        """A future done once everything saved so far is committed (``None``: it is already),
        for a caller that must not acknowledge what could still be lost. It wakes the writer
        ``commit_delay`` (20 ms) from the first such call: whatever is saved until that write
        starts goes in the same commit, so a storm of registrations makes a few dozen commits
        a second, not one per REGISTER."""
        batch = self._pending if self._pending else self._writing
        if batch is None:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        batch.waiters.append(fut)
        if self._wake_soon is None:
            self._wake_soon = loop.call_later(self.commit_delay, self._wake_writer)
        return fut

    def _wake_writer(self) -> None:
        self._wake_soon = None
        self._wake.set()

    def _cancel_wake(self) -> None:
        if self._wake_soon is not None:
            self._wake_soon.cancel()
            self._wake_soon = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if self._failures:
                # Back off while the writes fail: waiters do not hurry a full disk.
                await self._wait_retry()
            else:
                await self._pause(self.flush_interval, self._wake)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                pass  # reported by flush; the batch is kept for the next attempt

    async def _wait_retry(self) -> None:
        """Wait before trying a failed write again (cut short only by ``close``)."""
        await self._pause(self._retry_delay(), self._stopping)

    def _retry_delay(self) -> float:
        return float(min(self.flush_interval * 2 ** (self._failures - 1), MAX_RETRY_DELAY))

    @staticmethod
    async def _pause(seconds: float, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
