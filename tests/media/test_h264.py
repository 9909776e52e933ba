"""H.264 access units (gateway.media.h264): Annex B, SPS parsing (ITU-T H.264 §7.3.2.1.1, §9.1),
parameter sets before key frames, and RFC 6184 depacketisation (single NAL, STAP-A, FU-A)."""

from __future__ import annotations

import functools
from fractions import Fraction

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.media.clip import h264_clip
from gateway.media import (
    H264RtpReceiver,
    ParameterSets,
    SpsInfo,
    is_key,
    parse_sps,
    receiver_for,
    split_annexb,
)

SC = b"\x00\x00\x00\x01"


def normal(au: bytes) -> bytes:
    """An access unit with 4-byte start codes only, as the receiver writes them."""
    return SC + SC.join(split_annexb(au))


def sps_of(au: bytes) -> bytes:
    return next(nal for nal in split_annexb(au) if nal[0] & 0x1F == 7)


@functools.lru_cache(maxsize=8)
def encode_one(width: int, height: int, pix_fmt: str, params: str) -> bytes:
    """One key frame of a flat picture, encoded by libx264 with ``params``."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, pix_fmt
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"preset": "ultrafast", "x264-params": params}
    encoder.open()
    frame = av.VideoFrame(width, height, "yuv420p").reformat(format=pix_fmt)
    frame.pts = 0
    packets = [bytes(p) for p in encoder.encode(frame)] + [bytes(p) for p in encoder.encode(None)]
    return packets[0]


# -- Annex B and SPS ----------------------------------------------------------------------------


def test_split_annexb_and_is_key_on_the_clip() -> None:
    clip = h264_clip()
    key_nals = split_annexb(clip[0].data)
    assert [n[0] & 0x1F for n in key_nals][:2] == [7, 8]
    assert key_nals[-1][0] & 0x1F == 5
    assert all(not n.endswith(b"\x00") for n in key_nals)
    assert [is_key(f.data) for f in clip] == [f.key for f in clip]
    assert split_annexb(b"\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x41\x9a") == [
        b"\x09\xf0",
        b"\x41\x9a",
    ]


def test_parse_sps_of_the_clip() -> None:
    info = parse_sps(sps_of(h264_clip()[0].data))
    assert (info.width, info.height) == (320, 240)
    assert (
        info.profile_level_id == f"{info.profile_idc:02x}{info.constraints:02x}{info.level_idc:02x}"
    )
    assert SpsInfo(66, 0xE0, 31, 1, 1).profile_level_id == "42e01f"


@pytest.mark.parametrize(
    ("pix_fmt", "params", "profile"),
    [
        ("yuv420p", "repeat-headers=1", None),  # ultrafast: constrained baseline
        ("yuv420p", "8x8dct=1:cqm=jvt", 100),  # High with scaling lists in the SPS
        ("yuv444p", "8x8dct=1", 244),  # High 4:4:4: chroma_format_idc 3, crop unit 1
        ("yuv420p", "interlaced=1", None),  # frame_mbs_only_flag 0: map units are field pairs
    ],
)
def test_parse_sps_of_a_1080p_stream_with_cropping(
    pix_fmt: str, params: str, profile: int | None
) -> None:
    """1080 is not a multiple of 16: the SPS codes 1088 lines and crops 8 (§7.4.2.1.1)."""
    au = encode_one(1920, 1080, pix_fmt, params)
    info = parse_sps(sps_of(au))
    assert (info.width, info.height) == (1920, 1080)
    if profile is not None:
        assert info.profile_idc == profile
    if pix_fmt == "yuv444p":
        assert info.chroma_format_idc == 3
    if "interlaced" in params:
        assert not info.frame_mbs_only
    # and FFmpeg agrees on the size
    decoder = av.CodecContext.create("h264", "r")
    pictures = decoder.decode(av.Packet(au)) + decoder.decode(None)
    assert (pictures[0].width, pictures[0].height) == (1920, 1080)


def test_parse_sps_removes_emulation_prevention_bytes() -> None:
    """An SPS whose RBSP holds ``00 00 0x``: on the wire each such pair is escaped with 03."""
    # profile 66, constraints 0, level 0, then ue fields: id 0 ('1'), log2_max_frame_num-4 = 0,
    # poc type 2 ('011'), max refs 0, gaps 0, width_mbs-1 = 19, height_mbs-1 = 14, frame_mbs 1,
    # direct8x8 1, no cropping, no VUI, stop bit.
    bits = "1" + "1" + "011" + "1" + "0" + "000010100" + "0001111" + "1" + "1" + "0" + "0" + "1"
    bits += "0" * (-len(bits) % 8)
    rbsp = bytes((66, 0, 0)) + int(bits, 2).to_bytes(len(bits) // 8, "big")
    escaped = b"\x67" + rbsp.replace(b"\x00\x00", b"\x00\x00\x03")
    assert b"\x00\x00\x03" in escaped
    info = parse_sps(escaped)
    assert (info.profile_idc, info.level_idc, info.width, info.height) == (66, 0, 320, 240)


@pytest.mark.parametrize(
    "nal",
    [b"", b"\x68\x42\x00\x1f\xff", b"\x67\x42", b"\x67\x42\x00\x1f\x00\x00\x00\x00", b"\xe7" * 9],
)
def test_parse_sps_refuses_garbage(nal: bytes) -> None:
    with pytest.raises(ValueError):
        parse_sps(nal)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parse_sps_of_arbitrary_bytes_gives_only_value_error(data: bytes) -> None:
    try:
        info = parse_sps(b"\x67" + data)
    except ValueError:
        return
    assert info.width > 0 and info.height > 0


# -- parameter sets ----------------------------------------------------------------------------


def test_parameter_sets_prefix_a_key_frame_that_lacks_them() -> None:
    clip = h264_clip()
    sets = ParameterSets()
    assert sets.complete(clip[0].data) == clip[0].data
    assert sets.info is not None and (sets.info.width, sets.info.height) == (320, 240)
    bare = SC + SC.join(n for n in split_annexb(clip[25].data) if n[0] & 0x1F not in (7, 8))
    completed = sets.complete(bare)
    assert [n[0] & 0x1F for n in split_annexb(completed)][:2] == [7, 8]
    assert completed.endswith(bare)
    assert sets.complete(clip[1].data) == clip[1].data  # not a key frame: left alone
    # a leading access unit delimiter stays first
    with_aud = SC + b"\x09\xf0" + bare
    types = [n[0] & 0x1F for n in split_annexb(sets.complete(with_aud))]
    assert types[:3] == [9, 7, 8]
    # and the completed stream decodes from that key frame on
    decoder = av.CodecContext.create("h264", "r")
    pictures = decoder.decode(av.Packet(completed))
    pictures += decoder.decode(av.Packet(clip[26].data)) + decoder.decode(None)
    assert [p.width for p in pictures] == [320, 320]


def test_parameter_sets_ignore_a_broken_sps() -> None:
    sets = ParameterSets()
    sets.complete(h264_clip()[0].data)
    good = sets.sps
    sets.complete(SC + b"\x67\x42" + SC + b"\x65\x88")
    assert sets.sps == good


# -- RFC 6184 ----------------------------------------------------------------------------------


def _aggregate(small: list[bytes], payloads: list[bytes]) -> None:
    """A run of small NAL units: one single NAL unit packet, or a STAP-A (RFC 6184 §5.7.1)."""
    if len(small) == 1:
        payloads.append(small[0])
    elif small:
        nri = max(s[0] & 0x60 for s in small)
        payloads.append(bytes((nri | 24,)) + b"".join(len(s).to_bytes(2, "big") + s for s in small))
    small.clear()


def _payloads(au: bytes, mtu: int, stap: int) -> list[bytes]:
    payloads: list[bytes] = []
    small: list[bytes] = []
    for nal in split_annexb(au):
        if len(nal) < stap:
            small.append(nal)
            continue
        _aggregate(small, payloads)
        if len(nal) <= mtu:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28  # FU-A (RFC 6184 §5.8)
        body = nal[1:]
        chunks = [body[i : i + mtu] for i in range(0, len(body), mtu)]
        for i, chunk in enumerate(chunks):
            fu = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
            payloads.append(bytes((indicator, fu | (nal[0] & 0x1F))) + chunk)
    _aggregate(small, payloads)
    return payloads


def packetise(
    aus: list[bytes], *, mtu: int = 1200, seq: int = 65_530, ssrc: int = 0x1234, stap: int = 200
) -> list[list[bytes]]:
    """RFC 6184 packets per access unit: STAP-A for runs of small NAL units, FU-A for large
    ones, single NAL unit packets otherwise; the marker bit on each unit's last packet."""
    out: list[list[bytes]] = []
    for n, au in enumerate(aus):
        payloads = _payloads(au, mtu, stap)
        packets = []
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == len(payloads) - 1 else 0
            header = bytes((0x80, marker | 96)) + (seq & 0xFFFF).to_bytes(2, "big")
            header += (3600 * n).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
            packets.append(header + payload)
            seq += 1
        out.append(packets)
    return out


def test_round_trip_of_the_clip_with_fu_a_and_stap_a() -> None:
    clip = h264_clip()
    frames = packetise([f.data for f in clip])
    kinds = {p[12] & 0x1F for packets in frames for p in packets}
    assert {24, 28} <= kinds  # both aggregation and fragmentation were exercised
    receiver = H264RtpReceiver()
    out = []
    for packets in frames:
        for i, packet in enumerate(packets):
            units = receiver.push(packet)
            # the marker bit ends the unit at once
            assert len(units) == (1 if i == len(packets) - 1 else 0)
            out += units
    assert [u.data for u in out] == [normal(f.data) for f in clip]
    assert [u.key for u in out] == [f.key for f in clip]
    assert [u.pts for u in out] == [3600 * n for n in range(len(clip))]
    assert {(u.codec, u.kind, u.stream_id) for u in out} == {("h264", "video", 0xE0)}
    assert receiver.lost == receiver.bad == receiver.dropped == 0


def test_without_marker_bits_the_timestamp_change_ends_a_unit() -> None:
    clip = h264_clip()[:3]
    receiver = H264RtpReceiver()
    out = []
    for packets in packetise([f.data for f in clip]):
        for packet in packets:
            out += receiver.push(packet[:1] + bytes((packet[1] & 0x7F,)) + packet[2:])
    assert [u.data for u in out] == [normal(f.data) for f in clip[:2]]


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_lost_packet_drops_only_its_access_unit(which: str) -> None:
    clip = h264_clip()[:6]
    frames = packetise([f.data for f in clip], mtu=300)
    victim = frames[2]
    assert len(victim) >= 3
    del victim[{"first": 0, "middle": len(victim) // 2, "last": -1}[which]]
    receiver = H264RtpReceiver()
    out = [u for packets in frames for p in packets for u in receiver.push(p)]
    assert [u.data for u in out] == [normal(f.data) for n, f in enumerate(clip) if n != 2]
    assert receiver.lost == 1 and receiver.dropped == 1


def test_losing_the_stap_a_that_starts_a_key_frame_drops_that_frame() -> None:
    """The unit after a marker lost its head (SPS and PPS in a STAP-A): the rest of it would
    arrive whole-looking, yet cannot be decoded by a viewer starting there."""
    clip = h264_clip()[24:27]
    frames = packetise([f.data for f in clip])
    assert frames[1][0][12] & 0x1F == 24
    del frames[1][0]
    receiver = H264RtpReceiver()
    out = [u for packets in frames for p in packets for u in receiver.push(p)]
    assert [u.data for u in out] == [normal(clip[0].data), normal(clip[2].data)]
    assert receiver.lost == 1 and receiver.dropped == 1


def test_without_marker_bits_a_loss_at_a_unit_boundary_drops_both_sides() -> None:
    """No marker bit says whether the lost packet was the old unit's tail or the new one's head
    (here: the SPS before an IDR), so neither unit is delivered."""
    clip = h264_clip()[24:28]
    frames = packetise([f.data for f in clip], stap=0)
    frames = [[p[:1] + bytes((p[1] & 0x7F,)) + p[2:] for p in packets] for packets in frames]
    assert frames[1][0][12] & 0x1F == 7
    del frames[1][0]
    receiver = H264RtpReceiver()
    out = [u for packets in frames for p in packets for u in receiver.push(p)]
    assert [u.data for u in out] == [normal(clip[2].data)]  # unit 3 waits for a next timestamp
    assert receiver.dropped == 2


def test_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    clip = h264_clip()[:3]
    frames = packetise([f.data for f in clip], mtu=400)
    receiver = H264RtpReceiver()
    out = []
    for packets in frames:
        for packet in packets:
            out += receiver.push(packet)
            out += receiver.push(packet)  # duplicate
    assert [u.data for u in out] == [normal(f.data) for f in clip]
    assert receiver.late == sum(len(p) for p in frames)


def test_a_new_ssrc_starts_afresh() -> None:
    clip = h264_clip()[:2]
    first = packetise([clip[0].data], mtu=300)[0]
    second = packetise([clip[1].data], mtu=300, ssrc=0x9999, seq=7)[0]
    receiver = H264RtpReceiver()
    out = [u for p in first[:-1] + second for u in receiver.push(p)]
    assert [u.data for u in out] == [normal(clip[1].data)]
    assert receiver.lost == 0


@pytest.mark.timeout(30)
def test_an_access_unit_that_never_ends_is_bounded() -> None:
    """FU-A fragments of one timestamp, never an end: held up to ``max_au``, then dropped."""
    receiver = H264RtpReceiver(max_au=100_000)
    header = bytes((0x80, 96))
    chunk = bytes(1000)
    out = []
    for seq in range(500):
        fu = 0x85 if seq == 0 else 0x05
        packet = header + seq.to_bytes(2, "big") + bytes(4) + bytes((0, 0, 0, 1))
        out += receiver.push(packet + bytes((0x7C, fu)) + chunk)
        assert receiver._size <= 100_000
    assert out == [] and receiver.oversize == 1
    # the next unit comes through
    good = packetise([h264_clip()[0].data], seq=500, ssrc=1)[0]
    good = [p[:4] + (7200).to_bytes(4, "big") + p[8:] for p in good]
    assert [u.data for p in good for u in receiver.push(p)] == [normal(h264_clip()[0].data)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_arbitrary_packets_never_raise(packets: list[bytes]) -> None:
    receiver = H264RtpReceiver()
    for packet in packets:
        for unit in receiver.push(packet):
            assert unit.data.startswith(SC)


def test_bad_packets_are_counted() -> None:
    receiver = H264RtpReceiver()
    assert receiver.push(b"\x40" + bytes(20)) == []  # RTP version 1
    assert receiver.push(b"\xa0\x60" + bytes(10) + b"\x41\x05") == []  # padding past the end
    assert receiver.push(b"\x80\xe0" + bytes(10) + b"\x1a\x00") == []  # MTAP16: not mode 1
    assert receiver.bad == 3


def test_receiver_for_picks_by_encoding_name() -> None:
    assert isinstance(receiver_for("H264"), H264RtpReceiver)
    assert isinstance(receiver_for("h264"), H264RtpReceiver)
    assert receiver_for("H265") is None
