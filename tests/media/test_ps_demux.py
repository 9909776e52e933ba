"""PS demultiplexing (gateway.media.ps; ISO/IEC 13818-1 §2.5, GB/T 28181 Annex C) and PS over
RTP (RFC 3550): every frame back with its key flag and PTS, arbitrary splits, resync, loss,
marker flush, audio PES, codecs from the PSM, and the bounds on what a peer can make it hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conformance.media.ps as conformance_ps
from conformance.media.clip import Frame, h264_clip
from conformance.media.ps import (
    crc32_mpeg,
    pack_header,
    pes_packet,
    ps_pack,
    system_header,
)
from conformance.media.rtp import packetise
from gateway.media import EsUnit, PsDemuxer, PsRtpReceiver, receiver_for

STEP = 3600  # 90 kHz at 25 fps


def stream_of(frames: tuple[Frame, ...] | list[Frame], pts0: int = 90_000) -> bytes:
    return b"".join(ps_pack(f, pts0 + STEP * n) for n, f in enumerate(frames))


def expected(frames: tuple[Frame, ...] | list[Frame], pts0: int = 90_000) -> list[EsUnit]:
    return [EsUnit(0xE0, "h264", pts0 + STEP * n, f.data, f.key) for n, f in enumerate(frames)]


def psm(entries: list[tuple[int, int]]) -> bytes:
    """A program stream map (§2.5.4) with (stream_type, stream_id) entries and its CRC_32."""
    body_entries = b"".join(bytes((kind, sid, 0, 0)) for kind, sid in entries)
    body = bytes((0xE0, 0xFF)) + bytes(2) + len(body_entries).to_bytes(2, "big") + body_entries
    head = b"\x00\x00\x01\xbc" + (len(body) + 4).to_bytes(2, "big")
    return head + body + crc32_mpeg(head + body).to_bytes(4, "big")


def rtp_frames(
    frames: tuple[Frame, ...] | list[Frame], *, ssrc: int = 0xBEEF, max_payload: int = 1400
) -> list[list[bytes]]:
    seq = 65_000  # wraps during the clip
    out = []
    for n, frame in enumerate(frames):
        packets = packetise(
            ps_pack(frame, 90_000 + STEP * n),
            seq=seq,
            timestamp=90_000 + STEP * n,
            ssrc=ssrc,
            max_payload=max_payload,
        )
        seq += len(packets)
        out.append(packets)
    return out


# -- the demuxer -------------------------------------------------------------------------------


def test_round_trip_of_the_clip_gives_every_frame_key_and_pts() -> None:
    clip = h264_clip()
    demuxer = PsDemuxer()
    out = demuxer.feed(stream_of(clip)) + demuxer.flush()
    assert out == expected(clip)
    assert [u.kind for u in out] == ["video"] * len(clip)
    assert demuxer.keyframe_packs == 2 and demuxer.packs == len(clip) and demuxer.errors == 0
    assert demuxer.stream_types == {0xE0: 0x1B}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_round_trip_with_input_split_anywhere(cuts: list[int]) -> None:
    clip = h264_clip()[20:30]  # crosses the key frame at 25
    data = stream_of(clip)
    points = sorted({c % (len(data) + 1) for c in cuts})
    demuxer = PsDemuxer()
    out: list[EsUnit] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        out += demuxer.feed(data[start:end])
    out += demuxer.flush()
    assert out == expected(clip)


def test_garbage_is_skipped_and_the_demuxer_resyncs() -> None:
    clip = h264_clip()[:4]
    packs = [ps_pack(f, 90_000 + STEP * n) for n, f in enumerate(clip)]
    noise = b"\xff\x00\x00\x01\xe0junk\x00\x00\x01"
    demuxer = PsDemuxer()
    out = demuxer.feed(noise + packs[0] + packs[1] + noise + packs[2] + packs[3])
    out += demuxer.flush()
    want = expected(clip)
    assert out == [want[0], want[2], want[3]]
    assert demuxer.errors == 2


def test_lose_drops_the_pack_in_progress_and_resyncs_at_the_next() -> None:
    clip = h264_clip()[:3]
    demuxer = PsDemuxer()
    first = ps_pack(clip[1], 90_000 + STEP)
    assert demuxer.feed(stream_of(clip[:1]) + first[:500]) == expected(clip[:1])
    demuxer.lose()
    out = demuxer.feed(first[900:] + ps_pack(clip[2], 90_000 + 2 * STEP)) + demuxer.flush()
    assert out == expected(clip)[2:]
    assert demuxer.errors == 0  # loss is the transport's to count


def test_audio_pes_are_units_of_their_own_with_their_own_pts() -> None:
    """G.711 A-law in PES 0xC0, named by the PSM's stream_type 0x90 (GB/T 28181 Annex C)."""
    clip = h264_clip()[:2]
    pcma = [bytes([0xD5]) * 320, bytes([0x55]) * 320]
    key_pack = (
        pack_header(90_000)
        + system_header()
        + psm([(0x1B, 0xE0), (0x90, 0xC0)])
        + pes_packet(clip[0].data, 90_000)
        + pes_packet(pcma[0], 90_100, stream_id=0xC0)
    )
    next_pack = (
        pack_header(93_600)
        + pes_packet(pcma[1], 92_980, stream_id=0xC0)
        + pes_packet(clip[1].data, 93_600)
    )
    demuxer = PsDemuxer()
    out = demuxer.feed(key_pack + next_pack) + demuxer.flush()
    audio = [u for u in out if u.kind == "audio"]
    video = [u for u in out if u.kind == "video"]
    assert audio == [
        EsUnit(0xC0, "pcma", 90_100, pcma[0], False),
        EsUnit(0xC0, "pcma", 92_980, pcma[1], False),
    ]
    assert video == expected(clip)
    assert demuxer.stream_types == {0xE0: 0x1B, 0xC0: 0x90}


def test_audio_without_a_psm_is_of_unknown_codec_and_video_is_taken_for_h264() -> None:
    frame = h264_clip()[1]
    pack = pack_header(0) + pes_packet(frame.data, 0) + pes_packet(b"\x01" * 10, 5, stream_id=0xC0)
    demuxer = PsDemuxer()
    out = demuxer.feed(pack) + demuxer.flush()
    assert [(u.kind, u.codec) for u in out] == [("audio", "unknown"), ("video", "h264")]


def test_h265_psm_gives_codec_h265_and_irap_keys() -> None:
    """stream_type 0x24 is H.265; key pictures are IRAP NAL unit types 16..21 (H.265 Table 7-1)."""
    vps, idr = b"\x00\x00\x00\x01\x40\x01\x0c", b"\x00\x00\x00\x01\x26\x01\xaf\x00\x80"
    trail = b"\x00\x00\x00\x01\x02\x01\xd0\x00\x80"
    frames = [Frame(vps + idr, True, 0), Frame(trail, False, 1)]
    data = b"".join(ps_pack(f, STEP * n, stream_type=0x24) for n, f in enumerate(frames))
    demuxer = PsDemuxer()
    out = demuxer.feed(data) + demuxer.flush()
    assert [(u.codec, u.key, u.data) for u in out] == [
        ("h265", True, vps + idr),
        ("h265", False, trail),
    ]
    # the same bytes read as H.264 would give a different answer: the PSM decides
    assert demuxer.stream_types == {0xE0: 0x24}


def test_a_large_frame_over_several_pes_packets_is_one_unit_with_the_first_pts() -> None:
    data = b"\x00\x00\x00\x01\x65" + bytes(range(1, 256)) * 600
    frame = Frame(data, key=True, index=0)
    demuxer = PsDemuxer()
    assert demuxer.feed(ps_pack(frame, 1000)) + demuxer.flush() == [
        EsUnit(0xE0, "h264", 1000, data, True)
    ]


@pytest.mark.timeout(30)
def test_a_pack_that_never_ends_is_bounded() -> None:
    """PES after PES with no next pack header: held up to ``max_pack``, then dropped."""
    demuxer = PsDemuxer(max_pack=300_000)
    demuxer.feed(pack_header(0))
    pes = pes_packet(b"\x00\x00\x00\x01\x41" + bytes(range(1, 250)) * 240, None)
    for _ in range(40):  # 2.4 MB
        assert demuxer.feed(pes) == []
        assert demuxer._size <= 300_000 and len(demuxer._buf) <= len(pes)
    assert demuxer.oversize == 1
    frame = h264_clip()[0]
    assert demuxer.feed(ps_pack(frame, 0)) + demuxer.flush() == [
        EsUnit(0xE0, "h264", 0, frame.data, True)
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    demuxer = PsDemuxer()
    for chunk in chunks:
        demuxer.feed(chunk)
    demuxer.flush()
    frame = h264_clip()[0]
    assert [u.data for u in demuxer.feed(ps_pack(frame, 0)) + demuxer.flush()] == [frame.data]


def test_conformance_demuxer_is_the_gateways() -> None:
    """The suite's PsDemuxer narrows the gateway's; the parsing code exists once."""
    wrapper = conformance_ps.PsDemuxer()
    assert isinstance(wrapper._demuxer, PsDemuxer)
    assert not hasattr(conformance_ps.PsDemuxer, "_parse")


# -- PS over RTP -------------------------------------------------------------------------------


def test_rtp_round_trip_and_the_marker_flushes_each_frame_at_once() -> None:
    clip = h264_clip()
    receiver = PsRtpReceiver()
    out: list[EsUnit] = []
    for packets in rtp_frames(clip):
        for i, packet in enumerate(packets):
            units = receiver.push(packet)
            # the frame comes out with its last packet, not when the next pack starts
            assert len(units) == (1 if i == len(packets) - 1 else 0)
            out += units
    assert out == expected(clip)
    assert receiver.lost == receiver.bad == receiver.late == 0
    assert receiver.packets == sum(len(p) for p in rtp_frames(clip))


def test_rtp_without_marker_bits_still_gives_every_frame() -> None:
    clip = h264_clip()[:5]
    receiver = PsRtpReceiver()
    out = [
        u
        for packets in rtp_frames(clip)
        for p in packets
        for u in receiver.push(p[:1] + bytes((p[1] & 0x7F,)) + p[2:])
    ]
    assert out == expected(clip)[:-1]  # each frame ends when the next timestamp comes
    out += receiver.flush()
    assert out == expected(clip)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_rtp_loss_loses_only_the_affected_frame(which: str) -> None:
    clip = h264_clip()[:8]
    frames = rtp_frames(clip, max_payload=500)
    victim = frames[3]
    assert len(victim) >= 3
    del victim[{"first": 0, "middle": len(victim) // 2, "last": -1}[which]]
    receiver = PsRtpReceiver()
    out = [u for packets in frames for p in packets for u in receiver.push(p)]
    out += receiver.flush()
    assert out == [u for n, u in enumerate(expected(clip)) if n != 3]
    assert receiver.lost == 1
    assert receiver.demuxer.errors == 0  # a loss is not a malformed stream


def test_rtp_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    clip = h264_clip()[:4]
    frames = rtp_frames(clip, max_payload=600)
    receiver = PsRtpReceiver()
    out: list[EsUnit] = []
    for packets in frames:
        for n, packet in enumerate(packets):
            out += receiver.push(packet)
            if n:
                out += receiver.push(packets[n - 1])  # an older one again
    assert out == expected(clip)
    assert receiver.late == sum(len(p) - 1 for p in frames) and receiver.lost == 0


def test_rtp_header_with_csrcs_extension_and_padding() -> None:
    """RFC 3550 §5.1/§5.3.1: CC × 4 bytes, the extension's length in words, padding at the end."""
    clip = h264_clip()[:3]
    receiver = PsRtpReceiver()
    out: list[EsUnit] = []
    for packets in rtp_frames(clip):
        for p in packets:
            csrcs = bytes(range(8))
            extension = b"\xbe\xde\x00\x01" + b"\x10\xff\x00\x00"
            padding = bytes(3) + b"\x04"
            first = bytes(((p[0] & 0xC0) | 0x20 | 0x10 | 2,))
            out += receiver.push(first + p[1:12] + csrcs + extension + p[12:] + padding)
    assert out == expected(clip)


def test_rtp_a_new_ssrc_resets_the_stream() -> None:
    clip = h264_clip()[:3]
    receiver = PsRtpReceiver()
    first = rtp_frames(clip[:1], max_payload=300)[0]
    other = rtp_frames(clip[1:], ssrc=0x5151, max_payload=300)
    out = [u for p in first[:-1] for u in receiver.push(p)]  # its last packet never comes
    out += [u for packets in other for p in packets for u in receiver.push(p)]
    assert [u.data for u in out] == [clip[1].data, clip[2].data]
    assert receiver.ssrc == 0x5151 and receiver.lost == 0


def test_rtp_bad_packets_are_counted() -> None:
    receiver = PsRtpReceiver()
    assert receiver.push(b"\x80\x60\x00") == []  # short
    assert receiver.push(b"\x40\x60" + bytes(20)) == []  # version 1
    assert receiver.push(b"\x90\x60" + bytes(10) + b"\x00\x00\x00\x09") == []  # extension past end
    assert receiver.push(b"\xa0\x60" + bytes(10) + b"\x00\x00") == []  # padding count 0
    assert receiver.bad == 4 and receiver.packets == 0


@pytest.mark.timeout(30)
def test_rtp_a_frame_that_never_ends_is_bounded() -> None:
    """One timestamp, no marker, forever: held up to ``max_pack``, then dropped."""
    receiver = PsRtpReceiver(max_pack=200_000)
    head = pack_header(0)
    payload = head + bytes(1386)
    for seq in range(1000):  # 1.4 MB
        packet = b"\x80\x60" + seq.to_bytes(2, "big") + bytes(4) + b"\x00\x00\x00\x07" + payload
        assert receiver.push(packet) == []
        assert receiver._size <= 200_000
    assert receiver.oversize >= 1
    good = rtp_frames(h264_clip()[:1], ssrc=7)[0]
    good = [p[:2] + (1000 + n).to_bytes(2, "big") + p[4:] for n, p in enumerate(good)]
    assert [u.data for p in good for u in receiver.push(p)] == [h264_clip()[0].data]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=16))
def test_rtp_arbitrary_packets_never_raise(packets: list[bytes]) -> None:
    receiver = PsRtpReceiver()
    for packet in packets:
        receiver.push(packet)


def test_receiver_for_picks_ps_by_encoding_name() -> None:
    assert isinstance(receiver_for("PS"), PsRtpReceiver)
    assert isinstance(receiver_for("MP2P"), PsRtpReceiver)
    assert isinstance(receiver_for("ps"), PsRtpReceiver)
    assert receiver_for("PCMA") is None
