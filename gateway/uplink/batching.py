"""How many items go in each message of a multi-part answer or NOTIFY, decided without I/O.

GB/T 28181-2022 Annex M (multi-part answers: each message a part, SumNum the total) and
RFC 3261 §18.1.1 (a request over UDP stays under the path MTU, 1300 bytes when unknown,
``catalog_batch_udp_bytes`` here). Over TCP a message carries ``catalog_batch_tcp_items``
items. Over UDP it carries as many as fit the byte budget; an item too large for that even
alone makes its message one for TCP (see :mod:`gateway.uplink.sending`), which, while TCP is
usable, also takes the items around it up to ``catalog_batch_tcp_items``; otherwise the item
goes alone, whole. Nothing is ever cut to fit.

The functions here are synchronous and pure: the caller passes each item's encoded size (a
function, so that sizes are worked out batch by batch, between the sends) and whether TCP is
usable (asked again before each batch: a failure during the answer changes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    """The batches for ``items``: by count over TCP; over UDP, :func:`udp_batches`. No items
    still make one (empty) message: an answer says SumNum 0."""
    if not items:
        yield ()
        return
    if limits.reliable:
        n = limits.tcp_items
        for i in range(0, len(items), n):
            yield items[i : i + n]
        return
    yield from udp_batches(items, limits.udp_budget, limits.tcp_items, size_of, tcp_usable)


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
