"""End to end: a gateway, a simulated NVR streaming the 320x240 25 fps clip, and aiortc viewers
pulling the channel through :class:`gateway.preview.Previews` and decoding what they get."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
import pytest
from aiortc.codecs.h264 import H264Encoder

import gateway.preview.service as service
from gateway.preview.service import screen_candidates
from tests.conftest import wait_for
from tests.media.rig import Rig
from tests.preview.conftest import ViewerClient

pytestmark = pytest.mark.timeout(90)

Make = Callable[..., Awaitable[Rig]]
Viewers = Callable[..., ViewerClient]


async def watch(rig: Rig, client: ViewerClient, channel: str | None = None) -> str:
    """Open a preview for ``client`` and give it the answer; the session's ID."""
    session_id, answer = await rig.gw.previews.open(
        channel or rig.channel, await client.offer(), owner="tester"
    )
    await client.accept(answer)
    return session_id


def device_bye_count(rig: Rig) -> int:
    return sum(1 for s in rig.nvr.media_sessions.values() if s.ended)


@pytest.mark.parametrize("device_transport", ["udp", "tcp-passive"])
async def test_a_viewer_gets_the_clip_decoded_at_its_frame_rate(
    preview_rig: Make, viewers: Viewers, device_transport: str
) -> None:
    rig = await preview_rig(device_transport=device_transport)
    previews = rig.gw.previews
    client = viewers()
    session_id = await watch(rig, client)
    await wait_for(lambda: client.frames >= 10, 20, "10 decoded frames")
    assert client.sizes == {(320, 240)}
    # The count keeps rising at the device's pace: 50 more frames take about 2 s at 25 fps
    # (a generous lower bound). Measured once the backlog queued during ICE/DTLS has been
    # replayed (4 ms apart: a slow handshake makes a burst), on what the sender was handed.
    viewer = previews._sessions[session_id].viewer
    await wait_for(lambda: not viewer.replaying, 20, "the backlog replayed")
    loop = asyncio.get_running_loop()
    sent = lambda: previews._sessions[session_id].frames_sent  # noqa: E731
    start, base, seen = loop.time(), sent(), client.frames
    await wait_for(lambda: sent() >= base + 50, 20, "50 more frames sent")
    assert loop.time() - start > 1.0
    await wait_for(lambda: client.frames >= seen + 40, 20, "the client decodes them")
    info = previews.session(session_id)
    assert info is not None
    assert info["channel_id"] == rig.channel and info["owner"] == "tester"
    assert info["frames_sent"] >= 60 and info["bytes_sent"] > 0
    assert info["first_frame_ms"] is not None and info["state"] == "connected"
    assert [s["id"] for s in previews.sessions()] == [session_id]
    metrics = rig.gw.metrics
    assert metrics.get("preview.started") == 1 and metrics.get("preview.frames_sent") >= 60
    assert metrics.histograms()["preview.first_frame"].counts != [0] * len(
        metrics.histograms()["preview.first_frame"].counts
    )
    assert await previews.end(session_id)
    assert not await previews.end(session_id)
    assert previews.active == 0 and previews.session(session_id) is None
    assert metrics.get("preview.ended.deleted") == 1


async def test_frames_arrive_with_aiortc_s_encoder_unusable(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passthrough: the H.264 encoder is never called (it would raise), yet frames decode."""
    calls: list[int] = []

    def no_encoding(self: H264Encoder, *args: object, **kw: object) -> None:
        calls.append(1)
        raise AssertionError("the preview must not encode")

    monkeypatch.setattr(H264Encoder, "encode", no_encoding)
    monkeypatch.setattr(H264Encoder, "_encode_frame", no_encoding)
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    await wait_for(lambda: client.frames >= 30, 20, "30 decoded frames")
    assert calls == []


async def test_two_viewers_one_device_invite_and_the_last_to_leave_stops_the_leg(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    previews = rig.gw.previews
    first, second = viewers(), viewers()
    one = await watch(rig, first)
    await wait_for(lambda: first.frames >= 5, 20, "first viewer's frames")
    two = await watch(rig, second)
    await wait_for(lambda: second.frames >= 5, 20, "second viewer's frames")
    assert len(rig.nvr.invites) == 1, "one device INVITE whatever the number of viewers"
    assert len(previews.feeds) == 1 and len(rig.media.local) == 1
    assert previews.active == 2
    await previews.end(one)
    base = second.frames
    await wait_for(lambda: second.frames >= base + 10, 20, "the other viewer goes on")
    assert device_bye_count(rig) == 0 and len(rig.media.local) == 1
    await previews.end(two)
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")
    assert previews.feeds == {} and rig.media.local == {}
    await rig.at_rest()


async def test_a_viewer_and_an_upper_share_the_leg_and_outlive_each_other(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    session_id = await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    call = await rig.invite()
    assert call.status == 200
    assert len(rig.nvr.invites) == 1, "the upper joined the viewer's leg"
    await wait_for(lambda: call.receiver.decoded >= 5, 20, "the upper's frames")
    await rig.gw.previews.end(session_id)
    base = call.receiver.decoded
    await wait_for(lambda: call.receiver.decoded >= base + 10, 20, "the upper's stream goes on")
    assert device_bye_count(rig) == 0, "the upper still uses the leg"
    assert rig.media.live_leg(rig.channel) is not None
    # And the other way round: the upper leaves, a new viewer's frames keep coming.
    again = viewers()
    await watch(rig, again)
    await wait_for(lambda: again.frames >= 5, 20, "frames")
    await call.bye()
    base = again.frames
    await wait_for(lambda: again.frames >= base + 10, 20, "the viewer goes on")
    assert len(rig.nvr.invites) == 1


async def test_a_viewer_ends_when_its_device_goes_offline(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    session_id = await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    await rig.nvr.unregister()
    previews = rig.gw.previews
    await wait_for(lambda: previews.active == 0, 10, "preview ended")
    assert previews.session(session_id) is None and previews.feeds == {}
    assert rig.gw.metrics.get("preview.ended.device_offline") == 1


async def test_a_viewer_ends_with_its_leg(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    leg = rig.media.live_leg(rig.channel)
    assert leg is not None
    rig.media.end_leg(leg, "test ends the leg")
    previews = rig.gw.previews
    await wait_for(lambda: previews.active == 0, 10, "preview ended")
    assert rig.gw.metrics.get("preview.ended.leg_ended") == 1 and previews.feeds == {}


async def test_a_viewer_ends_after_max_seconds(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig(preview={"max_seconds": 1.0})
    client = viewers()
    await watch(rig, client)
    previews = rig.gw.previews
    await wait_for(lambda: previews.active == 0, 10, "preview ended")
    assert rig.gw.metrics.get("preview.ended.max_seconds") == 1
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")


async def test_a_viewer_closing_its_peer_connection_ends_the_preview(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    await client.close()
    previews = rig.gw.previews
    await wait_for(lambda: previews.active == 0, 40, "preview ended")
    ended = rig.gw.metrics.get("preview.ended.closed") + rig.gw.metrics.get(
        "preview.ended.ice_failed"
    )
    assert ended == 1
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")


async def test_close_ends_every_preview_as_stopping(preview_rig: Make, viewers: Viewers) -> None:
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    await rig.gw.previews.close()
    assert rig.gw.previews.active == 0 and rig.gw.previews.feeds == {}
    assert rig.gw.metrics.get("preview.ended.stopping") == 1
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")


async def test_a_second_viewer_starts_from_the_cached_gop(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    previews = rig.gw.previews
    first = viewers()
    await watch(rig, first)
    await wait_for(lambda: first.frames >= 5, 20, "first viewer's frames")
    second = viewers()
    session_id, answer = await previews.open(rig.channel, await second.offer(), owner="t")
    waiting = list(previews._sessions[session_id].viewer.video)
    assert waiting and waiting[0].key, "the cached GOP, from its key frame, waits for the sender"
    await second.accept(answer)
    await wait_for(lambda: second.frames >= 5, 20, "second viewer's frames")
    assert len(rig.nvr.invites) == 1


async def test_a_picture_loss_report_asks_the_device_for_a_key_frame_rate_limited(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    session_id = await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    pc = rig.gw.previews._sessions[session_id].pc
    assert pc is not None
    ssrc = pc.getTransceivers()[0].sender._ssrc
    receiver = client.pc.getTransceivers()[0].receiver
    await receiver._send_rtcp_pli(ssrc)  # RTCP PSFB PLI on the wire (RFC 4585 §6.3.1)
    await wait_for(lambda: any(c.iframe_cmd is not None for c in rig.nvr.controls), 10, "IFameCmd")
    await receiver._send_rtcp_pli(ssrc)
    metrics = rig.gw.metrics
    await wait_for(lambda: metrics.get("preview.key_request.limited") >= 1, 10, "limited")
    assert metrics.get("preview.key_request.sent") == 1
    assert sum(1 for c in rig.nvr.controls if c.iframe_cmd is not None) == 1


@dataclass(frozen=True)
class AudioUnit:
    codec: str
    pts: int | None
    data: bytes
    key: bool = False
    kind: str = "audio"


async def test_g711_audio_is_passed_through_when_the_browser_offers_it(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device sending G.711 (here added beside each video unit): PCMA goes out as it came."""
    made = service.depacketiser

    class WithAudio:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def push(self, packet: bytes) -> list[Any]:
            out: list[Any] = []
            for unit in self.inner.push(packet):
                out += [AudioUnit("pcma", unit.pts, b"\xd5" * 320), unit]
            return out

    def with_audio(encoding: str) -> Any:
        receiver, sets = made(encoding)  # type: ignore[misc]
        return WithAudio(receiver), sets

    monkeypatch.setattr(service, "depacketiser", with_audio)
    rig = await preview_rig()
    warm = viewers()  # makes the feed see audio before the next viewer's answer
    await watch(rig, warm)
    await wait_for(lambda: warm.frames >= 2, 20, "frames")
    client = viewers(audio=True)
    session_id, answer = await rig.gw.previews.open(rig.channel, await client.offer(), owner="t")
    assert "PCMA/8000" in answer and "opus" not in answer
    await client.accept(answer)
    await wait_for(lambda: client.audio_frames >= 10 and client.frames >= 5, 20, "audio, video")
    assert rig.gw.previews.session(session_id) is not None


async def test_a_feed_joining_an_upper_s_stream_asks_for_a_key_frame(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    call = await rig.invite()
    assert call.status == 200
    await wait_for(lambda: call.receiver.decoded >= 5, 20, "the upper's frames")
    client = viewers()
    await watch(rig, client)
    await wait_for(lambda: any(c.iframe_cmd is not None for c in rig.nvr.controls), 10, "IFameCmd")
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    assert len(rig.nvr.invites) == 1


async def test_a_peer_that_never_connects_is_ended_and_frees_the_leg(
    preview_rig: Make, viewers: Viewers
) -> None:
    """A trickle client whose offer has no candidate and no end-of-candidates (and which never
    PATCHes any, RFC 9725 lets the server refuse trickle): ICE alone would wait for ever."""
    rig = await preview_rig()
    previews = rig.gw.previews
    previews.connect_timeout = 1.0
    offer = await viewers().offer()
    silent = "\r\n".join(
        line
        for line in offer.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )
    await previews.open(rig.channel, silent, owner="t")
    await wait_for(lambda: previews.active == 0, 15, "preview ended")
    metrics = rig.gw.metrics
    assert metrics.get("preview.ended.ice_failed") == 1
    assert metrics.get("preview.connect_timeout") == 1
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")


async def test_viewers_opening_a_cold_channel_together_share_one_invite(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    clients = [viewers() for _ in range(3)]
    offers = [await c.offer() for c in clients]
    opened = await asyncio.gather(
        *(rig.gw.previews.open(rig.channel, offer, owner="t") for offer in offers)
    )
    for client, (_, answer) in zip(clients, opened, strict=True):
        await client.accept(answer)
    await wait_for(lambda: all(c.frames >= 5 for c in clients), 20, "every viewer's frames")
    assert len(rig.nvr.invites) == 1 and len(rig.gw.previews.feeds) == 1


async def test_a_sender_that_fails_ends_its_session_as_error(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = H264Encoder.pack
    calls: list[int] = []

    def failing(self: H264Encoder, packet: Any) -> Any:
        calls.append(1)
        if len(calls) > 10:
            raise RuntimeError("packetiser bug")
        return packed(self, packet)

    monkeypatch.setattr(H264Encoder, "pack", failing)
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    previews = rig.gw.previews
    await wait_for(lambda: previews.active == 0, 15, "preview ended")
    assert rig.gw.metrics.get("preview.ended.error") == 1
    await wait_for(lambda: device_bye_count(rig) == 1, 10, "BYE to the device")


async def test_the_feed_takes_datagrams_from_its_relay_output_only(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    await watch(rig, client)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    feed = rig.gw.previews.feeds[rig.channel]
    assert feed.transport is not None and feed.source_port
    port = feed.transport.get_extra_info("sockname")[1]
    # The relay's kernel buffer (4 MiB asked; Linux reports double): a busy loop must not drop
    # the channel's frames for every viewer at once.
    sock = feed.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 * 1024 * 1024
    loop = asyncio.get_running_loop()
    stranger, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    units = feed.units
    stranger.sendto(b"\x80\x60" + bytes(100), ("127.0.0.1", port))
    await wait_for(lambda: rig.gw.metrics.get("preview.feed.stranger") == 1, 5, "refused")
    stranger.close()
    await wait_for(lambda: feed.units > units + 5, 10, "the relay's packets still come in")


async def test_an_offer_s_mdns_candidates_are_dropped_not_resolved(
    preview_rig: Make, viewers: Viewers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser hides its addresses behind ``.local`` names: the gateway drops those
    candidates rather than asking aioice's mDNS resolver (bound to the first event loop of its
    thread, and useless off the browser's link); the browser's checks arrive as
    peer-reflexive and the picture comes."""

    async def no_mdns(subscriber: object) -> Any:
        raise AssertionError("the gateway must not resolve mDNS names")

    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", no_mdns)
    rig = await preview_rig()
    client = viewers()
    offer = await client.offer()
    name = "2f0e9a54-7c1b-4d1e-9a55-1d2c3b4a5f60.local"
    hidden = f"a=candidate:9 1 udp 2113937151 {name} 54321 typ host"
    at = offer.index("a=candidate:")
    offer = offer[:at] + hidden + "\r\n" + offer[at:]
    session_id, answer = await rig.gw.previews.open(rig.channel, offer, owner="tester")
    await client.accept(answer)
    await wait_for(lambda: client.frames >= 5, 20, "frames")
    assert rig.gw.previews.session(session_id) is not None


def test_screen_candidates_drops_mdns_ones_and_keeps_every_other_line() -> None:
    sdp = (
        "v=0\r\na=ice-ufrag:x\r\n"
        "a=candidate:1 1 udp 2113937151 abc.local 5000 typ host\r\n"
        "a=candidate:2 1 udp 2113937151 127.0.0.1 5002 typ host\r\n"
        "a=candidate:3 1 udp 1694498815 198.51.100.1 6000 typ srflx raddr 0.0.0.0 rport 0\r\n"
    )
    assert screen_candidates(sdp)[0].splitlines() == [
        "v=0",
        "a=ice-ufrag:x",
        "a=candidate:2 1 udp 2113937151 127.0.0.1 5002 typ host",
        "a=candidate:3 1 udp 1694498815 198.51.100.1 6000 typ srflx raddr 0.0.0.0 rport 0",
    ]
    plain = "v=0\r\na=candidate:2 1 udp 1 10.0.0.1 5002 typ host\r\n"
    assert screen_candidates(plain) == (plain, 0)


def test_screen_candidates_keeps_sixteen_per_m_section() -> None:
    many = "".join(
        f"a=candidate:{n} 1 udp 1 198.51.{n // 250}.{n % 250 + 1} 9 typ host\r\n"
        for n in range(300)
    )
    sdp = f"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n{many}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n{many}"
    text, dropped = screen_candidates(sdp)
    sections = text.split("m=")
    assert [s.count("a=candidate:") for s in sections] == [0, 16, 16]
    assert "a=candidate:0 " in sections[1] and "a=candidate:15 " in sections[1]
    assert dropped == 2 * (300 - 16)


@pytest.mark.timeout(60)
async def test_an_offer_with_hundreds_of_candidates_is_cut_and_counted(
    preview_rig: Make, viewers: Viewers
) -> None:
    rig = await preview_rig()
    client = viewers()
    offer = await client.offer()
    junk = "".join(
        f"a=candidate:{900 + n} 1 udp 1 198.51.100.{n % 250 + 1} {10000 + n} typ host\r\n"
        for n in range(200)
    )
    at = offer.index("a=end-of-candidates") if "a=end-of-candidates" in offer else len(offer)
    offer = offer[:at] + junk + offer[at:]
    session_id, _ = await rig.gw.previews.open(rig.channel, offer, owner="tester")
    assert rig.gw.metrics.get("preview.offer.candidates_dropped") >= 200 - 16
    pc = rig.gw.previews._sessions[session_id].pc
    assert pc is not None
    ice = pc.getTransceivers()[0].sender.transport.transport
    assert len(ice.getRemoteCandidates()) <= 16
