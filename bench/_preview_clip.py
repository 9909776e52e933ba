"""A bigger H.264 clip for ``bench/preview.py``: the picture of a ~1 Mbit/s camera.

``conformance.media.clip.h264_clip`` (320x240, a few dozen kbit/s) is what every simulated
device streams in the tests; a preview capacity figure needs a channel closer to a real camera.
This encodes a 1280x720 moving picture with libx264 under rate control (ABR with a VBV as large
as one second, so every second of the clip is close to the target) and enough fresh noise that
the encoder has to spend the bits: a scrolling luma ramp, a field of noise that moves, and a
noise band refreshed every frame. Same shape as the conformance clip: no B-frames, one access
unit per picture, SPS/PPS before every IDR, a key frame every ``gop`` frames exactly.

The result is :class:`conformance.media.clip.Frame` objects, so a
:class:`~conformance.peers.device.SimDevice` streams it like its own (its ``clip`` field).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import av
import numpy as np

from conformance.media.clip import Frame

_SEED = 28181


@functools.lru_cache(maxsize=4)
def camera_clip(
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 25,
    gop: int = 50,
    kbps: int = 1000,
    frames: int = 100,
) -> tuple[Frame, ...]:
    """``frames`` access units (loop it: ``frames`` a multiple of ``gop``), ~``kbps`` kbit/s."""
    if frames % gop:
        raise ValueError("frames must be a multiple of gop so the loop keeps the GOP")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.gop_size = gop
    encoder.bit_rate = kbps * 1000
    encoder.thread_count = 1
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "bframes": "0",
        "sc_threshold": "0",
        "x264-params": (
            f"keyint={gop}:min-keyint={gop}:repeat-headers=1:vbv-maxrate={kbps}:vbv-bufsize={kbps}"
        ),
    }
    encoder.open()
    rng = np.random.default_rng(_SEED)
    field = rng.integers(16, 236, size=(height * 2, width * 2), dtype=np.uint8)
    ramp = (np.arange(width + 256) % 220 + 16).astype(np.uint8)
    band_h = max(16, height // 8)
    units: list[tuple[bytes, bool]] = []
    for index in range(frames):
        luma = np.broadcast_to(ramp[(3 * index) % 220 : (3 * index) % 220 + width], (height, width))
        luma = luma.copy()
        # A quarter of the picture: a noise field panning (motion the encoder can predict),
        # and a band of noise new in every frame (what it cannot).
        fx, fy = (7 * index) % width, (5 * index) % height
        luma[: height // 2, : width // 2] = field[fy : fy + height // 2, fx : fx + width // 2]
        band_y = (index * 11) % (height - band_h)
        luma[band_y : band_y + band_h, width // 2 :] = rng.integers(
            16, 236, size=(band_h, width - width // 2), dtype=np.uint8
        )
        chroma = np.full((height // 2, width // 2), (96 + 2 * index) % 256, dtype=np.uint8)
        yuv = np.concatenate([luma.reshape(-1), chroma.reshape(-1), chroma.reshape(-1)])
        picture = av.VideoFrame.from_ndarray(yuv.reshape(height * 3 // 2, width), format="yuv420p")
        picture.pts = index
        units.extend((bytes(p), bool(p.is_keyframe)) for p in encoder.encode(picture))
    units.extend((bytes(p), bool(p.is_keyframe)) for p in encoder.encode(None))
    if len(units) != frames:
        raise RuntimeError(f"encoder gave {len(units)} access units for {frames} pictures")
    return tuple(Frame(data, key, index) for index, (data, key) in enumerate(units))


def clip_kbps(clip: tuple[Frame, ...], fps: int) -> float:
    """The clip's H.264 bitrate (access units only, no PS/RTP overhead), kbit/s."""
    return sum(len(f.data) for f in clip) * 8 * fps / len(clip) / 1000
