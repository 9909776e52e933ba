"""Events the gateway's parts publish to each other, and the bus that carries them.

Publishing is synchronous: subscribers run in the publisher's turn of the event loop and must be
quick (schedule a task for slow work). A subscriber that raises is logged and skipped; the others
still hear the event.

In a cluster (``gateway.cluster``) the device and catalog events of the other nodes are published
here too, marked with the ``node`` that holds the device (empty for this node's own): the
uplink and the console hear every node's changes, and whatever acts on the device itself (its
catalog sync, its subscriptions) leaves a marked event to the node that holds it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

if TYPE_CHECKING:
    from gateway.manscdp import CatalogItem, Message, PositionItem
    from gateway.model import Alarm

log = structlog.get_logger("gateway.events")

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class DeviceOnline:
    """A device registered and is now online, or registered anew while still online (a new
    Call-ID: it rebooted and lost its subscriptions). ``first_time``: never seen before by this
    store."""

    device_id: str
    transport: str
    host: str
    port: int
    first_time: bool
    node: str = ""


@dataclass(frozen=True, slots=True)
class DeviceOffline:
    """A device went offline; ``reason`` is one of ``unregistered``, ``expired``,
    ``keepalive timeout``, ``connection lost``, ``gateway restart``."""

    device_id: str
    reason: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """One catalog item changed, from a sync, a NOTIFY or the device going on/offline.

    ``event`` uses the catalog NOTIFY vocabulary (reference §5.2): ``ADD``, ``DEL``,
    ``UPDATE``, ``ON``, ``OFF``, ``VLOST``, ``DEFECT``. ``before``/``after`` are the stored item
    before and after (``None`` for an ADD's before and a DEL's after). ``owner_id`` is the
    registered device that reported the item.
    """

    owner_id: str
    item_id: str
    event: str
    before: CatalogItem | None
    after: CatalogItem | None
    node: str = ""


@dataclass(frozen=True, slots=True)
class CatalogSynced:
    device_id: str
    total: int
    added: int
    removed: int
    changed: int
    partial: bool
    node: str = ""


@dataclass(frozen=True, slots=True)
class AlarmReceived:
    alarm: Alarm
    node: str = ""


@dataclass(frozen=True, slots=True)
class MobilePositionReceived:
    device_id: str
    positions: tuple[PositionItem, ...]


@dataclass(frozen=True, slots=True)
class MediaStatusReceived:
    """``Notify/MediaStatus`` (121: end of file) inside an INVITE dialog, for the session layer."""

    device_id: str
    call_id: str
    notify_type: int | None


@dataclass(frozen=True, slots=True)
class DeviceNotification:
    """Other device notifications (DeviceUpgradeResult, UploadSnapShotFinished,
    VideoUploadNotify, PTZPosition) for whoever wants them."""

    device_id: str
    message: Message


@dataclass(frozen=True, slots=True)
class UpperOnline:
    """The gateway is registered at an upper platform."""

    upper_id: str


@dataclass(frozen=True, slots=True)
class UpperOffline:
    """The gateway lost an upper platform; every session and subscription it had is over."""

    upper_id: str
    reason: str


class EventBus:
    def __init__(self) -> None:
        self._subs: defaultdict[type, list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], callback: Callable[[E], None]) -> None:
        self._subs[kind].append(callback)

    def unsubscribe(self, kind: type[E], callback: Callable[[E], None]) -> None:
        """Stop calling ``callback`` for ``kind`` (it may be called from a subscriber, during a
        publish: the list is replaced, not changed, so that publish goes on undisturbed).
        Unknown callbacks are ignored."""
        subs = self._subs.get(kind)
        if subs is None:
            return
        kept = [c for c in subs if c is not callback]
        if kept:
            self._subs[kind] = kept
        else:
            del self._subs[kind]

    def subscribers(self, kind: type) -> int:
        """How many callbacks hear ``kind`` (for tests and diagnostics)."""
        return len(self._subs.get(kind, ()))

    def publish(self, event: object) -> None:
        # ``unsubscribe`` replaces the list, so removing a subscriber from inside a callback
        # does not disturb this loop.
        for callback in self._subs.get(type(event), ()):
            try:
                callback(event)
            except Exception:
                log.exception("events.subscriber_failed", event=type(event).__name__)
