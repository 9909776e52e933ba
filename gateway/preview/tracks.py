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


class VideoPassthrough(MediaStreamTrack):
    """H.264 access units of one viewer, as ``av.Packet``s."""

    kind = "video"

    def __init__(self, viewer: Viewer, sent: Callable[[int], None]) -> None:
        super().__init__()
        self.viewer = viewer
        self._sent = sent

    async def recv(self) -> av.Packet[Any]:
        try:
            frame, timestamp = await self.viewer.next_video()
        except ViewerClosed:
            self.stop()
            raise MediaStreamError from None
        packet = av.Packet(frame.data)
        packet.pts = timestamp
        packet.dts = timestamp
        packet.time_base = VIDEO_TIME_BASE
        self._sent(len(frame.data))
        return packet


class AudioPassthrough(MediaStreamTrack):
    """G.711 samples of one viewer, as ``av.Packet``s (sent as PCMA or PCMU as they came)."""

    kind = "audio"

    def __init__(self, viewer: Viewer, sent: Callable[[int], None]) -> None:
        super().__init__()
        self.viewer = viewer
        self._sent = sent  # told the bytes of each chunk handed to the sender

    async def recv(self) -> av.Packet[Any]:
        try:
            chunk, at = await self.viewer.next_audio()
        except ViewerClosed:
            self.stop()
            raise MediaStreamError from None
        packet = av.Packet(chunk.data)
        packet.pts = at
        packet.time_base = AUDIO_TIME_BASE
        self._sent(len(chunk.data))
        return packet
