"""H.264 access units: Annex B NAL scanning, SPS parsing, parameter-set bookkeeping and RFC 6184
depacketisation (floor 1, stdlib only).

* Annex B byte streams (ITU-T H.264 Annex B): NAL units behind ``00 00 01`` / ``00 00 00 01``
  start codes; NAL unit types (§7.4.1, Table 7-1): 5 IDR slice, 6 SEI, 7 SPS, 8 PPS, 9 AUD.
* SPS (§7.3.2.1.1): exp-Golomb fields (§9.1) after emulation-prevention removal (§7.4.1); the
  picture size from the macroblock counts, ``frame_mbs_only_flag`` and the cropping window
  (§7.4.2.1.1, equations 7-19 to 7-22 and Table 6-1).
* RTP (RFC 6184, packetization-mode 1): single NAL unit packets (§5.6), STAP-A (§5.7.1) and
  FU-A (§5.8). An access unit ends at the marker bit (§5.1) or when the timestamp changes.
* H.265 key pictures (ITU-T H.265 Table 7-1): IRAP NAL unit types 16 to 21 (BLA, IDR, CRA).

:class:`EsUnit` lives here (not in :mod:`gateway.media.ps`) because both the PS demuxer and the
H.264 RTP receiver produce it; ``gateway.media.ps`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.media.rtp import payload_offset

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9
NAL_STAP_A, NAL_FU_A = 24, 28
START_CODE = b"\x00\x00\x00\x01"
MAX_AU = 4 * 1024 * 1024
"""Default bound on one access unit held by :class:`H264RtpReceiver` (bytes)."""

_PTS_MASK = (1 << 33) - 1
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))
"""Profiles whose SPS carries chroma_format_idc, bit depths and scaling lists (§7.3.2.1.1)."""


@dataclass(frozen=True, slots=True)
class EsUnit:
    """One elementary-stream unit: a video access unit (Annex B) or an audio PES payload."""

    stream_id: int  # PES stream_id: 0xE0-0xEF video, 0xC0-0xDF audio
    codec: str
    pts: int | None  # 90 kHz, 33 bits
    data: bytes
    key: bool

    @property
    def kind(self) -> str:
        if 0xE0 <= self.stream_id <= 0xEF:
            return "video"
        if 0xC0 <= self.stream_id <= 0xDF:
            return "audio"
        return "other"


# -- Annex B -----------------------------------------------------------------------------------


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte string (start codes removed), in order.

    Trailing zero bytes of a unit belong to the next start code (``00 00 00 01``) or are
    ``trailing_zero_8bits`` (Annex B.1); a NAL unit never ends in ``00`` (§7.4.2.10), so they
    are stripped. Bytes before the first start code are not a NAL unit and are ignored.
    """
    nals: list[bytes] = []
    at = data.find(b"\x00\x00\x01")
    while at >= 0:
        start = at + 3
        at = data.find(b"\x00\x00\x01", start)
        nal = data[start:at] if at >= 0 else data[start:]
        nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def nal_types(data: bytes) -> list[int]:
    """``nal_unit_type`` (H.264, low 5 bits) of every NAL unit in an Annex B string."""
    types: list[int] = []
    size = len(data)
    find = data.find
    at = find(b"\x00\x00\x01")
    while 0 <= at < size - 3:
        types.append(data[at + 3] & 0x1F)
        at = find(b"\x00\x00\x01", at + 4)
    return types


def is_key(au: bytes) -> bool:
    """True if the H.264 access unit (Annex B) holds an IDR slice (nal_unit_type 5)."""
    size = len(au)
    find = au.find
    at = find(b"\x00\x00\x01")
    while 0 <= at < size - 3:
        if au[at + 3] & 0x1F == NAL_IDR:
            return True
        at = find(b"\x00\x00\x01", at + 4)
    return False


def is_key_h265(au: bytes) -> bool:
    """True if the H.265 access unit (Annex B) holds an IRAP picture (nal_unit_type 16..21)."""
    size = len(au)
    find = au.find
    at = find(b"\x00\x00\x01")
    while 0 <= at < size - 3:
        if 16 <= (au[at + 3] >> 1) & 0x3F <= 21:
            return True
        at = find(b"\x00\x00\x01", at + 5)
    return False


# -- SPS -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpsInfo:
    """What a receiver needs from a sequence parameter set."""

    profile_idc: int
    constraints: int  # constraint_set0..5 flags and reserved bits: the SPS's second byte
    level_idc: int
    width: int
    height: int
    chroma_format_idc: int = 1
    frame_mbs_only: bool = True

    @property
    def profile_level_id(self) -> str:
        """The RFC 6184 §8.1 ``profile-level-id``: profile_idc, constraint byte, level_idc."""
        return f"{self.profile_idc:02x}{self.constraints:02x}{self.level_idc:02x}"


def unescape(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (``00 00 03`` → ``00 00``; H.264 §7.4.1)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in nal else nal


class _Bits:
    """A big-endian bit reader over an RBSP; reading past the end raises ValueError."""

    __slots__ = ("_left", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = 8 * len(data)

    def u(self, n: int) -> int:
        if n > self._left:
            raise ValueError("SPS ends early")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        """Exp-Golomb ue(v) (§9.1)."""
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """Signed exp-Golomb se(v) (§9.1.1)."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    """scaling_list() (§7.3.2.1.1.1): only read to get past it."""
    last, nxt = 8, 8
    for _ in range(size):
        if nxt:
            delta = bits.se()
            if not -128 <= delta <= 127:
                raise ValueError("delta_scale out of range")
            nxt = (last + delta + 256) % 256
        last = nxt or last


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (with its one-byte NAL header, no start code).

    Raises ValueError for anything that is not a well-formed SPS giving a positive size.
    """
    if len(nal) < 4 or nal[0] & 0x9F != NAL_SPS:  # forbidden_zero_bit 0, nal_unit_type 7
        raise ValueError("not an SPS NAL unit")
    rbsp = unescape(nal[1:])
    bits = _Bits(rbsp)
    profile_idc, constraints, level_idc = bits.u(8), bits.u(8), bits.u(8)
    if bits.ue() > 31:
        raise ValueError("seq_parameter_set_id out of range")
    chroma_format_idc, separate_planes = 1, 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > 3:
            raise ValueError("chroma_format_idc out of range")
        if chroma_format_idc == 3:
            separate_planes = bits.u(1)
        if bits.ue() > 6 or bits.ue() > 6:  # bit_depth_luma/chroma_minus8
            raise ValueError("bit depth out of range")
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    if bits.ue() > 12:  # log2_max_frame_num_minus4
        raise ValueError("log2_max_frame_num out of range")
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        cycle = bits.ue()
        if cycle > 255:
            raise ValueError("num_ref_frames_in_pic_order_cnt_cycle out of range")
        for _ in range(cycle):
            bits.se()
    elif poc_type != 2:
        raise ValueError("pic_order_cnt_type out of range")
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width = 16 * width_mbs
    height = 16 * height_units * (2 - frame_mbs_only)
    if bits.u(1):  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma_array_type = 0 if separate_planes else chroma_format_idc
        if chroma_array_type == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_array_type == 3 else 2
            sub_height = 2 if chroma_array_type == 1 else 1
            unit_x, unit_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    if width <= 0 or height <= 0 or width > 16 * 1024 or height > 16 * 1024:
        raise ValueError(f"implausible picture size {width}x{height}")
    return SpsInfo(
        profile_idc,
        constraints,
        level_idc,
        width,
        height,
        chroma_format_idc,
        bool(frame_mbs_only),
    )


class ParameterSets:
    """Remembers the last SPS and PPS of a stream and puts them before key frames lacking them.

    A viewer that joins mid-stream can only start decoding at an IDR that its SPS and PPS
    precede (H.264 §7.4.1.2.3); GB/T 28181 devices usually send them in band before each IDR,
    but not all do.
    """

    __slots__ = ("info", "pps", "sps")

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.info: SpsInfo | None = None

    def complete(self, au: bytes) -> bytes:
        """Note the SPS/PPS in ``au``; return it, with the remembered ones first if it is a key
        frame that lacks them (after a leading access unit delimiter, which must stay first)."""
        types = nal_types(au)
        has_sps = NAL_SPS in types
        has_pps = NAL_PPS in types
        if has_sps or has_pps:
            for nal in split_annexb(au):
                kind = nal[0] & 0x1F
                if kind == NAL_SPS and nal != self.sps:
                    try:
                        self.info = parse_sps(nal)
                    except ValueError:
                        continue  # a broken SPS is not worth remembering
                    self.sps = nal
                elif kind == NAL_PPS:
                    self.pps = nal
        if NAL_IDR not in types or (has_sps and has_pps):
            return au
        prefix = b""
        if not has_sps and self.sps is not None:
            prefix += START_CODE + self.sps
        if not has_pps and self.pps is not None:
            prefix += START_CODE + self.pps
        if not prefix:
            return au
        if types[0] == NAL_AUD:
            second = au.find(b"\x00\x00\x01", au.find(b"\x00\x00\x01") + 3)
            if second > 0:
                if au[second - 1] == 0:
                    second -= 1
                return au[:second] + prefix + au[second:]
        return prefix + au


# -- RTP ---------------------------------------------------------------------------------------


def rtp_header(packet: bytes) -> tuple[int, int, int, int, int, int] | None:
    """``(marker_pt, seq, timestamp, ssrc, payload_start, payload_end)`` of an RTP v2 packet.

    RFC 3550 §5.1: CSRCs (CC × 4 bytes) and a header extension (§5.3.1) are skipped, padding
    (P bit: the last byte counts the padding bytes) removed. None if the packet is malformed.
    """
    size = len(packet)
    if size < 12:
        return None
    b0 = packet[0]
    if b0 & 0xC0 != 0x80:
        return None
    start = payload_offset(packet, size)
    if start < 0:
        return None
    end = size
    if b0 & 0x20:
        pad = packet[-1]
        if pad == 0:
            return None
        end -= pad
    if start > end:
        return None
    return (
        packet[1],
        (packet[2] << 8) | packet[3],
        int.from_bytes(packet[4:8], "big"),
        int.from_bytes(packet[8:12], "big"),
        start,
        end,
    )


class H264RtpReceiver:
    """Access units from H.264 over RTP (RFC 6184, packetization-mode 1), sans-I/O.

    Packets are taken in arrival order: a packet older than the next expected one (late or
    duplicate) is dropped and counted in :attr:`late`; a sequence gap drops the access unit in
    progress (it cannot be decoded whole) and the unit resumes at the next timestamp. An access
    unit larger than ``max_au`` is dropped and counted in :attr:`oversize`. A new SSRC starts
    afresh. A unit's ``pts`` is its RTP timestamp (the 90 kHz clock, RFC 6184 §5.1).
    """

    def __init__(self, *, max_au: int = MAX_AU) -> None:
        self.max_au = max_au
        self.packets = 0
        self.lost = 0
        self.late = 0
        self.bad = 0
        self.dropped = 0  # access units dropped for loss or damage
        self.oversize = 0
        self.units = 0
        self._ssrc: int | None = None
        self._next = -1
        self._ts: int | None = None
        self._nals: list[bytes] = []
        self._fu: list[bytes] | None = None
        self._size = 0
        self._damaged = False
        self._markers = False  # the stream sets the marker bit at the end of its units

    def push(self, packet: bytes) -> list[EsUnit]:
        """Take one whole RTP packet; return the access units it completed."""
        head = rtp_header(packet)
        if head is None:
            self.bad += 1
            return []
        marker_pt, seq, timestamp, ssrc, start, end = head
        out: list[EsUnit] = []
        if ssrc != self._ssrc:
            self._reset()
            self._ssrc = ssrc
        elif seq != self._next:
            ahead = (seq - self._next) & 0xFFFF
            if ahead >= 0x8000:
                self.late += 1
                return out
            self.lost += ahead
            self._gap(out, timestamp, ahead)
        self.packets += 1
        self._next = (seq + 1) & 0xFFFF
        if self._ts is not None and timestamp != self._ts:
            self._end(out)
        self._ts = timestamp
        if end > start:
            self._payload(packet, start, end)
        if marker_pt & 0x80:
            self._markers = True
            self._end(out)
        return out

    def _gap(self, out: list[EsUnit], timestamp: int, missing: int) -> None:
        """Packets are missing before one with ``timestamp``: whose were they?

        The access unit in progress is damaged. If the new packet starts another unit, that one
        is intact only when the loss is surely the old unit's tail: one packet missing, in a
        stream that marks the ends of its units, while the old unit still waits for its marker.
        Otherwise the new unit may lack its head (an SPS, a first slice) and is dropped too.
        """
        if self._ts is None:  # the last unit ended at its marker: the loss is this unit's head
            self._damaged = True
            return
        self._damaged = True
        self._fu = None
        if timestamp != self._ts:
            self._end(out)
            self._damaged = not (missing == 1 and self._markers)

    def _payload(self, packet: bytes, start: int, end: int) -> None:
        if self._damaged:  # nothing of this access unit will be delivered: hold none of it
            return
        indicator = packet[start]
        kind = indicator & 0x1F
        if indicator & 0x80:  # forbidden_zero_bit: the payload is corrupt (RFC 6184 §5.3)
            self.bad += 1
            self._damaged = True
        elif 1 <= kind <= 23:
            if self._fu is not None:  # a fragmented NAL unit that never ended
                self._damaged = True
                return
            self._add(packet[start:end])
        elif kind == NAL_FU_A:
            if end - start < 3:
                self.bad += 1
                self._damaged = True
                return
            fu_header = packet[start + 1]
            if fu_header & 0x80:  # S: a new fragmented NAL unit
                self._fu = [bytes(((indicator & 0xE0) | (fu_header & 0x1F),))]
            elif self._fu is None:  # its start was lost (or never sent)
                self._damaged = True
                return
            self._fu.append(packet[start + 2 : end])
            self._size += end - start - 2
            if self._size > self.max_au:
                self._overflow()
            elif fu_header & 0x40:  # E
                nal = b"".join(self._fu)
                self._fu = None
                self._nals.append(nal)
        elif kind == NAL_STAP_A:
            if self._fu is not None:
                self._damaged = True
                return
            at = start + 1
            while at + 2 < end:
                n = (packet[at] << 8) | packet[at + 1]
                at += 2
                if n == 0 or at + n > end:
                    self.bad += 1
                    self._damaged = True
                    return
                self._add(packet[at : at + n])
                at += n
        else:  # STAP-B, MTAP, FU-B: not allowed in packetization-mode 1 (RFC 6184 §6.3)
            self.bad += 1
            self._damaged = True

    def _add(self, nal: bytes) -> None:
        self._size += len(nal) + 4
        if self._size > self.max_au:
            self._overflow()
        else:
            self._nals.append(nal)

    def _overflow(self) -> None:
        self.oversize += 1
        self._damaged = True
        self._nals = []
        self._fu = None
        self._size = 0

    def _end(self, out: list[EsUnit]) -> None:
        if self._nals or self._damaged or self._fu is not None:
            if self._damaged or self._fu is not None:
                self.dropped += 1
            else:
                au = START_CODE + START_CODE.join(self._nals)
                self.units += 1
                out.append(EsUnit(0xE0, "h264", self._ts, au, is_key(au)))
        self._nals = []
        self._fu = None
        self._size = 0
        self._damaged = False
        self._ts = None

    def _reset(self) -> None:
        self._next = -1
        self._ts = None
        self._nals = []
        self._fu = None
        self._size = 0
        self._damaged = False
