"""RTP packetisation of PS packs and their reassembly, plus RTP-over-TCP framing.

RFC 3550 §5.1 fixed header (version 2). GB/T 28181-2022 Annex C (reference §6.3): payload type
96 ``PS/90000``; all packets of one frame carry the same timestamp and consecutive frames
different ones; the marker bit ends a frame. RTP over TCP (2022 Annex D, 2016 Annex L; reference
§6.5) frames each packet with RFC 4571's 2-byte length; some stacks use the RTSP-interleaved
``'$'`` + channel + length form instead, which :class:`TcpDeframer` also accepts.

Everything here is sans-I/O: bytes in, bytes out. The TCP framing is the gateway's own
(:mod:`gateway.media.rtp`), so the suite and the relay cut streams the same way.
"""

from __future__ import annotations

from gateway.media.rtp import RTP_HEADER, FramingError, TcpDeframer, frame_rfc4571

__all__ = [
    "MAX_PAYLOAD",
    "RTP_HEADER",
    "FramingError",
    "RtpReassembler",
    "TcpDeframer",
    "frame_rfc4571",
    "packetise",
    "rtp_fields",
]

MAX_PAYLOAD = 1400


def packetise(
    payload: bytes,
    *,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload_type: int = 96,
    max_payload: int = MAX_PAYLOAD,
) -> list[bytes]:
    """Split one frame's payload into RTP packets ``seq``, ``seq+1``…; marker on the last."""
    if max_payload < 1:
        raise ValueError("max_payload must be positive")
    chunks = [payload[at : at + max_payload] for at in range(0, len(payload), max_payload)]
    if not chunks:
        chunks = [b""]
    head = (timestamp & 0xFFFFFFFF).to_bytes(4, "big") + (ssrc & 0xFFFFFFFF).to_bytes(4, "big")
    last = len(chunks) - 1
    return [
        bytes((0x80, (0x80 if n == last else 0) | (payload_type & 0x7F)))
        + ((seq + n) & 0xFFFF).to_bytes(2, "big")
        + head
        + chunk
        for n, chunk in enumerate(chunks)
    ]


def rtp_fields(packet: bytes) -> tuple[int, bool, int, int, int, bytes] | None:
    """``(payload_type, marker, seq, timestamp, ssrc, payload)`` or None if not RTP v2.

    Skips CSRCs and a header extension, and removes padding (RFC 3550 §5.1, §5.3.1).
    """
    if len(packet) < RTP_HEADER or packet[0] >> 6 != 2:
        return None
    start = RTP_HEADER + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = len(packet)
    if packet[0] & 0x20:
        end -= packet[-1]
    if start > end or end > len(packet):
        return None
    return (
        packet[1] & 0x7F,
        bool(packet[1] & 0x80),
        int.from_bytes(packet[2:4], "big"),
        int.from_bytes(packet[4:8], "big"),
        int.from_bytes(packet[8:12], "big"),
        packet[start:end],
    )


class RtpReassembler:
    """Puts RTP packets back in order and joins each frame's payloads into one unit.

    A unit ends at its marker packet, or when a packet with another timestamp follows. Packets
    that arrive out of order are held until the gap fills; once ``window`` later packets are
    waiting, the missing ones are counted in :attr:`lost` and the frame they belonged to is
    dropped (:attr:`dropped`), since a PS pack with a hole cannot be trusted. Packets older than
    the next expected one (late or duplicated) are counted in :attr:`late` and ignored; the
    first packet received fixes where the stream starts.
    """

    def __init__(self, window: int = 16) -> None:
        self.window = window
        self.packets = 0
        self.lost = 0
        self.late = 0
        self.invalid = 0
        self.dropped = 0
        self.units = 0
        self.ssrcs: set[int] = set()
        self.payload_types: set[int] = set()
        self._next: int | None = None
        self._held: dict[int, tuple[bool, int, bytes]] = {}
        self._ts: int | None = None
        self._parts: list[bytes] = []
        self._damaged = False

    def push(self, packet: bytes) -> list[bytes]:
        """Take one RTP packet; return the frames (joined payloads) it completed."""
        fields = rtp_fields(packet)
        if fields is None:
            self.invalid += 1
            return []
        payload_type, marker, seq, timestamp, ssrc, payload = fields
        self.packets += 1
        self.ssrcs.add(ssrc)
        self.payload_types.add(payload_type)
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000 or seq in self._held:
            self.late += 1
            return []
        self._held[seq] = (marker, timestamp, payload)
        out: list[bytes] = []
        self._drain(out)
        while seq in self._held and (
            len(self._held) >= self.window or (seq - self._next) & 0xFFFF >= self.window
        ):
            self._skip_gap()
            self._drain(out)
        return out

    def flush(self) -> list[bytes]:
        """Give up on missing packets and return whatever complete frames are held."""
        out: list[bytes] = []
        while self._held:
            self._skip_gap()
            self._drain(out)
        if self._parts and not self._damaged:
            out.append(b"".join(self._parts))
            self.units += 1
        elif self._parts:
            self.dropped += 1
        self._parts = []
        self._ts = None
        self._damaged = False
        return out

    def _drain(self, out: list[bytes]) -> None:
        held = self._held
        assert self._next is not None
        while self._next in held:
            marker, timestamp, payload = held.pop(self._next)
            self._next = (self._next + 1) & 0xFFFF
            if self._ts is not None and timestamp != self._ts:
                self._end_unit(out)
            self._ts = timestamp
            self._parts.append(payload)
            if marker:
                self._end_unit(out)

    def _skip_gap(self) -> None:
        """Declare the packets before the oldest held one lost."""
        assert self._next is not None
        base = self._next
        first = min(self._held, key=lambda seq: (seq - base) & 0xFFFF)
        self.lost += (first - base) & 0xFFFF
        self._next = first
        self._damaged = True

    def _end_unit(self, out: list[bytes]) -> None:
        if self._parts:
            if self._damaged:
                self.dropped += 1
            else:
                out.append(b"".join(self._parts))
                self.units += 1
        self._parts = []
        self._ts = None
        self._damaged = False
