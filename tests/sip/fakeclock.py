"""A scheduler on virtual time for the sans-I/O SIP tests (transactions and the core)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A scheduler whose time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, FakeHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.fired: list[tuple[float, str]] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), handle, callback, args))
        return handle

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._heap and self._heap[0][0] <= end + 1e-9:
            at, _, handle, callback, args = heapq.heappop(self._heap)
            self.now = at
            if not handle.cancelled:
                self.fired.append((round(at, 3), args[0] if args else "?"))
                callback(*args)
        self.now = end

    def pending(self) -> list[str]:
        return sorted(a[4][0] for a in self._heap if not a[2].cancelled)
