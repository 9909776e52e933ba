"""The answer collector on its own (no sockets, no loop): when a query is complete, partial or
neither. Plain calls, the time passed in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.downlink import Collector, Outcome, QueryResult
from gateway.manscdp import (
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
from gateway.sip import Peer

DEV = "34020000001180000001"
PEER = Peer("udp", "10.0.0.2", 5060)


def collector(cmd: str, **kw: object) -> Collector:
    return Collector(QueryResult(DEV, cmd, 7), frozenset({DEV}), PEER, **kw)  # type: ignore[arg-type]


def finished(c: Collector) -> QueryResult:
    """The result of a collection that has come to an outcome (complete or partial)."""
    assert c.outcome in (Outcome.COMPLETE, Outcome.PARTIAL)
    return c.result


def part(*ids: int, sum_num: int | None) -> CatalogResponse:
    items = tuple(CatalogItem(device_id=f"3402000000131000000{i}") for i in ids)
    return CatalogResponse(sn=7, device_id=DEV, sum_num=sum_num, items=items)


def test_items_are_counted_once_until_sum_num() -> None:
    c = collector("Catalog")
    c.feed(part(1, 2, sum_num=3), 1.0)
    c.feed(part(2, sum_num=3), 2.0)  # a repeated part adds nothing
    assert not c.done and len(c.result.items) == 2 and c.last == 2.0
    c.feed(part(3, sum_num=3), 3.0)
    res = finished(c)
    assert not res.partial and [i.device_id[-1] for i in res.items] == ["1", "2", "3"]


def test_more_items_than_announced_is_partial_and_every_item_is_kept() -> None:
    c = collector("Catalog", idle_timeout=5.0)
    assert c.feed(part(1, 2, 3, sum_num=2), 1.0) is Outcome.PENDING  # more may still come
    assert c.feed(part(4, sum_num=2), 2.0) is Outcome.PENDING
    assert c.expire(7.0) is Outcome.PARTIAL
    res = finished(c)
    assert res.partial and len(res.items) == 4 and res.count_error == "more items than SumNum"


def test_no_sum_num_means_one_message() -> None:
    c = collector("PresetQuery")
    c.feed(PresetQueryResponse(sn=7, device_id=DEV), 1.0)
    assert not finished(c).partial


def test_config_download_done_when_every_type_was_seen_in_any_split() -> None:
    both = ConfigDownloadResponse(
        sn=7, device_id=DEV, basic_param=BasicParam(name="x"), video_param_opt=VideoParamOpt()
    )
    c = collector("ConfigDownload", expected_parts=2, config_types=("BasicParam", "VideoParamOpt"))
    c.feed(both, 1.0)
    assert c.done and len(finished(c).responses) == 1
    split = collector(
        "ConfigDownload", expected_parts=2, config_types=("BasicParam", "VideoParamOpt")
    )
    split.feed(ConfigDownloadResponse(sn=7, device_id=DEV, basic_param=BasicParam()), 1.0)
    assert not split.done
    split.feed(ConfigDownloadResponse(sn=7, device_id=DEV, video_param_opt=VideoParamOpt()), 2.0)
    assert split.done


def test_answers_only_from_the_registered_address() -> None:
    c = collector("Catalog")
    assert c.accepts(DEV, DEV, PEER)
    assert c.accepts("34020000001310000001", DEV, PEER)  # a channel ID in From, body names DEV
    assert not c.accepts(DEV, DEV, Peer("udp", "10.0.0.2", 5061))
    assert not c.accepts(DEV, DEV, Peer("udp", "10.0.0.3", 5060))
    assert not c.accepts("34020000001180000002", "34020000001180000002", PEER)


def test_a_large_answer_over_tcp_from_the_registered_host_is_taken() -> None:
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


def test_sd_cards_and_cruise_tracks_are_collected_across_parts() -> None:
    c = collector("SDCardStatus")
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(1),)), 1)
    assert not c.done
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(1),)), 2)
    assert not c.done  # the same card again counts once
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(card(2),)), 3)
    res = finished(c)
    assert not res.partial and res.listed and res.sum_num == 2
    assert [i.id for i in res.items] == [1, 2]
    merged = res.answer
    assert isinstance(merged, SDCardStatusResponse) and len(merged.items) == 2
    tracks = collector("CruiseTrackListQuery")
    one = CruiseTrack(number=0, name="A")
    two = CruiseTrack(number=1, name="B")
    tracks.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=2, items=(one, two)), 1)
    assert [t.name for t in finished(tracks).items] == ["A", "B"]


def cruise_part(*points: CruisePoint, sum_num: int = 4) -> CruiseTrackResponse:
    return CruiseTrackResponse(sn=7, device_id=DEV, number=0, sum_num=sum_num, items=points)


def test_cruise_points_may_repeat_and_every_part_counts() -> None:
    """A track may pass the same preset twice with the same stay and speed: points have no
    identity, so every point of every part counts (a SIP retransmission of a part never gets
    here: the transaction layer absorbs it)."""
    c = collector("CruiseTrackQuery")
    p1, p2 = CruisePoint(preset_index=1, stay_time=5, speed=3), CruisePoint(preset_index=2)
    c.feed(cruise_part(p1, p2, p1), 1)  # the same point twice in one part
    assert not c.done and len(c.result.items) == 3
    c.feed(cruise_part(CruisePoint(preset_index=3)), 2)
    res = finished(c)
    assert not res.partial
    assert [p.preset_index for p in res.items] == [1, 2, 1, 3]


def test_an_a_b_a_b_patrol_split_in_pairs_is_whole() -> None:
    """A-B-A-B sent as two parts of (A, B): the second part is real, not a repeat. Counted
    once it would leave the query waiting for idle_timeout and partial."""
    a, b = CruisePoint(preset_index=1, stay_time=5, speed=3), CruisePoint(preset_index=2)
    c = collector("CruiseTrackQuery")
    c.feed(cruise_part(a, b), 1)
    assert not c.done
    c.feed(cruise_part(a, b), 2)
    res = finished(c)
    assert not res.partial and res.sum_num == 4
    assert [p.preset_index for p in res.items] == [1, 2, 1, 2]
    # A third (A, B) is more than announced: the answer cannot be trusted whole.
    over = collector("CruiseTrackQuery", idle_timeout=5.0)
    for t in (1, 2, 3):
        over.feed(cruise_part(a, b, sum_num=5), t)
    assert over.expire(8) is Outcome.PARTIAL
    assert finished(over).partial and len(over.result.items) == 6


def test_items_without_their_identity_field_are_not_merged() -> None:
    """An item that has an identity (a track's Number, a card's ID, a preset's PresetID) but
    lacks it is not the same item as another that lacks it too: each counts."""
    tracks = collector("CruiseTrackListQuery")
    nameless = (CruiseTrack(name="A"), CruiseTrack(name="B"))
    tracks.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=3, items=nameless), 1)
    assert not tracks.done and len(tracks.result.items) == 2
    tracks.feed(
        CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=3, items=(CruiseTrack(number=0),)), 2
    )
    assert [t.name for t in finished(tracks).items] == ["A", "B", None]
    cards = collector("SDCardStatus")
    nocard = SDCard(hdd_name="SD", status="ok")
    cards.feed(
        SDCardStatusResponse(sn=7, device_id=DEV, result="OK", sum_num=2, items=(nocard, nocard)),
        1,
    )
    assert not finished(cards).partial and len(finished(cards).items) == 2
    presets = collector("PresetQuery")
    unnumbered = (Preset(preset_name="门口"), Preset(preset_name="路口"))
    presets.feed(PresetQueryResponse(sn=7, device_id=DEV, sum_num=2, items=unnumbered), 1)
    assert [p.preset_name for p in finished(presets).items] == ["门口", "路口"]
    # An identity that is there still merges repeats.
    numbered = collector("CruiseTrackListQuery")
    one = CruiseTrack(number=1, name="A")
    numbered.feed(CruiseTrackListResponse(sn=7, device_id=DEV, sum_num=2, items=(one, one)), 1)
    assert not numbered.done and len(numbered.result.items) == 1


def test_a_flat_position_is_no_list_and_a_2022_list_is_one() -> None:
    flat = collector("MobilePosition")
    flat.feed(MobilePositionNotify(sn=7, device_id=DEV, longitude=117.0, latitude=31.0), 1)
    res = finished(flat)
    assert not res.listed and res.sum_num is None and not res.items
    assert res.answer is res.response  # nothing merged, nothing added
    listed = collector("MobilePosition")
    item = PositionItem(device_id=DEV, capture_time="2024-05-20T10:00:00", longitude=117.0,
                        latitude=31.0)  # fmt: skip
    listed.feed(MobilePositionNotify(sn=7, device_id=DEV, sum_num=1, items=(item,)), 1)
    res = finished(listed)
    assert res.listed and res.items == [item] and not res.partial


def test_a_list_type_answered_with_a_bare_error_is_no_list() -> None:
    c = collector("SDCardStatus")
    c.feed(SDCardStatusResponse(sn=7, device_id=DEV, result="ERROR"), 1)
    res = finished(c)
    assert not res.listed and not res.partial and res.sum_num is None


# -- outcomes, with the time passed in (GB/T 28181-2022 Annex M) ------------------------------
def timed(cmd: str = "Catalog", **kw: object) -> Collector:
    """Sent at t=100: 10 s for a first answer, 5 s between parts, 30 s in all."""
    return collector(
        cmd, started=100.0, response_timeout=10.0, idle_timeout=5.0, max_time=30.0, **kw
    )


def test_feed_says_pending_until_sum_num_then_complete() -> None:
    c = timed()
    assert c.outcome is Outcome.PENDING and not c.done
    assert c.feed(part(1, sum_num=3), 101.0) is Outcome.PENDING
    assert c.feed(part(1, 2, sum_num=3), 102.0) is Outcome.PENDING  # 1 again counts once
    assert c.feed(part(3, sum_num=3), 103.0) is Outcome.COMPLETE
    res = finished(c)
    assert not res.partial and res.listed and res.sum_num == 3 and len(res.responses) == 3
    assert c.expire(10_000.0) is Outcome.COMPLETE  # decided: time no longer matters


def test_nothing_in_time_expires_at_the_response_timeout() -> None:
    c = timed()
    assert c.deadline == 110.0
    assert c.expire(109.9) is Outcome.PENDING
    assert c.expire(110.0) is Outcome.EXPIRED
    assert not c.result.responses and not c.result.partial
    assert c.feed(part(1, sum_num=1), 110.5) is Outcome.EXPIRED  # too late: ignored
    assert not c.result.responses


def test_parts_that_stop_coming_are_partial_after_the_idle_timeout() -> None:
    c = timed()
    c.feed(part(1, 2, sum_num=4), 103.0)
    assert c.deadline == 108.0  # the idle timeout runs from the last part
    assert c.expire(107.0) is Outcome.PENDING
    c.feed(part(3, sum_num=4), 107.0)
    assert c.deadline == 112.0 and c.last == 107.0
    assert c.expire(111.9) is Outcome.PENDING
    assert c.expire(112.0) is Outcome.PARTIAL
    res = finished(c)
    assert res.partial and len(res.items) == 3 and res.sum_num == 4
    assert c.feed(part(4, sum_num=4), 112.5) is Outcome.PARTIAL  # decided: not reopened
    assert len(c.result.items) == 3


def test_a_trickling_device_is_cut_at_the_max_query_time() -> None:
    c = timed()
    t = 100.0
    for i in range(1, 8):  # a part every 4 s: never idle for 5 s
        t += 4.0
        assert c.feed(part(i, sum_num=100), t) is Outcome.PENDING
        assert c.expire(t + 0.5) is Outcome.PENDING
    assert c.deadline == 130.0  # started + max_time, before last + idle (133)
    assert c.expire(130.0) is Outcome.PARTIAL and len(finished(c).items) == 7


@pytest.mark.parametrize(
    ("sum_num", "error"),
    [
        (-1, "negative SumNum"),
        (-5, "negative SumNum"),
        (10**9, "SumNum above max_items (1000)"),
        (10**12, "SumNum above max_items (1000)"),
    ],
)
def test_an_impossible_sum_num_keeps_every_item_and_is_partial(sum_num: int, error: str) -> None:
    """Issue 13 item 6: the items of the message that shows the count is wrong are kept, and
    so are those of the parts after it, until parts stop coming."""
    c = timed(max_items=1000)
    assert c.feed(part(1, 2, sum_num=sum_num), 101.0) is Outcome.PENDING
    assert c.feed(part(2, 3, sum_num=sum_num), 102.0) is Outcome.PENDING
    assert c.expire(107.0) is Outcome.PARTIAL
    res = finished(c)
    assert res.partial and res.sum_num == sum_num and res.listed and res.count_error == error
    assert [i.device_id[-1] for i in res.items] == ["1", "2", "3"] and res.dropped == 0


def test_a_sum_num_that_is_not_a_number_keeps_every_item_and_is_partial() -> None:
    """``<SumNum>abc</SumNum>`` reads as no count (kept in ``extra``): without this check the
    first part was a complete answer, and a complete answer removes every other channel."""
    c = timed()
    unreadable = replace(part(1, 2, sum_num=None), extra=(("SumNum", "<SumNum>abc</SumNum>"),))
    assert c.feed(unreadable, 101.0) is Outcome.PENDING
    assert c.feed(part(3, sum_num=3), 102.0) is Outcome.PENDING  # a later count is not believed
    assert c.expire(107.0) is Outcome.PARTIAL
    res = finished(c)
    assert res.partial and res.count_error == "SumNum not a number" and res.sum_num is None
    assert len(res.items) == 3


def test_an_nvr_announcing_more_than_max_items_gives_max_items() -> None:
    """A real NVR with more channels than ``max_items``: the first max_items are kept (one
    answer's memory stays bounded), the rest counted as dropped, and the answer is partial."""
    c = timed(max_items=3)
    assert c.feed(part(1, sum_num=5), 101.0) is Outcome.PENDING
    assert c.feed(part(2, sum_num=5), 102.0) is Outcome.PENDING
    assert c.feed(part(3, 4, sum_num=5), 103.0) is Outcome.PARTIAL
    res = finished(c)
    assert [i.device_id[-1] for i in res.items] == ["1", "2", "3"] and res.dropped == 1
    assert res.count_error == "SumNum above max_items (3)"
    # The parts are kept without their items: those are in ``items``, at most max_items.
    assert len(res.responses) == 3 and all(not r.items for r in res.responses)  # type: ignore[attr-defined]
    assert len(res.answer.items) == 3  # type: ignore[attr-defined]


def test_fewer_announced_than_sent_is_partial() -> None:
    c = timed()
    assert c.feed(part(1, sum_num=2), 101.0) is Outcome.PENDING
    assert c.feed(part(2, 3, sum_num=2), 102.0) is Outcome.PENDING
    assert c.expire(107.0) is Outcome.PARTIAL
    assert finished(c).partial and len(c.result.items) == 3


def test_the_first_sum_num_counts() -> None:
    """Parts disagreeing on SumNum: the first one is the count (a later one is not believed)."""
    c = timed()
    c.feed(part(1, sum_num=3), 101.0)
    assert c.feed(part(2, sum_num=2), 102.0) is Outcome.PENDING and c.result.sum_num == 3
    assert c.feed(part(3, sum_num=5), 103.0) is Outcome.COMPLETE and c.result.sum_num == 3


def test_a_sum_num_of_zero_is_an_empty_complete_list() -> None:
    c = timed()
    assert c.feed(part(sum_num=0), 101.0) is Outcome.COMPLETE
    res = finished(c)
    assert not res.partial and res.listed and res.items == []


def test_repeated_parts_do_not_complete_the_count() -> None:
    c = timed()
    for t in (101.0, 102.0, 103.0):
        assert c.feed(part(1, 2, sum_num=3), t) is Outcome.PENDING
    assert len(c.result.items) == 2 and len(c.result.responses) == 3
    assert c.expire(108.0) is Outcome.PARTIAL


def test_more_items_than_max_items_is_partial() -> None:
    c = timed(max_items=3)
    assert c.feed(part(1, 2, sum_num=3), 101.0) is Outcome.PENDING
    assert c.feed(part(3, 4, sum_num=3), 102.0) is Outcome.PARTIAL
    assert finished(c).partial and len(c.result.items) == 3 and c.result.dropped == 1
    over = timed(max_items=3)
    assert over.feed(part(1, sum_num=4), 101.0) is Outcome.PENDING  # announced beyond it
    assert over.expire(106.0) is Outcome.PARTIAL and len(over.result.items) == 1


def test_expected_parts_without_a_list() -> None:
    c = timed("ConfigDownload", expected_parts=2)
    assert c.feed(ConfigDownloadResponse(sn=7, device_id=DEV), 101.0) is Outcome.PENDING
    assert c.feed(ConfigDownloadResponse(sn=7, device_id=DEV), 102.0) is Outcome.COMPLETE
    assert not finished(c).listed and len(c.result.responses) == 2


def test_answers_from_a_wrong_sender_or_target_are_not_accepted() -> None:
    """The collector refuses an answer naming neither the device nor the target asked, even
    from the right address; from a channel asked, either may be named."""
    c = Collector(QueryResult(DEV, "RecordInfo", 7), frozenset({DEV, "34020000001310000001"}), PEER)
    assert c.accepts(DEV, "34020000001310000001", PEER)
    assert c.accepts("34020000001310000001", "34020000001310000001", PEER)
    assert not c.accepts("34020000001180000009", "34020000001310000009", PEER)
    assert not c.accepts(DEV, DEV, Peer("tcp", "10.0.0.9", 5060))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("behind", [False, True])
async def test_a_gateway_that_is_behind_waits_another_idle_period_for_the_next_part(
    behind: bool,
) -> None:
    """Under load the next part may sit in the gateway's own socket queue: while the gateway
    is behind, the idle timeout starts again instead of ending the query as partial."""
    import asyncio

    from gateway.downlink.queries import PendingQueries
    from gateway.metrics import Metrics
    from gateway.sip import Response

    metrics = Metrics()
    pending = PendingQueries(metrics, busy=lambda: behind)
    loop = asyncio.get_running_loop()
    c = collector("Catalog", started=loop.time(), idle_timeout=0.2, response_timeout=0.1)

    async def request() -> Response:
        # The first part comes with the answer (no sleep: a busy machine cannot delay it past
        # the response timeout).
        loop.call_soon(lambda: pending.deliver(part(1, sum_num=2), DEV, PEER, loop.time()))
        return Response(200)

    async def parts() -> None:
        await asyncio.sleep(0.35)  # past one idle period after the first part
        pending.deliver(part(2, sum_num=2), DEV, PEER, loop.time())

    sender = asyncio.ensure_future(parts())
    res = await pending.collect(c, request())
    await sender
    if behind:
        assert not res.partial and len(res.items) == 2
        assert metrics.get("query.idle_deferred") >= 1
    else:
        assert res.partial and len(res.items) == 1
        assert metrics.get("query.idle_deferred") == 0
