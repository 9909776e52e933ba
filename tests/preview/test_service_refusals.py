"""What :meth:`Previews.open` refuses, with which status, and that each refusal is counted and
leaves nothing behind (no feed, no local session, the device's leg freed)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiortc import RTCRtpSender

import gateway.preview.service as service
from gateway.metrics import Metrics
from gateway.preview import PreviewError
from gateway.preview.feed import Feed
from gateway.preview.service import H265_MESSAGE, announce
from tests.conftest import wait_for
from tests.media.rig import Rig
from tests.preview.conftest import ViewerClient

pytestmark = pytest.mark.timeout(60)

Make = Callable[..., Awaitable[Rig]]
Viewers = Callable[..., ViewerClient]


async def refused(rig: Rig, offer: str, channel: str | None = None) -> PreviewError:
    with pytest.raises(PreviewError) as caught:
        await rig.gw.previews.open(channel or rig.channel, offer, owner="tester")
    assert rig.gw.metrics.get(f"preview.refused.{caught.value.status}") >= 1
    return caught.value


async def nothing_left(rig: Rig) -> None:
    previews = rig.gw.previews
    assert previews.active == 0 and previews.sessions() == []
    await wait_for(lambda: not previews.feeds and not rig.media.local, 10, "feed stopped")


async def test_an_offer_that_is_not_sdp_or_has_no_video_is_400(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    assert (await refused(rig, "hello")).status == 400
    assert (await refused(rig, "v=0\r\nbroken")).status == 400
    good = await viewers().offer()
    no_fingerprint = "\r\n".join(
        line for line in good.split("\r\n") if not line.startswith("a=fingerprint:")
    )
    assert (await refused(rig, no_fingerprint)).status == 400
    no_ice = "\r\n".join(line for line in good.split("\r\n") if not line.startswith("a=ice-pwd:"))
    assert (await refused(rig, no_ice)).status == 400
    audio_only = await viewers(video=False, audio=True).offer()
    error = await refused(rig, audio_only)
    assert error.status == 400 and "video" in error.message
    assert rig.nvr.invites == [], "nothing asked of the device for a bad offer"
    await nothing_left(rig)


async def test_an_offer_without_h264_is_415(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig()
    client = viewers()
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
    client.pc.getTransceivers()[0].setCodecPreferences(vp8)
    error = await refused(rig, await client.offer())
    assert error.status == 415 and "H.264" in error.message
    assert rig.nvr.invites == [], "refused before the device is asked"
    await nothing_left(rig)


async def test_an_h265_channel_is_415_saying_the_browser_cannot_take_it(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = service.depacketiser

    class AsH265:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def push(self, packet: bytes) -> list[Any]:
            units = self.inner.push(packet)
            return [dataclasses.replace(u, codec="h265") for u in units]

    def h265(encoding: str) -> Any:
        receiver, sets = made(encoding)  # type: ignore[misc]
        return AsH265(receiver), sets

    monkeypatch.setattr(service, "depacketiser", h265)
    rig = await preview_rig()
    error = await refused(rig, await viewers().offer())
    assert error.status == 415 and error.message == H265_MESSAGE and "H.265" in error.message
    await nothing_left(rig)
    await wait_for(lambda: any(s.ended for s in rig.nvr.media_sessions.values()), 10, "BYE")


async def test_unknown_channel_404_offline_device_409(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig()
    offer = await viewers().offer()
    assert (await refused(rig, offer, "34020000001310009999")).status == 404
    await rig.nvr.unregister()
    await wait_for(lambda: not rig.gw.downlink.device(rig.channel).online, 5, "offline")  # type: ignore[union-attr]
    assert (await refused(rig, offer)).status == 409
    await nothing_left(rig)


async def test_a_device_that_refuses_is_503(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig(invite_refuse=486)
    error = await refused(rig, await viewers().offer())
    assert error.status == 503 and "486" in error.message and error.retry_after
    await nothing_left(rig)


async def test_no_key_frame_in_time_is_503(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig(media_mute=True, preview={"first_frame_timeout": 1.0})
    error = await refused(rig, await viewers().offer())
    assert error.status == 503 and "key frame" in error.message
    await nothing_left(rig)
    await wait_for(lambda: any(s.ended for s in rig.nvr.media_sessions.values()), 10, "BYE")


async def test_the_session_limit_is_503_with_retry_after(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(preview={"max_sessions": 1})
    first = viewers()
    _, answer = await rig.gw.previews.open(rig.channel, await first.offer(), owner="a")
    await first.accept(answer)
    error = await refused(rig, await viewers().offer())
    assert error.status == 503 and error.retry_after and "limit" in error.message
    assert rig.gw.previews.active == 1


async def test_the_answer_has_loopback_host_candidates_only_and_no_stun(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    session_id, answer = await rig.gw.previews.open(rig.channel, await viewers().offer(), owner="a")
    candidates = [line for line in answer.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(" 127.0.0.1 " in c and "typ host" in c for c in candidates)
    assert "a=rtpmap:" in answer and "H264/90000" in answer and "VP8" not in answer
    pc = rig.gw.previews._sessions[session_id].pc
    assert pc is not None
    ice = pc.getTransceivers()[0].sender.transport.transport
    # None would have made aiortc use Google's public STUN server.
    assert ice.iceGatherer._connection.stun_server is None


async def test_announce_host_rewrites_the_host_candidates(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(preview={"announce_host": "203.0.113.7"})
    _, answer = await rig.gw.previews.open(rig.channel, await viewers().offer(), owner="a")
    candidates = [line for line in answer.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(" 203.0.113.7 " in c for c in candidates)
    assert "127.0.0.1" not in answer


def test_announce_leaves_other_candidates_and_lines_alone() -> None:
    sdp = (
        "v=0\r\nc=IN IP4 10.0.0.5\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.5 5000 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.1 6000 typ srflx raddr 10.0.0.5 rport 5000\r\n"
    )
    out = announce(sdp, "203.0.113.7").splitlines()
    assert out[1] == "c=IN IP4 203.0.113.7"
    assert out[2] == "a=candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host"
    assert out[3].startswith("a=candidate:2 1 udp 1694498815 198.51.100.1 6000 typ srflx")


async def test_a_feed_that_fails_unexpectedly_answers_500_at_once(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(encoding: str) -> Any:
        raise RuntimeError("depacketiser bug")

    monkeypatch.setattr(service, "depacketiser", broken)
    rig = await preview_rig(preview={"first_frame_timeout": 60.0})
    error = await refused(rig, await viewers().offer())
    assert error.status == 500 and rig.gw.metrics.get("preview.feed.error") == 1
    await nothing_left(rig)


async def test_a_disabled_preview_refuses(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig(preview={"enabled": False})
    error = await refused(rig, await viewers().offer())
    assert error.status == 503 and "disabled" in error.message
    assert rig.nvr.invites == []


async def test_a_device_sending_neither_ps_nor_h264_is_415(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(payload_type=33)  # answers MP2T/90000
    error = await refused(rig, await viewers().offer())
    assert error.status == 415 and "MP2T" in error.message
    await nothing_left(rig)


async def test_one_owner_is_limited_to_its_share_of_previews(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(preview={"max_sessions_per_owner": 1})
    first = viewers()
    _, answer = await rig.gw.previews.open(rig.channel, await first.offer(), owner="a")
    await first.accept(answer)
    with pytest.raises(PreviewError) as caught:
        await rig.gw.previews.open(rig.channel, await viewers().offer(), owner="a")
    error = caught.value
    assert error.status == 503 and error.retry_after and "per-viewer" in error.message
    other = viewers()
    _, answer = await rig.gw.previews.open(rig.channel, await other.offer(), owner="b")
    await other.accept(answer)
    assert rig.gw.previews.active == 2


async def test_one_owner_opening_too_fast_is_429_and_the_owner_table_is_bounded(
    preview_rig: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await preview_rig(preview={"opens_per_minute": 2})
    previews = rig.gw.previews
    for _ in range(2):  # refused offers still spend the owner's tokens
        assert (await refused(rig, "hello")).status == 400
    error = await refused(rig, "hello")
    assert error.status == 429 and error.retry_after and error.retry_after >= 1
    assert "a minute" in error.message
    with pytest.raises(PreviewError) as caught:
        await previews.open(rig.channel, "hello", owner="someone else")
    assert caught.value.status == 400
    monkeypatch.setattr(service, "MAX_OWNERS_TRACKED", 8)
    for n in range(50):
        with pytest.raises(PreviewError):
            await previews.open(rig.channel, "hello", owner=f"owner{n}")
    assert len(previews._buckets) <= 8
    assert rig.nvr.invites == []


def test_a_peer_that_never_connects_is_given_ten_seconds() -> None:
    assert service.CONNECT_TIMEOUT == 10.0


@pytest.mark.parametrize("name", ["H265", "HEVC", "h265"])
async def test_a_device_answering_h265_in_its_rtpmap_gets_the_h265_message(name: str) -> None:
    feed = Feed("34020000001320000001", gop_cache_bytes=1 << 20, metrics=Metrics())
    with pytest.raises(PreviewError) as caught:
        service.Previews._depacketise(feed, name)
    assert caught.value.status == 415 and caught.value.message == H265_MESSAGE


async def test_a_cancelled_request_stays_cancelled_when_its_feed_ends_too(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(media_mute=True, preview={"first_frame_timeout": 30.0})
    previews = rig.gw.previews
    offer = await viewers().offer()
    task = asyncio.ensure_future(previews.open(rig.channel, offer, owner="tester"))
    await wait_for(
        lambda: rig.channel in previews.feeds and previews.feeds[rig.channel].started.done(),
        10,
        "feed started",
    )
    feed = previews.feeds[rig.channel]
    previews._stop_feed(feed)  # the feed ends ...
    task.cancel()  # ... and the request is cancelled (the client went) at the same time
    with pytest.raises(asyncio.CancelledError):
        await task
    await nothing_left(rig)


async def test_a_feed_given_up_during_the_invite_leaves_no_leg_output_or_port(
    preview_rig: Make, viewers: Viewers
) -> None:
    """The first-frame timeout expires while the device takes its time to answer: the feed's
    starting task is cancelled at once (not left to finish the INVITE for nobody)."""
    rig = await preview_rig(
        invite_delay=40.0, media={"invite_timeout": 40.0}, preview={"first_frame_timeout": 0.5}
    )
    previews = rig.gw.previews
    error = await refused(rig, await viewers().offer())
    assert error.status == 503
    await wait_for(
        lambda: not rig.media.legs and not rig.media.local and not rig.media.live,
        8,
        "the leg and the output gone long before the device answers (40 s)",
    )
    assert not previews.feeds and not previews._by_output
    assert all(t.done() for t in previews._tasks._tasks if "_start_feed" in repr(t.get_coro()))


async def test_what_is_not_a_video_channel_is_404_before_the_device_is_asked(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig(with_groups=True)
    offer = await viewers().offer()
    catalog = rig.gw.downlink.catalog
    group, org, _ = rig.nvr.group_ids()
    await wait_for(lambda: catalog.get(org) is not None, 10, "the groups in the catalog")
    # Business group (215) and virtual organisation (216): catalog items with no picture.
    for item_id in (group, org):
        error = await refused(rig, offer, item_id)
        assert error.status == 404 and "not a video channel" in error.message
    # An alarm input (134) the device reported.
    alarm = rig.channel[:10] + "134" + rig.channel[13:]
    item = dataclasses.replace(rig.nvr.channel_item(1), device_id=alarm)
    catalog.apply_notify(rig.nvr.device_id, [item])
    assert catalog.get(alarm) is not None
    error = await refused(rig, offer, alarm)
    assert error.status == 404 and "134" in error.message
    # Another device's channel ID, or one nobody reported.
    error = await refused(rig, offer, rig.channel[:-1] + "9")
    assert error.status == 404
    assert rig.nvr.invites == []
    await nothing_left(rig)
    # A channel is still fine, and so is the device ID itself (an IPC is its own channel).
    client = viewers()
    _, answer = await rig.gw.previews.open(rig.channel, await client.offer(), owner="a")
    await client.accept(answer)
    rig.gw.previews._check_channel(rig.nvr.device_id)
