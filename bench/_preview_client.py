"""WHEP viewers for ``bench/preview.py``: one process holding many aiortc peer connections.

Run by the bench, never by hand: ``python bench/_preview_client.py --url URL --token T
[--count-only]``; commands are JSON lines on stdin, one JSON answer line each on stdout.

* ``{"op": "open", "channels": [...]}``: one viewer per entry (a channel may repeat), a few
  at a time; answers when each has got its first frame (or failed).
* ``{"op": "snap"}``: the time, and per viewer the frames counted so far, the frames missing
  (gaps in the RTP timestamps of the frames delivered) and the last frame's timestamp.
* ``{"op": "first_frame", "channel": C}``: one viewer timed from its WHEP POST to its first
  decoded frame (``av.VideoFrame`` from ``track.recv()``), then DELETEd and closed.
* ``{"op": "close"}``: DELETE and close every viewer. ``{"op": "quit"}``.

With ``--count-only`` nothing is decoded: each receiver's decoder queue is replaced by a
counter, which counts the complete frames aiortc's jitter buffer hands over (what a decoder
would get) and checks their timestamps, in the event loop (the decoder thread ends at once), so
that a few client processes hold a hundred viewers without measuring their own decoding.
Host candidates are loopback only (aioice would skip 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

FRAME_TICKS = 3600  # 90 kHz / 25 fps
OPEN_AT_ONCE = 4
FIRST_FRAME_TIMEOUT = 30.0
_CAPS = RTCRtpReceiver.getCapabilities("video")
H264 = [c for c in (_CAPS.codecs if _CAPS else []) if c.mimeType in ("video/H264", "video/rtx")]


def _loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


aioice.ice.get_host_addresses = _loopback  # type: ignore[assignment]


class Counter:
    """Complete frames a receiver's jitter buffer delivered; written by one decoder thread."""

    def __init__(self) -> None:
        self.frames = 0
        self.missing = 0  # frames absent between two delivered ones (timestamp gaps)
        self.jumps = 0  # timestamp steps back or of over 2 s (a source restart: not counted)
        self.last: int | None = None
        self.first_at: float | None = None

    def add(self, timestamp: int) -> None:
        if self.last is not None:
            delta = timestamp - self.last
            if 0 < delta <= 50 * FRAME_TICKS:
                self.missing += max(0, round(delta / FRAME_TICKS) - 1)
            else:
                self.jumps += 1
        else:
            self.first_at = time.monotonic()
        self.last = timestamp
        self.frames += 1


class CountingQueue:
    """Stands in for a receiver's decoder queue: each complete frame aiortc's jitter buffer
    hands over (``put((codec, frame))``) is counted in the event loop, nothing is decoded."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def put(self, task: Any) -> None:
        if task is not None:
            self.counter.add(task[1].timestamp)


def idle_worker(*args: Any) -> None:
    """Stands in for ``aiortc.rtcrtpreceiver.decoder_worker``: no decoder thread stays up."""


class Viewer:
    def __init__(self, channel: str, *, count_only: bool = False) -> None:
        self.channel = channel
        self.count_only = count_only
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.transceiver = self.pc.addTransceiver("video", direction="recvonly")
        # H.264 only (what the gateway passes through; a browser offers more, the answer picks).
        self.transceiver.setCodecPreferences(H264)
        self.location: str | None = None
        self.counter = Counter()

    async def post(self, http: httpx.AsyncClient) -> float:
        """Offer (ICE gathered: non-trickle), POST, apply the answer; the POST's start time."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        started = time.perf_counter()
        answer = await http.post(
            f"/whep/channels/{self.channel}",
            content=self.pc.localDescription.sdp.encode(),
            headers={"Content-Type": "application/sdp"},
        )
        if answer.status_code != 201:
            raise RuntimeError(f"POST {answer.status_code}: {answer.text[:200]}")
        self.location = answer.headers.get("location")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        if self.count_only:
            self.attach_counter()
        return started

    def attach_counter(self) -> None:
        """Count instead of decoding (``--count-only``): swap the receiver's decoder queue."""
        receiver = self.transceiver.receiver
        receiver._RTCRtpReceiver__decoder_queue = CountingQueue(self.counter)  # type: ignore[attr-defined]

    async def close(self, http: httpx.AsyncClient) -> None:
        if self.location:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(self.location)
            self.location = None
        await self.pc.close()


class Client:
    def __init__(self, url: str, token: str, *, count_only: bool) -> None:
        self.count_only = count_only
        self.http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=OPEN_AT_ONCE + 2),
        )
        self.viewers: list[Viewer] = []

    async def open_one(self, channel: str, gate: asyncio.Semaphore) -> str | None:
        async with gate:
            viewer = Viewer(channel, count_only=self.count_only)
            try:
                await viewer.post(self.http)
                deadline = time.monotonic() + FIRST_FRAME_TIMEOUT
                while viewer.counter.frames == 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no frame within 30 s")
                    await asyncio.sleep(0.05)
            except Exception as exc:  # reported to the driver
                await viewer.close(self.http)
                return f"{type(exc).__name__}: {exc}"
            self.viewers.append(viewer)
            return None

    async def open(self, channels: list[str]) -> dict[str, Any]:
        gate = asyncio.Semaphore(OPEN_AT_ONCE)
        started = time.perf_counter()
        errors = await asyncio.gather(*(self.open_one(c, gate) for c in channels))
        failed = [e for e in errors if e]
        return {
            "opened": len(channels) - len(failed),
            "failed": failed[:5],
            "failures": len(failed),
            "seconds": round(time.perf_counter() - started, 2),
        }

    def snap(self) -> dict[str, Any]:
        return {
            "at": time.monotonic(),
            "viewers": [
                [v.channel, v.counter.frames, v.counter.missing, v.counter.last or 0]
                for v in self.viewers
            ],
        }

    async def first_frame(self, channel: str) -> dict[str, Any]:
        viewer = Viewer(channel)
        try:
            started = await viewer.post(self.http)
            answered = time.perf_counter()
            frame = await asyncio.wait_for(
                viewer.transceiver.receiver.track.recv(), FIRST_FRAME_TIMEOUT
            )
            done = time.perf_counter()
            return {
                "ms": round((done - started) * 1000, 1),
                "answer_ms": round((answered - started) * 1000, 1),
                "size": [frame.width, frame.height],
            }
        except Exception as exc:  # reported to the driver
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            await viewer.close(self.http)

    async def close(self) -> dict[str, Any]:
        viewers, self.viewers = self.viewers, []
        await asyncio.gather(*(v.close(self.http) for v in viewers), return_exceptions=True)
        return {"closed": len(viewers)}


async def serve(args: argparse.Namespace) -> None:
    if args.count_only:
        aiortc.rtcrtpreceiver.decoder_worker = idle_worker  # type: ignore[assignment]
    client = Client(args.url, args.token, count_only=args.count_only)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "open":
                out = await client.open(cmd["channels"])
            elif op == "snap":
                out = client.snap()
            elif op == "first_frame":
                out = await client.first_frame(cmd["channel"])
            elif op == "close":
                out = await client.close()
            elif op == "quit":
                break
            else:
                out = {"error": f"unknown op {op}"}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
    finally:
        await client.close()
        await client.http.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--count-only", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
