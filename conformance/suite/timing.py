"""The target's own timers, as the suite knows them: how long a case waits for something the
target does on its own schedule (a keepalive, a refresh, a device it calls offline).

GB/T 28181 §9.6 leaves the heartbeat period to configuration (60 s by default) and calls a peer
offline after 3 missed heartbeats; RFC 3261 §10.2.4 makes a registrar's granted lifetime binding
on the registering side. So a case does not wait "the case timeout" for the target: it waits
``count × interval + margin`` where the interval is, in order:

1. the one the run was told (``--keepalive-interval``);
2. the one learned from the target's keepalives seen so far (the median gap between them);
3. the standard's default, 60 s.

Pure bookkeeping: arrival times in, seconds out; no I/O, no clock of its own.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_KEEPALIVE_INTERVAL = 60.0
"""GB/T 28181 §9.6's default heartbeat period, seconds (used until the suite learns better)."""
KEEPALIVE_COUNT = 3
"""Missed heartbeats after which a peer is offline (§9.6's default timeout count)."""
MIN_GAP = 0.05
"""Keepalive gaps shorter than this (s) are not a period: a burst after a re-registration."""
LEARN_FROM = 8
"""The last this many gaps decide the learned interval."""


def margin(interval: float) -> float:
    """Slack over ``count × interval``: a tenth of the interval, at least 2 s (a loaded
    machine, a keepalive that waits for its own answer, the target's timer check period)."""
    return max(2.0, interval / 10)


def learned_interval(arrivals: Sequence[float]) -> float | None:
    """The median gap between consecutive keepalive arrivals (of one sender, in order), from
    the last :data:`LEARN_FROM` gaps; None until there is a gap to learn from."""
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if b - a >= MIN_GAP]
    if not gaps:
        return None
    return float(statistics.median(gaps[-LEARN_FROM:]))


@dataclass(frozen=True, slots=True)
class KeepaliveTiming:
    """The target's heartbeat period and where it came from (``source``: ``option``,
    ``learned`` or ``default``), with the waits that follow from it."""

    interval: float
    source: str
    samples: int = 0  # keepalive gaps it was learned from

    @classmethod
    def of(cls, configured: float | None, arrivals: Sequence[float]) -> KeepaliveTiming:
        """From the run's option (None: not given) and the target's keepalive arrivals."""
        if configured is not None:
            return cls(configured, "option")
        learned = learned_interval(arrivals)
        if learned is not None:
            gaps = sum(1 for a, b in itertools.pairwise(arrivals) if b - a >= MIN_GAP)
            return cls(learned, "learned", min(gaps, LEARN_FROM))
        return cls(DEFAULT_KEEPALIVE_INTERVAL, "default")

    def wait(self, count: int = KEEPALIVE_COUNT) -> float:
        """How long to wait for a keepalive (or what a keepalive brings about, such as a new
        registration after a 404): ``count`` periods plus :func:`margin`."""
        return count * self.interval + margin(self.interval)

    def describe(self) -> str:
        if self.source == "option":
            where = "--keepalive-interval"
        elif self.source == "learned":
            where = f"learned from {self.samples} gap{'s' * (self.samples != 1)}"
        else:
            where = "GB/T 28181 default; none learned yet"
        return f"keepalive interval {self.interval:g} s ({where})"


def refresh_wait(granted: float) -> float:
    """How long after a registration granted ``granted`` seconds the suite looks for its
    refresh: the lifetime and a little more, to say what came late (a refresh is in time when
    its first REGISTER arrives before the lifetime is over)."""
    return granted + min(2.0, max(0.5, granted / 30))


__all__ = [
    "DEFAULT_KEEPALIVE_INTERVAL",
    "KEEPALIVE_COUNT",
    "KeepaliveTiming",
    "learned_interval",
    "margin",
    "refresh_wait",
]
