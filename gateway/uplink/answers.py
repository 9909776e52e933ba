"""Answers the gateway gives about itself, and the catalog answer of what an upper may see.

GB/T 28181-2022 §9.5 (queries) and Annex M (multi-part answers); reference §7.2. A query whose
DeviceID names the gateway (its ID or domain) is answered here: DeviceInfo (the channels this
upper may see), DeviceStatus (online, the time in the configured zone), RecordInfo (no central
storage: nothing found). A Catalog query is answered with the shared tree
(:class:`~gateway.uplink.share.SharedView`), or what the node it names covers, in parts.
:func:`about_gateway` and :func:`catalog_part` are pure; :func:`answer_catalog` awaits the
view and the sending.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import tzinfo
from typing import Any

from gateway.catalog import Catalog
from gateway.downlink import gb_date
from gateway.manscdp import (
    CatalogResponse,
    DeviceInfoResponse,
    DeviceStatusResponse,
    Message,
    RecordInfoResponse,
    item_kind,
)
from gateway.settings import GatewaySection
from gateway.store import Store
from gateway.uplink.session import UpperSession
from gateway.uplink.share import SharedView

_NODES = ("region", "business_group", "virtual_org")

SendParts = Callable[
    [UpperSession, Callable[[Sequence[Any], int], Message], Sequence[Any]], Awaitable[int]
]


def about_gateway(
    msg: Message,
    *,
    gateway: GatewaySection,
    catalog: Catalog,
    view: SharedView,
    now: float,
    tz: tzinfo,
) -> Message | None:
    """The answer to ``msg`` (a Query naming the gateway) for the upper whose view is
    ``view``; ``None`` for a query the gateway does not answer about itself."""
    if msg.CMD == "DeviceInfo":
        shared = sum(
            1
            for owner, item in catalog
            if item_kind(item.device_id) not in _NODES
            and view.channel_visible(owner, item.device_id)
        )
        from gateway import __version__

        return DeviceInfoResponse(
            sn=msg.sn,
            device_id=gateway.id,
            device_name=gateway.name,
            result="OK",
            manufacturer="gb28181-gateway",
            model="gateway",
            firmware=__version__,
            channel=shared,
        )
    if msg.CMD == "DeviceStatus":
        return DeviceStatusResponse(
            sn=msg.sn,
            device_id=gateway.id,
            result="OK",
            online="ONLINE",
            status="OK",
            device_time=gb_date(now, tz)[:19],
        )
    if msg.CMD == "RecordInfo":  # no central storage here: nothing found
        return RecordInfoResponse(sn=msg.sn, device_id=gateway.id, name=gateway.name, sum_num=0)
    return None


def catalog_part(sn: int, answer_id: str, batch: Sequence[Any], total: int) -> CatalogResponse:
    """One part of a catalog answer: the query's SN, SumNum the total (Annex M)."""
    return CatalogResponse(sn=sn, device_id=answer_id, sum_num=total, items=tuple(batch))


async def answer_catalog(
    s: UpperSession,
    msg: Message,
    target: str | None,
    *,
    gateway_id: str,
    store: Store,
    send_parts: SendParts,
) -> None:
    """Answer a Catalog query of upper ``s`` for ``target`` (``None``: the gateway, the whole
    view)."""
    started = time.monotonic()
    mapped = len(s.idmap)
    items = await s.view.build_async(target)
    if len(s.idmap) != mapped:
        await store.flush()  # new recoded IDs are stored before the upper sees them
    answer_id = target or gateway_id

    def make(batch: Sequence[Any], total: int) -> Message:
        return catalog_part(msg.sn, answer_id, batch, total)

    sent = await send_parts(s, make, items)
    s.log.info(
        "uplink.catalog_answered",
        items=len(items),
        messages=sent,
        seconds=round(time.monotonic() - started, 3),
    )
