"""Media quirks of real devices (issue 15), on the media rig: answers that change the offered
transport are taken and counted on the device; a 20-digit ``y=``, a 200 without To tag that
repeats the caller's Contact, and MPEG-TS with payload type 33 keep working."""

from __future__ import annotations

import pytest

from tests.media.rig import FRAMES, NVR, device_session

pytestmark = pytest.mark.timeout(60)


# -- 7. a=setup:active whatever was offered, RTP/AVP to a TCP offer ---------------------------
async def test_udp_answered_to_tcp_offer_works_and_is_counted_on_the_device(rig_factory) -> None:
    rig = await rig_factory(device_transport="tcp-passive", answer_transport="udp")
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert device_session(rig).answer.proto == "RTP/AVP"
    assert rig.gw.quirks.of(NVR) == {"answer_transport": 1}
    await call.bye()
    await rig.at_rest()


async def test_active_answered_to_active_with_our_address_is_counted(rig_factory) -> None:
    rig = await rig_factory(
        device_transport="tcp-active", answer_transport="tcp-active", echo_offer_address=True
    )
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert rig.gw.quirks.of(NVR) == {"answer_transport": 1}
    assert rig.gw.metrics.get("device.quirk.answer_transport") == 1
    await call.bye()
    await rig.at_rest()


async def test_an_answer_as_offered_is_no_quirk(rig_factory) -> None:
    rig = await rig_factory(device_transport="tcp-passive")
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert rig.gw.quirks.of(NVR) == {}
    await call.bye()
    await rig.at_rest()


# -- 9. already tolerated: kept working ---------------------------------------------------------
async def test_twenty_digit_y_in_the_answer(rig_factory) -> None:
    rig = await rig_factory(long_y=True)
    call = await rig.invite()
    dev = device_session(rig)
    assert dev.answer.ssrc is not None and len(dev.answer.ssrc) == 20
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    await call.bye()
    await wait_ended(rig)


async def test_ok_without_to_tag_and_with_our_own_contact(rig_factory) -> None:
    rig = await rig_factory(ok_without_to_tag=True)
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    dev = device_session(rig)
    invite = rig.nvr.invites[-1]
    assert dev.answered and invite.get_header("Contact")
    await call.bye()
    await wait_ended(rig)  # the BYE reached the device (its dialog found by Call-ID)


async def test_mpeg_ts_with_payload_type_33_is_relayed_unchanged(rig_factory) -> None:
    rig = await rig_factory(payload_type=33)
    call = await rig.invite()
    await call.receiver.wait_frames(1, timeout=10)
    assert call.receiver.payload_types == {33}
    assert device_session(rig).answer.rtpmap == {33: "MP2T/90000"}
    await call.bye()
    await wait_ended(rig)


async def wait_ended(rig) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import wait_for

    dev = device_session(rig)
    await wait_for(lambda: dev.ended, 5, "BYE at the device")
    await rig.at_rest()
