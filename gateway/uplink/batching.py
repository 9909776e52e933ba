"""How many items go in each message of a multi-part answer or NOTIFY, decided without I/O.

GB/T 28181-2022 Annex M (multi-part answers: each message a part, SumNum the total) and
RFC 3261 §18.1.1 (a request over UDP stays under the path MTU, 1300 bytes when unknown,
``catalog_batch_udp_bytes`` here). Over TCP a message carries ``catalog_batch_tcp_items``
items. Over UDP it carries as many as fit the byte budget; an item too large for that even
alone makes its message one for TCP (see :mod:`gateway.uplink.sending`), which, while TCP is
usable, also takes the items around it up to ``catalog_batch_tcp_items``; otherwise the item
goes alone, whole. Nothing is ever cut to fit.

Some platforms refuse (or crash on) catalog messages with one item, or cannot take many: per
upper, ``catalog_min_items`` and ``catalog_max_items`` bound the items of each catalog message
whatever the byte budget (:func:`within_counts`); a message made larger than the budget by the
minimum goes over TCP like any other too large for a datagram.

The functions here are synchronous and pure: the caller passes each item's encoded size (a
function, so that sizes are worked out batch by batch, between the sends) and whether TCP is
usable (asked again before each batch: a failure during the answer changes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lxml import etree

from gateway.manscdp import write_node

T = TypeVar("T")

# Slack for what the byte budget does not count exactly: the XML declaration's charset name
# and the line breaks around the items.
_SLACK = 40


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What bounds the messages to one upper: ``reliable`` (the link is TCP),
    ``tcp_items`` (``catalog_batch_tcp_items``) and ``udp_budget`` (bytes of items that fit
    one message within ``catalog_batch_udp_bytes``, :func:`udp_budget`)."""

    reliable: bool
    tcp_items: int
    udp_budget: int
    min_items: int = 1  # ``catalog_min_items`` (catalog messages; 1 otherwise)
    max_items: int = 0  # ``catalog_max_items`` (0: none)

    @property
    def counted(self) -> bool:
        """Do the item counts bound the batches beyond the transport's own rules?"""
        return self.min_items > 1 or self.max_items > 0


def udp_budget(limit: int, overhead: int, envelope: int) -> int:
    """Bytes of items that fit a UDP message of at most ``limit`` bytes whose SIP headers take
    ``overhead`` bytes and whose MANSCDP body without items takes ``envelope`` bytes."""
    return limit - overhead - envelope - _SLACK


def item_size(item: Any, *, charset: str, gb2022: bool) -> int:
    """Bytes ``item`` takes in a MANSCDP body encoded in ``charset`` (``UTF-8`` or
    ``GB2312``, written as GB 18030 like the encoder), its line break included."""
    el = etree.Element("Item")
    write_node(item, el, gb2022)
    etree.indent(el, space="")
    codec = "utf-8" if charset == "UTF-8" else "gb18030"
    return len(etree.tostring(el, encoding="unicode").encode(codec)) + 2


def batches(
    items: Sequence[T],
    limits: BatchLimits,
    size_of: Callable[[T], int],
    tcp_usable: Callable[[], bool],
) -> Iterator[Sequence[T]]:
    """The batches for ``items``: by count over TCP; over UDP, :func:`udp_batches`; then held
    to ``min_items``..``max_items`` (:func:`within_counts`). No items still make one (empty)
    message: an answer says SumNum 0."""
    if not items:
        yield ()
        return
    source: Iterable[Sequence[T]]
    if limits.reliable:
        n = limits.tcp_items
        source = (items[i : i + n] for i in range(0, len(items), n))
    else:
        source = udp_batches(items, limits.udp_budget, limits.tcp_items, size_of, tcp_usable)
    if limits.counted:
        source = within_counts(source, limits.min_items, limits.max_items)
    yield from source


def within_counts(
    source: Iterable[Sequence[T]], min_items: int, max_items: int = 0
) -> Iterator[list[T]]:
    """The batches of ``source``, in order, re-cut so that each holds ``min_items`` to
    ``max_items`` items (0: no maximum): a batch over the maximum is split, one short of the
    minimum takes items from the next, and a short tail joins the batch before it (split in
    two halves if that makes it too large). Needs ``max_items`` 0 or at least
    ``2 * min_items - 1``, so that every count from ``min_items`` up can be split; fewer
    items than ``min_items`` in all go as one batch. A batch of ``source`` within both bounds
    is kept as it is. One batch is held back, to take a short tail."""
    assert not max_items or max_items >= 2 * min_items - 1
    held: list[T] | None = None
    short: list[T] = []
    for batch in source:
        buf = short + list(batch)
        short = []
        while max_items and len(buf) > max_items:
            # Cut off a full batch unless that would leave the rest short; then halve.
            cut = max_items if len(buf) - max_items >= min_items else len(buf) // 2
            if held is not None:
                yield held
            held, buf = buf[:cut], buf[cut:]
        if len(buf) < min_items:
            short = buf
            continue
        if held is not None:
            yield held
        held = buf
    if short:
        if held is None:
            yield short
            return
        merged = held + short
        if max_items and len(merged) > max_items:
            half = len(merged) // 2
            yield merged[:half]
            yield merged[half:]
            return
        yield merged
        return
    if held is not None:
        yield held


def udp_batches(
    items: Sequence[T],
    budget: int,
    tcp_items: int,
    size_of: Callable[[T], int],
    tcp_usable: Callable[[], bool],
) -> Iterator[list[T]]:
    """Batches for a UDP link: as many items as fit ``budget`` bytes. An item larger than
    ``budget`` makes its batch one for TCP; while ``tcp_usable()``, such a batch also takes the
    items around it, up to ``tcp_items``; otherwise the item goes alone, whole."""
    batch: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if batch and used + size > budget:
            over_tcp = used > budget or size > budget
            if not (over_tcp and len(batch) < tcp_items and tcp_usable()):
                yield batch
                batch, used = [], 0
        batch.append(item)
        used += size
    if batch:
        yield batch
