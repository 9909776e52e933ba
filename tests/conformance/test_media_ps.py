"""PS packing (GB/T 28181 Annex C.1, ISO/IEC 13818-1 §2.5) and the resynchronising demuxer."""

from __future__ import annotations

import io

import av
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.media.clip import Frame, h264_clip
from conformance.media.ps import (
    MAX_PES_PAYLOAD,
    PsDemuxer,
    crc32_mpeg,
    parse_pts,
    parse_scr,
    ps_pack,
)

SYSTEM_HEADER = b"\x00\x00\x01\xbb"
PSM = b"\x00\x00\x01\xbc"
PES_VIDEO = b"\x00\x00\x01\xe0"


def units(frames: tuple[Frame, ...] | list[Frame]) -> list[bytes]:
    return [f.data for f in frames]


def stream_of(frames: tuple[Frame, ...] | list[Frame], pts0: int = 90_000) -> bytes:
    return b"".join(ps_pack(f, pts0 + 3600 * n) for n, f in enumerate(frames))


def test_key_frame_pack_carries_system_header_and_psm_right_after_the_pack_header() -> None:
    clip = h264_clip()
    pack = ps_pack(clip[0], 12345)
    assert pack.startswith(b"\x00\x00\x01\xba")
    stuffing = pack[13] & 0x07
    after_header = pack[14 + stuffing :]
    assert after_header.startswith(SYSTEM_HEADER)
    system_len = 6 + int.from_bytes(after_header[4:6], "big")
    assert after_header[system_len:].startswith(PSM)
    assert after_header.index(PSM) < after_header.index(PES_VIDEO)


def test_non_key_frame_pack_has_neither_system_header_nor_psm() -> None:
    pack = ps_pack(h264_clip()[1], 12345)
    assert SYSTEM_HEADER not in pack and PSM not in pack
    assert pack[14:].startswith(PES_VIDEO)


def test_psm_maps_video_to_h264_with_a_valid_crc() -> None:
    pack = ps_pack(h264_clip()[0], 0)
    at = pack.index(PSM)
    psm = pack[at : at + 6 + int.from_bytes(pack[at + 4 : at + 6], "big")]
    assert crc32_mpeg(psm) == 0  # the CRC_32 makes the register zero over the whole map
    demuxer = PsDemuxer()
    demuxer.feed(pack)
    assert demuxer.stream_types == {0xE0: 0x1B}
    other = PsDemuxer()
    other.feed(ps_pack(h264_clip()[0], 0, stream_type=0x24))
    assert other.stream_types == {0xE0: 0x24}


@given(st.integers(0, (1 << 33) - 1))
def test_scr_and_pts_carry_the_33_bit_timestamp(pts: int) -> None:
    pack = ps_pack(h264_clip()[1], pts)
    assert parse_scr(pack) == pts
    pes = pack.index(PES_VIDEO)
    assert pack[pes + 7] & 0xC0 == 0x80  # PTS only
    assert parse_pts(pack[pes + 9 : pes + 14]) == pts


def test_timestamps_wrap_at_33_bits() -> None:
    demuxer = PsDemuxer()
    demuxer.feed(ps_pack(h264_clip()[0], (1 << 33) + 7))
    demuxer.flush()
    assert demuxer.pts == 7


def test_large_frame_is_split_into_several_pes_packets_and_rejoined() -> None:
    data = b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 600  # 153 605 bytes
    frame = Frame(data, key=True, index=0)
    pack = ps_pack(frame, 1000)
    assert pack.count(PES_VIDEO) == 3
    at = pack.index(PES_VIDEO)
    while at >= 0:
        assert int.from_bytes(pack[at + 4 : at + 6], "big") <= MAX_PES_PAYLOAD + 8
        at = pack.find(PES_VIDEO, at + 1)
    demuxer = PsDemuxer()
    assert demuxer.feed(pack) == []
    assert demuxer.flush() == [data]
    assert demuxer.pts == 1000 and demuxer.errors == 0


def test_round_trip_completes_a_pack_when_the_next_one_starts() -> None:
    clip = h264_clip()[:3]
    demuxer = PsDemuxer()
    assert demuxer.feed(ps_pack(clip[0], 0)) == []
    assert demuxer.feed(ps_pack(clip[1], 3600)) == [clip[0].data]
    assert demuxer.feed(ps_pack(clip[2], 7200) + b"\x00\x00\x01\xb9") == [
        clip[1].data,
        clip[2].data,
    ]
    assert demuxer.flush() == []
    assert demuxer.keyframe_packs == 1 and demuxer.errors == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_round_trip_with_input_split_anywhere(cuts: list[int]) -> None:
    clip = h264_clip()[20:30]  # crosses the key frame at 25
    data = stream_of(clip)
    points = sorted({c % (len(data) + 1) for c in cuts})
    demuxer = PsDemuxer()
    out: list[bytes] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        out += demuxer.feed(data[start:end])
    out += demuxer.flush()
    assert out == units(clip)
    assert demuxer.keyframe_packs == 1 and demuxer.errors == 0


def test_garbage_between_packs_is_skipped_and_counted() -> None:
    clip = h264_clip()[:4]
    packs = [ps_pack(f, 3600 * n) for n, f in enumerate(clip)]
    noise = b"\xff\x00\x00\x01\xe0junk\x00\x00\x01"
    demuxer = PsDemuxer()
    out = demuxer.feed(noise + packs[0] + packs[1] + noise + packs[2] + packs[3])
    out += demuxer.flush()
    # The pack before the second run of garbage cannot be told from garbage: it is dropped.
    assert out == [clip[0].data, clip[2].data, clip[3].data]
    assert demuxer.errors == 2


def test_a_truncated_pack_is_dropped_and_the_next_one_is_kept() -> None:
    clip = h264_clip()[:3]
    broken = ps_pack(clip[1], 3600)[:-100]
    demuxer = PsDemuxer()
    out = demuxer.feed(ps_pack(clip[0], 0) + broken + ps_pack(clip[2], 7200)) + demuxer.flush()
    assert out == [clip[0].data, clip[2].data]
    assert demuxer.errors == 1


def test_flush_drops_an_unfinished_pes() -> None:
    demuxer = PsDemuxer()
    assert demuxer.feed(ps_pack(h264_clip()[0], 0)[:-10]) == []
    assert demuxer.flush() == []
    assert demuxer.errors == 1
    # and the demuxer is usable again afterwards
    assert demuxer.feed(ps_pack(h264_clip()[1], 0)) + demuxer.flush() == [h264_clip()[1].data]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    demuxer = PsDemuxer()
    for chunk in chunks:
        demuxer.feed(chunk)
    demuxer.flush()
    # and a good pack after the noise still comes through
    frame = h264_clip()[0]
    assert demuxer.feed(ps_pack(frame, 0)) + demuxer.flush() == [frame.data]


def test_ffmpeg_reads_our_program_stream() -> None:
    """An independent demuxer (FFmpeg's ``mpeg``) finds H.264 via the PSM and every frame."""
    clip = h264_clip()
    with av.open(io.BytesIO(stream_of(clip)), mode="r", format="mpeg") as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        pictures = 0
        pts: list[int] = []
        for packet in container.demux(video):
            if packet.size:
                pts.append(int(packet.pts or 0))
            pictures += len(packet.decode())
    assert pictures == len(clip)
    assert pts == [90_000 + 3600 * n for n in range(len(clip))]
