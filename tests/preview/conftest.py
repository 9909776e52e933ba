"""Fixtures for the preview tests: a gateway with a simulated NVR (the media rig) whose preview
gathers ICE on loopback, and an aiortc viewer that offers, takes the answer and decodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.media.rig import Rig, nvr_endpoint, rig_factory, upper_endpoint

__all__ = ["nvr_endpoint", "rig_factory", "upper_endpoint"]

LOOPBACK_PREVIEW = {"ice_addresses": ["127.0.0.1"], "first_frame_timeout": 10.0}


class ViewerClient:
    """A browser stand-in: aiortc, a recvonly video (and optionally audio) transceiver,
    non-trickle (the offer holds every candidate), every received frame decoded by aiortc."""

    def __init__(self, *, audio: bool = False, video: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if video:
            self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.frames = 0
        self.sizes: set[tuple[int, int]] = set()
        self.audio_frames = 0
        self.first_frame_at: float | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._track)

    def _track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.frames += 1
                self.sizes.add((frame.width, frame.height))  # type: ignore[union-attr]
                if self.first_frame_at is None:
                    self.first_frame_at = loop.time()
            else:
                self.audio_frames += 1

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


@pytest.fixture
async def viewers() -> AsyncIterator[Callable[..., ViewerClient]]:
    """Make aiortc viewers; each is closed at the end of the test."""
    made: list[ViewerClient] = []

    def make(**kw: Any) -> ViewerClient:
        client = ViewerClient(**kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def preview_rig(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> Callable[..., Awaitable[Rig]]:
    """A media rig whose NVR streams for ever and whose preview uses loopback ICE."""

    async def make(*, preview: dict[str, Any] | None = None, **kw: Any) -> Rig:
        gateway = kw.pop("gateway", {})
        gateway["preview"] = {**LOOPBACK_PREVIEW, **(preview or {})}
        kw.setdefault("live_frames", None)
        return await rig_factory(gateway=gateway, **kw)

    return make
