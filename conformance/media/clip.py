"""A short H.264 clip made at run time: the picture every simulated device streams.

PyAV's libx264 encodes a moving test pattern (a scrolling luma ramp with a block of fresh noise
that wanders across it, so every frame differs and P-frames carry real data). There are no
B-frames, so decode order is presentation order and one access unit is one picture, as GB/T
28181 Annex C.1 packing assumes (one frame per PS pack). Every IDR carries its SPS and PPS in
band, so a receiver can start decoding at any key frame (reference §6.3, "PS packing").
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from fractions import Fraction

import av

_NOISE_SEED = 28181


@dataclass(frozen=True, slots=True)
class Frame:
    """One H.264 access unit in Annex B form (start codes); SPS/PPS precede each IDR."""

    data: bytes
    key: bool
    index: int


def nal_types(data: bytes) -> list[int]:
    """The ``nal_unit_type`` of every NAL unit in an Annex B byte string, in order."""
    types: list[int] = []
    at = data.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(data):
        types.append(data[at + 3] & 0x1F)
        at = data.find(b"\x00\x00\x01", at + 3)
    return types


def h264_clip(
    frames: int = 50, *, fps: int = 25, width: int = 320, height: int = 240, gop: int = 25
) -> tuple[Frame, ...]:
    """Encode ``frames`` pictures of the test pattern; a key frame every ``gop`` frames.

    Cached per parameter set however they are spelled: the clip is immutable and shared by
    every sender in the process.
    """
    if frames < 1 or fps < 1 or gop < 1:
        raise ValueError("frames, fps and gop must be positive")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError("width and height must be even and at least 16")
    return _encode(frames, fps, width, height, gop)


@functools.lru_cache(maxsize=8)
def _encode(frames: int, fps: int, width: int, height: int, gop: int) -> tuple[Frame, ...]:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.gop_size = gop
    encoder.thread_count = 1  # deterministic output; a clip this small gains nothing from threads
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "bframes": "0",
        # Key frames only where the GOP says, never on a "scene cut" (the noise would cause some).
        "sc_threshold": "0",
        "x264-params": f"keyint={gop}:min-keyint={gop}:repeat-headers=1",
    }
    encoder.open()
    pattern = _Pattern(width, height)
    units: list[tuple[bytes, bool]] = []
    for index in range(frames):
        picture = pattern.picture(index)
        picture.pts = index
        units.extend((bytes(p), bool(p.is_keyframe)) for p in encoder.encode(picture))
    units.extend((bytes(p), bool(p.is_keyframe)) for p in encoder.encode(None))
    if len(units) != frames:
        raise RuntimeError(f"encoder gave {len(units)} access units for {frames} pictures")
    return tuple(Frame(data, key, index) for index, (data, key) in enumerate(units))


class _Pattern:
    """Builds YUV 4:2:0 pictures from plain bytes (no numpy): cheap slicing and joining only."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.ramp = bytes(range(16, 236)) * (2 + width // 220)
        self.block = min(64, width // 2, height // 2)
        rng = random.Random(_NOISE_SEED)
        self.noise = rng.randbytes(self.block * self.block * 8)

    def picture(self, index: int) -> av.VideoFrame:
        width, height, block = self.width, self.height, self.block
        period = 220
        luma = bytearray(
            b"".join(
                self.ramp[(row + 3 * index) % period : (row + 3 * index) % period + width]
                for row in range(height)
            )
        )
        # The noise block moves diagonally and bounces; its content changes every frame.
        span_x, span_y = width - block, height - block
        x = _bounce(7 * index, span_x)
        y = _bounce(5 * index, span_y)
        area = block * block
        offset = (index * 997) % (len(self.noise) - area)
        for row in range(block):
            start = (y + row) * width + x
            src = offset + row * block
            luma[start : start + block] = self.noise[src : src + block]
        picture = av.VideoFrame(width, height, "yuv420p")
        _fill(picture.planes[0], bytes(luma), width, height)
        chroma_w, chroma_h = width // 2, height // 2
        _fill(
            picture.planes[1],
            bytes([(96 + 2 * index) % 256]) * (chroma_w * chroma_h),
            chroma_w,
            chroma_h,
        )
        _fill(
            picture.planes[2],
            bytes([(160 - index) % 256]) * (chroma_w * chroma_h),
            chroma_w,
            chroma_h,
        )
        return picture


def _bounce(step: int, span: int) -> int:
    if span <= 0:
        return 0
    phase = step % (2 * span)
    return phase if phase < span else 2 * span - phase


def _fill(plane: av.video.plane.VideoPlane, data: bytes, width: int, height: int) -> None:
    """Copy tightly packed rows into a plane whose rows may be padded to ``line_size``."""
    stride = plane.line_size
    if stride != width:
        pad = bytes(stride - width)
        data = b"".join(data[row * width : (row + 1) * width] + pad for row in range(height))
    plane.update(data)
