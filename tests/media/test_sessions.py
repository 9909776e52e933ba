"""Media through the gateway end to end: the simulated city platform INVITEs, the gateway
INVITEs the simulated NVR, H.264 in MPEG-PS over RTP flows NVR -> relay -> platform and is
decoded there (reference §6, §7.4; GB/T 28181-2022 §9.2, §9.8, §9.9, §9.12, Annex K)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import RequestFailed, SimPlatform
from gateway.app import Gateway
from gateway.events import CatalogSynced
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint
from gateway.sip.transaction import TimerConfig
from gateway.sip.transport import Peer
from tests.conftest import wait_for

GW = "34020000002000000001"
UP = "34010000002000000001"
NVR = "34020000001180000001"
FRAMES = 30
TRANSPORTS = ["udp", "tcp-passive", "tcp-active"]

pytestmark = pytest.mark.timeout(60)


def fast_timers() -> TimerConfig:
    return TimerConfig(t1=0.1, t2=0.4, t4=0.5)


@pytest.fixture
async def upper_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


@pytest.fixture
async def nvr_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


Start = Callable[..., Awaitable[Gateway]]


class Rig:
    """A gateway with one simulated NVR below and one simulated city platform above."""

    def __init__(self, gw: Gateway, platform: SimPlatform, nvr: SimDevice) -> None:
        self.gw, self.platform, self.nvr = gw, platform, nvr
        assert gw.media is not None
        self.media = gw.media
        self.ports_at_rest = gw.media.relay.ports_free()

    @property
    def channel(self) -> str:
        return self.nvr.channel_id(1)

    async def invite(self, **kw: Any) -> Any:
        return await self.platform.invite(GW, kw.pop("channel", self.channel), **kw)

    async def at_rest(self) -> None:
        """Every leg ended, every port and SSRC back in its pool."""
        media = self.media
        await wait_for(
            lambda: not media.legs
            and not media.outputs_by_call
            and media.ssrcs.in_use() == 0
            and media.relay.ports_free() == self.ports_at_rest,
            10,
            "sessions ended and ports/SSRCs freed",
        )


@pytest.fixture
async def rig_factory(
    upper_endpoint: Endpoint, nvr_endpoint: Endpoint, start_gateway: Start
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(
        *,
        device_transport: str = "udp",
        media: dict[str, Any] | None = None,
        upper: dict[str, Any] | None = None,
        **nvr_kw: Any,
    ) -> Rig:
        platform = SimPlatform(upper_endpoint, platform_id=UP, domain=UP[:10]).start()
        up = {
            "id": UP,
            "domain": UP[:10],
            "host": "127.0.0.1",
            "port": upper_endpoint.port,
            "password": "12345678",
            "keepalive_interval": 0.5,
            "keepalive_timeout_count": 2,
            "retry_interval": 0.2,
        }
        up.update(upper or {})
        media_cfg = {
            "host": "127.0.0.1",
            "port_min": 47000,
            "port_max": 47199,
            "device_transport": device_transport,
            "rtp_timeout": 3.0,
            "invite_timeout": 3.0,
        }
        media_cfg.update(media or {})
        gw = await start_gateway(
            uplink={"platforms": [up]},
            media=media_cfg,
            downlink={"response_timeout": 3.0, "idle_timeout": 0.5},
        )
        nvr_kw.setdefault("channel_count", 4)
        nvr_kw.setdefault("live_frames", FRAMES)
        nvr = SimDevice(nvr_endpoint, NVR, Peer("udp", "127.0.0.1", gw.port), **nvr_kw)
        nvr.install()
        synced: list[CatalogSynced] = []
        gw.events.subscribe(CatalogSynced, synced.append)
        assert (await nvr.register()).status == 200
        await wait_for(lambda: bool(synced), 10, "catalog synced")
        await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 5, "upper")
        rig = Rig(gw, platform, nvr)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.platform.close()
        await rig.nvr.close_media()


def device_session(rig: Rig, index: int = -1) -> Any:
    sessions = list(rig.nvr.media_sessions.values())
    return sessions[index]


# -- live view ---------------------------------------------------------------------------------
async def test_live_view_udp_frames_decoded_and_ssrc(rig_factory) -> None:
    rig = await rig_factory()
    call = await rig.invite()
    assert call.status == 200
    got = await call.receiver.wait_frames(FRAMES, timeout=10)
    assert got == FRAMES  # lossless loopback: every frame the NVR sent decodes at the upper
    dev = device_session(rig)
    assert dev.sender.frames_sent == FRAMES
    # The upper's own y= comes back and is what its RTP carries; the device leg has the
    # gateway's SSRC (live digit 0, domain digits 4-8, a serial), in y= and in the Subject.
    assert call.answer.ssrc == call.offered_ssrc
    assert call.receiver.ssrcs == {int(call.offered_ssrc)}
    gw_ssrc = dev.offer.ssrc
    assert gw_ssrc is not None and gw_ssrc[0] == "0" and gw_ssrc[1:6] == "20000"
    assert dev.subject == f"{rig.channel}:{gw_ssrc},{GW}:0"
    assert dev.acked
    assert call.answer.direction == "sendonly"
    assert call.answer.host == "127.0.0.1" and call.answer.port != 0
    stats = await rig.media.relay.stats(next(iter(rig.media.legs)))
    assert stats.input.packets == dev.sender.packets_sent
    assert stats.input.lost == 0
    assert stats.input.last_keyframe_at is not None
    await call.bye()
    await rig.at_rest()
    assert dev.ended and dev.ended_by == "remote"  # the gateway BYEd the device


@pytest.mark.parametrize("device_transport", TRANSPORTS)
@pytest.mark.parametrize("upper_transport", TRANSPORTS)
async def test_every_transport_combination(
    rig_factory, device_transport: str, upper_transport: str
) -> None:
    rig = await rig_factory(device_transport=device_transport)
    call = await rig.invite(transport=upper_transport)
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    dev = device_session(rig)
    # The device leg used the configured transport, answered with the opposite role.
    expected_role = {"udp": "udp", "tcp-passive": "tcp-active", "tcp-active": "tcp-passive"}
    assert dev.role == expected_role[device_transport]
    assert call.answer.tcp == (upper_transport != "udp")
    await call.bye()
    await rig.at_rest()


async def test_two_uppers_sessions_share_one_device_invite(rig_factory) -> None:
    rig = await rig_factory(live_frames=None)  # an endless live stream
    first = await rig.invite()
    second = await rig.invite(transport="tcp-passive")
    assert len(rig.nvr.invites) == 1  # the device is INVITEd once (Annex L)
    assert first.answer.port != second.answer.port
    await first.receiver.wait_frames(10)
    await second.receiver.wait_frames(10)
    assert first.receiver.ssrcs == {int(first.offered_ssrc)}
    assert second.receiver.ssrcs == {int(second.offered_ssrc)}
    # The first viewer leaves: the second keeps receiving, the device is not BYEd.
    await first.bye()
    before = second.receiver.decoded
    await second.receiver.wait_frames(before + 10)
    assert not device_session(rig).ended
    await second.bye()
    await rig.at_rest()
    assert device_session(rig).ended


async def test_no_ssrc_offered_gets_one_generated(rig_factory) -> None:
    rig = await rig_factory()
    call = await rig.invite(ssrc=None)
    assert call.answer.ssrc is not None and call.answer.ssrc[1:6] == "20000"
    await call.receiver.wait_frames(5)
    assert call.receiver.ssrcs == {int(call.answer.ssrc)}
    await call.bye()
    await rig.at_rest()


async def test_device_answering_another_ssrc_is_accepted(rig_factory) -> None:
    rig = await rig_factory(wrong_ssrc="answer")
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES) >= FRAMES
    # The upper still gets its own SSRC: the relay rewrites whatever the device sent.
    assert call.receiver.ssrcs == {int(call.offered_ssrc)}
    await call.bye()
    await rig.at_rest()


async def test_x_routepath_for_a_2022_upper(rig_factory) -> None:
    rig = await rig_factory(upper={"gb_version": "2022"})
    call = await rig.invite()
    assert call.header("X-RoutePath") == f"{GW}-{NVR}"
    await call.bye()
    await rig.at_rest()


async def test_local_session_through_the_same_code(rig_factory) -> None:
    from conformance.media.stream import MediaReceiver

    rig = await rig_factory()
    receiver = MediaReceiver(transport="udp")
    port = await receiver.bind()
    try:
        session = await rig.media.start_local(rig.channel, ("127.0.0.1", port))
        assert await receiver.wait_frames(FRAMES) >= FRAMES
        assert receiver.ssrcs == {int(session.ssrc)}
        assert rig.media.stop_local(session.output_id)
        await rig.at_rest()
    finally:
        await receiver.close()


# -- refusals ----------------------------------------------------------------------------------
async def test_refusals_have_clear_reasons(rig_factory) -> None:
    channel1 = "34020000001310001001"
    rig = await rig_factory(upper={"share": [channel1]})
    assert rig.channel == channel1
    with pytest.raises(RequestFailed) as info:
        await rig.invite(channel=rig.nvr.channel_id(2))  # the gateway has it, not shared up
    assert info.value.status == 404 and "not shared" in info.value.reason
    with pytest.raises(RequestFailed) as info:
        await rig.invite(channel="34020000001310009999")  # nobody has it
    assert info.value.status == 404
    rig.nvr.invite_refuse = 486
    with pytest.raises(RequestFailed) as info:
        await rig.invite()
    assert info.value.status == 486 and "device refused" in info.value.reason
    rig.nvr.invite_refuse = None
    rig.nvr.invite_mute = True
    with pytest.raises(RequestFailed) as info:
        await rig.invite(timeout=8)
    assert info.value.status == 408
    rig.nvr.invite_mute = False
    await rig.at_rest()
    assert rig.gw.metrics.get("media.invite.refused.404") == 1
    assert rig.gw.metrics.get("media.invite.refused.408") == 1


async def test_port_pool_empty_is_486(rig_factory) -> None:
    # Two even ports: one for the device leg, one for the first upper; the next viewer of
    # another channel finds none.
    rig = await rig_factory(media={"port_min": 47300, "port_max": 47303}, live_frames=None)
    call = await rig.invite()
    with pytest.raises(RequestFailed) as info:
        await rig.invite(channel=rig.nvr.channel_id(2))
    assert info.value.status == 486 and "port" in info.value.reason
    await call.bye()
    await rig.at_rest()


# -- playback and download ---------------------------------------------------------------------
async def test_playback_pause_resume_scale_and_end_of_file(rig_factory) -> None:
    rig = await rig_factory(playback_frames=100)
    call = await rig.invite(kind="Playback", start=1716163200, stop=1716163204)
    dev = device_session(rig)
    assert dev.kind == "Playback"
    assert dev.offer.ssrc[0] == "1"  # history SSRC on the device leg
    assert dev.offer.uri == f"{rig.channel}:0"
    assert (dev.offer.start, dev.offer.stop) == (1716163200, 1716163204)
    await call.receiver.wait_frames(5)
    status, body = await call.pause()
    assert status == 200 and "RTSP/1.0 200" in body
    await wait_for(lambda: dev.sender.paused, 3, "paused at the device")
    status, _ = await call.play(range="now")
    assert status == 200
    await wait_for(lambda: not dev.sender.paused, 3, "resumed")
    status, _ = await call.play(scale=2.0)
    assert status == 200
    await wait_for(lambda: dev.sender.scale == 2.0, 3, "2x")
    assert [r.method for r in dev.infos] == ["PAUSE", "PLAY", "PLAY"]
    # End of file: MediaStatus 121 reaches the upper inside its own dialog.
    await wait_for(lambda: 121 in call.media_status, 15, "MediaStatus 121 at the upper")
    await call.bye()
    await rig.at_rest()


async def test_download_passes_speed_and_filesize(rig_factory) -> None:
    rig = await rig_factory(playback_frames=40)
    call = await rig.invite(
        kind="Download", start=1716163200, stop=1716163260, download_speed=4,
        transport="tcp-passive",
    )
    dev = device_session(rig)
    assert dev.offer.download_speed == 4
    assert call.answer.file_size == dev.answer.file_size
    await wait_for(lambda: 121 in call.media_status, 15, "end of the download")
    assert call.receiver.frames == 40
    await call.bye()
    await rig.at_rest()


async def test_info_on_live_is_refused(rig_factory) -> None:
    rig = await rig_factory()
    call = await rig.invite()
    status, _ = await call.pause()
    assert status == 488
    await call.bye()
    await rig.at_rest()


# -- ending paths ------------------------------------------------------------------------------
async def test_device_bye_ends_the_upper_session(rig_factory) -> None:
    rig = await rig_factory(live_frames=None)
    call = await rig.invite()
    await call.receiver.wait_frames(5)
    await rig.nvr.bye(device_session(rig).call_id)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.ended_by == "lower"
    await rig.at_rest()


async def test_device_offline_ends_the_session(rig_factory) -> None:
    rig = await rig_factory(live_frames=None)
    call = await rig.invite()
    await call.receiver.wait_frames(5)
    assert (await rig.nvr.unregister()).status == 200
    await asyncio.wait_for(call.ended.wait(), 5)
    await rig.at_rest()


async def test_upper_offline_ends_its_sessions(rig_factory) -> None:
    rig = await rig_factory(live_frames=None)
    call = await rig.invite()
    await call.receiver.wait_frames(5)
    # The platform forgets the gateway: the next keepalive gets 404 and the upper is offline.
    rig.platform.restart()
    await rig.at_rest()
    assert device_session(rig).ended


async def test_no_rtp_ends_both_legs(rig_factory) -> None:
    rig = await rig_factory(media_mute=True, media={"rtp_timeout": 1.0})
    call = await rig.invite()
    await asyncio.wait_for(call.ended.wait(), 8)
    assert call.ended_by == "lower"
    await rig.at_rest()
    assert device_session(rig).ended
    assert rig.gw.metrics.get("media.relay.idle") >= 1


async def test_stream_stopping_ends_both_legs(rig_factory) -> None:
    rig = await rig_factory(live_frames=FRAMES, media={"rtp_timeout": 1.0})
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES) >= FRAMES
    await asyncio.wait_for(call.ended.wait(), 8)
    await rig.at_rest()


async def test_cancel_before_the_device_answered(rig_factory) -> None:
    rig = await rig_factory(invite_delay=1.5)
    status = await rig.platform.invite_cancel(GW, rig.channel, delay=0.2)
    assert status == 487
    await rig.at_rest()
    dev = device_session(rig)
    await wait_for(lambda: dev.cancelled or dev.ended, 5, "device INVITE cancelled or ended")


# -- voice broadcast ---------------------------------------------------------------------------
async def test_voice_broadcast_from_the_upper_reaches_the_device(rig_factory) -> None:
    rig = await rig_factory(audio_outputs=1)
    target = rig.nvr.audio_output_id(1)
    call = await rig.platform.broadcast(GW, target, transport="any")
    await wait_for(lambda: call.acked, 5, "ACK from the gateway")
    session = next(iter(rig.nvr.broadcast_sessions.values()))
    await wait_for(lambda: session.receiver.packets >= 20, 10, "audio at the device")
    assert session.receiver.ssrcs  # the gateway's SSRC on the device side
    await call.bye()
    await rig.at_rest()


# -- the scaled-out relay ----------------------------------------------------------------------
async def test_relay_in_worker_processes(rig_factory) -> None:
    rig = await rig_factory(media={"workers": 2}, live_frames=None)
    first = await rig.invite()
    second = await rig.invite(channel=rig.nvr.channel_id(2), transport="tcp-passive")
    assert await first.receiver.wait_frames(FRAMES) >= FRAMES
    assert await second.receiver.wait_frames(FRAMES) >= FRAMES
    assert first.receiver.ssrcs == {int(first.offered_ssrc)}
    pids = rig.media.relay.worker_pids()  # type: ignore[attr-defined]
    assert len(pids) == 2
    await first.bye()
    await second.bye()
    await rig.at_rest()


# -- from the review: strangers, late answers ---------------------------------------------------
async def test_bye_from_outside_the_dialog_is_refused(rig_factory, nvr_endpoint) -> None:
    from gateway.sip.message import Request

    rig = await rig_factory(live_frames=None)
    call = await rig.invite()
    await call.receiver.wait_frames(5)
    dialog = call.dialog
    # The NVR (a registered peer, another host:port) forges the upper's BYE: same Call-ID, but
    # it is not the other end of that dialog.
    forged = Request(
        "BYE",
        f"sip:{GW}@127.0.0.1:{rig.gw.port}",
        [
            ("From", f"<sip:{UP}@{UP[:10]}>;tag=forged"),
            ("To", f"<sip:{rig.channel}@{GW[:10]}>;tag={dialog.remote_tag}"),
            ("Call-ID", call.call_id),
            ("CSeq", "99 BYE"),
        ],
    )
    resp = await nvr_endpoint.request(forged, Peer("udp", "127.0.0.1", rig.gw.port))
    assert resp.status == 481
    before = call.receiver.decoded
    await call.receiver.wait_frames(before + 5)  # still streaming
    assert not call.ended.is_set()
    await call.bye()
    await rig.at_rest()


async def test_device_answering_after_the_timeout_is_cancelled(rig_factory) -> None:
    rig = await rig_factory(invite_delay=2.5, media={"invite_timeout": 1.0})
    with pytest.raises(RequestFailed) as info:
        await rig.invite()
    assert info.value.status == 408
    dev = device_session(rig)
    # Timer C: the gateway CANCELs, so the device never streams to a port already freed.
    await wait_for(lambda: dev.cancelled or dev.ended, 5, "device INVITE withdrawn")
    await rig.at_rest()
    assert dev.sender is None or dev.sender.frames_sent == 0


async def test_broadcast_without_audio_times_out(rig_factory) -> None:
    rig = await rig_factory(audio_outputs=1, media={"rtp_timeout": 1.0})
    call = await rig.platform.broadcast(GW, rig.nvr.audio_output_id(1), transport="any")
    await wait_for(lambda: call.acked, 5, "ACK from the gateway")
    await call.sender.close()  # the upper stops sending audio
    await asyncio.wait_for(call.ended.wait(), 8)
    assert call.ended_by == "lower"
    await rig.at_rest()
