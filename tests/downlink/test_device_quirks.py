"""Field quirks of real devices (issue 15), each switched on in the simulated device and driven
against the real gateway: the gateway copes, and counts the quirk on the device
(:class:`gateway.downlink.DeviceQuirks`, ``device.quirk.<name>`` metrics)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.peers.device import SimDevice, char_count
from gateway.app import Gateway
from gateway.downlink import QUIRKS, DeviceQuirks
from gateway.events import CatalogSynced, DeviceOffline
from gateway.manscdp import CatalogItem, DeviceInfoQuery, ptz
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, parse
from tests.conftest import sim, wait_for

pytestmark = pytest.mark.timeout(60)

NVR = "34020000001180000001"
FAST = {"response_timeout": 3.0, "idle_timeout": 0.5}
NAME = "大门摄像机"  # five characters, 15 bytes in UTF-8


def nvr(ep: Endpoint, gw: Gateway, transport: str = "udp", **kw: Any) -> SimDevice:
    dev = sim(ep, gw, NVR, transport, **kw)
    dev.install()
    return dev


def synced(gw: Gateway) -> list[CatalogSynced]:
    seen: list[CatalogSynced] = []
    gw.events.subscribe(CatalogSynced, seen.append)
    return seen


def offline(gw: Gateway) -> list[DeviceOffline]:
    seen: list[DeviceOffline] = []
    gw.events.subscribe(DeviceOffline, seen.append)
    return seen


# -- the quirk book ----------------------------------------------------------------------------
def test_quirk_book_counts_per_device_and_is_bounded() -> None:
    metrics = Metrics()
    book = DeviceQuirks(metrics, max_devices=2)
    assert book.note("a", "no_refresh") == 1
    assert book.note("a", "no_refresh", 2) == 3
    book.note("b", "ptz_response")
    book.note("c", "ptz_response")  # "a" is the least recently noted: forgotten
    assert book.snapshot() == {"b": {"ptz_response": 1}, "c": {"ptz_response": 1}}
    assert metrics.get("device.quirk.no_refresh") == 3
    assert metrics.get("device.quirk.ptz_response") == 2
    with pytest.raises(ValueError):
        book.note("b", "made_up")
    assert set(QUIRKS) >= {"content_length_chars", "no_refresh", "drops_pipelined"}


# -- 1. Content-Length counted in characters -------------------------------------------------
def _datagram(body: bytes, declared: int) -> bytes:
    head = (
        "MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        f"From: <sip:{NVR}@3402000000>;tag=1\r\n"
        "To: <sip:34020000002000000001@3402000000>\r\n"
        "Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        "Content-Type: Application/MANSCDP+xml\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize("charset", ["utf-8", "gb18030"])
def test_parse_takes_a_datagram_whose_length_counted_characters(charset: str) -> None:
    body = f'<?xml version="1.0"?><Response><Name>{NAME}</Name></Response>'.encode(charset)
    msg = parse(_datagram(body, char_count(body)))
    assert msg.body == body
    assert msg.declared_length == char_count(body) < len(body)


def test_line_ends_after_the_body_are_padding_however_it_was_counted() -> None:
    # A body counted right in bytes followed by a CRLF: padding, cut off, no quirk.
    one = f"<Response><Name>{NAME[0]}</Name></Response>".encode()
    msg = parse(_datagram(one + b"\r\n", len(one)))
    assert msg.body == one and msg.declared_length is None
    # A body counted in characters followed by a CRLF nobody counted: still the quirk.
    chinese = f"<Response><Name>{NAME}</Name></Response>".encode()
    msg = parse(_datagram(chinese + b"\r\n", char_count(chinese)))
    assert msg.body.rstrip() == chinese and msg.declared_length == char_count(chinese)


def test_parse_still_drops_bytes_past_content_length_that_are_no_such_count() -> None:
    # RFC 3261 §18.3: extra bytes of a datagram are discarded, unless they are the rest of
    # a body counted in characters; padding or a second message is never taken.
    body = b"<Response><Name>ab</Name></Response>"
    msg = parse(_datagram(body + b"\r\n\r\nPADDING", len(body)))
    assert msg.body == body and msg.declared_length is None
    chinese = f"<Response><Name>{NAME}</Name></Response>".encode()
    cut = parse(_datagram(chinese + b"xx", char_count(chinese)))
    assert len(cut.body) == char_count(chinese) and cut.declared_length is None


@pytest.mark.timeout(10)
def test_character_count_on_a_datagram_of_hostile_size() -> None:
    # The check decodes the rest of the datagram at most twice: a 60 KB one costs little,
    # whatever its bytes.
    body = ("<a>" + "中" * 20_000 + "</a>").encode()
    assert parse(_datagram(body, char_count(body))).body == body
    junk = parse(_datagram(b"x" * 10 + b"\xff" * 60_000, 10))
    assert junk.body == b"x" * 10 and junk.declared_length is None


async def test_udp_device_counting_characters_delivers_its_name_and_catalog(
    start_gateway, device_endpoint
) -> None:
    # Before issue 15 the cut body failed to parse: no name, no catalog, ever.
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(
        device_endpoint, gw, name=NAME, charset="UTF-8", channel_count=3, content_length_chars=True
    )
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    assert done[0].partial is False and done[0].added == 3
    record = gw.registrar.get(NVR)
    assert record is not None and record.name == NAME
    names = {i.device_id: i.name for i in gw.catalog.items_of(NVR)}
    assert names[dev.channel_id(2)] == "通道2"
    assert gw.quirks.of(NVR)["content_length_chars"] >= 2  # DeviceInfo and Catalog answers
    assert gw.metrics.get("device.quirk.content_length_chars") >= 2
    assert all(status == 200 for _, _, status in dev.answer_statuses)


async def test_tcp_device_counting_characters_is_refused_cleanly(
    start_gateway, device_endpoint
) -> None:
    # Over TCP the stream is cut at Content-Length (RFC 3261 §18.3), and nothing can tell
    # that the count was of characters: the body is cut XML (400), and its tail is read as
    # the start of the next message, which gets 400 too (its start line is not one); the
    # message after that is read right again. No quirk is counted (nothing shows it).
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, "tcp", name=NAME, charset="UTF-8", content_length_chars=True)
    assert (await dev.register()).status == 200
    info = DeviceInfoQuery(sn=7, device_id=NVR)
    answers = dev._answer_device_info(info)
    resp = await dev._send(dev.build_message(dev.encode(answers[0])))
    assert resp is not None and (resp.status, resp.reason) == (400, "Bad Request (MANSCDP body)")
    second = await dev.keepalive()
    assert (second.status, second.reason) == (400, "Bad Header")
    assert (await dev.keepalive()).status == 200
    assert gw.metrics.get("sip.rx.parse_error") == 1
    assert gw.metrics.get("device.quirk.content_length_chars") == 0


# -- 2. registers once, never refreshes ---------------------------------------------------------
async def test_device_that_never_refreshes_is_asked_to_register_again_without_going_offline(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(
        registrar={"min_expires": 1, "default_expires": 2},
        keepalive={"interval": 0.5, "timeout_count": 3, "check_interval": 0.05},
        downlink={"sync_on_register": False},
    )
    gone = offline(gw)
    events: list[tuple[str, str]] = []
    dev = sim(device_endpoint, gw, NVR, expires=2, no_refresh=True)
    dev.install().on_event = lambda _id, name, detail: events.append((name, detail))
    dev.start_keepalive(0.1)
    try:
        await wait_for(
            lambda: sum(1 for n, _ in events if n == "registered") >= 3, 20, "registered 3 times"
        )
    finally:
        dev.stop()
    # Every REGISTER after the first came after a 404 to a keepalive: never a refresh.
    registered = [d for n, d in events if n == "registered"]
    asked = [d for n, d in events if n == "keepalive-404"]
    assert len(asked) >= len(registered) - 1 >= 2
    assert gone == []  # no offline/online flap
    assert gw.quirks.of(NVR)["no_refresh"] >= 2
    assert gw.metrics.get("register.lapsed") >= 2 and gw.metrics.get("keepalive.lapsed") >= 2


async def test_lapsed_device_that_does_not_register_again_goes_offline(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(
        registrar={"min_expires": 1, "default_expires": 1},
        keepalive={"interval": 0.3, "timeout_count": 2, "check_interval": 0.05},
        downlink={"sync_on_register": False},
    )
    gone = offline(gw)
    dev = nvr(device_endpoint, gw, expires=1, no_refresh=True)
    assert (await dev.register()).status == 200
    statuses: list[tuple[int, str]] = []
    while not gone:  # keepalives by hand; a 404 is not followed by a REGISTER here
        resp = await dev.keepalive()
        statuses.append((resp.status, resp.reason))
        await asyncio.sleep(0.1)
        assert len(statuses) < 200, "never went offline"
    assert gone[0].reason == "expired (never refreshed)"
    assert (404, "Not Found (registration expired)") in statuses
    assert gw.quirks.of(NVR) == {"no_refresh": 1}


# -- 3. drops the second of two requests in one TCP segment ------------------------------------
async def test_pipelined_request_dropped_by_the_device_is_sent_again(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, "tcp", channel_count=2, drop_pipelined=True)
    assert (await dev.register()).status == 200
    dl = gw.downlink
    infos = await asyncio.gather(dl.device_info(NVR), dl.device_status(NVR), dl.device_info(NVR))
    assert [i.device_id for i in infos] == [NVR, NVR, NVR]
    assert dev.pipelined_dropped >= 1
    assert gw.quirks.of(NVR)["drops_pipelined"] >= 1
    # Remembered: from now on one request at a time, and nothing more is dropped.
    dropped = dev.pipelined_dropped
    await asyncio.gather(dl.device_info(NVR), dl.device_status(NVR), dl.device_info(NVR))
    assert dev.pipelined_dropped == dropped


# -- 4. never answers SUBSCRIBE ----------------------------------------------------------------
def _count_subscribes(ep: Endpoint) -> dict[str, int]:
    """Every SUBSCRIBE datagram reaching ``ep``, retransmissions included, by transaction
    (Via branch), in the order the attempts came."""
    seen: dict[str, int] = {}
    inner = ep.transports.listener

    class Counting:
        def message_received(self, data: bytes, peer: Peer) -> None:
            if data.startswith(b"SUBSCRIBE "):
                msg = parse(data)
                branch = msg.top_via.branch or ""
                seen[branch] = seen.get(branch, 0) + 1
            inner.message_received(data, peer)

        def connection_lost(self, peer: Peer) -> None:
            inner.connection_lost(peer)

    ep.transports.listener = Counting()  # type: ignore[assignment]
    return seen


async def test_device_that_never_answers_subscribe_is_backed_off(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(
        sip={"t1": 0.05},
        downlink={**FAST, "subscription_retry": 0.2},
    )
    datagrams = _count_subscribes(device_endpoint)
    dev = nvr(device_endpoint, gw, subscribe_mute=True)
    assert (await dev.register()).status == 200
    subs = gw.subscriptions
    assert subs is not None
    await wait_for(lambda: len(datagrams) >= 4, 30, "four SUBSCRIBE attempts")
    counts = list(datagrams.values())
    # The first attempts ran their full course of retransmissions (the sync after the
    # registration may start a second before the first failed); once the device is known
    # not to answer, an attempt is given up after 4 x T1 (a couple of retransmissions): the
    # last finished attempt is such a one.
    assert counts[0] >= 5
    assert counts[-2] <= 4
    misses = gw.quirks.of(NVR)["subscribe_unanswered"]
    assert misses >= 2
    assert subs.retry_delay(NVR) == pytest.approx(0.2 * 2**misses)


# -- 5. a Response to a PTZ DeviceControl ------------------------------------------------------
async def test_response_to_ptz_control_is_taken_quietly(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, channel_count=1, ptz_response=True)
    assert (await dev.register()).status == 200
    cam = dev.channel_id(1)
    gw.catalog.apply_sync(NVR, [dev.channel_item(1)], partial=False)
    await gw.downlink.ptz(cam, ptz.ptz_move(pan=1, tilt=1, pan_speed=0x40))
    await wait_for(lambda: len(dev.answer_statuses) == 1, 5, "the device's Response")
    assert dev.answer_statuses == [("DeviceControl", dev.controls[0].sn, 200)]
    assert gw.metrics.get("message.stray_response") == 0
    assert gw.quirks.of(NVR) == {"ptz_response": 1}


# -- 6. catalog items without ParentID ---------------------------------------------------------
async def test_items_without_parent_hang_under_their_device(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(downlink={**FAST, "catalog_subscription": False})
    done = synced(gw)
    own = CatalogItem(device_id=NVR, name="NVR", parental=0, status="ON")
    dev = nvr(device_endpoint, gw, channel_count=3, no_parent_id=True, catalog_extra_items=[own])
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    items = {i.device_id: i for i in gw.catalog.items_of(NVR)}
    assert all(items[c].parent_id == NVR for c in dev.channel_ids())
    assert items[NVR].parental == 1 and items[NVR].parent_id is None
    assert {i.device_id for i in gw.catalog.children(NVR)} == set(dev.channel_ids())
    assert gw.quirks.of(NVR) == {"no_parent_id": 3}
    # A re-sync changes nothing: the hung items and the parent are what was stored.
    changed = len(done)
    await gw.sync.sync(NVR)
    assert len(done) == changed + 1 and done[-1].changed == 0 and done[-1].added == 0


# -- 8. plain-ASCII bodies declaring UTF-8 -----------------------------------------------------
async def test_ascii_bodies_declaring_utf8_are_answered_in_utf8(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={**FAST, "catalog_subscription": False})
    done = synced(gw)
    dev = nvr(device_endpoint, gw, charset="UTF-8", ascii_names=True, channel_count=2)
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    record = gw.registrar.get(NVR)
    assert record is not None and record.name == f"IPC-{NVR[-6:]}"
    assert (record.charset, record.declared_charset) == ("UTF-8", "UTF-8")
    body = gw.downlink.body_for(record, DeviceInfoQuery(sn=1, device_id="通道"))
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert "通道".encode() in body
    assert gw.quirks.of(NVR) == {"ascii_declared_charset": 1}


async def test_ascii_bodies_do_not_undo_a_charset_seen_in_real_text(
    start_gateway, device_endpoint
) -> None:
    # A device seen writing UTF-8 under a GB2312 prolog keeps being answered that way when
    # a later body is plain ASCII (its declaration says nothing new).
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw, charset_lie=True)
    assert (await dev.register()).status == 200
    record = gw.registrar.get(NVR)
    assert record is not None
    record.charset, record.declared_charset = "UTF-8", "GB2312"
    await gw.downlink.device_status(NVR)  # an ASCII answer declaring GB2312
    assert (record.charset, record.declared_charset) == ("UTF-8", "GB2312")
    assert gw.quirks.of(NVR) == {}


# -- 9. already tolerated: kept working ---------------------------------------------------------
async def test_register_to_the_domain_with_a_matching_digest_uri(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={"sync_on_register": False})
    dev = nvr(device_endpoint, gw, register_to_domain=True)
    assert (await dev.register()).status == 200
    sent = dev.build_register(3600)
    assert str(sent.request_uri) == "sip:3402000000"
    assert gw.registrar.get(NVR) is not None and gw.registrar.get(NVR).online  # type: ignore[union-attr]


async def test_messages_to_an_address_request_uri_are_served(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(device_endpoint, gw, address_request_uri=True, channel_count=2)
    assert str(dev.build_message(b"").request_uri) == f"sip:127.0.0.1:{gw.port}"
    assert (await dev.register()).status == 200
    assert (await dev.keepalive()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    assert done[0].added == 2 and not done[0].partial


async def test_unsolicited_answers_with_sn_1_are_answered_and_ignored(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink={"sync_on_register": False})
    dev = nvr(device_endpoint, gw, unsolicited_sn1=True, channel_count=2)
    assert (await dev.register()).status == 200
    await wait_for(lambda: len(dev.answer_statuses) == 3, 5, "DeviceInfo and 2 catalog parts")
    assert {(cmd, sn, status) for cmd, sn, status in dev.answer_statuses} == {
        ("DeviceInfo", 1, 200),
        ("Catalog", 1, 200),
    }
    assert gw.metrics.get("message.stray_response") == 3
    assert gw.catalog.items_of(NVR) == []  # nothing taken that was not asked for


async def test_two_messages_in_one_tcp_segment_are_both_served(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(downlink=FAST)
    done = synced(gw)
    dev = nvr(
        device_endpoint, gw, "tcp", pipeline_messages=True, channel_count=6, items_per_message=1
    )
    assert (await dev.register()).status == 200
    await wait_for(lambda: bool(done), 15, "catalog sync")
    assert done[0].added == 6 and not done[0].partial
    assert [s for _, _, s in dev.answer_statuses if s != 200] == []


async def test_a_stranger_naming_a_device_changes_neither_its_charset_nor_its_quirks(
    start_gateway, device_endpoint
) -> None:
    # Anyone can write a device's ID in From: only the device itself, registered and at its
    # own host, has its declared charset recorded and its quirks noted.
    gw = await start_gateway(downlink={**FAST, "sync_on_register": False})
    dev = nvr(device_endpoint, gw)
    assert (await dev.register()).status == 200
    record = gw.registrar.get(NVR)
    assert record is not None
    before = (record.charset, record.declared_charset)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n<Response>\r\n<CmdType>DeviceInfo</CmdType>'
        f"\r\n<SN>77</SN>\r\n<DeviceID>{NVR}</DeviceID>\r\n<Result>OK</Result>\r\n</Response>\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    got: list[bytes] = []

    class Stranger(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got.append(data)

    transport, _ = await loop.create_datagram_endpoint(Stranger, local_addr=("127.0.0.2", 0))
    try:
        transport.sendto(_datagram(body, len(body)), ("127.0.0.1", gw.port))
        await wait_for(lambda: bool(got), 5, "the answer to the stranger")
    finally:
        transport.close()
    assert got[0].startswith(b"SIP/2.0 200")
    assert (record.charset, record.declared_charset) == before
    assert gw.quirks.of(NVR) == {}
