"""Events the gateway's parts publish to each other, and the bus that carries them.

Publishing is synchronous: subscribers run in the publisher's turn of the event loop and must be
quick (schedule a task for slow work). A subscriber that raises is logged and skipped; the others
still hear the event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("gateway.events")

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class DeviceOnline:
    """A device registered and is now online. ``first_time``: never seen before by this store."""

    device_id: str
    transport: str
    host: str
    port: int
    first_time: bool


@dataclass(frozen=True, slots=True)
class DeviceOffline:
    """A device went offline; ``reason`` is one of ``unregistered``, ``expired``,
    ``keepalive timeout``, ``connection lost``, ``gateway restart``."""

    device_id: str
    reason: str


class EventBus:
    def __init__(self) -> None:
        self._subs: defaultdict[type, list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], callback: Callable[[E], None]) -> None:
        self._subs[kind].append(callback)

    def publish(self, event: object) -> None:
        for callback in self._subs.get(type(event), ()):
            try:
                callback(event)
            except Exception:
                log.exception("events.subscriber_failed", event=type(event).__name__)
