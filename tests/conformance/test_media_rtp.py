"""RTP packetisation and reassembly (RFC 3550, GB/T 28181 Annex C), RTP over TCP (RFC 4571)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.media.clip import h264_clip
from conformance.media.ps import ps_pack
from conformance.media.rtp import (
    RtpReassembler,
    TcpDeframer,
    frame_rfc4571,
    packetise,
    rtp_fields,
)

SSRC = 200_000_001


def frames_as_packets(payloads: list[bytes], seq: int = 100, ts: int = 5000) -> list[bytes]:
    packets: list[bytes] = []
    for n, payload in enumerate(payloads):
        packets += packetise(payload, seq=seq + len(packets), timestamp=ts + 3600 * n, ssrc=SSRC)
    return packets


def pack_payloads(count: int = 6) -> list[bytes]:
    return [ps_pack(f, 3600 * n) for n, f in enumerate(h264_clip()[:count])]


def test_packetise_header_fields_sizes_and_marker() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes: 4 packets of ≤ 1400
    packets = packetise(payload, seq=65534, timestamp=0x1_2345_6789, ssrc=SSRC, payload_type=96)
    assert len(packets) == 4
    fields = [rtp_fields(p) for p in packets]
    assert all(f is not None for f in fields)
    assert [p[0] >> 6 for p in packets] == [2] * 4
    assert [f[0] for f in fields if f] == [96] * 4
    assert [f[1] for f in fields if f] == [False, False, False, True]
    assert [f[2] for f in fields if f] == [65534, 65535, 0, 1]  # wraps
    assert {f[3] for f in fields if f} == {0x2345_6789}  # one timestamp per frame, 32 bits
    assert {f[4] for f in fields if f} == {SSRC}
    assert all(len(p) - 12 <= 1400 for p in packets)
    assert b"".join(f[5] for f in fields if f) == payload


def test_empty_payload_is_one_marker_packet() -> None:
    (packet,) = packetise(b"", seq=1, timestamp=2, ssrc=3)
    assert len(packet) == 12 and packet[1] & 0x80


def test_rtp_fields_skips_csrc_extension_and_padding() -> None:
    header = bytes((0x80 | 0x20 | 0x10 | 0x01, 0x80 | 96)) + (7).to_bytes(2, "big")
    header += (9).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
    header += b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!"
    packet = header + b"payload" + b"\x00\x00\x03"
    assert rtp_fields(packet) == (96, True, 7, 9, SSRC, b"payload")
    assert rtp_fields(b"\x40" + bytes(20)) is None  # version 1
    assert rtp_fields(b"\x80\x60") is None


def test_reassembler_round_trip_and_counts() -> None:
    payloads = pack_payloads()
    packets = frames_as_packets(payloads, seq=65530)
    rtp = RtpReassembler()
    out = [unit for packet in packets for unit in rtp.push(packet)]
    assert out == payloads
    assert rtp.packets == len(packets) and rtp.lost == 0
    assert rtp.ssrcs == {SSRC} and rtp.payload_types == {96}


def test_timestamp_change_ends_a_unit_without_marker() -> None:
    first = packetise(b"A" * 3000, seq=10, timestamp=1000, ssrc=SSRC)
    first[-1] = first[-1][:1] + bytes((first[-1][1] & 0x7F,)) + first[-1][2:]  # clear marker
    second = packetise(b"B" * 10, seq=13, timestamp=4600, ssrc=SSRC)
    rtp = RtpReassembler()
    out = [u for p in first for u in rtp.push(p)]
    assert out == []
    assert rtp.push(second[0]) == [b"A" * 3000, b"B" * 10]


def test_a_dropped_packet_is_counted_lost_and_its_frame_dropped() -> None:
    payloads = [bytes([n]) * 3000 for n in range(30)]  # three packets each
    packets = frames_as_packets(payloads)
    del packets[4]  # middle packet of frame 1
    rtp = RtpReassembler(window=8)
    out = [u for p in packets for u in rtp.push(p)]
    assert out == payloads[:1] + payloads[2:]
    assert rtp.lost == 1 and rtp.dropped == 1


def test_losing_the_marker_packet_drops_only_that_frame() -> None:
    payloads = [bytes([n]) * 3000 for n in range(10)]
    packets = frames_as_packets(payloads)
    del packets[5]  # last (marker) packet of frame 1
    rtp = RtpReassembler(window=4)
    out = [u for p in packets for u in rtp.push(p)] + rtp.flush()
    assert out == payloads[:1] + payloads[2:]
    assert rtp.lost == 1


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False))
def test_reordering_within_the_window_is_tolerated(rnd: random.Random) -> None:
    payloads = [bytes([n]) * rnd.randrange(1, 4000) for n in range(20)]
    packets = frames_as_packets(payloads, seq=65500)
    shuffled = packets[:1]  # the first packet fixes where the stream starts
    for start in range(1, len(packets), 4):  # shuffle blocks of 4: displacement < window 8
        block = packets[start : start + 4]
        rnd.shuffle(block)
        shuffled += block
    rtp = RtpReassembler(window=8)
    out = [u for p in shuffled for u in rtp.push(p)] + rtp.flush()
    assert out == payloads
    assert rtp.lost == 0


def test_duplicates_and_stale_packets_are_ignored() -> None:
    payloads = [bytes([n]) * 2000 for n in range(4)]
    packets = frames_as_packets(payloads)
    rtp = RtpReassembler()
    out: list[bytes] = []
    for packet in packets:
        out += rtp.push(packet)
        out += rtp.push(packet)
    out += rtp.push(packets[0])
    assert out == payloads
    assert rtp.late == len(packets) + 1 and rtp.lost == 0


def test_non_rtp_datagrams_are_counted_invalid() -> None:
    rtp = RtpReassembler()
    assert rtp.push(b"hello") == []
    assert rtp.invalid == 1 and rtp.packets == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**5), max_size=20), st.booleans())
def test_tcp_deframer_round_trip_split_anywhere(cuts: list[int], interleaved: bool) -> None:
    packets = frames_as_packets(pack_payloads(3))
    if interleaved:
        data = b"".join(b"$\x00" + len(p).to_bytes(2, "big") + p for p in packets)
    else:
        data = b"".join(frame_rfc4571(p) for p in packets)
    points = sorted({c % (len(data) + 1) for c in cuts})
    deframer = TcpDeframer()
    out: list[bytes] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        out += deframer.feed(data[start:end])
    assert out == packets
    assert deframer.interleaved == (len(packets) if interleaved else 0)


def test_rfc4571_prefix() -> None:
    assert frame_rfc4571(b"\x80" * 13) == b"\x00\x0d" + b"\x80" * 13
    with pytest.raises(ValueError):
        frame_rfc4571(bytes(70_000))


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # not RTP at all
        b"\x00\x04\x80\x60\x00\x01",  # a length too short for an RTP header
        b"\x00\x20\x40" + bytes(40),  # RTP version 1
    ],
)
def test_tcp_deframer_raises_on_lost_framing(garbage: bytes) -> None:
    deframer = TcpDeframer()
    good = packetise(b"x" * 50, seq=1, timestamp=1, ssrc=SSRC)[0]
    assert deframer.feed(frame_rfc4571(good)) == [good]
    with pytest.raises(ValueError, match="RTP"):
        deframer.feed(garbage)
    with pytest.raises(ValueError):  # and stays broken: the connection must be dropped
        deframer.feed(frame_rfc4571(good))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_tcp_deframer_arbitrary_bytes_only_raise_value_error(data: bytes) -> None:
    try:
        TcpDeframer().feed(data)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=10))
def test_reassembler_arbitrary_datagrams_never_raise(datagrams: list[bytes]) -> None:
    rtp = RtpReassembler(window=4)
    for datagram in datagrams:
        rtp.push(datagram)
    rtp.flush()
