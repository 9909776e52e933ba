"""Device answers that break the offer, and in-dialog requests from another of an upper's
addresses, end to end on the media rig (issue 13, items 15–17).

RFC 4145 §4.1 (the answer to ``a=setup:active`` is ``passive``), RFC 3264 §6 (the answer picks
the transport), RFC 3261 §12.2.2 (in-dialog requests matched by Call-ID and tags). Flows of
:mod:`gateway.uplink.calls` and :meth:`gateway.media.SessionTable.use_answer`."""

from __future__ import annotations

import asyncio

import pytest

from conformance.peers.media_session import close_quietly
from conformance.peers.platform import RequestFailed
from gateway.media import RelayError
from gateway.metrics import Metrics
from gateway.sip import Dialog, Endpoint, Response, send_bye
from tests.conftest import wait_for
from tests.media.rig import FRAMES, device_session, fast_timers

pytestmark = pytest.mark.timeout(60)


# -- item 15: a=setup:active answered to a=setup:active -----------------------------------------
async def test_active_answered_to_active_takes_the_passive_role(rig_factory) -> None:
    # The device answers active to our active and echoes our own c=/m=: we take the role it
    # left (listen on the port we offered), it connects there, and the media flows.
    rig = await rig_factory(
        device_transport="tcp-active", answer_transport="tcp-active", echo_offer_address=True
    )
    call = await rig.invite()
    assert call.status == 200
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    dev = device_session(rig)
    assert dev.offer.setup == "active" and dev.answer.setup == "active"
    assert (dev.answer.host, dev.answer.port) == (dev.offer.host, dev.offer.port)
    assert [leg["transport"] for leg in rig.media.snapshot()] == ["tcp-passive"]
    metrics = rig.gw.metrics
    assert metrics.get("media.answer.transport_changed") == 1
    assert metrics.get("relay.tcp.self_connect") == 0
    await call.bye()
    await rig.at_rest()


async def test_answer_naming_our_own_address_is_refused_and_the_device_gets_bye(
    rig_factory,
) -> None:
    # The device answers passive (it listens) but names our own c=/m=: there is nobody to
    # connect to. The upper gets 502, never a 200; the device gets BYE.
    rig = await rig_factory(
        device_transport="tcp-active", answer_transport="tcp-passive", echo_offer_address=True
    )
    with pytest.raises(RequestFailed) as info:
        await rig.invite()
    assert info.value.status == 502
    assert "address" in info.value.reason
    dev = device_session(rig)
    await wait_for(lambda: dev.ended, 5, "BYE to the device")
    assert dev.ended_by == "remote"
    metrics = rig.gw.metrics
    assert metrics.get("media.answer.refused") == 1
    assert metrics.get("media.invite.refused.502") == 1
    assert metrics.get("relay.tcp.self_connect") == 0
    await rig.at_rest()


async def test_passive_answered_to_passive_takes_the_active_role(rig_factory) -> None:
    # Both ends would listen: the gateway connects to the address the device answered.
    rig = await rig_factory(device_transport="tcp-passive", answer_transport="tcp-passive")
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert [leg["transport"] for leg in rig.media.snapshot()] == ["tcp-active"]
    await call.bye()
    await rig.at_rest()


# -- item 16: RTP/AVP answered to TCP/RTP/AVP ---------------------------------------------------
@pytest.mark.parametrize("device_transport", ["tcp-active", "tcp-passive"])
async def test_udp_answered_to_tcp_is_received_over_udp(rig_factory, device_transport) -> None:
    rig = await rig_factory(device_transport=device_transport, answer_transport="udp")
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    dev = device_session(rig)
    assert dev.offer.proto == "TCP/RTP/AVP" and dev.answer.proto == "RTP/AVP"
    assert [leg["transport"] for leg in rig.media.snapshot()] == ["udp"]
    assert [leg["port"] for leg in rig.media.snapshot()] == [dev.offer.port]
    await call.bye()
    await rig.at_rest()


async def test_udp_answer_the_relay_cannot_take_fails_cleanly(rig_factory, monkeypatch) -> None:
    # Should the relay fail to take the answered transport (the port number is kept for
    # both protocols, so this is the relay's own failure), the device gets BYE and the
    # upper 502: never a 200 for a leg that cannot carry media.
    rig = await rig_factory(device_transport="tcp-passive", answer_transport="udp")

    async def cannot(stream_id: str, transport: str) -> None:
        raise RelayError(f"cannot take {transport}")

    monkeypatch.setattr(rig.media.relay, "settle_input", cannot)
    with pytest.raises(RequestFailed) as info:
        await rig.invite()
    assert info.value.status == 502 and "udp" in info.value.reason
    dev = device_session(rig)
    await wait_for(lambda: dev.ended, 5, "BYE to the device")
    assert dev.ended_by == "remote"
    assert rig.gw.metrics.get("media.answer.refused") == 1
    await rig.at_rest()


async def test_conflicting_answer_through_relay_workers(rig_factory) -> None:
    # The scaled-out relay takes the answered role in its worker process just the same.
    rig = await rig_factory(
        media={"workers": 1},
        device_transport="tcp-active",
        answer_transport="tcp-active",
        echo_offer_address=True,
    )
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES, timeout=10) >= FRAMES
    assert [leg["transport"] for leg in rig.media.snapshot()] == ["tcp-passive"]
    await call.bye()
    await rig.at_rest()


async def test_upper_offer_naming_a_relay_port_is_refused(rig_factory) -> None:
    # An offer whose c=/m= is the relay's own input port would feed the stream into itself
    # (every packet relayed again, for ever): 488, and the first viewer is untouched.
    rig = await rig_factory(live_frames=None)
    first = await rig.invite()
    [leg] = rig.media.snapshot()

    def at_our_port(offer):
        offer.host, offer.port = "127.0.0.1", leg["port"]
        return offer

    with pytest.raises(RequestFailed) as info:
        await rig.invite(offer_hook=at_our_port)
    assert info.value.status == 488
    assert rig.gw.metrics.get("media.offer.own_address") == 1
    before = first.receiver.decoded
    assert await first.receiver.wait_frames(before + 5) >= before + 5
    await first.bye()
    await rig.at_rest()


# -- item 17: the upper's BYE from another of its addresses -------------------------------------
async def _endpoint_on(host: str) -> Endpoint:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start(host, 0)
    return ep


async def _bye_from(host: str, dialog: Dialog) -> Response | None:
    """A BYE in ``dialog`` sent from ``host`` (another NIC of the upper, or a stranger)."""
    ep = await _endpoint_on(host)
    try:
        return await send_bye(ep, dialog, timeout=5)
    finally:
        await ep.close()


async def test_bye_from_another_configured_address_of_the_upper_ends_the_session(
    rig_factory,
) -> None:
    rig = await rig_factory(upper={"other_hosts": ["127.0.0.2"]}, live_frames=None)
    call = await rig.invite()
    assert await call.receiver.wait_frames(5) >= 5
    assert call.dialog is not None
    resp = await _bye_from("127.0.0.2", call.dialog)  # the upper's second NIC, or a cluster node
    assert resp is not None and resp.status == 200
    await rig.at_rest()  # the session ended, the relay stream closed, its ports came back
    assert device_session(rig).ended_by == "remote"
    assert rig.gw.metrics.get("media.in_dialog.other_host") == 1


async def test_bye_from_the_host_of_the_upper_contact_ends_the_session(rig_factory) -> None:
    # The upper's INVITE came from 127.0.0.1 but its Contact names 127.0.0.2, where its BYE
    # comes from.
    rig = await rig_factory(live_frames=None)
    ep = rig.platform.endpoint
    ep.advertised_host = "127.0.0.2"
    try:
        call = await rig.invite()
    finally:
        ep.advertised_host = ""
    assert "127.0.0.2" in (call.request.get_header("Contact") or "")
    assert await call.receiver.wait_frames(5) >= 5
    assert call.dialog is not None
    resp = await _bye_from("127.0.0.2", call.dialog)
    assert resp is not None and resp.status == 200
    await rig.at_rest()


async def test_bye_from_a_stranger_with_the_right_tags_is_still_481(rig_factory) -> None:
    rig = await rig_factory(upper={"other_hosts": ["127.0.0.2"]}, live_frames=None)
    call = await rig.invite()
    assert call.dialog is not None
    resp = await _bye_from("127.0.0.3", call.dialog)
    assert resp is not None and resp.status == 481
    before = call.receiver.decoded
    assert await call.receiver.wait_frames(before + 5) >= before + 5  # still flowing
    await call.bye()
    await rig.at_rest()


async def test_bye_in_the_device_leg_from_the_upper_other_address_is_481(rig_factory) -> None:
    # The device leg's dialog is the device's: the upper's other addresses are no part of it,
    # so a BYE (or INFO) with the leg's Call-ID and tags from there ends nothing.
    rig = await rig_factory(upper={"other_hosts": ["127.0.0.2"]}, live_frames=None)
    call = await rig.invite()
    assert await call.receiver.wait_frames(5) >= 5
    dev = device_session(rig)
    assert dev.dialog is not None
    other = await _endpoint_on("127.0.0.2")  # an address the upper is known by
    try:
        info = dev.dialog.request("INFO", body=b"PLAY RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        info_resp = await other.request(info, dev.dialog.peer, timeout=5)
        resp = await send_bye(other, dev.dialog, timeout=5)
    finally:
        await other.close()
    assert info_resp.status == 481
    assert resp is not None and resp.status == 481
    assert rig.gw.metrics.get("media.in_dialog.other_host") == 0
    before = call.receiver.decoded
    assert await call.receiver.wait_frames(before + 5) >= before + 5  # still flowing
    assert not dev.ended
    await call.bye()
    await rig.at_rest()


async def test_a_session_whose_upper_stopped_receiving_ends_after_the_rtp_timeout(
    rig_factory,
) -> None:
    # The upper's BYE did not reach us as its (here: from a stranger, 481), and the upper
    # closed its RTP port. The device keeps sending, so the device leg never times out; the
    # upper's leg does: its receiver refuses every datagram (ICMP port unreachable) for
    # media.rtp_timeout, and the gateway ends the session both ways.
    rig = await rig_factory(media={"rtp_timeout": 1.0}, live_frames=None)
    call = await rig.invite()
    assert await call.receiver.wait_frames(5) >= 5
    assert call.dialog is not None
    resp = await _bye_from("127.0.0.3", call.dialog)
    assert resp is not None and resp.status == 481
    await close_quietly(call.receiver)
    await asyncio.wait_for(call.ended.wait(), 10)
    assert call.ended_by == "lower"  # the gateway's BYE
    dev = device_session(rig)
    await wait_for(lambda: dev.ended, 5, "BYE to the device")
    assert dev.ended_by == "remote"
    await rig.at_rest()
    assert rig.gw.metrics.get("media.relay.unreachable") == 1
