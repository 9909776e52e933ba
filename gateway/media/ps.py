"""MPEG-2 Program Stream demultiplexing for GB/T 28181 media, and PS over RTP (floor 1, stdlib).

ISO/IEC 13818-1 §2.5: a pack header (``00 00 01 BA``, 14 bytes + ``pack_stuffing_length``),
optionally a system header (``BB``) and a program stream map (``BC``, §2.5.4), then PES packets
(§2.4.3.6). GB/T 28181-2016 Annex C (2022 Annex C.1; reference §6.3): one video frame per pack;
key-frame packs carry the system header and PSM; a frame over 65 535 bytes spans several video
PES packets of one pack, only the first with a PTS; audio travels in its own PES packets
(``0xC0``) with their own PTS. The PSM's ``stream_type`` names the codec (Annex C table).

Over RTP (RFC 3550; GB/T 28181 payload type 96 ``PS/90000``) one frame's packets share a
timestamp and the last carries the marker bit; :class:`PsRtpReceiver` joins the payloads, hands
them to the demuxer, and ends the pack at the marker without waiting for the next pack header.

Everything a peer can make these objects hold is bounded: a pack's video bytes (``max_pack``),
the bytes of one unfinished PES packet (65 541 at most: its length field is 16 bits) and, in the
RTP receiver, one frame's payloads (``max_pack``).
"""

from __future__ import annotations

from gateway.media.h264 import EsUnit, H264RtpReceiver, is_key, is_key_h265, rtp_header

__all__ = [
    "MAX_PACK",
    "STREAM_TYPES",
    "EsUnit",
    "PsDemuxer",
    "PsRtpReceiver",
    "parse_pts",
    "receiver_for",
]

PACK_START = b"\x00\x00\x01\xba"
SYSTEM_HEADER_ID = 0xBB
PSM_ID = 0xBC
PROGRAM_END_ID = 0xB9
MAX_PACK = 4 * 1024 * 1024
"""Default bound on the video bytes of one pack (and one RTP frame) held at a time."""
MAX_DROPOUT = 3000
"""RFC 3550 A.1: a forward sequence jump this large is a restart, not loss."""

STREAM_TYPES: dict[int, str] = {
    0x1B: "h264",
    0x24: "h265",
    0x10: "mpeg4",
    0x80: "svac",
    0x90: "pcma",
    0x91: "pcmu",
    0x92: "g722",
    0x93: "g7231",
    0x99: "g729",
    0x0F: "aac",
}
"""PSM ``stream_type`` → codec (GB/T 28181-2016 Annex C)."""


def parse_pts(field: bytes | bytearray) -> int:
    """The 33-bit timestamp in the 5-byte PTS/DTS field of a PES header (§2.4.3.7)."""
    return (
        ((field[0] >> 1) & 0x07) << 30
        | field[1] << 22
        | (field[2] >> 1) << 15
        | field[3] << 7
        | field[4] >> 1
    )


class PsDemuxer:
    """Turns a PS byte stream into elementary-stream units, sans-I/O.

    Video: one :class:`EsUnit` per pack, joining that pack's video PES payloads, with the PTS of
    the first that has one. Audio: one unit per audio PES, with its own PTS, as soon as it is
    read. A pack is complete at the next pack header, a program end code, or :meth:`flush`.

    Input may be split anywhere. Bytes that are not a well-formed pack header, system header,
    PSM or PES packet are skipped up to the next ``00 00 01 BA``; each such run counts once in
    :attr:`errors` and the pack it interrupted is dropped. A video PES whose declared length
    runs over a pack start code was cut short; the demuxer resumes at that pack header. A pack
    whose video exceeds ``max_pack`` bytes is dropped (counted in :attr:`oversize`).
    """

    def __init__(self, *, max_pack: int = MAX_PACK) -> None:
        self.max_pack = max_pack
        self.keyframe_packs = 0  # packs with a system header or PSM (GB/T 28181 Annex C.1)
        self.errors = 0
        self.packs = 0
        self.oversize = 0
        self.stream_types: dict[int, int] = {}  # stream_id -> stream_type, from the PSMs
        self._buf = bytearray()
        self._in_pack = False
        self._pack_key = False
        self._pack_pts: int | None = None
        self._video_id = 0xE0
        self._parts: list[bytes] = []
        self._size = 0
        self._syncing = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished header or PES packet held for the next :meth:`feed`."""
        return 0 if self._syncing else len(self._buf)

    def codec(self, stream_id: int) -> str:
        """The codec of ``stream_id`` by the PSM; video before any PSM is taken for H.264."""
        stream_type = self.stream_types.get(stream_id)
        if stream_type is not None:
            return STREAM_TYPES.get(stream_type, "unknown")
        if not self.stream_types and 0xE0 <= stream_id <= 0xEF:
            return "h264"
        return "unknown"

    def feed(self, data: bytes) -> list[EsUnit]:
        """Consume PS bytes; return the units they completed."""
        buf = self._buf
        buf += data
        out: list[EsUnit] = []
        pos = self._parse(out)
        if pos:
            del buf[:pos]
        return out

    def flush(self) -> list[EsUnit]:
        """End the current pack (returning its video unit); an unfinished tail is an error."""
        out: list[EsUnit] = []
        if self._buf:
            tail = bytes(self._buf[:4])
            if not self._syncing:
                self.errors += 1
                if not PACK_START.startswith(tail):  # the tail is part of the current pack
                    self._drop_pack()
            self._buf.clear()
        self._end_pack(out)
        self._syncing = False
        return out

    def lose(self) -> None:
        """Input was lost (an RTP gap): drop the pack in progress and resync at the next pack."""
        self._buf.clear()
        self._drop_pack()
        self._syncing = True

    def reset(self) -> None:
        """Forget everything of the stream so far but the counters (a new source)."""
        self.lose()
        self._syncing = False
        self.stream_types = {}

    def _parse(self, out: list[EsUnit]) -> int:
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
            length = 6 + ((buf[pos + 4] << 8) | buf[pos + 5])
            if size - pos < length:
                return pos
            video = 0xE0 <= stream_id <= 0xEF
            if video or 0xC0 <= stream_id <= 0xDF:
                if video:
                    # 00 00 01 BA cannot occur inside H.264 or H.265 (0xBA would set the
                    # forbidden_zero_bit), so one inside a video PES means the PES was cut
                    # short: resume at that pack header.
                    cut = buf.find(PACK_START, pos + 6, pos + length)
                    if cut >= 0:
                        self._lose_sync(pos)
                        pos = cut
                        continue
                if length < 9 or buf[pos + 6] >> 6 != 0b10:
                    pos = self._lose_sync(pos)
                    continue
                start = 9 + buf[pos + 8]
                if start > length:
                    pos = self._lose_sync(pos)
                    continue
                pts = None
                if buf[pos + 7] & 0x80 and start >= 14:
                    pts = parse_pts(buf[pos + 9 : pos + 14])
                payload = bytes(buf[pos + start : pos + length])
                pos += length
                if not video:
                    out.append(EsUnit(stream_id, self.codec(stream_id), pts, payload, False))
                    continue
                if not self._parts:
                    self._video_id = stream_id
                if self._pack_pts is None:
                    self._pack_pts = pts
                self._parts.append(payload)
                self._size += len(payload)
                if self._size > self.max_pack:
                    self.oversize += 1
                    self._drop_pack()
                    self._syncing = True  # the rest of this pack is skipped
                continue
            if stream_id == SYSTEM_HEADER_ID:
                self._pack_key = True
                if length < 12:
                    pos = self._lose_sync(pos)
                    continue
            elif stream_id == PSM_ID:
                self._pack_key = True
                if not self._psm(bytes(buf[pos : pos + length])):
                    pos = self._lose_sync(pos)
                    continue
            pos += length  # padding, private and other streams are skipped

    def _psm(self, packet: bytes) -> bool:
        """Read the elementary stream map of a PSM (§2.5.4.1); False if malformed."""
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

    def _end_pack(self, out: list[EsUnit]) -> None:
        if self._in_pack:
            if self._pack_key:
                self.keyframe_packs += 1
            if self._parts:
                data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                codec = self.codec(self._video_id)
                if codec == "h264":
                    key = is_key(data)
                elif codec == "h265":
                    key = is_key_h265(data)
                else:
                    key = self._pack_key
                out.append(EsUnit(self._video_id, codec, self._pack_pts, data, key))
        self._drop_pack()

    def _drop_pack(self) -> None:
        self._in_pack = False
        self._pack_key = False
        self._pack_pts = None
        self._parts = []
        self._size = 0

    def _lose_sync(self, pos: int) -> int:
        """Drop the pack in progress and skip to the next pack start code after ``pos``."""
        self.errors += 1
        self._syncing = True
        self._drop_pack()
        return pos + 1


class PsRtpReceiver:
    """PS over RTP (RFC 3550, GB/T 28181 Annex C) to elementary-stream units, sans-I/O.

    Packets are taken in arrival order. One frame's payloads (same timestamp) are joined and
    fed to a :class:`PsDemuxer` at its marker bit or when the timestamp changes, either of
    which also ends the pack at once (unless a PES packet is still unfinished). A sequence gap
    counts the missing packets in :attr:`lost` and makes the demuxer drop the pack in progress
    and resync at the next pack header, so only the frame that lost a packet is lost. A packet
    older than the next expected one (reordered or duplicate) is dropped and counted in
    :attr:`late`; a malformed one in :attr:`bad`. A new SSRC starts the stream afresh. A frame
    over ``max_pack`` bytes is dropped (counted in :attr:`oversize`).
    """

    def __init__(self, *, max_pack: int = MAX_PACK) -> None:
        self.max_pack = max_pack
        self.demuxer = PsDemuxer(max_pack=max_pack)
        self.packets = 0
        self.lost = 0
        self.bad = 0
        self.late = 0
        self.oversize = 0
        self.ssrc: int | None = None
        self._next = -1
        self._ts = -1
        self._parts: list[bytes] = []
        self._size = 0

    def push(self, packet: bytes) -> list[EsUnit]:
        """Take one whole RTP packet; return the units it completed."""
        head = rtp_header(packet)
        if head is None:
            self.bad += 1
            return []
        marker_pt, seq, timestamp, ssrc, start, end = head
        demuxer = self.demuxer
        out: list[EsUnit] = []
        if seq != self._next or ssrc != self.ssrc:
            if ssrc != self.ssrc:
                if self.ssrc is not None:
                    demuxer.reset()
                self.ssrc = ssrc
                self._parts = []
                self._size = 0
            else:
                ahead = (seq - self._next) & 0xFFFF
                if ahead >= 0x8000:
                    self.late += 1
                    return out
                if ahead < MAX_DROPOUT:
                    self.lost += ahead
                self._parts = []
                self._size = 0
                demuxer.lose()
        self.packets += 1
        self._next = (seq + 1) & 0xFFFF
        parts = self._parts
        if timestamp != self._ts:
            # A new timestamp is a new frame (GB/T 28181 Annex C): the last one is complete.
            if parts:
                out += demuxer.feed(b"".join(parts) if len(parts) > 1 else parts[0])
                parts = self._parts = []
                self._size = 0
                if not demuxer.pending:
                    out += demuxer.flush()
            self._ts = timestamp
        if end > start:
            parts.append(packet[start:end])
            self._size += end - start
            if self._size > self.max_pack:
                self.oversize += 1
                parts = self._parts = []
                self._size = 0
                demuxer.lose()
        if marker_pt & 0x80:
            if parts:
                out += demuxer.feed(b"".join(parts) if len(parts) > 1 else parts[0])
                self._parts = []
                self._size = 0
            if not demuxer.pending:
                out += demuxer.flush()
        return out

    def flush(self) -> list[EsUnit]:
        """End the frame in progress (the stream stopped): what it completes comes out."""
        out: list[EsUnit] = []
        if self._parts:
            out += self.demuxer.feed(b"".join(self._parts))
            self._parts = []
            self._size = 0
        return out + self.demuxer.flush()


def receiver_for(encoding: str) -> PsRtpReceiver | H264RtpReceiver | None:
    """A receiver for the answered ``a=rtpmap`` encoding name: PS (``PS``/``MP2P``) or H264."""
    name = encoding.strip().upper()
    if name in ("PS", "MP2P"):
        return PsRtpReceiver()
    if name == "H264":
        return H264RtpReceiver()
    return None
