"""TCP stream framing by Content-Length, and CRLF keep-alives (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import framing, parse
from gateway.sip.framing import PING_EVENT, Refused, StreamFramer

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


def _refused(framer: StreamFramer, data: bytes) -> Refused:
    *_, last = framer.feed(data)
    assert isinstance(last, Refused)
    assert framer.feed(MSG) == []  # nothing more is framed after a refusal
    return last


def test_oversize_and_bad_length_are_refused_with_the_head() -> None:
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2000000\r\n\r\n"
    got = _refused(StreamFramer(), head)
    assert (got.error.reason, got.error.status, got.head) == ("Message Too Large", 513, head)
    got = _refused(StreamFramer(max_message=1024), b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    assert (got.error.reason, got.head) == ("Message Too Large", b"")
    got = _refused(StreamFramer(), b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * (70 * 1024))
    assert "header block" in got.error.detail
    got = _refused(StreamFramer(), b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: ten\r\n\r\n")
    assert got.error.reason == "Bad Content-Length"
    got = _refused(StreamFramer(), b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n")
    assert got.error.reason == "Bad Content-Length"


def test_messages_before_a_refusal_are_kept() -> None:
    bad = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n"
    out = StreamFramer().feed(MSG + bad + MSG)
    assert out[0] == MSG and isinstance(out[1], Refused) and len(out) == 2


def test_a_second_content_length_is_refused() -> None:
    """Issue 13 item 11: the framing cannot be trusted, so the rest of the stream must not be
    read as new messages (it was: the first Content-Length won, the rest became a request)."""
    raw = (
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 0\r\nl: 40\r\n\r\n"
        b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: 9\r\n\r\n"
    )
    out = StreamFramer().feed(raw)
    assert len(out) == 1 and isinstance(out[0], Refused)
    assert out[0].error.reason == "Duplicate Content-Length"


def test_content_length_rules_agree_with_the_parser() -> None:
    """Issue 13 items 8 and 9: leading zeros are fine (1*DIGIT); a body up to the message limit
    is fine (it was refused past 6 digits in the parser, 9 in the framer)."""
    zeros = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 0000005\r\n\r\nhello"
    assert StreamFramer().feed(zeros) == [zeros]
    assert parse(zeros).body == b"hello"
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1000000\r\n\r\n"
    big = head + b"x" * 1_000_000
    assert StreamFramer().feed(big) == [big]
    assert len(parse(big).body) == 1_000_000


def test_a_body_arriving_a_byte_at_a_time_is_framed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header block is read once, not again for each byte of the body (a slow sender
    made that quadratic: a 64 KiB header block read for each of up to 1 MiB of body bytes)."""
    calls = []
    original = framing._content_length

    def counting(head: bytes) -> int:
        calls.append(len(head))
        return original(head)

    monkeypatch.setattr(framing, "_content_length", counting)
    framer = StreamFramer()
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3000\r\n\r\n"
    assert framer.feed(head) == []
    out = []
    for _ in range(3000):
        out += framer.feed(b"y")
    assert out == [head + b"y" * 3000]
    assert len(calls) == 1


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
