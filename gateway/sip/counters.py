"""What the SIP layer needs of a metrics registry: named counters it can increment.

The application passes its own registry in (``gateway.metrics.Metrics`` satisfies this
structurally), so the SIP floor imports nothing from the floors above it.
"""

from __future__ import annotations

from typing import Protocol


class Counters(Protocol):
    def inc(self, name: str, n: int = 1) -> None: ...
