"""The answer collector on its own (no sockets): when a query is complete, partial or neither."""

from __future__ import annotations

import asyncio

from gateway.downlink.downlink import QueryResult, _Collector
from gateway.manscdp.messages import (
    BasicParam,
    CatalogItem,
    CatalogResponse,
    ConfigDownloadResponse,
    CruisePoint,
    CruiseTrack,
    CruiseTrackListResponse,
    CruiseTrackResponse,
    MobilePositionNotify,
    PositionItem,
    Preset,
    PresetQueryResponse,
    SDCard,
    SDCardStatusResponse,
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


# -- every answer with a list is collected until SumNum (reference §3.3, 2022 Annex M) --------
def card(n: int) -> SDCard:
    return SDCard(id=n, hdd_name=f"SD{n}", status="ok", capacity=100.0, free_space=50.0)


async def test_sd_cards_and_cruise_tracks_are_collected_across_parts() -> None:
    c = collector("SDCardStatus")
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(1),)), 1)
    assert not c.future.done()
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(1),)), 2)
    assert not c.future.done()  # the same card again counts once
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(2),)), 3)
    res = c.future.result()
    assert not res.partial and res.listed and res.sum_num == 2
    assert [i.id for i in res.items] == [1, 2]
    merged = res.answer
    assert isinstance(merged, SDCardStatusResponse) and len(merged.items) == 2
    tracks = collector("CruiseTrackListQuery")
    one = CruiseTrack(number=0, name="A")
    two = CruiseTrack(number=1, name="B")
    tracks.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=2, items=(one, two)), 1)
    assert [t.name for t in tracks.future.result().items] == ["A", "B"]


def cruise_part(*points: CruisePoint, sum_num: int = 4) -> CruiseTrackResponse:
    return CruiseTrackResponse(sn=7, device_id=DEV, number=0, sum_num=sum_num, items=points)


async def test_cruise_points_may_repeat_and_every_part_counts() -> None:
    """A track may pass the same preset twice with the same stay and speed: points have no
    identity, so every point of every part counts (a SIP retransmission of a part never gets
    here: the transaction layer absorbs it)."""
    c = collector("CruiseTrackQuery")
    p1, p2 = CruisePoint(preset_index=1, stay_time=5, speed=3), CruisePoint(preset_index=2)
    c.feed(cruise_part(p1, p2, p1), 1)  # the same point twice in one part
    assert not c.future.done() and len(c.result.items) == 3
    c.feed(cruise_part(CruisePoint(preset_index=3)), 2)
    res = c.future.result()
    assert not res.partial
    assert [p.preset_index for p in res.items] == [1, 2, 1, 3]


async def test_an_a_b_a_b_patrol_split_in_pairs_is_whole() -> None:
    """A-B-A-B sent as two parts of (A, B): the second part is real, not a repeat. Counted
    once it would leave the query waiting for idle_timeout and partial."""
    a, b = CruisePoint(preset_index=1, stay_time=5, speed=3), CruisePoint(preset_index=2)
    c = collector("CruiseTrackQuery")
    c.feed(cruise_part(a, b), 1)
    assert not c.future.done()
    c.feed(cruise_part(a, b), 2)
    res = c.future.result()
    assert not res.partial and res.sum_num == 4
    assert [p.preset_index for p in res.items] == [1, 2, 1, 2]
    # A third (A, B) is more than announced: the answer cannot be trusted whole.
    over = collector("CruiseTrackQuery")
    for t in (1, 2, 3):
        over.feed(cruise_part(a, b, sum_num=5), t)
    assert over.future.result().partial


async def test_items_without_their_identity_field_are_not_merged() -> None:
    """An item that has an identity (a track's Number, a card's ID, a preset's PresetID) but
    lacks it is not the same item as another that lacks it too: each counts."""
    tracks = collector("CruiseTrackListQuery")
    nameless = (CruiseTrack(name="A"), CruiseTrack(name="B"))
    tracks.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=3, items=nameless), 1)
    assert not tracks.future.done() and len(tracks.result.items) == 2
    tracks.feed(
        CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=3, items=(CruiseTrack(number=0),)), 2
    )
    assert [t.name for t in tracks.future.result().items] == ["A", "B", None]
    cards = collector("SDCardStatus")
    nocard = SDCard(hdd_name="SD", status="ok")
    cards.feed(
        SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(nocard, nocard)),
        1,
    )
    assert not cards.future.result().partial and len(cards.future.result().items) == 2
    presets = collector("PresetQuery")
    unnumbered = (Preset(preset_name="门口"), Preset(preset_name="路口"))
    presets.feed(PresetQueryResponse(sn=7, device_id=DEV, sum_num=2, items=unnumbered), 1)
    assert [p.preset_name for p in presets.future.result().items] == ["门口", "路口"]
    # An identity that is there still merges repeats.
    numbered = collector("CruiseTrackListQuery")
    one = CruiseTrack(number=1, name="A")
    numbered.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=2, items=(one, one)), 1)
    assert not numbered.future.done() and len(numbered.result.items) == 1


async def test_a_flat_position_is_no_list_and_a_2022_list_is_one() -> None:
    flat = collector("MobilePosition")
    flat.feed(MobilePositionNotify(sn=7, device_id=DEV, longitude=117.0, latitude=31.0), 1)
    res = flat.future.result()
    assert not res.listed and res.sum_num is None and not res.items
    assert res.answer is res.response  # nothing merged, nothing added
    listed = collector("MobilePosition")
    item = PositionItem(device_id=DEV, capture_time="2024-05-20T10:00:00", longitude=117.0,
                        latitude=31.0)  # fmt: skip
    listed.feed(MobilePositionNotify(sn=7, device_id=DEV, sum_num=1, items=(item,)), 1)
    res = listed.future.result()
    assert res.listed and res.items == [item] and not res.partial


async def test_a_list_type_answered_with_a_bare_error_is_no_list() -> None:
    c = collector("SDCardStatus")
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="ERROR"), 1)
    res = c.future.result()
    assert not res.listed and not res.partial and res.sum_num is None
