"""The sender and receiver legs over real loopback sockets: UDP, and TCP in both directions.

Senders run at 100 fps (4× real time for the 25 fps clip) so that each test takes well under a
second; loopback is lossless, so every frame sent must be decoded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conformance.media.clip import h264_clip
from conformance.media.ps import PsDemuxer
from conformance.media.stream import MediaReceiver, MediaSender
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(20)

SSRC = 200_000_001
FPS = 100.0
HOST = "127.0.0.1"

Legs = tuple[MediaSender, MediaReceiver]
MakeLegs = Callable[..., Awaitable[Legs]]


@pytest.fixture
async def legs() -> AsyncIterator[MakeLegs]:
    """Make a bound, started sender/receiver pair; everything made is closed afterwards."""
    made: list[MediaSender | MediaReceiver] = []

    async def make(
        sender_transport: str = "udp",
        receiver_transport: str = "udp",
        *,
        keep: bool = False,
        start: bool = True,
        **sender_kw: Any,
    ) -> Legs:
        sender_kw.setdefault("fps", FPS)
        sender = MediaSender(h264_clip(), ssrc=SSRC, transport=sender_transport, **sender_kw)
        receiver = MediaReceiver(transport=receiver_transport, keep=keep)
        made.extend((sender, receiver))
        receiver_port = await receiver.bind()
        sender_port = await sender.bind()
        if not start:
            return sender, receiver
        if sender_transport == "tcp-passive":
            sender.start(None)
            receiver.connect((HOST, sender_port))
        else:
            sender.start((HOST, receiver_port))
        return sender, receiver

    yield make
    for leg in made:
        await leg.close()


@pytest.mark.parametrize(
    ("sender_transport", "receiver_transport"),
    [("udp", "udp"), ("tcp-active", "tcp-passive"), ("tcp-passive", "tcp-active")],
)
async def test_every_frame_sent_is_decoded(
    legs: MakeLegs, sender_transport: str, receiver_transport: str
) -> None:
    ended: list[int] = []
    # 60 frames of a 50-frame clip: the live loop wraps around to its key frame once.
    sender, receiver = await legs(
        sender_transport, receiver_transport, limit=60, on_end=lambda: ended.append(1)
    )
    assert await receiver.wait_frames(60, timeout=8) == 60
    await wait_for(lambda: sender.finished, what="sender finished")
    assert ended == [1] and sender.error is None
    assert sender.frames_sent == 60 and receiver.frames == 60 and receiver.decoded == 60
    assert receiver.decode_errors == 0 and receiver.lost == 0
    assert receiver.packets == sender.packets_sent
    assert receiver.ssrcs == {SSRC} and receiver.payload_types == {96}
    assert receiver.keyframes == 3  # frames 0, 25 and 0 again
    assert receiver.last_packet_at is not None
    if sender_transport == "udp":
        assert receiver.source == (HOST, sender.local_port)  # symmetric RTP


async def test_rtp_timestamp_advances_per_frame_and_ps_keeps_the_stream(
    legs: MakeLegs,
) -> None:
    sender, receiver = await legs(limit=10, keep=True)
    assert await receiver.wait_frames(10) == 10
    assert receiver.data is not None
    demuxer = PsDemuxer()
    stored = demuxer.feed(bytes(receiver.data)) + demuxer.flush()
    assert stored == [f.data for f in h264_clip()[:10]]
    assert demuxer.pts == (sender.timestamp0 + 9 * 900) % (1 << 33)  # 90000 / 100 fps


async def test_pause_stops_frames_and_resume_continues(
    legs: MakeLegs,
) -> None:
    sender, receiver = await legs(loop=True)
    await receiver.wait_frames(10)
    sender.pause()
    assert sender.paused
    paused_at = sender.frames_sent
    await wait_for(lambda: receiver.decoded == paused_at, what="in-flight frames")
    await asyncio.sleep(0.3)  # an observation window: 30 frames would have gone by
    assert sender.frames_sent == paused_at and receiver.decoded == paused_at
    sender.resume()
    assert await receiver.wait_frames(paused_at + 20) >= paused_at + 20
    assert receiver.lost == 0 and receiver.decode_errors == 0


async def test_scale_two_roughly_doubles_the_frame_rate(
    legs: MakeLegs,
) -> None:
    normal, _ = await legs(fps=50.0)
    fast, fast_receiver = await legs(fps=50.0)
    fast.set_scale(2.0)
    await wait_for(lambda: normal.frames_sent >= 30, what="30 frames at scale 1")
    ratio = fast.frames_sent / normal.frames_sent
    assert 1.5 < ratio < 2.6, (fast.frames_sent, normal.frames_sent)
    # the RTP/PS clock still advances one frame interval per frame, whatever the speed
    sent = fast.frames_sent
    fast.pause()
    await wait_for(lambda: fast_receiver.frames == sent)
    assert fast_receiver.ps.pts == (fast.timestamp0 + (sent - 1) * 1800) % (1 << 33)


def test_scale_outside_the_supported_range_is_refused() -> None:
    sender = MediaSender(h264_clip(), ssrc=SSRC, transport="udp")
    for scale in (0.1, 16.0, -1.0):
        with pytest.raises(ValueError):
            sender.set_scale(scale)
    assert sender.scale == 1.0


async def test_playback_ends_with_on_end_at_the_end_of_the_clip(
    legs: MakeLegs,
) -> None:
    ended = asyncio.Event()
    sender, receiver = await legs(loop=False, fps=200.0, on_end=ended.set)
    await asyncio.wait_for(ended.wait(), 5)
    assert sender.finished and sender.frames_sent == 50 and sender.error is None
    assert await receiver.wait_frames(50) == 50


@pytest.mark.parametrize(
    ("start_frame", "seek", "expected"),
    [(25, None, 25), (30, None, 25), (0, 1.2, 25), (0, 0.5, 50), (0, 99.0, 25)],
)
async def test_playback_from_a_position_snaps_back_to_a_key_frame(
    legs: MakeLegs, start_frame: int, seek: float | None, expected: int
) -> None:
    """``start_frame`` and ``seek`` (npt seconds at the clip's 25 fps) start on a key frame."""
    ended = asyncio.Event()
    sender, receiver = await legs(
        loop=False, fps=25.0, start_frame=start_frame, on_end=ended.set, start=False
    )
    if seek is not None:
        sender.seek(seek)
    sender.set_scale(8.0)
    sender.start((HOST, receiver.local_port))
    await asyncio.wait_for(ended.wait(), 5)
    assert sender.frames_sent == expected
    assert await receiver.wait_frames(expected) == expected
    assert receiver.decode_errors == 0


async def test_tcp_active_sender_retries_until_the_receiver_listens() -> None:
    """2022 Annex D: the TCP client retries a failed connection (here every 0.2 s)."""
    with socket.socket() as probe:  # a port nobody listens on yet
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    sender = MediaSender(h264_clip(), ssrc=SSRC, transport="tcp-active", fps=FPS, limit=20)
    receiver = MediaReceiver(transport="tcp-passive", port=port)
    try:
        local = await sender.bind()
        sender.start((HOST, port), retry_interval=0.2)
        await wait_for(lambda: sender.connect_attempts >= 2, what="a retry")
        assert not sender.finished and sender.frames_sent == 0
        assert await receiver.bind() == port
        assert await receiver.wait_frames(20) == 20
        assert sender.local_port == local  # the port reserved by bind() (and put in the SDP)
    finally:
        await sender.close()
        await receiver.close()


async def test_tcp_active_sender_gives_up_after_its_retries() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    ended: list[int] = []
    sender = MediaSender(
        h264_clip(),
        ssrc=SSRC,
        transport="tcp-active",
        retry_interval=0.05,
        on_end=lambda: ended.append(1),
    )
    try:
        await sender.bind()
        sender.start((HOST, port))
        await wait_for(lambda: sender.finished, what="sender gives up")
        assert sender.connect_attempts == 4  # the first try and 3 retries
        assert sender.error is not None and "could not connect" in sender.error
        assert ended == []  # not an end of file
    finally:
        await sender.close()


async def test_sender_stops_when_the_tcp_peer_goes_away(legs: MakeLegs) -> None:
    ended: list[int] = []
    sender, receiver = await legs("tcp-active", "tcp-passive", on_end=lambda: ended.append(1))
    await receiver.wait_frames(5)
    await receiver.close()
    await wait_for(lambda: sender.finished, what="sender notices")
    assert sender.error is not None and ended == []
    sent = sender.frames_sent
    await asyncio.sleep(0.05)
    assert sender.frames_sent == sent


async def test_receiver_drops_a_tcp_connection_that_breaks_framing() -> None:
    receiver = MediaReceiver(transport="tcp-passive")
    try:
        port = await receiver.bind()
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the receiver
        writer.close()
        assert receiver.framing_errors == 1 and receiver.packets == 0
    finally:
        await receiver.close()


async def test_tens_of_senders_in_one_process(legs: MakeLegs) -> None:
    pairs = [await legs(limit=25, fps=50.0) for _ in range(20)]
    for _, receiver in pairs:
        assert await receiver.wait_frames(25) == 25
    assert all(sender.finished and sender.error is None for sender, _ in pairs)


async def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        MediaSender(h264_clip(), ssrc=SSRC, transport="sctp")
    with pytest.raises(ValueError, match="transport"):
        MediaReceiver(transport="rtsp")
    with pytest.raises(ValueError):
        MediaSender((), ssrc=SSRC, transport="udp")
    sender = MediaSender(h264_clip(), ssrc=SSRC, transport="udp")
    with pytest.raises(RuntimeError, match="bind"):
        sender.start((HOST, 9))
    with pytest.raises(RuntimeError):
        MediaReceiver(transport="udp").connect((HOST, 9))
