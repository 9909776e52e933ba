"""Counters of what happened, by name (``sip.rx.parse_error``, ``register.ok``...), and a few
histograms of how long things took (``sync.seconds``, ``store.write_seconds``).

One instance is built by the application and passed to every part; nothing here is global.
The HTTP API exposes them at ``/metrics`` (``gateway/api/_prom.py``); tests read
:meth:`snapshot` to see that bad input was counted. Nothing here knows Prometheus: the floors
below the API keep plain numbers, and the API turns them into its text format.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

SECONDS_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Upper bounds (seconds) of the default histogram buckets: from a store write (milliseconds)
to a catalog sync of a big NVR (minutes)."""


class Histogram:
    """Observations counted in fixed buckets: ``counts[i]`` holds those ``<= bounds[i]`` and
    above the bound before it (the last slot: above every bound). Bounded memory whatever is
    observed; Prometheus's cumulative form is made when it is read."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, the last bound ``inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Metrics:
    __slots__ = ("_counters", "_histograms")

    def __init__(self) -> None:
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._histograms: dict[str, Histogram] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def get(self, name: str) -> int:
        return self._counters.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counters.items()))

    def observe(self, name: str, value: float, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        """Count ``value`` in the histogram ``name`` (made with ``bounds`` on first use)."""
        hist = self._histograms.get(name)
        if hist is None:
            hist = self._histograms[name] = Histogram(bounds)
        hist.observe(value)

    def histograms(self) -> dict[str, Histogram]:
        return dict(self._histograms)
