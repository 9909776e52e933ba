"""The upper's calls through the gateway end to end: the simulated city platform INVITEs, the
gateway INVITEs the simulated NVR, H.264 in MPEG-PS over RTP flows NVR -> relay -> platform and
is decoded there; MANSRTSP, MediaStatus, BYE, CANCEL and refusals (reference §6, §7.4; GB/T
28181-2022 §9.2, §9.8, §9.9, Annex K). Flows of :mod:`gateway.uplink.calls`."""

from __future__ import annotations

import asyncio

import pytest

from conformance.peers.platform import RequestFailed
from gateway.sip import Peer
from tests.conftest import wait_for
from tests.media.rig import FRAMES, GW, NVR, TRANSPORTS, UP, device_session

pytestmark = pytest.mark.timeout(60)


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
        session = await rig.calls.start_local(rig.channel, ("127.0.0.1", port))
        assert await receiver.wait_frames(FRAMES) >= FRAMES
        assert receiver.ssrcs == {int(session.ssrc)}
        assert rig.calls.stop_local(session.output_id)
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
        kind="Download",
        start=1716163200,
        stop=1716163260,
        download_speed=4,
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


async def test_cancel_before_the_device_answered(rig_factory) -> None:
    rig = await rig_factory(invite_delay=1.5)
    status = await rig.platform.invite_cancel(GW, rig.channel, delay=0.2)
    assert status == 487
    await rig.at_rest()
    dev = device_session(rig)
    await wait_for(lambda: dev.cancelled or dev.ended, 5, "device INVITE cancelled or ended")


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


async def test_platform_without_decoding_counts_frames_only(rig_factory) -> None:
    """``SimPlatform.decode_media`` off (bench/soak.py's many calls): RTP and PS frames are
    counted, no H.264 is decoded."""
    rig = await rig_factory()
    rig.platform.decode_media = False
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert call.receiver.packets > 0 and call.receiver.decoded == 0
    await call.bye()
    await rig.at_rest()
