"""The aiortc tracks of a preview: the camera's encoded media handed to the RTP sender as it is.

A track whose ``recv()`` returns an ``av.Packet`` (not an ``av.Frame``) makes aiortc's
``RTCRtpSender`` call its encoder's ``pack()``, which only splits the Annex B access unit into
RFC 6184 packets (single NAL, STAP-A, FU-A) and converts ``pts``/``time_base`` to the 90 kHz
RTP clock: nothing is decoded, nothing is encoded. G.711 goes the same way (RFC 3551 PCMA/PCMU,
8 kHz).
"""

from __future__ import annotations

import fractions
from collections.abc import Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.preview.feed import Viewer, ViewerClosed

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_TIME_BASE = fractions.Fraction(1, 8_000)


class _Passthrough(MediaStreamTrack):
    """One viewer's encoded media of one kind, as ``av.Packet``s; ``sent`` is told the bytes
    of each one handed to the sender."""

    time_base: fractions.Fraction

    def __init__(self, viewer: Viewer, sent: Callable[[int], None]) -> None:
        super().__init__()
        self.viewer = viewer
        self._sent = sent

    async def _next(self) -> tuple[bytes, int]:
        raise NotImplementedError

    async def recv(self) -> av.Packet[Any]:
        try:
            data, pts = await self._next()
        except ViewerClosed:
            self.stop()
            raise MediaStreamError from None
        packet = av.Packet(data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = self.time_base
        self._sent(len(data))
        return packet


class VideoPassthrough(_Passthrough):
    """H.264 access units of one viewer."""

    kind = "video"
    time_base = VIDEO_TIME_BASE

    async def _next(self) -> tuple[bytes, int]:
        frame, timestamp = await self.viewer.next_video()
        return frame.data, timestamp


class AudioPassthrough(_Passthrough):
    """G.711 samples of one viewer (sent as PCMA or PCMU as they came)."""

    kind = "audio"
    time_base = AUDIO_TIME_BASE

    async def _next(self) -> tuple[bytes, int]:
        chunk, at = await self.viewer.next_audio()
        return chunk.data, at
