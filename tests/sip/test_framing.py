"""TCP stream framing by Content-Length, and CRLF keep-alives (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import ParseError, parse
from gateway.sip.framing import PING_EVENT, StreamFramer

MSG = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 5\r\n\r\nhello"
EMPTY = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 2\r\n\r\n"


def test_messages_split_across_reads_and_joined_in_one() -> None:
    framer = StreamFramer()
    out = []
    for i in range(0, len(MSG) * 2, 7):
        out += framer.feed((MSG + MSG)[i : i + 7])
    assert out == [MSG, MSG]
    assert framer.pending == 0
    assert framer.feed(MSG + EMPTY + MSG[:10]) == [MSG, EMPTY]
    assert framer.pending == 10


def test_ping_and_stray_crlf() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [PING_EVENT]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MSG) == [MSG]
    assert framer.feed(b"\r\n\r\n" + MSG) == [PING_EVENT, MSG]


def test_compact_content_length() -> None:
    raw = b"MESSAGE sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcMESSAGE"
    assert StreamFramer().feed(raw) == [raw[:-7]]


def test_oversize_and_bad_length_raise() -> None:
    with pytest.raises(ParseError, match="Message Too Large"):
        StreamFramer().feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2000000\r\n\r\n")
    with pytest.raises(ParseError, match="Message Too Large"):
        StreamFramer(max_message=1024).feed(b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    with pytest.raises(ParseError, match="header block"):
        StreamFramer().feed(b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * (70 * 1024))
    with pytest.raises(ParseError, match="Bad Content-Length"):
        StreamFramer().feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: ten\r\n\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_any_chunking_gives_the_same_messages(sizes: list[int]) -> None:
    stream = (MSG + b"\r\n\r\n" + EMPTY) * 3
    framer = StreamFramer()
    out = []
    pos = 0
    for size in sizes * 20:
        if pos >= len(stream):
            break
        out += framer.feed(stream[pos : pos + size])
        pos += size
    out += framer.feed(stream[pos:])
    assert out == [MSG, PING_EVENT, EMPTY] * 3
    assert all(parse(m) for m in out if isinstance(m, bytes))
