"""Proof that received video is real: decode H.264 access units with FFmpeg (PyAV) and count.

A receiver that counts packets cannot tell a stream of well-framed garbage from video; one that
decodes can. The decoder runs single-threaded with no frame delay, so each access unit of a
stream without B-frames yields its picture at once.
"""

from __future__ import annotations

import av
import av.error


class H264Counter:
    """Decodes Annex B access units and counts the pictures that come out."""

    def __init__(self) -> None:
        self.frames = 0
        self.errors = 0
        self._codec = av.CodecContext.create("h264", "r")
        self._codec.thread_count = 1
        self._codec.thread_type = "SLICE"

    def decode(self, access_unit: bytes) -> int:
        """Decode one access unit; return the pictures it produced (errors are counted)."""
        if not access_unit:  # an empty packet would put the decoder into draining mode
            return 0
        try:
            pictures = self._codec.decode(av.Packet(access_unit))
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return 0
        self.frames += len(pictures)
        return len(pictures)

    def flush(self) -> int:
        """Drain pictures the decoder still holds; return how many."""
        try:
            pictures = self._codec.decode(None)
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return 0
        self.frames += len(pictures)
        return len(pictures)
