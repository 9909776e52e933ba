"""The quirk scanner on hand-made traces: each quirk is found when shown, and not otherwise."""

from __future__ import annotations

from conformance.suite.findings import QUIRKS, Findings, scan
from conformance.suite.trace import TraceEntry, first_line

DEV = "34020000001320000001"
SRV = "34020000002000000001"
UDP = "udp:127.0.0.1:5062"
TCP = "tcp:127.0.0.1:5062"


def sip(first: str, headers: list[str], body: bytes = b"", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return ("\r\n".join([first, *headers, f"Content-Length: {n}"]) + "\r\n\r\n").encode() + body


def entry(
    t: float, direction: str, data: bytes, peer: str = UDP, label: str = "platform"
) -> TraceEntry:
    return TraceEntry(t, direction, peer, first_line(data), data, label)


def request(
    method: str,
    *,
    uri: str = f"sip:{SRV}@3402000000",
    from_user: str = DEV,
    to_user: str = SRV,
    call_id: str = "c1",
    cseq: str | None = None,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
    length: int | None = None,
    max_forwards: bool = True,
) -> bytes:
    headers = [
        "Via: SIP/2.0/UDP 127.0.0.1:5062;rport;branch=z9hG4bK" + call_id + method,
        f"From: <sip:{from_user}@3402000000>;tag=f1",
        f"To: <sip:{to_user}@3402000000>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq or '1 ' + method}",
        *(["Max-Forwards: 70"] if max_forwards else []),
        *extra,
    ]
    return sip(f"{method} {uri} SIP/2.0", headers, body, length)


def response(
    status: int,
    method: str,
    *,
    call_id: str = "c1",
    seq: int = 1,
    to_user: str = SRV,
    to_tag: bool = True,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    reason = {200: "OK", 500: "Server Internal Error", 488: "Not Acceptable Here"}[status]
    headers = [
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
        f"From: <sip:{DEV}@3402000000>;tag=f1",
        f"To: <sip:{to_user}@3402000000>" + (";tag=t1" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {method}",
        *extra,
    ]
    return sip(f"SIP/2.0 {status} {reason}", headers, body)


def xml(root: str, cmd: str, sn: int, inner: str = "", encoding: str = "GB2312") -> str:
    return (
        f'<?xml version="1.0" encoding="{encoding}"?>\r\n<{root}>\r\n<CmdType>{cmd}</CmdType>\r\n'
        f"<SN>{sn}</SN>\r\n<DeviceID>{DEV}</DeviceID>\r\n{inner}</{root}>\r\n"
    )


def quirks(found: Findings) -> set[str]:
    return {f.quirk for f in found.all()}


def test_every_quirk_has_a_side_and_a_description() -> None:
    for quirk, (side, title) in QUIRKS.items():
        assert side in ("device", "platform"), quirk
        assert len(title) > 20, quirk


def test_a_clean_exchange_has_no_findings() -> None:
    body = xml(
        "Response",
        "Catalog",
        7,
        f"<Item><DeviceID>34020000001320000011</DeviceID><ParentID>{DEV}</ParentID></Item>",
    ).encode("gb2312")
    query = xml("Query", "Catalog", 7).encode()
    trace = [
        entry(0.0, "received", request("REGISTER", extra=("Expires: 3600",))),
        entry(0.1, "sent", response(200, "REGISTER", to_user=DEV, extra=("Expires: 60",))),
        entry(1.0, "sent", request("MESSAGE", call_id="q", from_user=SRV, to_user=DEV, body=query)),
        entry(1.2, "received", request("MESSAGE", call_id="r", body=body)),
        entry(50.0, "received", request("REGISTER", call_id="c1", cseq="2 REGISTER")),
        entry(
            70.0,
            "received",
            request("MESSAGE", call_id="k", body=xml("Notify", "Keepalive", 9).encode()),
        ),
    ]
    assert quirks(scan(trace)) == set()


def test_content_length_counted_in_characters_over_udp() -> None:
    body = xml("Response", "DeviceInfo", 3, "<DeviceName>大门摄像机</DeviceName>\r\n").encode(
        "utf-8"
    )
    chars = len(body.decode("utf-8"))
    assert chars < len(body)
    trace = [entry(0.0, "received", request("MESSAGE", body=body, length=chars))]
    found = scan(trace)
    (f,) = [f for f in found.all() if f.quirk == "content-length-in-characters"]
    assert f.side == "device" and str(chars) in f.detail
    # Over TCP the framing decides and the trace has only the declared bytes: nothing to say.
    assert "content-length-in-characters" not in scan(
        [entry(0.0, "received", request("MESSAGE", body=body, length=chars), TCP)]
    )
    # An honest Content-Length is no finding.
    assert quirks(scan([entry(0.0, "received", request("MESSAGE", body=body))])) == {
        "unsolicited-response"
    }


def test_a_registration_left_to_lapse_while_still_sending() -> None:
    keepalive = xml("Notify", "Keepalive", 1).encode()
    granted = entry(0.1, "sent", response(200, "REGISTER", to_user=DEV, extra=("Expires: 60",)))
    lapsed = [
        entry(0.0, "received", request("REGISTER")),
        granted,
        entry(30.0, "received", request("MESSAGE", call_id="k1", body=keepalive)),
        entry(65.0, "received", request("MESSAGE", call_id="k2", body=keepalive)),
    ]
    found = scan(lapsed)
    assert quirks(found) == {"register-never-refreshed"}
    assert "60 s" in found.all()[0].detail
    refreshed = [*lapsed[:3], entry(55.0, "received", request("REGISTER", cseq="2 REGISTER"))]
    refreshed.append(lapsed[3])
    assert quirks(scan(refreshed)) == set()


def test_unanswered_subscribe_and_the_answered_one() -> None:
    body = xml("Query", "Catalog", 5).encode()
    sub = request(
        "SUBSCRIBE",
        call_id="s1",
        from_user=SRV,
        to_user=DEV,
        body=body,
        extra=("Event: Catalog", "Expires: 3600"),
    )
    silent = [
        entry(0.0, "sent", sub),
        entry(0.5, "sent", sub),
        entry(
            20.0,
            "received",
            request("MESSAGE", call_id="k", body=xml("Notify", "Keepalive", 1).encode()),
        ),
    ]
    assert "subscribe-unanswered" in scan(silent)
    answered = [
        entry(0.0, "sent", sub),
        entry(0.2, "received", response(200, "SUBSCRIBE", call_id="s1", to_user=DEV)),
        silent[2],
    ]
    assert "subscribe-unanswered" not in scan(answered)


def test_ptz_response_and_unsolicited_response() -> None:
    ptz = xml("Control", "DeviceControl", 11, "<PTZCmd>A50F010800FA00B7</PTZCmd>\r\n").encode()
    answer = xml("Response", "DeviceControl", 11, "<Result>OK</Result>\r\n").encode()
    trace = [
        entry(0.0, "sent", request("MESSAGE", call_id="p", from_user=SRV, to_user=DEV, body=ptz)),
        entry(0.1, "received", request("MESSAGE", call_id="a", body=answer)),
        entry(
            0.2,
            "received",
            request("MESSAGE", call_id="u", body=xml("Response", "DeviceInfo", 1).encode()),
        ),
    ]
    assert quirks(scan(trace)) == {"ptz-control-response", "unsolicited-response"}


def test_catalog_items_without_parent() -> None:
    items = (
        "<Item><DeviceID>34020000002150000001</DeviceID><Name>g</Name></Item>"  # a group
        "<Item><DeviceID>34020000001320000012</DeviceID><Event>OFF</Event></Item>"  # an event
        "<Item><DeviceID>34020000001320000011</DeviceID><Name>a</Name></Item>"
    )
    body = xml("Notify", "Catalog", 2, items).encode()
    found = scan([entry(0.0, "received", request("NOTIFY", body=body))])
    assert quirks(found) == {"catalog-item-without-parentid"}
    assert "34020000001320000011" in found.all()[0].detail


def _offer(proto: str, setup: str | None) -> bytes:
    lines = [
        "v=0",
        "o=- 0 0 IN IP4 10.0.0.1",
        "s=Play",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        f"m=video 30000 {proto} 96",
        "a=recvonly",
        "a=rtpmap:96 PS/90000",
    ]
    if setup:
        lines += [f"a=setup:{setup}", "a=connection:new"]
    return ("\r\n".join([*lines, "y=0100000001"]) + "\r\n").encode()


def test_media_answers() -> None:
    offer = _offer("TCP/RTP/AVP", "active")
    invite = request(
        "INVITE",
        call_id="i1",
        from_user=SRV,
        to_user=DEV,
        body=offer,
        extra=(f"Contact: <sip:{SRV}@10.0.0.1:5060>", "Content-Type: application/sdp"),
    )
    copied = offer.replace(b"y=0100000001", b"y=01000000011234567890")
    ok = response(
        200,
        "INVITE",
        call_id="i1",
        to_user=DEV,
        to_tag=False,
        body=copied,
        extra=(f"Contact: <sip:{SRV}@10.0.0.1:5060>", "Content-Type: application/sdp"),
    )
    found = scan([entry(0.0, "sent", invite), entry(0.3, "received", ok)])
    assert quirks(found) == {
        "invite-200-without-to-tag",
        "invite-200-with-callers-contact",
        "ssrc-not-10-digits",
        "sdp-setup-ignores-offer",
        "sdp-answer-copies-offer",
    }
    udp_answer = _offer("RTP/AVP", None).replace(b"10.0.0.1", b"10.0.0.9")
    ok2 = response(
        200,
        "INVITE",
        call_id="i1",
        to_user=DEV,
        body=udp_answer,
        extra=(f"Contact: <sip:{DEV}@10.0.0.9:5062>",),
    )
    assert quirks(scan([entry(0.0, "sent", invite), entry(0.3, "received", ok2)])) == {
        "sdp-udp-answer-to-tcp-offer"
    }


def test_request_uris_and_charset() -> None:
    body = xml("Notify", "Keepalive", 1, encoding="UTF-8").encode()
    trace = [
        entry(0.0, "received", request("REGISTER", uri="sip:3402000000")),
        entry(0.1, "received", request("MESSAGE", uri="sip:127.0.0.1:5060", body=body)),
    ]
    assert quirks(scan(trace)) == {
        "register-to-domain-uri",
        "request-uri-ip-port",
        "utf8-declared-ascii-only",
    }
    # A platform that answers a UTF-8 device of the suite's in UTF-8 only echoes it.
    echoed = [entry(0.0, "received", request("MESSAGE", body=body), label="devices")]
    assert quirks(scan(echoed)) == set()


def test_platform_quirks() -> None:
    # the suite's device registers to the target, which answers without To-tag nor Contact
    reg = request("REGISTER", call_id="r1", extra=("Expires: 3600",))
    ok = response(
        200, "REGISTER", call_id="r1", to_user=DEV, to_tag=False, extra=("Expires: 3600",)
    )
    reg2 = request("REGISTER", call_id="r2", extra=("Expires: 3600",))
    refused = response(500, "REGISTER", call_id="r2", to_user=DEV)
    invite = request(
        "INVITE", call_id="i9", from_user=SRV, to_user=DEV, cseq="20 INVITE", max_forwards=False
    )
    bye = request("BYE", call_id="i9", from_user=SRV, to_user=DEV, cseq="20 BYE")
    info = request("INFO", call_id="i9", from_user=SRV, to_user=DEV, cseq="21 Info")
    one = xml(
        "Response",
        "Catalog",
        4,
        "<SumNum>2</SumNum><Item><DeviceID>34020000001320000011"
        f"</DeviceID><ParentID>{DEV}</ParentID></Item>",
    ).encode()
    catalog = request("MESSAGE", call_id="m1", body=one)
    unreg = request("REGISTER", call_id="r1", cseq="9 REGISTER", extra=("Expires: 0",))
    unregistered = response(200, "REGISTER", call_id="r1", seq=9, extra=("Expires: 0",))
    assert (
        quirks(scan([entry(0.0, "sent", unreg, TCP), entry(0.1, "received", unregistered, TCP)]))
        == set()
    )
    trace = [
        entry(0.0, "sent", reg, TCP),
        entry(0.1, "received", ok, TCP),
        entry(1.0, "received", invite, UDP),
        entry(2.0, "received", bye, TCP),
        entry(2.5, "received", info, TCP),
        entry(3.0, "sent", catalog, TCP),
        entry(3.1, "received", response(500, "MESSAGE", call_id="m1", seq=1), TCP),
        entry(4.0, "sent", reg2, TCP),
        entry(4.1, "received", refused, TCP),
    ]
    found = scan(trace)
    assert quirks(found) == {
        "register-200-without-to-tag",
        "register-200-without-contact",
        "request-without-max-forwards",
        "bye-cseq-equals-invite",
        "cseq-method-mismatch",
        "refuses-one-item-catalog",
        "register-500-new-call-id",
        "udp-request-to-tcp-registration",
    }
    assert all(f.side == "platform" for f in found.all())


def test_counts_repeat_and_keep_a_few_messages() -> None:
    trace = [
        entry(float(i), "received", request("OPTIONS", call_id=f"o{i}", max_forwards=False))
        for i in range(6)
    ]
    (f,) = scan(trace).all()
    assert f.quirk == "request-without-max-forwards"
    assert f.count == 6 and len(f.evidence) == 3 and f.first_seen == 0.0
    assert f.as_dict()["count"] == 6


def test_broken_messages_are_left_to_the_cases() -> None:
    trace = [
        entry(0.0, "received", b"\x00\xff not SIP at all\r\n\r\n"),
        entry(0.1, "received", sip("MESSAGE sip:x@y SIP/2.0", ["From: ;tag=1"])),
    ]
    assert len(scan(trace)) == 0
