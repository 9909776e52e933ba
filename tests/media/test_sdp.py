"""SDP as GB uses it (reference §6.2–§6.7): parsing real-world offers and writing answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media import (
    Sdp,
    SdpError,
    answer_setup,
    offer_setup,
    parse_sdp,
    settled_transport,
)

LIVE_OFFER = (
    b"v=0\r\no=34020000002000000001 0 0 IN IP4 192.168.1.10\r\ns=Play\r\n"
    b"c=IN IP4 192.168.1.10\r\nt=0 0\r\nm=video 30000 RTP/AVP 96 97 98 99\r\na=recvonly\r\n"
    b"a=rtpmap:96 PS/90000\r\na=rtpmap:97 MPEG4/90000\r\na=rtpmap:98 H264/90000\r\n"
    b"a=rtpmap:99 SVAC/90000\r\ny=0200000001\r\nf=v/2/5/25/1/2048a///\r\n"
)


def test_live_offer() -> None:
    sdp = parse_sdp(LIVE_OFFER)
    assert sdp.session == "Play"
    assert (sdp.host, sdp.port, sdp.proto) == ("192.168.1.10", 30000, "RTP/AVP")
    assert sdp.formats == [96, 97, 98, 99]
    assert sdp.rtpmap[96] == "PS/90000"
    assert sdp.direction == "recvonly"
    assert sdp.ssrc == "0200000001"
    assert sdp.ssrc_int == 200_000_001
    assert sdp.media_info == "v/2/5/25/1/2048a///"
    assert sdp.transport == "udp"
    assert not sdp.history


def test_tcp_download_offer_with_lf_only_and_session_level_y() -> None:
    body = (
        b"v=0\no=x 0 0 IN IP4 10.0.0.5\ns=Download\nu=34020000001310000001:0\n"
        b"c=IN IP4 10.0.0.5\nt=1716163200 1716166800\ny=1200000004\n"
        b"m=video 30006 TCP/RTP/AVP 96\na=recvonly\na=rtpmap:96 PS/90000\n"
        b"a=SETUP:passive\na=connection:new\na=downloadspeed:4\na=x-vendor:1\n"
    )
    sdp = parse_sdp(body)
    assert sdp.history and sdp.tcp
    assert sdp.transport == "tcp-passive"
    assert (sdp.start, sdp.stop) == (1716163200, 1716166800)
    assert sdp.uri == "34020000001310000001:0"
    assert sdp.download_speed == 4
    assert sdp.ssrc == "1200000004"
    assert sdp.extra == ["x-vendor:1"]
    # Written back, the unknown attribute and every GB field survive.
    again = parse_sdp(sdp.to_bytes())
    assert again == sdp


def test_media_level_connection_wins() -> None:
    body = (
        b"v=0\r\nc=IN IP4 1.1.1.1\r\ns=Play\r\nt=0 0\r\n"
        b"m=video 5 RTP/AVP 96\r\nc=IN IP4 2.2.2.2\r\n"
    )
    assert parse_sdp(body).host == "2.2.2.2"


def test_setup_roles() -> None:
    active = parse_sdp(LIVE_OFFER.replace(b"RTP/AVP", b"TCP/RTP/AVP") + b"a=setup:active\r\n")
    assert active.transport == "tcp-active"
    assert answer_setup(active) == "passive"
    passive = parse_sdp(LIVE_OFFER.replace(b"RTP/AVP", b"TCP/RTP/AVP"))
    assert passive.transport == "tcp-passive"  # no a=setup: the offerer listens (2022 Annex D)
    assert answer_setup(passive) == "active"
    assert answer_setup(parse_sdp(LIVE_OFFER)) is None
    assert offer_setup("tcp-active") == "active"
    assert offer_setup("tcp-passive") == "passive"
    assert offer_setup("udp") is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "no SDP body"),
        (b"v=0\r\ns=Play\r\nc=IN IP4 1.1.1.1\r\nt=0 0\r\n", "no m= line"),
        (b"v=0\r\ns=Play\r\nt=0 0\r\nm=video 5 RTP/AVP 96\r\n", "no c= line"),
        (b"v=0\r\nc=IN IP4 1.1.1.1\r\nm=video 99999 RTP/AVP 96\r\n", "out of range"),
        (b"v=0\r\nc=IN IP4 1.1.1.1\r\nm=video 5 RTP/SAVP 96\r\n", "unsupported transport"),
        (b"v=0\r\nc=IN IP4 1.1.1.1\r\nt=now 0\r\nm=video 5 RTP/AVP 96\r\n", "bad t= start"),
        (b"hello\r\n", "bad SDP line"),
    ],
)
def test_refusals_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(body)
    assert reason in info.value.reason


def test_ssrc_not_digits_is_not_an_int() -> None:
    assert Sdp(ssrc="abc").ssrc_int is None
    assert Sdp(ssrc="9999999999").ssrc_int is None  # over 32 bits
    assert Sdp(ssrc="1999999999").ssrc_int == 1_999_999_999


@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_only_sdp_errors(data: bytes) -> None:
    try:
        parse_sdp(data)
    except SdpError:
        pass


@pytest.mark.parametrize(
    ("offered", "proto", "setup", "ours"),
    [
        # The answers RFC 4145 §4.1 expects: the offered roles stand.
        ("udp", "RTP/AVP", None, "udp"),
        ("tcp-active", "TCP/RTP/AVP", "passive", "tcp-active"),
        ("tcp-passive", "TCP/RTP/AVP", "active", "tcp-passive"),
        ("tcp-active", "TCP/RTP/AVP", None, "tcp-active"),
        ("tcp-passive", "TCP/RTP/AVP", None, "tcp-passive"),
        ("tcp-passive", "TCP/RTP/AVP", "actpass", "tcp-passive"),
        # What real devices answer instead: we take the role they left.
        ("tcp-active", "TCP/RTP/AVP", "active", "tcp-passive"),
        ("tcp-passive", "TCP/RTP/AVP", "passive", "tcp-active"),
        ("tcp-active", "RTP/AVP", None, "udp"),
        ("tcp-passive", "RTP/AVP", "active", "udp"),
        ("udp", "TCP/RTP/AVP", None, "tcp-active"),
        ("udp", "TCP/RTP/AVP", "active", "tcp-passive"),
    ],
)
def test_settled_transport_is_the_role_the_answer_leaves(
    offered: str, proto: str, setup: str | None, ours: str
) -> None:
    answer = Sdp(proto=proto, setup=setup)
    assert settled_transport(offered, answer) == ours  # type: ignore[arg-type]
