"""Voice broadcast through the gateway end to end (GB/T 28181-2022 §9.12; reference §6.8): the
simulated platform's Broadcast reaches the NVR, the NVR INVITEs for audio, the gateway INVITEs
the platform and relays its audio down. The device side is :mod:`gateway.downlink.broadcast`."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import wait_for
from tests.media.rig import GW

pytestmark = pytest.mark.timeout(60)


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


async def test_broadcast_without_audio_times_out(rig_factory) -> None:
    rig = await rig_factory(audio_outputs=1, media={"rtp_timeout": 1.0})
    call = await rig.platform.broadcast(GW, rig.nvr.audio_output_id(1), transport="any")
    await wait_for(lambda: call.acked, 5, "ACK from the gateway")
    await call.sender.close()  # the upper stops sending audio
    await asyncio.wait_for(call.ended.wait(), 8)
    assert call.ended_by == "lower"
    await rig.at_rest()
