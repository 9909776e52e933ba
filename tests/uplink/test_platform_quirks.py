"""The quirks of real upper platforms (issue 15), each switched on in the simulated platform,
with the real gateway under it: it copies where the standard allows it, refuses cleanly where
not, and notes each quirk on the upper's record (:mod:`gateway.uplink.quirks`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.mansrtsp import CONTENT_TYPE as MANSRTSP
from conformance.peers.mansrtsp import pause
from gateway.app import Gateway
from gateway.store import SqliteStore
from gateway.uplink.batching import within_counts
from tests.conftest import make_config, wait_for
from tests.media.rig import device_session
from tests.uplink.test_uplink import (
    GW,
    UP,
    UP2,
    gateway_with,
    nvr,
    online_at,
    platform,
    synced_nvr,
    upper_config,
)


def quirks(gw: Gateway) -> dict[str, int]:
    assert gw.uplink is not None
    return gw.uplink.sessions[UP].quirks.counts


# -- 1. a REGISTER 200 without To tag and Contact -----------------------------------------------
async def test_a_bare_register_ok_registers_and_refreshes(upper_endpoint, start_gateway) -> None:
    p = platform(upper_endpoint, bare_register_ok=True, grant_expires=2)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    await online_at(p)
    ok = p.register_answers[-1][2]
    assert ok.status == 200 and ok.to.tag is None and ok.get_header("Contact") is None
    # The lifetime is the Expires header's, and the refresh comes in time.
    await wait_for(lambda: p.lowers[GW].registrations >= 3, 8, "refreshes")
    assert gw.uplink is not None and gw.uplink.sessions[UP].link.expires == 2
    assert p.lowers[GW].online
    assert quirks(gw)["register_ok_without_to_tag"] >= 3
    assert quirks(gw)["register_ok_without_contact"] >= 3
    assert gw.metrics.get("uplink.quirk.register_ok_without_contact") >= 3


# -- 2. requests without Max-Forwards ---------------------------------------------------------
async def test_requests_without_max_forwards_are_served(rig_factory) -> None:
    rig = await rig_factory()
    p = rig.platform
    p.no_max_forwards = True
    res = await p.device_info(GW)
    assert res.status == 200 and res.responses
    call = await rig.invite()
    await call.receiver.wait_frames(3)
    assert (await call.bye()) is not None
    await rig.at_rest()
    assert rig.gw.metrics.get("sip.rx.no_max_forwards") >= 3  # MESSAGE, INVITE, BYE
    assert quirks(rig.gw)["no_max_forwards"] >= 2  # MESSAGE and INVITE name the upper


def test_the_sim_takes_max_forwards_off_the_wire() -> None:
    from conformance.peers.platform import _rewrite_request

    data = b"MESSAGE sip:a@b SIP/2.0\r\nMax-Forwards: 70\r\nCSeq: 1 MESSAGE\r\n\r\nMax-Forwards"
    out = _rewrite_request(data, no_max_forwards=True, info_cseq=False)
    assert out == b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nMax-Forwards"
    info = b"INFO sip:a@b SIP/2.0\r\nCSeq: 3 INFO\r\n\r\n"
    assert b"CSeq: 3 Info\r\n" in _rewrite_request(info, no_max_forwards=False, info_cseq=True)


# -- 3. a BYE with the INVITE's CSeq ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["Play", "Playback"])
async def test_a_bye_with_the_invites_cseq_ends_the_session(rig_factory, kind: str) -> None:
    """Live: the BYE's CSeq equals the INVITE's. Playback after a PAUSE: it is below the
    INFO's. Either way it comes from the other end of the dialog and ends the session."""
    rig = await rig_factory(playback_frames=400)
    p = rig.platform
    p.bye_cseq_of_invite = True
    kw: dict[str, Any] = {"kind": kind}
    if kind == "Playback":
        kw.update(start=1716163200, stop=1716163204)
    call = await rig.invite(**kw)
    await call.receiver.wait_frames(3)
    if kind == "Playback":
        status, _ = await call.pause()
        assert status == 200
    resp = await call.bye()
    assert resp is not None and resp.status == 200 and resp.cseq.seq == 1
    await rig.at_rest()
    assert quirks(rig.gw)["bye_cseq_not_above"] == 1


async def test_an_info_numbered_like_the_invite_is_taken(rig_factory) -> None:
    """RFC 3261 §12.2.2 refuses only a lower CSeq: an INFO with the INVITE's number (another
    method) is served; a second INFO under that number is refused 500."""
    rig = await rig_factory(playback_frames=400)
    call = await rig.invite(kind="Playback", start=1716163200, stop=1716163204)
    await call.receiver.wait_frames(3)
    assert call.dialog is not None
    answers = []
    for _ in range(2):
        call.dialog.local_cseq = call.dialog.invite_cseq - 1
        req = call.dialog.request("INFO", body=pause(1).to_bytes(), content_type=MANSRTSP)
        answers.append(await rig.platform.endpoint.request(req, call.dialog.peer))
    assert [a.status for a in answers] == [200, 500]
    await call.bye()
    await rig.at_rest()


# -- 4. CSeq: n Info ----------------------------------------------------------------------------
async def test_an_info_with_cseq_method_info_gets_400_and_the_call_goes_on(rig_factory) -> None:
    rig = await rig_factory(playback_frames=400)
    p = rig.platform
    call = await rig.invite(kind="Playback", start=1716163200, stop=1716163204)
    await call.receiver.wait_frames(3)
    assert call.dialog is not None
    p.info_cseq_method = True
    req = call.dialog.request("INFO", body=pause(1).to_bytes(), content_type=MANSRTSP)
    resp = await p.endpoint.request(req, call.dialog.peer)
    assert (resp.status, resp.reason) == (400, "CSeq Method Mismatch")
    assert "Info != INFO" in (resp.get_header("Warning") or "")
    assert quirks(rig.gw)["cseq_method_mismatch"] == 1
    assert rig.gw.metrics.get("uplink.quirk.cseq_method_mismatch") == 1
    # The gateway keeps serving: the call, and the next INFO written right.
    p.info_cseq_method = False
    status, body = await call.pause()
    assert status == 200 and "RTSP/1.0 200" in body
    res = await p.device_info(GW)
    assert res.status == 200 and res.responses
    await call.bye()
    await rig.at_rest()


# -- 5. 500 to a REGISTER with a new Call-ID ---------------------------------------------------
async def test_a_restarted_gateway_refreshes_the_registration_the_upper_holds(
    upper_endpoint, start_gateway, tmp_path: Path
) -> None:
    """The gateway is killed (no unregistration) and started again on the same store: its
    first REGISTER goes on with the Call-ID the upper holds, so the platform that answers a
    new Call-ID 500 takes it at once."""
    p = platform(upper_endpoint, refuse_new_call_id=True)
    sections = {"uplink": {"platforms": [upper_config(upper_endpoint)]}}
    first = Gateway(make_config(tmp_path, **sections))
    await first.start()
    try:
        await online_at(p)
        held = p.lowers[GW].call_id
        assert first.uplink is not None
        # The upper counts the gateway online when it sends its 200; the gateway saves the
        # registration when that 200 arrives, which on a busy machine can come later.
        link = first.uplink.sessions[UP].link
        await wait_for(lambda: link.online, 5, "the gateway took its 200")
        await link.close(unregister=False)  # as if killed
    finally:
        await first.close()
    assert p.lowers[GW].registered  # the upper still holds it
    before = len(p.register_answers)
    gw = await start_gateway(**sections)
    await wait_for(lambda: p.lowers[GW].registrations >= 2, 5, "registered again")
    after = list(p.register_answers)[before:]
    assert {req.call_id for _, req, _ in after} == {held}
    assert all(resp.status != 500 for _, _, resp in after)
    assert after[-1][1].cseq.seq > 10  # above any CSeq the first run used
    assert gw.uplink is not None
    again = gw.uplink.sessions[UP].link
    await wait_for(lambda: again.online, 5, "the restarted gateway took its 200")


async def test_the_store_keeps_one_registration_per_upper(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db")
    await store.start()
    store.save_upper_registration(UP, "old@x", "t1", 3, 1.0)
    store.save_upper_registration(UP, "new@x", "t1", 7, 2.0)
    store.save_upper_registration(UP2, "other@x", "t2", 1, 2.0)
    await store.close()
    again = SqliteStore(tmp_path / "gw.db")
    try:
        assert again.load_upper_registrations() == {
            UP: ("new@x", "t1", 7),
            UP2: ("other@x", "t2", 1),
        }
    finally:
        await again.close()


async def test_a_500_to_a_new_call_id_brings_the_held_one_back(
    upper_endpoint, start_gateway
) -> None:
    """After losing the upper the gateway starts a new registration (new Call-ID); the
    platform still holds the old one and answers 500: the gateway backs off and refreshes the
    old one instead of staying locked out until it expires."""
    p = platform(upper_endpoint, refuse_new_call_id=True)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint), sip={"t1": 0.02})
    await online_at(p)
    held = p.lowers[GW].call_id
    p.drop_keepalives = True
    await wait_for(lambda: gw.metrics.get("uplink.offline") == 1, 15, "offline")
    p.drop_keepalives = False
    await wait_for(
        lambda: any(r.status == 500 for _, _, r in p.register_answers), 5, "a 500 to a new one"
    )
    await wait_for(lambda: gw.uplink is not None and gw.uplink.sessions[UP].online, 8, "online")
    assert p.lowers[GW].call_id == held
    refused = [req.call_id for _, req, r in p.register_answers if r.status == 500]
    assert refused and held not in refused
    assert quirks(gw)["register_500_new_call_id"] >= 1


# -- 6. items per catalog message ---------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_catalog_messages_hold_the_items_the_upper_takes(
    upper_endpoint, start_gateway, device_endpoint, transport: str
) -> None:
    """The platform answers 500 to a catalog message of one item or more than three; with
    ``catalog_min_items = 2`` and ``catalog_max_items = 3`` every part is taken."""
    p = platform(upper_endpoint, min_catalog_items=2, max_catalog_items=3)
    up = upper_config(upper_endpoint, transport=transport, catalog_min_items=2, catalog_max_items=3)
    gw = await gateway_with(start_gateway, up)
    dev = nvr(device_endpoint, gw, channel_count=5)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.catalog(GW)
    assert not res.partial and res.sum_num == len(res.items) == 7  # gateway, NVR, 5 channels
    sizes = [len(m.items) for m in res.responses]  # type: ignore[attr-defined]
    assert sum(sizes) == 7 and all(2 <= n <= 3 for n in sizes), sizes
    assert not p.refused_catalogs


async def test_without_the_settings_such_a_platform_loses_catalog_parts(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    """The switch bites: one item per message (``catalog_batch_tcp_items = 1``) and no
    ``catalog_min_items``, the platform refuses every part and the answer stays partial."""
    p = platform(upper_endpoint, min_catalog_items=2)
    up = upper_config(upper_endpoint, transport="tcp", catalog_batch_tcp_items=1)
    gw = await gateway_with(start_gateway, up)
    dev = nvr(device_endpoint, gw, channel_count=2)
    await synced_nvr(gw, dev)
    await online_at(p)
    res = await p.catalog(GW, timeout=3.0)
    assert res.partial and not res.items
    assert p.refused_catalogs and p.refused_catalogs[0] == (1, 4)


@pytest.mark.parametrize(("low", "high"), [(1, 1), (2, 0), (2, 3), (3, 5), (2, 4), (4, 0)])
def test_within_counts_keeps_every_batch_in_bounds(low: int, high: int) -> None:
    for shape in itertools.product([1, 2, 3, 5, 9], repeat=3):
        items = list(range(sum(shape)))
        it = iter(items)
        source = [[next(it) for _ in range(n)] for n in shape]
        out = list(within_counts(source, low, high))
        assert [x for b in out for x in b] == items, (shape, out)
        sizes = [len(b) for b in out]
        if len(items) >= low:
            assert all(n >= low for n in sizes), (shape, sizes)
        if high:
            assert all(n <= high for n in sizes), (shape, sizes)
        if low <= 1 and not high:
            assert sizes == list(shape)  # nothing to re-cut: the source's batches unchanged


# -- 7. requests over UDP to a gateway registered over TCP --------------------------------------
async def test_requests_over_udp_to_a_tcp_registration_are_answered(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint, requests_over_udp=True)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint, transport="tcp"))
    dev = nvr(device_endpoint, gw, channel_count=3)
    await synced_nvr(gw, dev)
    await online_at(p)
    lower = p.lowers[GW]
    assert lower.peer.transport == "tcp" and p.peer_of(lower).transport == "udp"
    info = await p.device_info(GW)
    assert info.status == 200 and info.responses
    res = await p.catalog(GW)
    assert not res.partial and len(res.items) == 5
    # What the gateway sends on its own goes over the registration's link.
    assert set(res.arrived_over) == {"tcp"}
    status = await p.device_status(GW, dev.channel_id(1))
    assert status.status == 200 and status.responses
    assert quirks(gw)["request_over_other_transport"] >= 3


async def test_an_invite_over_udp_to_a_tcp_registration_streams(rig_factory) -> None:
    rig = await rig_factory(upper={"transport": "tcp"})
    p = rig.platform
    p.requests_over_udp = True
    call = await rig.invite()
    assert call.dialog is not None and call.dialog.peer.transport == "udp"
    await call.receiver.wait_frames(5)
    assert device_session(rig) is not None
    resp = await call.bye()
    assert resp is not None and resp.status == 200
    await rig.at_rest()
    assert quirks(rig.gw)["request_over_other_transport"] >= 1
