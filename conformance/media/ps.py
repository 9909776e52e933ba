"""MPEG-2 Program Stream packing and unpacking for GB/T 28181 media (ISO/IEC 13818-1 §2.5).

GB/T 28181 Annex C.1 (reference §6.3, "PS packing"): one video frame per PS pack; a key-frame
pack carries the system header and the program stream map right after the pack header, before
the first PES; other packs carry neither. Video is stream ``0xE0`` with PSM ``stream_type``
``0x1B`` (H.264). PES packets hold at most 65 535 bytes after their length field, so a large
frame is split over several PES packets of the same pack; only the first carries the PTS.

The muxer is a pure function. The demuxer is the gateway's (:mod:`gateway.media.ps`, a sans-I/O
state machine that tolerates arbitrary splits and resynchronises on the next pack header after
garbage), narrowed here to the video access units the suite counts and decodes.
"""

from __future__ import annotations

from gateway.media.ps import EsUnit, parse_pts
from gateway.media.ps import PsDemuxer as _GatewayDemuxer

from .clip import Frame

__all__ = [
    "MAX_PES_PAYLOAD",
    "PsDemuxer",
    "crc32_mpeg",
    "pack_header",
    "parse_pts",
    "parse_scr",
    "pes_packet",
    "program_stream_map",
    "ps_pack",
    "system_header",
]

PACK_START = b"\x00\x00\x01\xba"
SYSTEM_HEADER_ID = 0xBB
PSM_ID = 0xBC
PROGRAM_END_ID = 0xB9
VIDEO_STREAM_ID = 0xE0
MAX_PES_PAYLOAD = 65_000
# Declared in the pack and system headers; receivers do not police it (units of 50 bytes/s).
_MUX_RATE = 20_000
_PTS_MASK = (1 << 33) - 1


def ps_pack(frame: Frame, pts90k: int, *, stream_type: int = 0x1B) -> bytes:
    """One PS pack holding ``frame``: pack header, [system header, PSM,] PES packet(s)."""
    pts = pts90k & _PTS_MASK
    parts = [pack_header(pts)]
    if frame.key:
        parts.append(system_header())
        parts.append(program_stream_map(stream_type))
    data = frame.data
    for start in range(0, max(len(data), 1), MAX_PES_PAYLOAD):
        parts.append(pes_packet(data[start : start + MAX_PES_PAYLOAD], pts if start == 0 else None))
    return b"".join(parts)


def pack_header(scr: int, mux_rate: int = _MUX_RATE) -> bytes:
    """The 14-byte MPEG-2 pack header (§2.5.3.3) with SCR base ``scr`` and no stuffing."""
    scr &= _PTS_MASK
    ext = 0
    return PACK_START + bytes(
        (
            0x44 | ((scr >> 27) & 0x38) | ((scr >> 28) & 0x03),
            (scr >> 20) & 0xFF,
            0x04 | ((scr >> 12) & 0xF8) | ((scr >> 13) & 0x03),
            (scr >> 5) & 0xFF,
            0x04 | ((scr << 3) & 0xF8) | ((ext >> 7) & 0x03),
            0x01 | ((ext << 1) & 0xFE),
            (mux_rate >> 14) & 0xFF,
            (mux_rate >> 6) & 0xFF,
            0x03 | ((mux_rate << 2) & 0xFC),
            0xF8,  # reserved bits, pack_stuffing_length 0
        )
    )


def system_header(rate_bound: int = _MUX_RATE) -> bytes:
    """System header (§2.5.3.5) announcing one video stream (``0xE0``) and no audio."""
    body = bytes(
        (
            0x80 | ((rate_bound >> 15) & 0x7F),
            (rate_bound >> 7) & 0xFF,
            0x01 | ((rate_bound << 1) & 0xFE),
            0x00,  # audio_bound 0, fixed_flag 0, CSPS_flag 0
            0xE1,  # audio lock 1, video lock 1, marker, video_bound 1
            0x7F,  # packet_rate_restriction_flag 0, reserved
            VIDEO_STREAM_ID,
            0xE0 | 0x20 | 0x02,  # '11', P-STD_buffer_bound_scale 1 (×1024), size bound 512 KiB
            0x00,
        )
    )
    return b"\x00\x00\x01\xbb" + len(body).to_bytes(2, "big") + body


def program_stream_map(stream_type: int = 0x1B, version: int = 0) -> bytes:
    """Program stream map (§2.5.4) mapping ``0xE0`` to ``stream_type``, with its CRC_32."""
    entries = bytes((stream_type, VIDEO_STREAM_ID, 0x00, 0x00))
    body = (
        bytes((0x80 | 0x60 | (version & 0x1F), 0xFF))  # current_next 1, version; marker
        + (0).to_bytes(2, "big")  # program_stream_info_length
        + len(entries).to_bytes(2, "big")
        + entries
    )
    head = b"\x00\x00\x01\xbc" + (len(body) + 4).to_bytes(2, "big")
    return head + body + crc32_mpeg(head + body).to_bytes(4, "big")


def pes_packet(payload: bytes, pts: int | None, stream_id: int = VIDEO_STREAM_ID) -> bytes:
    """A PES packet (§2.4.3.6) with an MPEG-2 header, and the PTS when ``pts`` is given."""
    if pts is None:
        header = bytes((0x80, 0x00, 0x00))
    else:
        pts &= _PTS_MASK
        header = bytes(
            (
                0x84,  # '10', data_alignment_indicator: the access unit starts here
                0x80,  # PTS only
                0x05,
                0x21 | ((pts >> 29) & 0x0E),
                (pts >> 22) & 0xFF,
                0x01 | ((pts >> 14) & 0xFE),
                (pts >> 7) & 0xFF,
                0x01 | ((pts << 1) & 0xFE),
            )
        )
    length = len(header) + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"PES payload of {len(payload)} bytes does not fit one PES packet")
    return b"\x00\x00\x01" + bytes((stream_id,)) + length.to_bytes(2, "big") + header + payload


def parse_scr(header: bytes) -> int:
    """The SCR base of a pack header starting at ``header[0]``."""
    b = header[4:10]
    return (
        ((b[0] >> 3) & 0x07) << 30
        | (b[0] & 0x03) << 28
        | b[1] << 20
        | ((b[2] >> 3) & 0x1F) << 15
        | (b[2] & 0x03) << 13
        | b[3] << 5
        | (b[4] >> 3) & 0x1F
    )


def crc32_mpeg(data: bytes) -> int:
    """CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, initial all ones; Annex A)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


class PsDemuxer:
    """The gateway's demuxer (:class:`gateway.media.ps.PsDemuxer`) seen as the suite uses it:
    video access units only, as bytes, and the PTS of the last one in :attr:`pts`.

    The demultiplexing code exists once, in the gateway; this wrapper only narrows its output.
    """

    def __init__(self) -> None:
        self._demuxer = _GatewayDemuxer()
        self.pts: int | None = None  # PTS of the last access unit returned

    @property
    def keyframe_packs(self) -> int:
        return self._demuxer.keyframe_packs

    @property
    def errors(self) -> int:
        return self._demuxer.errors

    @property
    def packs(self) -> int:
        return self._demuxer.packs

    @property
    def stream_types(self) -> dict[int, int]:
        return self._demuxer.stream_types

    def feed(self, data: bytes) -> list[bytes]:
        """Consume PS bytes; return the access units of the packs they completed."""
        return self._video(self._demuxer.feed(data))

    def flush(self) -> list[bytes]:
        """End the current pack (returning its access unit); an unfinished tail is an error."""
        return self._video(self._demuxer.flush())

    def _video(self, units: list[EsUnit]) -> list[bytes]:
        out: list[bytes] = []
        for unit in units:
            if unit.kind == "video":
                out.append(unit.data)
                self.pts = unit.pts
        return out
