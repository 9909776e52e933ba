"""Collecting the answer to one query: when it is complete, partial or still pending.

GB/T 28181-2022 §9.5 and Annex M (multi-response); reference §3.3. A query is answered by one
or more ``Response`` MESSAGEs with the query's SN. An answer with a list (``SumNum`` and items:
Catalog, RecordInfo, PresetQuery, CruiseTrackListQuery, CruiseTrackQuery, SDCardStatus, the 2022
MobilePosition list form) is collected item by item until ``SumNum``, across as many messages as
the device splits it into. An item with an identity (a channel's DeviceID, a preset's
PresetID...) counts once however often it comes; an item without one (a cruise point: a track
may pass the same preset twice, even in two parts of the same content), or lacking its identity
field, counts every time (a SIP retransmission of a part is absorbed by the transaction layer
before it gets here). ConfigDownload answers one Response per requested ConfigType.

A ``SumNum`` that cannot be the count (negative, above ``max_items``, not a number, or smaller
than the items actually sent) makes the answer partial, never empty: every item that comes is
kept, up to ``max_items`` (the bound on what one answer may hold in memory; more are counted in
``dropped``), until parts stop coming or ``max_items`` is reached. A partial answer never removes
anything from the catalog. ``QueryResult.count_error`` says what was wrong with the count, for the
caller to log and count. When parts stop coming for ``idle_timeout`` (or the query has run
``max_time``) what came is partial; when nothing came within ``response_timeout`` the query has
expired.

This module is sans-I/O: no futures, no loop, no clock. The caller passes the time in and acts
on the :class:`Outcome`; the Downlink's asyncio adapter waits for it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from gateway.manscdp import (
    BLOCK,
    LIST,
    NODE,
    REGISTRY,
    CatalogItem,
    ConfigDownloadResponse,
    CruiseTrack,
    Message,
    Node,
    PositionItem,
    RecordItem,
    SDCard,
)
from gateway.sip import Peer

__all__ = ["LIST_ANSWERS", "Collector", "Outcome", "QueryResult", "config_blocks", "item_key"]


class Outcome(enum.Enum):
    """Where the collection of one answer stands."""

    PENDING = "pending"  # more may come: keep waiting
    COMPLETE = "complete"  # every part (SumNum items, every ConfigType) came
    PARTIAL = "partial"  # parts stopped coming, or the count cannot be trusted: keep what came
    EXPIRED = "expired"  # nothing at all came in time (only from Collector.expire)


@dataclass(slots=True)
class QueryResult:
    """What came back. ``responses``: every Response message, in arrival order (the parts of
    a list answer without their items); ``items``: the items of a list answer, from every part;
    ``sum_num``: its ``SumNum``; ``listed``: the answer is a list (a ``SumNum`` or items came:
    an answer of a list type without either, a 2016 flat MobilePosition or a bare ``Result
    ERROR``, is not); ``partial``: parts stopped coming before ``SumNum`` (or before every
    requested ConfigType) was reached, or the count could not be trusted; ``count_error``: why
    the count could not be trusted (``None``: it could); ``dropped``: items that came beyond
    ``max_items`` and were not kept."""

    device_id: str
    cmd_type: str
    sn: int
    responses: list[Message] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    sum_num: int | None = None
    partial: bool = False
    listed: bool = False
    count_error: str | None = None
    dropped: int = 0

    @property
    def response(self) -> Message:
        return self.responses[0]

    @property
    def answer(self) -> Message:
        """The answer as one message: the first Response, holding every item collected when
        the answer is a list."""
        first = self.responses[0]
        if not self.listed:
            return first
        changes: dict[str, Any] = {"items": tuple(self.items)}
        return replace(first, **changes)


def _catalog_key(item: Node) -> Hashable:
    return cast(CatalogItem, item).device_id


def _record_key(item: Node) -> Hashable:
    r = cast(RecordItem, item)
    return (r.device_id, r.start_time, r.end_time, r.file_path, r.type, r.stream_number)


def _preset_key(item: Node) -> Hashable:
    return getattr(item, "preset_id", None)


def _track_key(item: Node) -> Hashable:
    return cast(CruiseTrack, item).number


def _card_key(item: Node) -> Hashable:
    return cast(SDCard, item).id


def _position_key(item: Node) -> Hashable:
    p = cast(PositionItem, item)
    return (p.device_id, p.capture_time, p.longitude, p.latitude)


# How an item of a list answer (reference §3.3) is identified, where it has an identity: a
# repeated item is counted once. Other lists (CruiseTrackQuery's points) count every item, and
# so does an item whose key is ``None`` (its identity field missing: not the same as another
# item missing it). A key is ``None`` only then: tuples of several fields are never ``None``.
_ITEM_KEYS: dict[str, Callable[[Node], Hashable]] = {
    "Catalog": _catalog_key,
    "RecordInfo": _record_key,
    "PresetQuery": _preset_key,
    "CruiseTrackListQuery": _track_key,
    "SDCardStatus": _card_key,
    "MobilePosition": _position_key,
}


def item_key(cmd_type: str) -> Callable[[Node], Hashable] | None:
    """How the items of a ``cmd_type`` list answer are told apart; ``None``: they are not (every
    item counts)."""
    return _ITEM_KEYS.get(cmd_type)


def _has_list(cls: type[Message]) -> bool:
    attrs = {spec.attr: spec.kind for spec in cls._specs}
    return attrs.get("items") == LIST and "sum_num" in attrs


# The messages that answer with a list: ``SumNum`` and the ``items`` it counts.
LIST_ANSWERS: frozenset[type[Message]] = frozenset(c for c in REGISTRY.values() if _has_list(c))


def config_blocks(msg: Message) -> set[str]:
    """The configuration blocks a ConfigDownload Response carries (lower-case tags)."""
    return {
        spec.tag.lower()
        for spec in msg._specs
        if spec.kind in (NODE, BLOCK) and getattr(msg, spec.attr) is not None
    }


_NO_ITEMS: dict[str, Any] = {"items": ()}


class Collector:
    """Gathers the Response MESSAGEs of one request into its :class:`QueryResult`.

    ``targets``: the IDs an answer may name (the device, the channel asked); ``peer``: the
    address the device registered from; ``started``: when the query went out. Times are
    seconds on any monotonic clock, the same for every call."""

    __slots__ = (
        "_item_key",
        "_keys",
        "_pending_types",
        "expected_parts",
        "idle_timeout",
        "last",
        "max_items",
        "max_time",
        "outcome",
        "peer",
        "response_timeout",
        "result",
        "started",
        "targets",
    )

    def __init__(
        self,
        result: QueryResult,
        targets: frozenset[str],
        peer: Peer,
        *,
        started: float = 0.0,
        response_timeout: float = 10.0,
        idle_timeout: float = 5.0,
        max_time: float = 300.0,
        expected_parts: int = 1,
        config_types: tuple[str, ...] = (),
        max_items: int = 100_000,
    ) -> None:
        self.result = result
        self.targets = targets
        self.peer = peer
        self.started = started
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_time = max_time
        self.expected_parts = expected_parts
        self.max_items = max_items
        self.outcome = Outcome.PENDING
        # When the last part came (0.0: none yet).
        self.last = 0.0
        self._item_key = item_key(result.cmd_type)
        self._keys: set[Hashable] = set()
        self._pending_types = {t.lower() for t in config_types}

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.PENDING

    def accepts(self, sender: str, device_id: str, peer: Peer) -> bool:
        """From the queried device's registered address, or over TCP from its host (any port:
        a large answer, RFC 3261 §18.1.1), naming the device or the target. A UDP answer from
        another port is refused: a datagram's source is the device's own SIP port."""
        if peer != self.peer and not (peer.reliable and peer.host == self.peer.host):
            return False
        return sender in self.targets or device_id in self.targets

    @property
    def deadline(self) -> float:
        """When the query gives up unless another part comes: before the first answer the
        response timeout, after it the idle timeout; however fast a device trickles parts, one
        query ends after ``max_time``."""
        wait_until = (
            self.last + self.idle_timeout
            if self.result.responses
            else self.started + self.response_timeout
        )
        return min(wait_until, self.started + self.max_time)

    def expire(self, now: float) -> Outcome:
        """The outcome at ``now`` when no part comes: past the deadline what came is partial
        (``EXPIRED`` when nothing came)."""
        if self.done or now < self.deadline:
            return self.outcome
        if self.result.responses:
            self._finish(Outcome.PARTIAL)
        else:
            self.outcome = Outcome.EXPIRED
        return self.outcome

    def _finish(self, outcome: Outcome) -> Outcome:
        self.result.partial = outcome is Outcome.PARTIAL
        self.outcome = outcome
        return outcome

    def feed(self, msg: Message, now: float) -> Outcome:
        """Take one Response (already accepted, see :meth:`accepts`) that came at ``now``.
        Once the outcome is decided, further parts are ignored."""
        if self.done:
            return self.outcome
        res = self.result
        self.last = now
        if type(msg) not in LIST_ANSWERS:
            res.responses.append(msg)
            if self._pending_types and isinstance(msg, ConfigDownloadResponse):
                # One Response per type, or several types in one: done when all were seen.
                self._pending_types -= config_blocks(msg)
                if not self._pending_types or len(res.responses) >= self.expected_parts:
                    return self._finish(Outcome.COMPLETE)
            elif len(res.responses) >= self.expected_parts:
                return self._finish(Outcome.COMPLETE)
            return Outcome.PENDING
        sum_num = getattr(msg, "sum_num", None)
        items: tuple[Any, ...] = getattr(msg, "items", ())
        # The items are kept once, in ``items`` (at most max_items of them), not in each part.
        res.responses.append(replace(msg, **_NO_ITEMS) if items else msg)
        if sum_num is not None or items:
            res.listed = True
        if res.sum_num is None and res.count_error is None:
            # The first count given is the count (a later one is not believed).
            if sum_num is not None:
                res.sum_num = sum_num
                if sum_num < 0:
                    res.count_error = "negative SumNum"
                elif sum_num > self.max_items:
                    res.count_error = f"SumNum above max_items ({self.max_items})"
            elif _unreadable_sum_num(msg):
                res.count_error = "SumNum not a number"
        self._add(items)
        total = res.sum_num
        seen = len(res.items) + res.dropped
        if res.count_error is None and total is not None and seen > total:
            res.count_error = "more items than SumNum"
        if res.count_error is not None:
            # The count cannot say when the answer is whole: keep what comes until parts stop
            # coming (the idle timeout) or nothing more can be kept.
            if len(res.items) >= self.max_items:
                return self._finish(Outcome.PARTIAL)
            return Outcome.PENDING
        if total is None or len(res.items) == total:
            # Without SumNum (seen on PresetQuery) there is no way to know more will come.
            return self._finish(Outcome.COMPLETE)
        return Outcome.PENDING

    def _add(self, items: tuple[Any, ...]) -> None:
        """Keep the items not seen before, up to ``max_items``; count the rest as dropped."""
        res = self.result
        room = max(self.max_items - len(res.items), 0)
        key = self._item_key
        if key is None:
            # No identity, so no way (and no need) to tell a repeat: the same part sent again
            # as a SIP retransmission never reaches the collector, and a second part with the
            # same content (an A-B-A-B patrol sent as two A-Bs) is real.
            res.items.extend(items[:room])
            res.dropped += max(len(items) - room, 0)
            return
        for item in items:
            k = key(item)
            if k is not None and k in self._keys:
                continue
            if not room:
                res.dropped += 1
                continue
            if k is not None:  # None: its identity field is missing, nothing to merge on
                self._keys.add(k)
            res.items.append(item)
            room -= 1


def _unreadable_sum_num(msg: Message) -> bool:
    """A ``SumNum`` element came but did not read as a number (the reader kept it in
    ``extra``)."""
    return any(tag.lower() == "sumnum" for tag, _ in msg.extra)
