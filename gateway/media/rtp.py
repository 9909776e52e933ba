"""RTP as the gateway reads it, without I/O: sequence accounting, key-frame detection and the
TCP framings. The relay and the conformance suite's media peers both use this one copy.

* Sequence numbers: RFC 3550 §6.4.1 and Appendix A.1/A.3 — extended highest sequence number with
  16-bit wrap, ``lost = expected − received``; a jump too large to be loss restarts the count.
* Key frames: GB/T 28181-2022 Annex C.1 (2016 Annex C) packs one frame per PS pack and puts the
  system header (``00 00 01 BB``) and/or the PSM (``00 00 01 BC``) right after the pack header
  (``00 00 01 BA``, ISO/IEC 13818-1 §2.5.3.3: 14 bytes + ``pack_stuffing_length``) of key frames.
* TCP: RFC 4571 §2 (2-byte big-endian length, then the RTP packet) as GB/T 28181-2022 Annex D
  requires, and the RTSP-interleaved variant (RFC 2326 §10.12: ``$``, channel, 2-byte length)
  that some devices send instead (reference §6.5).
"""

from __future__ import annotations

MAX_DROPOUT = 3000
"""RFC 3550 A.1: a forward jump at least this large is a restart, not loss."""
MAX_MISORDER = 3000
"""A packet at most this far behind the highest sequence number is a late (reordered) packet;
further behind is a restart. RFC 3550 uses 100; cameras that burst a whole key frame can be
reordered further than that by a busy network."""

RTP_HEADER = 12
PACK_START = b"\x00\x00\x01\xba"
_SYSTEM_HEADER = b"\x00\x00\x01\xbb"
_PSM = b"\x00\x00\x01\xbc"

# bytes.translate() deletion tables: what is left after deleting the allowed values is the
# offending bytes, so one C call checks a whole batch.
V2_FIRST_BYTES = bytes(range(0x80, 0xC0))
"""First header byte of RTP version 2 (V=2, any P/X/CC)."""
PLAIN_FIRST_BYTES = bytes((0x80, 0xA0))
"""V=2 with no extension and no CSRC (padding allowed): the payload starts at byte 12."""
RTP_SECOND_BYTES = bytes(b for b in range(256) if not 200 <= b <= 204)
"""Second header byte of anything but RTCP SR/RR/SDES/BYE/APP (RFC 5761 §4)."""


class FramingError(ValueError):
    """The TCP byte stream is not RFC 4571 (nor ``$``-interleaved) framing any more.

    ``packets`` are the good frames read before the bad bytes, in the same call.
    """

    def __init__(self, reason: str, packets: list[bytes]) -> None:
        super().__init__(reason)
        self.packets = packets


def payload_offset(packet: bytes | memoryview, length: int) -> int:
    """Where the RTP payload starts (RFC 3550 §5.1, §5.3.1), or -1 if the header is cut short."""
    b0 = packet[0]
    offset = RTP_HEADER + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if length < offset + 4:
            return -1
        offset += 4 + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
    return offset if offset <= length else -1


def is_keyframe_pack(packet: bytes | memoryview, start: int, end: int) -> bool:
    """True if ``packet[start:end]`` is a PS pack header followed by a system header or PSM.

    Only the first bytes are read: the pack header's stuffing length (byte 13, low 3 bits) says
    where the next start code is.
    """
    if end - start < 18 or packet[start : start + 4] != PACK_START:
        return False
    nxt = start + 14 + (packet[start + 13] & 0x07)
    if nxt + 4 > end:
        return False
    code = packet[nxt : nxt + 4]
    return code in (_SYSTEM_HEADER, _PSM)


def packet_is_keyframe(packet: bytes | memoryview, start: int, length: int) -> bool:
    """:func:`is_keyframe_pack` on the payload of the RTP packet ``packet[start:start+length]``."""
    view = packet[start : start + length]
    offset = payload_offset(view, length)
    return offset >= 0 and is_keyframe_pack(view, offset, length)


class SeqCounter:
    """Loss and reordering on one RTP source, fed sequence numbers as two byte strings.

    ``hi[i] << 8 | lo[i]`` is the i-th packet's sequence number; batches come straight from the
    receive buffers this way, so no per-packet objects are made before the loop.
    """

    __slots__ = ("_base", "_cycles", "_lost_before", "_max", "_received", "reordered")

    def __init__(self) -> None:
        self._max = -1  # highest sequence number seen (16-bit), -1 before the first packet
        self._cycles = 0  # 65536 × wraps of the sequence number
        self._base = 0  # extended sequence number of the first packet of this run
        self._received = 0  # packets received in this run
        self._lost_before = 0  # packets lost in runs ended by a restart
        self.reordered = 0

    def update(self, hi: bytes, lo: bytes) -> None:
        mx, cycles, received, reordered = self._max, self._cycles, self._received, self.reordered
        if mx < 0:
            mx = (hi[0] << 8) | lo[0]
            self._base = mx  # the loop then counts this first packet like a duplicate
        for h, low in zip(hi, lo, strict=True):
            s = (h << 8) | low
            d = (s - mx) & 0xFFFF
            received += 1
            if 0 < d < MAX_DROPOUT:
                if s < mx:
                    cycles += 0x10000
                mx = s
            elif d == 0:
                continue
            elif d > 0x10000 - MAX_MISORDER:
                reordered += 1
            else:  # the source restarted its numbering: close this run, start another
                self._lost_before += max(0, cycles + mx - self._base + 1 - (received - 1))
                mx, cycles, self._base, received = s, 0, s, 1
        self._max, self._cycles, self._received, self.reordered = mx, cycles, received, reordered

    @property
    def lost(self) -> int:
        if self._max < 0:
            return 0
        expected = self._cycles + self._max - self._base + 1
        return self._lost_before + max(0, expected - self._received)


def frame_rfc4571(packet: bytes | memoryview) -> bytes:
    """One RTP packet with its RFC 4571 §2 length prefix (16 bits, big-endian)."""
    if len(packet) > 0xFFFF:
        raise ValueError("RTP packet too long for RFC 4571 framing")
    return len(packet).to_bytes(2, "big") + packet


class TcpDeframer:
    """Cuts a TCP byte stream into RTP packets (RFC 4571, or ``$``-interleaved; reference §6.5).

    Each frame is recognised by what follows its header: an RTP version-2 byte. Interleaved frames
    on odd channels (RTCP by RFC 2326 convention) and RFC 4571 frames that hold RTCP are skipped
    (counted in :attr:`skipped`): neither the relay nor a media receiver wants RTCP as RTP.
    Anything else raises :class:`FramingError`, and every later :meth:`feed` raises it again:
    resynchronising on arbitrary bytes could relay garbage, so the caller drops the connection.
    """

    __slots__ = ("_broken", "_buf", "interleaved", "max_frame", "skipped")

    def __init__(self, max_frame: int = 65535) -> None:
        self._buf = bytearray()
        self._broken = ""
        self.max_frame = max_frame
        self.skipped = 0
        self.interleaved = 0  # frames that came in the ``$`` form

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise FramingError(self._broken, [])
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while size - pos >= 5:
            if buf[pos + 2] >> 6 == 2:
                head, n = 2, (buf[pos] << 8) | buf[pos + 1]
            elif buf[pos] == 0x24 and buf[pos + 4] >> 6 == 2:
                head, n = 4, (buf[pos + 2] << 8) | buf[pos + 3]
            else:
                return self._lose(pos, f"no RTP frame here: {bytes(buf[pos : pos + 8]).hex()}", out)
            if n < RTP_HEADER:
                return self._lose(pos, f"frame of {n} bytes is too short for RTP", out)
            if size - pos < head + n:
                break
            # The whole frame is here: its second header byte (RTCP packet types 200-204,
            # RFC 5761 §4) and, interleaved, the channel (odd: RTCP) can be read.
            if head == 2:
                rtcp = 200 <= buf[pos + 3] <= 204
            else:
                self.interleaved += 1
                rtcp = bool(buf[pos + 1] & 1) or 200 <= buf[pos + 5] <= 204
            if rtcp:
                self.skipped += 1
            else:
                out.append(bytes(buf[pos + head : pos + head + n]))
            pos += head + n
        if pos:
            del buf[:pos]
        return out

    def _lose(self, pos: int, reason: str, out: list[bytes]) -> list[bytes]:
        self._broken = reason
        del self._buf[:pos]
        raise FramingError(reason, out)
