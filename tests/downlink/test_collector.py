"""The answer collector on its own (no sockets): when a query is complete, partial or neither."""

from __future__ import annotations

import asyncio

from gateway.downlink.downlink import QueryResult, _Collector
from gateway.manscdp.messages import (
    BasicParam,
    CatalogItem,
    CatalogResponse,
    ConfigDownloadResponse,
    PresetQueryResponse,
    VideoParamOpt,
)
from gateway.sip.transport import Peer

DEV = "34020000001180000001"
PEER = Peer("udp", "10.0.0.2", 5060)


def collector(cmd: str, **kw: object) -> _Collector:
    loop = asyncio.get_running_loop()
    return _Collector(QueryResult(DEV, cmd, 7), frozenset({DEV}), PEER, loop, **kw)  # type: ignore[arg-type]


def part(*ids: int, sum_num: int | None) -> CatalogResponse:
    items = tuple(CatalogItem(device_id=f"3402000000131000000{i}") for i in ids)
    return CatalogResponse(sn=7, device_id=DEV, sum_num=sum_num, items=items)


async def test_items_are_counted_once_until_sum_num() -> None:
    c = collector("Catalog")
    c.feed(part(1, 2, sum_num=3), 1.0)
    c.feed(part(2, sum_num=3), 2.0)  # a repeated part adds nothing
    assert not c.future.done() and len(c.result.items) == 2 and c.last == 2.0
    c.feed(part(3, sum_num=3), 3.0)
    res = c.future.result()
    assert not res.partial and [i.device_id[-1] for i in res.items] == ["1", "2", "3"]


async def test_more_items_than_announced_is_partial() -> None:
    c = collector("Catalog")
    c.feed(part(1, 2, 3, sum_num=2), 1.0)
    assert c.future.result().partial


async def test_no_sum_num_means_one_message() -> None:
    c = collector("PresetQuery")
    c.feed(PresetQueryResponse(sn=7, device_id=DEV), 1.0)
    assert not c.future.result().partial


async def test_config_download_done_when_every_type_was_seen_in_any_split() -> None:
    both = ConfigDownloadResponse(
        sn=7, device_id=DEV, basic_param=BasicParam(name="x"), video_param_opt=VideoParamOpt()
    )
    c = collector("ConfigDownload", expected_parts=2, config_types=("BasicParam", "VideoParamOpt"))
    c.feed(both, 1.0)
    assert c.future.done() and len(c.future.result().responses) == 1
    split = collector(
        "ConfigDownload", expected_parts=2, config_types=("BasicParam", "VideoParamOpt")
    )
    split.feed(ConfigDownloadResponse(sn=7, device_id=DEV, basic_param=BasicParam()), 1.0)
    assert not split.future.done()
    split.feed(ConfigDownloadResponse(sn=7, device_id=DEV, video_param_opt=VideoParamOpt()), 2.0)
    assert split.future.done()


async def test_answers_only_from_the_registered_address() -> None:
    c = collector("Catalog")
    assert c.accepts(DEV, DEV, PEER)
    assert c.accepts("34020000001310000001", DEV, PEER)  # a channel ID in From, body names DEV
    assert not c.accepts(DEV, DEV, Peer("udp", "10.0.0.2", 5061))
    assert not c.accepts(DEV, DEV, Peer("udp", "10.0.0.3", 5060))
    assert not c.accepts("34020000001180000002", "34020000001180000002", PEER)


async def test_a_large_answer_over_tcp_from_the_registered_host_is_taken() -> None:
    """RFC 3261 §18.1.1: a device registered over UDP sends a large answer over TCP, from
    whatever port its kernel picks; from another host it is still refused."""
    c = collector("Catalog")
    assert c.accepts(DEV, DEV, Peer("tcp", "10.0.0.2", 5060))
    assert c.accepts(DEV, DEV, Peer("tcp", "10.0.0.2", 41234))
    assert not c.accepts(DEV, DEV, Peer("tcp", "10.0.0.3", 41234))
    assert not c.accepts("34020000001180000002", DEV[:-1] + "2", Peer("tcp", "10.0.0.2", 41234))
