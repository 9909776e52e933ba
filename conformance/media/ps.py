"""MPEG-2 Program Stream packing and unpacking for GB/T 28181 media (ISO/IEC 13818-1 §2.5).

GB/T 28181 Annex C.1 (reference §6.3, "PS packing"): one video frame per PS pack; a key-frame
pack carries the system header and the program stream map right after the pack header, before
the first PES; other packs carry neither. Video is stream ``0xE0`` with PSM ``stream_type``
``0x1B`` (H.264). PES packets hold at most 65 535 bytes after their length field, so a large
frame is split over several PES packets of the same pack; only the first carries the PTS.

The muxer is a pure function; the demuxer is a sans-I/O state machine (bytes in, access units
out) that tolerates arbitrary splits of its input and resynchronises on the next pack header
after garbage.
"""

from __future__ import annotations

from .clip import Frame

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


def parse_pts(field: bytes) -> int:
    """The 33-bit timestamp in the 5-byte PTS/DTS field of a PES header."""
    return (
        ((field[0] >> 1) & 0x07) << 30
        | field[1] << 22
        | (field[2] >> 1) << 15
        | field[3] << 7
        | field[4] >> 1
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
    """Turns a PS byte stream into video access units, one per pack.

    A pack is complete when the next pack header (or a program end code) arrives, or on
    :meth:`flush`. Bytes that are not a well-formed pack header, system header, PSM or PES
    packet are skipped up to the next ``00 00 01 BA``; each such run counts once in
    :attr:`errors`, and the pack it interrupted is dropped. A video PES whose declared length
    runs over a pack start code was cut short; the demuxer resumes at that pack header.
    """

    def __init__(self) -> None:
        self.keyframe_packs = 0
        self.errors = 0
        self.packs = 0
        self.stream_types: dict[int, int] = {}
        self.pts: int | None = None  # PTS of the last access unit returned
        self._buf = bytearray()
        self._in_pack = False
        self._pack_key = False
        self._pack_pts: int | None = None
        self._parts: list[bytes] = []
        self._syncing = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume PS bytes; return the access units of the packs they completed."""
        self._buf += data
        out: list[bytes] = []
        pos = self._parse(out)
        del self._buf[:pos]
        return out

    def flush(self) -> list[bytes]:
        """End the current pack (returning its access unit); an unfinished tail is an error."""
        out: list[bytes] = []
        if self._buf:
            tail = bytes(self._buf[:4])
            if not self._syncing:
                self.errors += 1
                if not PACK_START.startswith(tail):  # the tail is part of the current pack
                    self._in_pack = False
                    self._parts.clear()
            self._buf.clear()
        self._end_pack(out)
        self._syncing = False
        return out

    def _parse(self, out: list[bytes]) -> int:
        buf = self._buf
        size = len(buf)
        pos = 0
        while True:
            if self._syncing:
                found = buf.find(PACK_START, pos)
                if found < 0:
                    return max(pos, size - 3)  # keep a possible start-code prefix
                pos = found
                self._syncing = False
            if size - pos < 4:
                return pos
            if buf[pos] != 0 or buf[pos + 1] != 0 or buf[pos + 2] != 1:
                pos = self._lose_sync(pos)
                continue
            stream_id = buf[pos + 3]
            if stream_id == 0xBA:
                if size - pos < 14:
                    return pos
                if buf[pos + 4] >> 6 != 0b01:  # not MPEG-2 (an MPEG-1 pack or garbage)
                    pos = self._lose_sync(pos)
                    continue
                length = 14 + (buf[pos + 13] & 0x07)
                if size - pos < length:
                    return pos
                self._end_pack(out)
                self._in_pack = True
                self.packs += 1
                pos += length
                continue
            if stream_id == PROGRAM_END_ID:
                self._end_pack(out)
                pos += 4
                continue
            if stream_id < PROGRAM_END_ID or not self._in_pack:
                pos = self._lose_sync(pos)
                continue
            if size - pos < 6:
                return pos
            length = 6 + int.from_bytes(buf[pos + 4 : pos + 6], "big")
            if size - pos < length:
                return pos
            if 0xE0 <= stream_id <= 0xEF:
                # 00 00 01 BA cannot occur inside H.264 (0xBA sets forbidden_zero_bit), so one
                # inside a video PES means the PES was cut short: resume at that pack header.
                cut = buf.find(PACK_START, pos + 6, pos + length)
                if cut >= 0:
                    self._lose_sync(pos)
                    pos = cut
                    continue
            packet = bytes(buf[pos : length + pos])
            if not self._packet(stream_id, packet):
                pos = self._lose_sync(pos)
                continue
            pos += length

    def _packet(self, stream_id: int, packet: bytes) -> bool:
        """Take one system header, PSM or PES packet of the current pack; False if malformed."""
        if stream_id == SYSTEM_HEADER_ID:
            self._pack_key = True
            return len(packet) >= 12
        if stream_id == PSM_ID:
            self._pack_key = True
            return self._psm(packet)
        if 0xE0 <= stream_id <= 0xEF:
            if len(packet) < 9 or packet[6] >> 6 != 0b10:
                return False
            start = 9 + packet[8]
            if start > len(packet):
                return False
            if packet[7] & 0x80 and packet[8] >= 5 and self._pack_pts is None:
                self._pack_pts = parse_pts(packet[9:14])
            self._parts.append(packet[start:])
        return True  # audio, padding and private streams are skipped

    def _psm(self, packet: bytes) -> bool:
        if len(packet) < 16:
            return False
        info_end = 12 + int.from_bytes(packet[8:10], "big")
        if info_end > len(packet):
            return False
        map_end = info_end + int.from_bytes(packet[info_end - 2 : info_end], "big")
        if map_end + 4 > len(packet):
            return False
        at = info_end
        while at + 4 <= map_end:
            self.stream_types[packet[at + 1]] = packet[at]
            at += 4 + int.from_bytes(packet[at + 2 : at + 4], "big")
        return True

    def _end_pack(self, out: list[bytes]) -> None:
        if self._in_pack:
            if self._pack_key:
                self.keyframe_packs += 1
            if self._parts:
                out.append(b"".join(self._parts))
                self.pts = self._pack_pts
        self._in_pack = False
        self._pack_key = False
        self._pack_pts = None
        self._parts.clear()

    def _lose_sync(self, pos: int) -> int:
        """Drop the pack in progress and skip to the next pack start code after ``pos``."""
        self.errors += 1
        self._syncing = True
        self._in_pack = False
        self._pack_key = False
        self._pack_pts = None
        self._parts.clear()
        return pos + 1
