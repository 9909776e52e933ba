"""Live preview end to end: an aiortc WHEP client POSTs its offer to the gateway's HTTP server,
which pulls the channel of a simulated NVR (H.264 in PS over RTP, over UDP or TCP) and sends
the H.264 through WebRTC; the client decodes it with PyAV (aiortc's receiver) and counts
frames. Also: one device INVITE shared by a viewer and an upper, the refusals a player sees,
and the endings (DELETE, device offline, ``preview.max_seconds``) in ``/api/v1/previews`` and on
``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import HTTP_TOKENS, TOKENS
from tests.conftest import wait_for
from tests.media.rig import Rig, device_session

pytestmark = pytest.mark.timeout(90)

SDP = {"Content-Type": "application/sdp"}
VIEWER2 = "second-viewer-token-0123456789"
WIDTH, HEIGHT = 320, 240  # the simulated NVR's clip: 25 fps, GOP 25
FPS = 25


class Viewer:
    """A WHEP player: an aiortc peer connection receiving video (and audio), non-trickle (the
    offer carries every candidate), decoding each frame with PyAV."""

    def __init__(self, base: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0)
        self.pc: RTCPeerConnection | None = None
        self.frames: list[tuple[float, int, int]] = []  # (monotonic time, width, height)
        self.location: str | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def offer(self, video: tuple[str, ...] = ("video/H264",)) -> str:
        # iceServers=[]: never Google's public STUN server (aiortc's default when None).
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        caps = RTCRtpReceiver.getCapabilities("video")
        assert caps is not None
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType in video])
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._readers.append(asyncio.ensure_future(self._read(track)))

        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
        return pc.localDescription.sdp

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                self.frames.append((time.monotonic(), frame.width, frame.height))

    async def open(self, channel: str, **kw: Any) -> httpx.Response:
        """POST the offer; on 201 apply the answer."""
        r = await self.http.post(
            f"/whep/channels/{channel}", content=await self.offer(**kw), headers=SDP
        )
        if r.status_code == 201:
            assert r.headers["content-type"] == "application/sdp"
            self.location = r.headers["location"]
            assert self.pc is not None
            await self.pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        return r

    @property
    def session_id(self) -> str:
        assert self.location is not None
        return self.location.rsplit("/", 1)[1]

    async def wait_frames(self, n: int, timeout: float = 15.0) -> None:
        await wait_for(lambda: len(self.frames) >= n, timeout, f"{n} decoded frames")

    async def delete(self) -> httpx.Response:
        assert self.location is not None
        return await self.http.delete(self.location)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        await self.http.aclose()


class Preview:
    """A rig (gateway, NVR below, upper above) whose gateway serves WHEP, and its viewers."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        assert rig.gw.api is not None
        self.base = f"http://127.0.0.1:{rig.gw.api.port}"
        self.viewers: list[Viewer] = []
        self.admin = self.viewer_for(TOKENS["admin"])

    def viewer_for(self, token: str | None = TOKENS["viewer"]) -> Viewer:
        v = Viewer(self.base, token)
        self.viewers.append(v)
        return v

    async def previews(self) -> list[dict[str, Any]]:
        r = await self.admin.http.get("/api/v1/previews")
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def metric(self, name: str, **labels: str) -> float:
        text = (await self.admin.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0


@pytest.fixture
async def preview(rig_factory: Any) -> AsyncIterator[Any]:
    made: list[Preview] = []

    async def make(*, device_transport: str = "udp", **preview_cfg: Any) -> Preview:
        rig = await rig_factory(
            device_transport=device_transport,
            live_frames=None,  # the NVR streams for ever
            gateway={
                "http": {
                    "tokens": [
                        *HTTP_TOKENS,
                        {"name": "viewer2", "role": "viewer", "token": VIEWER2},
                    ],
                    "metrics_min_interval": 0,
                },
                "preview": {"ice_addresses": ["127.0.0.1"], **preview_cfg},
            },
        )
        p = Preview(rig)
        made.append(p)
        return p

    yield make
    for p in made:
        for v in p.viewers:
            await v.close()


def fps_over(frames: list[tuple[float, int, int]], start: int, end: int) -> float:
    return (end - start) / (frames[end][0] - frames[start][0])


# -- (a) the picture -----------------------------------------------------------------------------
@pytest.mark.parametrize("device_transport", ["udp", "tcp-passive"])
async def test_a_channel_is_pulled_and_decoded(preview: Any, device_transport: str) -> None:
    p = await preview(device_transport=device_transport)
    rig = p.rig
    viewer = p.viewer_for()
    r = await viewer.open(rig.channel)
    assert r.status_code == 201, r.text
    # Two seconds of the clip after the first 40 frames (what queued while ICE and DTLS were
    # set up is replayed quickly, and on a busy machine that can be a second of frames): every
    # frame the clip's size, at about its rate (generous bounds; the count is what matters).
    await viewer.wait_frames(41 + 2 * FPS)
    frames = viewer.frames
    assert {(w, h) for _, w, h in frames} == {(WIDTH, HEIGHT)}
    assert 0.5 * FPS < fps_over(frames, 40, 40 + 2 * FPS) < 3 * FPS
    dev = device_session(rig)
    assert dev.role == {"udp": "udp", "tcp-passive": "tcp-active"}[device_transport]
    (listed,) = await p.previews()
    assert listed["id"] == viewer.session_id
    assert listed["channel_id"] == rig.channel and listed["owner"] == "token:viewer-token"
    assert listed["frames_sent"] > 0 and listed["first_frame_ms"] is not None
    assert await p.metric("gb_previews_active") == 1
    assert await p.metric("gb_preview_first_frame_seconds_count") == 1
    # The owner ends it: the feed stops and the device is BYEd (nothing else uses the leg).
    assert (await viewer.delete()).status_code == 200
    await wait_for(lambda: dev.ended, 10, "BYE at the device")
    assert dev.ended_by == "remote"
    await rig.at_rest()
    assert await p.previews() == []
    assert await p.metric("gb_preview_ended_total", reason="deleted") == 1


# -- (b) a viewer and an upper on one device INVITE ----------------------------------------------
async def test_a_viewer_and_an_upper_share_one_device_invite(preview: Any) -> None:
    p = await preview()
    rig = p.rig
    call = await rig.invite()
    assert call.status == 200
    await call.receiver.wait_frames(5)
    viewer = p.viewer_for()
    assert (await viewer.open(rig.channel)).status_code == 201
    await viewer.wait_frames(10)
    assert len(rig.nvr.media_sessions) == 1
    assert rig.gw.metrics.get("media.device_invite.sent") == 1
    # The viewer leaves: the upper's picture goes on.
    assert (await viewer.delete()).status_code == 200
    before = call.receiver.frames
    await call.receiver.wait_frames(before + FPS, timeout=10)
    dev = device_session(rig)
    assert not dev.ended
    # A viewer again (still the one INVITE), then the upper leaves: the viewer's goes on.
    again = p.viewer_for()
    assert (await again.open(rig.channel)).status_code == 201
    await again.wait_frames(5)
    assert rig.gw.metrics.get("media.device_invite.sent") == 1
    await call.bye()
    seen = len(again.frames)
    await again.wait_frames(seen + FPS)
    assert not dev.ended and len(rig.nvr.media_sessions) == 1
    assert (await again.delete()).status_code == 200
    await wait_for(lambda: dev.ended, 10, "BYE at the device")
    await rig.at_rest()


# -- (c) refusals --------------------------------------------------------------------------------
async def test_refusals_and_device_offline(preview: Any) -> None:
    p = await preview(max_sessions=2)
    rig = p.rig
    channel = rig.channel
    anonymous, viewer2 = p.viewer_for(None), p.viewer_for(VIEWER2)
    r = await p.viewer_for().open("34020000001310009999")
    assert r.status_code == 404 and r.json()["error"]
    r = await anonymous.open(channel)
    assert r.status_code == 401
    r = await p.viewer_for().open(channel, video=("video/VP8",))  # no H.264 in the offer
    assert r.status_code == 415 and "H.264" in r.json()["error"]
    r = await p.viewer_for().http.post(
        f"/whep/channels/{channel}", content="v=0\r\n", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    assert rig.gw.metrics.get("media.device_invite.sent") == 0  # none of these INVITEd
    first, second = p.viewer_for(), p.viewer_for()
    assert (await first.open(channel)).status_code == 201
    assert (await second.open(channel)).status_code == 201
    r = await p.viewer_for().open(channel)  # over preview.max_sessions
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert await p.metric("gb_preview_refused_total", status="503") == 1
    assert (await first.http.patch(first.location or "")).status_code == 405
    assert (await viewer2.http.delete(first.location or "")).status_code == 404
    await first.wait_frames(5)
    await second.wait_frames(5)
    assert (await first.delete()).status_code == 200
    dev = device_session(rig)
    assert not dev.ended  # the second viewer still watches
    # (d) The device goes offline: the preview ends, and a new one is refused with 409.
    assert (await rig.nvr.unregister()).status == 200
    await wait_for(lambda: not rig.media.legs, 10, "the leg ended")

    async def none_listed() -> bool:
        return await p.previews() == []

    deadline = time.monotonic() + 10
    while not await none_listed():
        assert time.monotonic() < deadline, "the preview did not end with the device"
        await asyncio.sleep(0.05)
    assert await p.metric("gb_preview_ended_total", reason="device_offline") == 1
    assert await p.metric("gb_previews_active") == 0
    r = await p.viewer_for().open(channel)
    assert r.status_code == 409 and "offline" in r.json()["error"]
    await rig.at_rest()


# -- (d) the time limit --------------------------------------------------------------------------
async def test_a_preview_ends_after_max_seconds(preview: Any) -> None:
    # Long enough for ICE, DTLS and a first frame on a busy machine, which the test waits for
    # before it waits for the end.
    p = await preview(max_seconds=4)
    rig = p.rig
    viewer = p.viewer_for()
    assert (await viewer.open(rig.channel)).status_code == 201
    await viewer.wait_frames(1)
    dev = device_session(rig)
    await wait_for(lambda: dev.ended, 15, "the preview's leg ended after max_seconds")
    assert await p.previews() == []
    assert await p.metric("gb_preview_ended_total", reason="max_seconds") == 1
    assert (await viewer.delete()).status_code == 404  # already gone
    await rig.at_rest()
