"""Counters of what happened, by name (``sip.rx.parse_error``, ``register.ok``...).

One instance is built by the application and passed to every part; nothing here is global.
The HTTP API will expose :meth:`snapshot`; tests read it to see that bad input was counted.
"""

from __future__ import annotations

from collections import defaultdict


class Metrics:
    __slots__ = ("_counters",)

    def __init__(self) -> None:
        self._counters: defaultdict[str, int] = defaultdict(int)

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def get(self, name: str) -> int:
        return self._counters.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counters.items()))
