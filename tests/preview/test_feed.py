"""The feed without sockets: synthetic access units through the GOP cache, the viewers' queues
and their timelines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gateway.metrics import Metrics
from gateway.preview.feed import (
    CATCH_UP_STEP,
    NOMINAL_STEP,
    PTS_WRAP,
    RTP_WRAP,
    Feed,
    Timeline,
    VideoFrame,
    Viewer,
    ViewerClosed,
)

SPS_PPS = b"\x00\x00\x00\x01\x67\x42\xe0\x1f\x00\x00\x00\x01\x68\xce"
IDR = b"\x00\x00\x00\x01\x65\x88"
P = b"\x00\x00\x00\x01\x41\x9a"


@dataclass(frozen=True)
class Unit:
    """What gateway.media's receivers give (EsUnit's fields)."""

    codec: str
    pts: int | None
    data: bytes
    key: bool
    kind: str = "video"


class KeepSets:
    """ParameterSets' contract: remembers SPS/PPS, puts them before a key AU lacking them."""

    def __init__(self) -> None:
        self.sets = b""
        self.calls = 0

    def complete(self, au: bytes) -> bytes:
        self.calls += 1
        if b"\x67" in au[:6]:
            self.sets = au[: au.index(IDR)] if IDR in au else au
            return au
        if au.startswith(IDR) and self.sets:
            return self.sets + au
        return au


class NoReceiver:
    def push(self, packet: bytes) -> list[Unit]:
        raise RuntimeError("broken depacketiser")


def video(n: int, *, key: bool = False, pts0: int = 1000, size: int = 0) -> Unit:
    body = (IDR if key else P) + bytes(size)
    return Unit("h264", (pts0 + n * NOMINAL_STEP) % PTS_WRAP, body, key)


async def make_feed(cache: int = 1 << 20) -> tuple[Feed, KeepSets]:
    feed = Feed("34020000001320000001", gop_cache_bytes=cache, metrics=Metrics())
    sets = KeepSets()
    feed.use(NoReceiver(), sets, "PS")
    return feed, sets


def frames_of(viewer: Viewer) -> list[VideoFrame]:
    return list(viewer.video)


# -- the timeline ------------------------------------------------------------------------------
def test_timeline_starts_at_zero_and_follows_the_source_steps() -> None:
    t = Timeline()
    assert [t.step(p) for p in (90_000, 93_600, 97_200, 104_400)] == [0, 3600, 7200, 14_400]


def test_timeline_carries_the_33_bit_wrap() -> None:
    t = Timeline()
    assert t.step(PTS_WRAP - 1800) == 0
    assert t.step(1800) == 3600  # across the wrap: a step of 3600, not a jump back
    assert t.step(5400) == 7200


def test_timeline_carries_the_32_bit_rtp_wrap() -> None:
    t = Timeline()
    assert t.step(RTP_WRAP - 1800) == 0
    assert t.step(1800) == 3600


@pytest.mark.parametrize("bad", [0, 1800 - 3600, 1800 + 10 * 90_000, None])
def test_timeline_replaces_a_jump_a_step_back_or_no_pts_with_one_frame(bad: int | None) -> None:
    t = Timeline()
    t.step(1800)
    src = None if bad is None else (bad if bad != 0 else 1800) % PTS_WRAP
    assert t.step(src) == NOMINAL_STEP
    assert t.step(None) == 2 * NOMINAL_STEP


def test_timeline_catch_up_steps_are_short() -> None:
    t = Timeline()
    t.step(0)
    assert t.step(3600, catch_up=True) == CATCH_UP_STEP
    assert t.step(7200) == CATCH_UP_STEP + 3600


# -- the GOP cache -----------------------------------------------------------------------------
async def test_gop_cache_holds_from_the_last_key_frame_with_its_parameter_sets() -> None:
    feed, sets = await make_feed()
    feed.on_unit(Unit("h264", 0, SPS_PPS + IDR, True))
    assert sets.calls == 1
    for n in range(1, 5):
        feed.on_unit(video(n))
    feed.on_unit(video(5, key=True))  # an IDR without SPS/PPS in band
    feed.on_unit(video(6))
    assert [f.key for f in feed.gop] == [True, False]
    assert feed.gop[0].data.startswith(SPS_PPS), "SPS/PPS put back before the key frame"
    assert feed.keyed.done()
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    assert frames_of(viewer) == feed.gop


async def test_gop_cache_is_bounded_and_a_longer_gop_is_dropped() -> None:
    feed, _ = await make_feed(cache=64 * 1024)
    feed.on_unit(video(0, key=True))
    for n in range(1, 100):
        feed.on_unit(video(n, size=1000))
        assert feed.gop_bytes <= 64 * 1024
    assert feed.gop == [] and feed.gop_overflows == 1
    viewer = Viewer(max_lag=100)
    feed.add(viewer)  # nothing to start from: waits for the next key frame
    feed.on_unit(video(100))
    assert frames_of(viewer) == []
    feed.on_unit(video(101, key=True))
    assert [f.key for f in frames_of(viewer)] == [True]


async def test_a_viewer_before_any_key_frame_waits_for_one() -> None:
    feed, _ = await make_feed()
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    feed.on_unit(video(0))
    feed.on_unit(video(1))
    assert frames_of(viewer) == [] and not feed.keyed.done()
    feed.on_unit(video(2, key=True))
    feed.on_unit(video(3))
    assert [f.key for f in frames_of(viewer)] == [True, False]


async def test_h265_is_noted_and_never_cached() -> None:
    feed, _ = await make_feed()
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    feed.on_unit(Unit("h265", 0, b"\x00\x00\x01\x26\x01", True))
    assert feed.keyed.done() and feed.video_codec == "h265"
    assert feed.gop == [] and frames_of(viewer) == []


async def test_only_g711_audio_is_passed_on() -> None:
    feed, _ = await make_feed()
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    feed.on_unit(Unit("aac", 0, b"\xff\xf1", False, "audio"))
    feed.on_unit(Unit("pcma", 0, b"\xd5" * 160, False, "audio"))
    assert [c.codec for c in viewer.audio] == ["pcma"] and feed.audio_codec == "pcma"
    chunk, at = await viewer.next_audio()
    assert chunk.data == b"\xd5" * 160 and at == 0 and viewer.audio_samples == 160


async def test_a_broken_depacketiser_is_counted_not_raised() -> None:
    feed, _ = await make_feed()
    feed.on_packet(b"\x80\x60" + bytes(10))
    assert feed.receive_errors == 1
    assert feed.metrics.get("preview.feed.receive_error") == 1


# -- viewers -----------------------------------------------------------------------------------
async def test_a_slow_viewer_skips_to_the_next_key_frame_and_stays_bounded() -> None:
    feed, _ = await make_feed()
    viewer = Viewer(max_lag=10)
    feed.add(viewer)
    feed.on_unit(video(0, key=True))
    await viewer.next_video()  # sending: the lag limit applies
    for n in range(1, 50):
        feed.on_unit(video(n))
        assert len(viewer.video) <= 10
    assert viewer.skips == 1 and viewer.waiting_key and not viewer.video
    feed.on_unit(video(50, key=True))
    assert [f.key for f in frames_of(viewer)] == [True]


async def test_cached_frames_are_replayed_fast_then_live_at_the_source_pace() -> None:
    feed, _ = await make_feed()
    feed.on_unit(video(0, key=True))
    for n in range(1, 10):
        feed.on_unit(video(n))
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    stamps = [(await viewer.next_video())[1] for _ in range(10)]
    assert stamps == [n * CATCH_UP_STEP for n in range(10)]
    feed.on_unit(video(10))
    feed.on_unit(video(11))
    live = [(await viewer.next_video())[1] for _ in range(2)]
    assert live == [stamps[-1] + NOMINAL_STEP, stamps[-1] + 2 * NOMINAL_STEP]
    assert stamps + live == sorted(set(stamps + live)), "monotonic"


async def test_every_viewer_has_its_own_timeline_from_zero() -> None:
    feed, _ = await make_feed()
    first = Viewer(max_lag=100)
    feed.add(first)
    feed.on_unit(video(0, key=True, pts0=PTS_WRAP - 3600))
    feed.on_unit(video(1, pts0=PTS_WRAP - 3600))
    second = Viewer(max_lag=100)
    feed.add(second)
    assert (await first.next_video())[1] == 0
    assert (await second.next_video())[1] == 0


async def test_a_closed_viewer_wakes_its_track_and_takes_nothing() -> None:
    feed, _ = await make_feed()
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    waiting = asyncio.ensure_future(viewer.next_video())
    await asyncio.sleep(0)
    viewer.close()
    with pytest.raises(ViewerClosed):
        await waiting
    feed.on_unit(video(0, key=True))
    assert not viewer.video
    assert feed.remove(viewer)


async def test_a_long_gop_waiting_for_the_connection_is_not_lag() -> None:
    """A 4 s GOP at 25 fps (100 frames, the default lag limit) cached, and frames arriving while
    ICE/DTLS connects: the viewer still starts from the key frame."""
    feed, _ = await make_feed()
    feed.on_unit(video(0, key=True))
    for n in range(1, 100):
        feed.on_unit(video(n))
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    for n in range(100, 130):  # the handshake takes a while
        feed.on_unit(video(n))
    assert viewer.skips == 0 and not viewer.waiting_key
    first, _ = await viewer.next_video()
    assert first.key and len(viewer.video) == 129
    # Sending: the replay of that backlog goes on while live frames come; they are no lag.
    for n in range(130, 140):
        await viewer.next_video()
        feed.on_unit(video(n))
        assert viewer.skips == 0, "a live frame during the replay is no lag"
    assert viewer.skips == 0 and not viewer.waiting_key and len(viewer.video) == 129
    # Before sending, a new key frame re-seeds the queue with the new GOP.
    other = Viewer(max_lag=100)
    feed.add(other)
    feed.on_unit(video(140, key=True))
    assert len(other.video) == 1 and other.video[0].key


async def test_waiting_viewer_queue_is_bounded_by_bytes_and_asks_for_a_key_frame() -> None:
    feed, _ = await make_feed()
    asked: list[int] = []
    feed.key_wanted = lambda: asked.append(1)
    feed.on_unit(video(0, key=True))
    viewer = Viewer(max_lag=100, max_bytes=1000)
    feed.add(viewer)
    for n in range(1, 40):
        feed.on_unit(video(n, size=100))
        assert viewer.video_bytes <= 1000
    assert viewer.skips >= 1 and viewer.waiting_key and asked
    # Sending now, falling behind by the lag limit also asks.
    asked.clear()
    feed.on_unit(video(40, key=True))
    await viewer.next_video()
    for n in range(41, 150):
        feed.on_unit(video(n))
    assert viewer.waiting_key and asked


async def test_joining_a_flowing_feed_with_no_cached_gop_asks_for_a_key_frame() -> None:
    feed, _ = await make_feed(cache=64)
    asked: list[int] = []
    feed.key_wanted = lambda: asked.append(1)
    feed.on_unit(video(0, key=True))
    feed.on_unit(video(1, size=200))  # the GOP overflows the cache: dropped
    assert feed.gop == []
    viewer = Viewer(max_lag=100)
    feed.add(viewer)
    assert viewer.waiting_key and asked == [1]


async def test_audio_passthrough_reports_the_bytes_it_hands_to_the_sender() -> None:
    from gateway.preview.feed import AudioChunk
    from gateway.preview.tracks import AudioPassthrough

    viewer = Viewer(max_lag=100)
    sent: list[int] = []
    track = AudioPassthrough(viewer, sent.append)
    viewer.push_audio(AudioChunk(bytes(160), "pcma"))
    viewer.push_audio(AudioChunk(bytes(320), "pcma"))
    await track.recv()
    await track.recv()
    assert sent == [160, 320]
