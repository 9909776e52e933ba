"""The media session table (:mod:`gateway.media.sessions`): live-leg sharing, SSRC and port
allocation, teardown on BYE, offline and relay events, both over a fake relay and end to end
through the gateway (reference §6, §7.4; GB/T 28181-2022 Annex K, Annex L)."""

from __future__ import annotations

import asyncio

import pytest

from conformance.peers.platform import RequestFailed
from tests.media.rig import FRAMES, device_session

pytestmark = pytest.mark.timeout(60)


# -- end to end ---------------------------------------------------------------------------------
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
