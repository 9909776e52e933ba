"""Media sessions between the simulated peers, with no gateway in between: a SimPlatform on one
endpoint INVITEs a SimDevice registered to it from another (reference §6).

Live view over UDP and TCP (both roles), playback with MANSRTSP control and MediaStatus 121,
download, BYE from either side, CANCEL, the device's misbehaviour switches, and voice broadcast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from conformance.peers import mansrtsp
from conformance.peers.device import SimDevice
from conformance.peers.media_session import make_ssrc, parse_subject
from conformance.peers.platform import RequestFailed, SimPlatform
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)

NVR = "34020000001180000001"
TIMERS = TimerConfig(t1=0.05, t2=0.2, t4=0.25)


async def _endpoint() -> Endpoint:
    ep = Endpoint(metrics=Metrics(), timers=TIMERS)
    await ep.start("127.0.0.1", 0)
    return ep


@pytest.fixture
async def upper() -> AsyncIterator[SimPlatform]:
    platform = SimPlatform(await _endpoint()).start()
    yield platform
    await platform.close()
    await platform.endpoint.close()


@pytest.fixture
async def nvr(upper: SimPlatform) -> AsyncIterator[SimDevice]:
    ep = await _endpoint()
    server = Peer("udp", "127.0.0.1", upper.endpoint.port)
    dev = SimDevice(ep, NVR, server, server_id=upper.platform_id, channel_count=2, audio_outputs=1)
    hub = dev.install()
    assert (await dev.register()).status == 200
    yield dev
    await hub.close()
    await ep.close()


def history_period(seconds: int) -> tuple[int, int]:
    start = int(time.time()) - 3600
    return start, start + seconds


# -- live view ----------------------------------------------------------------------------------


async def test_live_udp_decoded_with_the_offered_ssrc_and_bye_from_platform(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    channel = nvr.channel_id(1)
    call = await upper.invite(NVR, channel)
    assert call.status == 200 and call.ssrc == call.offered_ssrc
    assert call.ssrc is not None and call.ssrc.startswith("010000")  # live, our domain digits
    invite = nvr.invites[-1]
    assert invite.uri == f"sip:{channel}@127.0.0.1:{nvr.endpoint.port}"
    assert parse_subject(invite.get_header("Subject")) == (
        (channel, call.ssrc),
        (upper.platform_id, "0"),
    )
    assert invite.contacts[0].uri.user == upper.platform_id
    offer = call.offer
    assert (offer.direction, offer.rtpmap, offer.session) == (
        "recvonly",
        {96: "PS/90000", 98: "H264/90000"},
        "Play",
    )
    answer = call.answer
    assert answer is not None
    assert (answer.origin_user, answer.direction, answer.proto) == (channel, "sendonly", "RTP/AVP")
    assert answer.rtpmap == {96: "PS/90000"} and answer.ssrc == call.ssrc
    assert answer.media_info == "v/2/5/25/1/2048a///"
    assert call.header("Content-Type") == "application/sdp"

    assert await call.receiver.wait_frames(10, 5) >= 10  # decoded H.264 pictures
    assert call.receiver.ssrcs == {int(call.ssrc)}
    session = nvr.media_sessions[call.call_id]
    assert session.acked and session.kind == "Play" and session.role == "udp"
    assert session.rtp_ssrc == int(call.ssrc) and session.channel_id == channel

    resp = await call.bye()
    assert resp is not None and resp.status == 200
    assert call.ended.is_set() and call.ended_by == "platform"
    assert session.ended and session.ended_by == "remote"
    await wait_for(lambda: session.sender is not None and session.sender.finished, 2, "stop")
    assert await call.bye() is None  # already over


@pytest.mark.parametrize("transport", ["tcp-passive", "tcp-active"])
async def test_live_tcp_both_roles_and_bye_from_device(
    upper: SimPlatform, nvr: SimDevice, transport: str
) -> None:
    call = await upper.invite(NVR, nvr.channel_id(2), transport=transport)
    offer, answer = call.offer, call.answer
    assert answer is not None
    assert offer.proto == answer.proto == "TCP/RTP/AVP"
    assert offer.connection_new and answer.connection_new
    ours = "passive" if transport == "tcp-passive" else "active"
    theirs = "active" if ours == "passive" else "passive"
    assert (offer.setup, answer.setup) == (ours, theirs)
    session = nvr.media_sessions[call.call_id]
    assert session.role == ("tcp-active" if transport == "tcp-passive" else "tcp-passive")
    assert session.sender is not None and answer.port == session.sender.local_port
    assert await call.receiver.wait_frames(5, 5) >= 5
    assert call.receiver.connected and call.receiver.ssrcs == {int(call.ssrc or "")}

    resp = await nvr.bye(call.call_id)
    assert resp is not None and resp.status == 200
    await asyncio.wait_for(call.ended.wait(), 2)
    assert call.ended_by == "lower" and session.ended_by == "device"
    assert await nvr.bye(call.call_id) is None


async def test_device_makes_the_ssrc_when_the_offer_has_none(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    call = await upper.invite(NVR, nvr.channel_id(1), ssrc=None)
    assert call.offer.ssrc is None and call.offered_ssrc is None
    named = parse_subject(call.request.get_header("Subject"))
    assert named is not None and named[0] == (nvr.channel_id(1), "0")
    assert call.ssrc is not None and call.ssrc.startswith("020000")  # the device's domain
    assert await call.receiver.wait_frames(3, 5) >= 3
    assert call.receiver.ssrcs == {int(call.ssrc)}
    await call.bye()


async def test_same_subject_stream_replaces_the_old_one(upper: SimPlatform, nvr: SimDevice) -> None:
    """Reference §6.9: an INVITE for a stream (sender ID and serial) already being sent drops
    the old stream; the old dialog is ended with BYE."""
    first = await upper.invite(NVR, nvr.channel_id(1), ssrc="0200000777")
    other = await upper.invite(NVR, nvr.channel_id(2), ssrc="0200000778")
    second = await upper.invite(NVR, nvr.channel_id(1), ssrc="0200000777")
    await asyncio.wait_for(first.ended.wait(), 2)
    assert first.ended_by == "lower" and nvr.media_sessions[first.call_id].replaced
    assert not other.ended.is_set() and not second.ended.is_set()
    assert await second.receiver.wait_frames(3, 5) >= 3
    await second.bye()
    await other.bye()


# -- playback and download ----------------------------------------------------------------------


async def test_playback_pause_resume_scale_then_media_status_121(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    start, stop = history_period(2)  # 2 s = 50 frames
    call = await upper.invite(NVR, nvr.channel_id(1), kind="Playback", start=start, stop=stop)
    offer, answer = call.offer, call.answer
    assert answer is not None and call.ssrc is not None
    assert offer.uri == f"{nvr.channel_id(1)}:0" and (offer.start, offer.stop) == (start, stop)
    assert call.ssrc.startswith("1") and answer.session == "Playback"
    assert (answer.start, answer.stop) == (start, stop)
    session = nvr.media_sessions[call.call_id]
    sender = session.sender
    assert sender is not None and not sender.loop and len(sender.clip) == 50
    assert await call.receiver.wait_frames(5, 5) >= 5

    status, body = await call.pause()
    assert status == 200 and body.startswith("RTSP/1.0 200 OK\r\nCSeq: 1\r\n")
    assert sender.paused
    sent = sender.frames_sent
    await asyncio.sleep(0.2)  # proving an absence: nothing is sent while paused
    assert sender.frames_sent == sent

    status, body = await call.play("now")
    assert status == 200 and "CSeq: 2" in body and "Range: npt=now-" in body
    assert not sender.paused
    status, body = await call.play(scale=4.0)
    assert status == 200 and "CSeq: 3" in body and sender.scale == 4.0
    await wait_for(lambda: call.media_status == [121], 5, "MediaStatus 121")
    await wait_for(lambda: session.media_status_answers == [200], 2, "the 200 to it")
    assert session.media_status_sent == [121]
    assert [r.method for r in session.infos] == ["PAUSE", "PLAY", "PLAY"]
    assert session.infos[1].range == mansrtsp.Range(None) and session.infos[2].scale == 4.0
    assert not call.ended.is_set()  # the device waits for our BYE
    assert (await call.bye() or pytest.fail("no answer")).status == 200
    assert session.ended_by == "remote"


async def test_mansrtsp_seek_bad_bodies_and_unsupported_scale(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    start, stop = history_period(2)
    call = await upper.invite(NVR, nvr.channel_id(1), kind="Playback", start=start, stop=stop)
    session = nvr.media_sessions[call.call_id]
    assert session.sender is not None
    assert await call.receiver.wait_frames(3, 5) >= 3
    await call.pause()
    assert session.sender.position < 25
    status, body = await call.play(1.2)  # to the key frame at or before frame 30: 25
    assert status == 200 and "Range: npt=1.2-" in body
    assert session.sender.position >= 25 and not session.sender.paused
    status, body = await call.play(scale=-1.0)  # reverse play is not supported here
    assert status == 200 and body.startswith("RTSP/1.0 551 ")
    status, _ = await call.info("FOO RTSP/1.0\r\nCSeq: 9\r\n")
    assert status == 400
    assert call.infos[-1][1] == 400
    status, _ = await call.info("PLAY RTSP/1.0\r\nRange: npt=5-\r\n")  # no CSeq
    assert status == 400
    assert len(session.infos) == 3  # bad bodies are not recorded
    status, body = await call.teardown()
    assert status == 200 and session.torn_down
    await wait_for(lambda: session.sender is not None and session.sender.finished, 2, "stop")
    await call.bye()


async def test_download_over_tcp_with_filesize_speed_and_end_of_file(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    start, stop = history_period(60)  # capped at playback_frames
    nvr.playback_frames = 40
    call = await upper.invite(
        NVR, nvr.channel_id(2), kind="Download", start=start, stop=stop,
        transport="tcp-passive", download_speed=4,
    )  # fmt: skip
    assert call.offer.download_speed == 4
    answer = call.answer
    session = nvr.media_sessions[call.call_id]
    assert answer is not None and answer.session == "Download" and answer.setup == "active"
    assert answer.file_size is not None and answer.file_size == session.file_size > 0
    assert session.sender is not None and session.sender.scale == 4.0
    await wait_for(lambda: call.media_status == [121], 5, "MediaStatus 121")
    assert session.sender.frames_sent == 40
    await wait_for(lambda: call.receiver.frames == 40, 2, "every frame")
    data = call.receiver.data
    assert data is not None and len(data) == answer.file_size  # the PS stream, every byte
    assert data.startswith(b"\x00\x00\x01\xba")
    await call.bye()


# -- refusals, CANCEL, misbehaviour -------------------------------------------------------------


async def test_refusals_carry_status_and_reason(upper: SimPlatform, nvr: SimDevice) -> None:
    with pytest.raises(RequestFailed) as info:
        await upper.invite(NVR, "34020000001310009999")
    assert info.value.status == 404 and info.value.reason == "Not Found (no such channel here)"
    with pytest.raises(RequestFailed) as info:
        await upper.invite(NVR, nvr.audio_output_id(1))  # ours, but not video
    assert info.value.status == 404 and "no video channel" in info.value.reason
    with pytest.raises(RequestFailed) as info:
        await upper.invite(NVR, nvr.channel_id(1), ssrc="12ab")
    assert info.value.status == 488 and info.value.reason == "Not Acceptable Here (bad y=12ab)"

    nvr.invite_refuse = 486
    with pytest.raises(RequestFailed) as info:
        await upper.invite(NVR, nvr.channel_id(1))
    assert (info.value.status, info.value.reason) == (486, "Busy Here (invite_refuse)")
    nvr.invite_refuse = None

    nvr.invite_mute = True
    with pytest.raises(RequestFailed) as info:
        await upper.invite(NVR, nvr.channel_id(1), timeout=0.5)
    assert info.value.status == 408
    muted = nvr.media_sessions[nvr.invites[-1].call_id]
    assert muted.status == 0 and not muted.answered
    await wait_for(lambda: muted.cancelled, 2, "the CANCEL after the timeout")
    assert upper.calls == {}  # failed calls are not kept


async def test_cancel_before_answer_gives_487(upper: SimPlatform, nvr: SimDevice) -> None:
    nvr.invite_delay = 2.0
    status = await upper.invite_cancel(NVR, nvr.channel_id(1))
    assert status == 487
    session = nvr.media_sessions[nvr.invites[-1].call_id]
    assert session.cancelled and session.ended_by == "cancel" and not session.acked
    await wait_for(lambda: session.sender is not None and session.sender.finished, 3, "closed")
    assert session.sender is not None and session.sender.frames_sent == 0


async def test_wrong_ssrc_and_media_mute(upper: SimPlatform, nvr: SimDevice) -> None:
    nvr.wrong_ssrc = True
    call = await upper.invite(NVR, nvr.channel_id(1))
    assert call.answer is not None and call.answer.ssrc == call.offered_ssrc  # echoed...
    assert await call.receiver.wait_frames(3, 5) >= 3
    assert call.receiver.ssrcs == {int(call.ssrc or "") + 1}  # ...but not used
    await call.bye()

    nvr.wrong_ssrc = "answer"
    call = await upper.invite(NVR, nvr.channel_id(1))
    assert (
        call.ssrc != call.offered_ssrc and call.ssrc == f"{int(call.offered_ssrc or '') + 1:010d}"
    )
    assert await call.receiver.wait_frames(3, 5) >= 3
    assert call.receiver.ssrcs == {int(call.ssrc or "")}
    await call.bye()

    nvr.wrong_ssrc, nvr.media_mute = False, True
    call = await upper.invite(NVR, nvr.channel_id(2))
    session = nvr.media_sessions[call.call_id]
    await wait_for(lambda: session.acked, 2, "ACK")
    assert session.sender is not None and not session.sender.started
    assert call.receiver.packets == 0
    await call.bye()


async def test_live_frames_limit_and_unknown_dialog(upper: SimPlatform, nvr: SimDevice) -> None:
    nvr.live_frames = 8
    call = await upper.invite(NVR, nvr.channel_id(1))
    session = nvr.media_sessions[call.call_id]
    await asyncio.wait_for(session.end_reached.wait(), 3)
    assert session.sender is not None and session.sender.frames_sent == 8
    assert session.media_status_sent == []  # live streams have no end-of-file notice
    assert await call.receiver.wait_frames(8, 2) == 8
    await call.bye()
    assert call.dialog is not None
    stale = call.dialog.request("BYE")
    resp = await upper.endpoint.request(stale, call.dialog.peer)
    assert resp.status == 481


async def test_a_chosen_clip_is_streamed_instead_of_the_default(
    upper: SimPlatform, nvr: SimDevice
) -> None:
    """``SimDevice.clip`` (the bigger picture bench/preview.py streams) replaces the default."""
    from conformance.media.clip import h264_clip

    nvr.clip = h264_clip(10, width=64, height=48, gop=5)
    nvr.live_frames = 10
    call = await upper.invite(NVR, nvr.channel_id(1))
    session = nvr.media_sessions[call.call_id]
    await asyncio.wait_for(session.end_reached.wait(), 3)
    assert session.sender is not None and session.sender.clip == tuple(nvr.clip)
    assert await call.receiver.wait_frames(10, 2) == 10
    await call.bye()


# -- voice broadcast ----------------------------------------------------------------------------


@pytest.mark.parametrize("device_transport", ["udp", "tcp-passive", "tcp-active"])
async def test_broadcast_end_to_end(
    upper: SimPlatform, nvr: SimDevice, device_transport: str
) -> None:
    nvr.broadcast_transport = device_transport
    ours = {"udp": "udp", "tcp-passive": "tcp-active", "tcp-active": "tcp-passive"}
    target = nvr.audio_output_id(1)
    call = await upper.broadcast(NVR, target, transport=ours[device_transport])
    assert call.target_id == target and call.transport == ours[device_transport]
    ((notify),) = nvr.broadcasts
    assert (notify.source_id, notify.target_id) == (upper.platform_id, target)
    invite = call.request
    assert invite.uri == f"sip:{upper.platform_id}@127.0.0.1:{upper.endpoint.port}"
    assert invite.to.uri.user == upper.platform_id and invite.from_.uri.user == target
    named = parse_subject(invite.get_header("Subject"))
    assert named is not None and named[0][0] == upper.platform_id and named[1] == (target, "0")
    assert (call.offer.media, call.offer.direction, call.offer.rtpmap) == (
        "audio",
        "recvonly",
        {8: "PCMA/8000"},
    )
    assert (call.answer.direction, call.answer.formats) == ("sendonly", [8])
    assert call.answer.ssrc is not None and call.answer.media_info == "v/////a/1/8/1"
    await wait_for(lambda: call.acked, 2, "ACK")
    session = nvr.broadcast_sessions[call.call_id]
    assert session.status == 200 and session.transport == device_transport
    await wait_for(lambda: session.packets >= 10, 5, "audio packets")
    assert session.receiver.payload_types == {8}
    assert session.receiver.ssrcs == {int(call.answer.ssrc)}
    assert call.packets_sent >= session.packets

    assert (await call.bye() or pytest.fail("no answer")).status == 200
    assert session.ended and session.ended_by == "remote"


async def test_broadcast_refusals(upper: SimPlatform, nvr: SimDevice) -> None:
    # Not a voice output of the device: Response/Broadcast says ERROR, no INVITE follows.
    with pytest.raises(RequestFailed) as info:
        await upper.broadcast(NVR, nvr.channel_id(1), timeout=2)
    assert info.value.reason == "Result ERROR" and nvr.broadcast_sessions == {}
    # A lower INVITE matching no broadcast of ours.
    session = await nvr.invite_broadcast(upper.platform_id, nvr.audio_output_id(1))
    assert session.status == 403 and session.reason.startswith("Forbidden (no broadcast")
    assert session.ended and session.receiver is not None
    # Offered over another transport than the one we accept: 488, and broadcast() says so.
    nvr.broadcast_transport = "tcp-passive"
    with pytest.raises(RequestFailed) as info:
        await upper.broadcast(NVR, nvr.audio_output_id(1), transport="udp", timeout=3)
    assert info.value.status == 488 and "want udp" in info.value.reason
    # The device can end a broadcast too.
    nvr.broadcast_transport = "udp"
    call = await upper.broadcast(NVR, nvr.device_id, transport="any")  # all its outputs
    assert call.target_id == nvr.device_id
    await wait_for(lambda: call.acked, 2, "ACK")  # the device's dialog is up
    resp = await nvr.bye(call.call_id)
    assert resp is not None and resp.status == 200
    await asyncio.wait_for(call.ended.wait(), 2)
    assert call.ended_by == "lower"


async def test_voice_output_in_the_catalog(upper: SimPlatform, nvr: SimDevice) -> None:
    result = await upper.catalog(NVR)
    assert result.ok and result.sum_num == 3 == nvr.catalog_size()
    (voice,) = [i for i in result.items if i.device_id[10:13] == "137"]
    assert voice.device_id == nvr.audio_output_id(1) and voice.parent_id == NVR
    assert nvr.owns(voice.device_id) and nvr.hub is not None
    assert nvr.hub.find(voice.device_id) is nvr


# -- MANSRTSP codec -----------------------------------------------------------------------------


def test_mansrtsp_round_trip_and_errors() -> None:
    for req in (
        mansrtsp.play(4, 100),
        mansrtsp.play(2, "now"),
        mansrtsp.play(3, scale=2.0),
        mansrtsp.play(7, "npt=600-120", scale=-1.0),
        mansrtsp.pause(1),
        mansrtsp.teardown(6),
    ):
        again = mansrtsp.parse_request(req.to_bytes())
        assert (again.method, again.cseq, again.range, again.scale, again.pause_time) == (
            req.method, req.cseq, req.range, req.scale, req.pause_time,
        )  # fmt: skip
    assert mansrtsp.play(4, 100).to_bytes() == b"PLAY RTSP/1.0\r\nCSeq: 4\r\nRange: npt=100-\r\n"
    assert mansrtsp.play(3, scale=2.0).to_bytes() == b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 2.0\r\n"
    assert mansrtsp.pause(1).to_bytes() == b"PAUSE RTSP/1.0\r\nCSeq: 1\r\nPauseTime: now\r\n"
    lf = mansrtsp.parse_request(b"play MANSRTSP/1.0\nCSeq: 5\nRange: npt=12.5-\n")
    assert lf.method == "PLAY" and lf.range == mansrtsp.Range(12.5)
    answer = mansrtsp.answer(mansrtsp.play(4, 100))
    assert answer.to_bytes() == b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nRange: npt=100-\r\n"
    parsed = mansrtsp.parse_response(b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nRTP-Info: seq=1;rtptime=2\r\n")
    assert (parsed.status, parsed.cseq, parsed.header("rtp-info")) == (200, 4, "seq=1;rtptime=2")
    for bad, reason in (
        (b"", "empty MANSRTSP body"),
        (b"PLAY RTSP/1.0\r\n", "no CSeq"),
        (b"PLAY RTSP/2.0\r\nCSeq: 1\r\n", "bad MANSRTSP version: 'RTSP/2.0'"),
        (b"SETUP RTSP/1.0\r\nCSeq: 1\r\n", "unknown MANSRTSP method: 'SETUP'"),
        (b"PLAY RTSP/1.0\r\nCSeq: x\r\n", "bad CSeq: 'x'"),
        (b"PLAY RTSP/1.0\r\nCSeq: 1\r\nRange: clock=1-\r\n", "bad Range (npt only): 'clock=1-'"),
        (b"PLAY RTSP/1.0\r\nCSeq: 1\r\nRange: npt=-5-\r\n", "bad Range start: ''"),
        (b"PLAY RTSP/1.0\r\nCSeq: 1\r\nScale: fast\r\n", "bad Scale: 'fast'"),
        (b"PLAY RTSP/1.0\r\nCSeq: 1\r\nScale: 0\r\n", "Scale 0"),
        (b"PLAY RTSP/1.0\r\nno colon here\r\n", "bad MANSRTSP header line: 'no colon here'"),
        (b"\xff\xfe PLAY", "MANSRTSP body is not text"),
    ):
        with pytest.raises(mansrtsp.RtspError) as info:
            mansrtsp.parse_request(bad)
        assert info.value.reason == reason


def test_ssrc_and_subject_helpers() -> None:
    assert make_ssrc("3402000000", 1, history=False) == "0200000001"
    assert make_ssrc("3401000000", 12345, history=True) == "1100002345"
    assert parse_subject("34020000001310000001:0200000001,34020000002000000001:0") == (
        ("34020000001310000001", "0200000001"),
        ("34020000002000000001", "0"),
    )
    assert parse_subject("garbage") is None and parse_subject(None) is None
