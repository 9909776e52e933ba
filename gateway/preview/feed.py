"""One feed per previewed channel: the RTP the relay sends to the gateway's own local session,
turned into access units once, the last group of pictures kept, and copied to every viewer.

The device's stream is received on a UDP socket bound to 127.0.0.1 (``Calls.start_local``
points the channel's shared live leg at it, so the device is INVITEd once whatever the number of
viewers and upper sessions: GB/T 28181-2016 Annex L). The depacketiser comes from
``gateway.media`` (PS per GB/T 28181-2016 Annex C, or RFC 6184 H.264), chosen by the encoding
the device answered.

Each viewer has its own bounded queue and its own 90 kHz timeline (:class:`Timeline`): it
starts at 0, only goes forward, carries the source's PTS steps over the 33-bit wrap (ISO/IEC
13818-1 §2.4.3.7; the 32-bit RTP wrap for RFC 6184 streams) and replaces a jump or a step back
with one nominal frame. A viewer of a channel already streaming starts from the cached GOP (its
key frame, SPS/PPS before it), and the frames that waited before the viewer's sender asked for
its first one are replayed with short steps so the browser catches up with live instead of
staying one GOP behind. Until that first request (ICE and DTLS still connecting) the lag limit
does not apply, since a long GOP (4 s at 25 fps is 100 frames) is no lag: the queue is the
feed's current GOP instead, re-seeded at each key frame and bounded by the GOP cache's bytes
(and the service's connect timeout). Once sending, a viewer more than
``max_viewer_lag_frames`` behind drops its queue and waits for the next key frame; a viewer
that starts waiting for a key frame makes the feed ask the device for one. Nothing grows
without bound per viewer, and the frames in the queues are the feed's own objects, shared,
never copied.

The socket is bound to loopback only, and once the local session's relay port is known only
datagrams from it are taken (the relay's UDP output socket is bound to that port and connected
to ours); what comes before is depacketised with the same bounds as the device's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.metrics import Metrics

log = structlog.get_logger("gateway.preview")

PTS_WRAP = 1 << 33  # PES PTS are 33-bit counts of a 90 kHz clock
RTP_WRAP = 1 << 32  # RTP timestamps (the H.264-over-RTP receiver's unit times) are 32-bit
VIDEO_RATE = 90_000
NOMINAL_STEP = VIDEO_RATE // 25  # one frame at 25 fps: what a missing or absurd PTS step becomes
MAX_STEP = 5 * VIDEO_RATE  # a larger step (or any step back) is a discontinuity, not time
CATCH_UP_STEP = VIDEO_RATE // 250  # 4 ms between frames replayed from the cache
AUDIO_QUEUE = 50  # G.711 PES packets a viewer may have waiting (about a second)
PASSTHROUGH_AUDIO = ("pcma", "pcmu")


class Unit(Protocol):
    """An elementary-stream unit as ``gateway.media``'s receivers give it (``EsUnit``)."""

    @property
    def codec(self) -> str: ...
    @property
    def pts(self) -> int | None: ...
    @property
    def data(self) -> bytes: ...
    @property
    def key(self) -> bool: ...
    @property
    def kind(self) -> str: ...


class UnitReceiver(Protocol):
    """Whole RTP packets in, access units out (``PsRtpReceiver``, ``H264RtpReceiver``)."""

    def push(self, packet: bytes) -> list[Any]: ...


class ParamSets(Protocol):
    """SPS/PPS kept from the stream and put before each key frame (``ParameterSets``)."""

    def complete(self, au: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One H.264 access unit (Annex B), SPS/PPS in front of a key frame."""

    data: bytes
    pts: int | None
    key: bool


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """The samples of one G.711 PES packet."""

    data: bytes
    codec: str


class Timeline:
    """A viewer's own 90 kHz clock: 0 at its first frame, always forward."""

    __slots__ = ("last_src", "now", "started")

    def __init__(self) -> None:
        self.last_src: int | None = None
        self.now = 0
        self.started = False

    def step(self, src: int | None, *, catch_up: bool = False) -> int:
        """The timestamp of the next frame, whose source PTS is ``src``; ``catch_up``: the
        frame is replayed from the backlog, so the step is at most :data:`CATCH_UP_STEP`."""
        if not self.started:
            self.started = True
            self.last_src = src
            return 0
        if src is None or self.last_src is None:
            delta = NOMINAL_STEP
        else:
            delta = (src - self.last_src) % PTS_WRAP
            if delta > MAX_STEP:
                # An RFC 6184 stream's times are 32-bit RTP timestamps (RFC 3550 §5.1).
                delta = (src - self.last_src) % RTP_WRAP
            if delta == 0 or delta > MAX_STEP:
                delta = NOMINAL_STEP
        if catch_up:
            delta = min(delta, CATCH_UP_STEP)
        if src is not None:
            self.last_src = src
        self.now += delta
        return self.now


class ViewerClosed(Exception):
    """The viewer has ended: its tracks stop."""


class Viewer:
    """What one preview takes from its feed: bounded queues and a wake-up."""

    def __init__(self, max_lag: int, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_lag = max_lag
        self.max_bytes = max_bytes  # the queue's bytes before sending starts (the GOP bound)
        self.video: deque[VideoFrame] = deque()
        self.video_bytes = 0  # bytes in ``video`` while the replay has not started
        self.audio: deque[AudioChunk] = deque(maxlen=AUDIO_QUEUE)
        self.waiting_key = True
        self.closed = False
        self.skips = 0  # times the viewer fell too far behind and skipped to a key frame
        self.timeline = Timeline()
        self.audio_samples = 0
        self._replay = -1  # frames left to replay fast; -1 until the sender's first request
        self._video_ready = asyncio.Event()
        self._audio_ready = asyncio.Event()

    @property
    def sending(self) -> bool:
        """The sender has asked for its first frame (ICE and DTLS are up)."""
        return self._replay >= 0

    @property
    def replaying(self) -> bool:
        """Frames that waited for the connection are still being replayed fast."""
        return self._replay != 0

    def start_from(self, gop: list[VideoFrame]) -> None:
        """Begin with the cached group of pictures (it starts with a key frame; the feed
        bounds its bytes)."""
        if gop and gop[0].key and not self.closed:
            self.video.extend(gop)
            self.video_bytes = sum(len(f.data) for f in gop)
            self.waiting_key = False
            self._video_ready.set()

    def push_video(self, frame: VideoFrame) -> bool:
        """Queue ``frame``; True when the viewer has just begun waiting for a key frame (the
        feed then asks the device for one)."""
        if self.closed:
            return False
        if self.waiting_key:
            if not frame.key:
                return False
            self.waiting_key = False
        if not self.sending:
            # Not sending yet: the queue is the current GOP, whatever its length.
            if frame.key:
                self.video.clear()
                self.video_bytes = 0
            if self.video_bytes + len(frame.data) > self.max_bytes:
                return self._skip(frame)
            self.video_bytes += len(frame.data)
        elif len(self.video) - self._replay >= self.max_lag:
            # The frames still to replay fast are not lag: only what came after them counts.
            return self._skip(frame)
        self.video.append(frame)
        self._video_ready.set()
        return False

    def _skip(self, frame: VideoFrame) -> bool:
        """Too far behind: drop the queue and go on from ``frame`` if it is a key frame, else
        wait for one."""
        self.video.clear()
        self.video_bytes = 0
        self.skips += 1
        if self._replay > 0:
            self._replay = 0
        if not frame.key:
            self.waiting_key = True
            return True
        self.video.append(frame)
        self.video_bytes = len(frame.data) if not self.sending else 0
        self._video_ready.set()
        return False

    def push_audio(self, chunk: AudioChunk) -> None:
        if not self.closed:
            self.audio.append(chunk)
            self._audio_ready.set()

    async def next_video(self) -> tuple[VideoFrame, int]:
        """The next frame and its timestamp on this viewer's timeline; raises
        :class:`ViewerClosed` once the viewer has ended."""
        while not self.video:
            if self.closed:
                raise ViewerClosed
            self._video_ready.clear()
            await self._video_ready.wait()
        if self.closed:
            raise ViewerClosed
        if self._replay < 0:
            # The sender's first request: everything that waited (the cached GOP, the frames
            # that came while ICE and DTLS were set up) is history; replay it fast.
            self._replay = len(self.video)
            self.video_bytes = 0
        frame = self.video.popleft()
        catch_up = self._replay > 0
        if catch_up:
            self._replay -= 1
        return frame, self.timeline.step(frame.pts, catch_up=catch_up)

    async def next_audio(self) -> tuple[AudioChunk, int]:
        """The next G.711 chunk and its timestamp in samples (8 kHz, one byte a sample)."""
        while not self.audio:
            if self.closed:
                raise ViewerClosed
            self._audio_ready.clear()
            await self._audio_ready.wait()
        if self.closed:
            raise ViewerClosed
        chunk = self.audio.popleft()
        at = self.audio_samples
        self.audio_samples += len(chunk.data)
        return chunk, at

    def close(self) -> None:
        self.closed = True
        self.video.clear()
        self.video_bytes = 0
        self.audio.clear()
        self._video_ready.set()
        self._audio_ready.set()


class Feed:
    """The units of one channel's live stream, its GOP cache and its viewers."""

    def __init__(
        self,
        channel_id: str,
        *,
        gop_cache_bytes: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel_id = channel_id
        self.gop_cache_bytes = gop_cache_bytes
        self.metrics = metrics
        self.clock = clock
        self.output_id: str | None = None
        self.encoding = ""
        self.receiver: UnitReceiver | None = None
        self.params: ParamSets | None = None
        self.viewers: set[Viewer] = set()
        self.gop: list[VideoFrame] = []
        self.gop_bytes = 0
        self.video_codec: str | None = None
        self.audio_codec: str | None = None
        self.units = 0
        self.key_frames = 0
        self.gop_overflows = 0
        self.receive_errors = 0
        self.ended = False
        self.transport: asyncio.DatagramTransport | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()  # the local session is up
        self.keyed: asyncio.Future[None] = loop.create_future()  # the first video unit to use
        self.last_unit_at: float | None = None
        self.key_asked_at = -float("inf")  # monotonic time of the last key-frame request
        self.source_port = 0  # the relay output's port, once known: the only sender taken
        # Called when a viewer begins waiting for a key frame (the service asks the device
        # for one, rate-limited); None: nobody to ask.
        self.key_wanted: Callable[[], None] | None = None
        # The service's task starting the feed (socket, local session): cancelled when the feed
        # stops before it is done, so no INVITE goes on for a feed nobody watches.
        self.starter: asyncio.Task[None] | None = None

    # -- input ------------------------------------------------------------------------------
    def use(self, receiver: UnitReceiver, params: ParamSets | None, encoding: str) -> None:
        self.receiver, self.params, self.encoding = receiver, params, encoding

    def on_packet(self, packet: bytes) -> None:
        """One RTP packet from the relay."""
        if self.receiver is None or self.ended:
            return
        try:
            units = self.receiver.push(packet)
            for unit in units:
                self.on_unit(unit)
        except Exception:  # a depacketiser bug must not end the loop's datagram handling
            self.receive_errors += 1
            self.metrics.inc("preview.feed.receive_error")
            if self.receive_errors <= 3:
                log.exception("preview.feed_receive_error", channel=self.channel_id)

    def on_unit(self, unit: Unit) -> None:
        self.units += 1
        self.last_unit_at = self.clock()
        kind = unit.kind
        if kind == "video":
            self._video(unit)
        elif kind == "audio":
            self.audio_codec = unit.codec
            if unit.codec in PASSTHROUGH_AUDIO and unit.data:
                chunk = AudioChunk(unit.data, unit.codec)
                for viewer in self.viewers:
                    viewer.push_audio(chunk)

    def _video(self, unit: Unit) -> None:
        self.video_codec = unit.codec
        if unit.codec != "h264":
            # The service refuses the viewers (415); nothing is cached.
            if not self.keyed.done():
                self.keyed.set_result(None)
            return
        data = unit.data
        if self.params is not None:
            data = self.params.complete(data)
        if not data:
            return
        frame = VideoFrame(data, unit.pts, unit.key)
        self._cache(frame)
        if frame.key:
            self.key_frames += 1
            if not self.keyed.done():
                self.keyed.set_result(None)
        wanted = False
        for viewer in self.viewers:
            wanted = viewer.push_video(frame) or wanted
        if wanted:
            self._want_key()

    def _want_key(self) -> None:
        if self.key_wanted is not None:
            self.key_wanted()

    def _cache(self, frame: VideoFrame) -> None:
        """The GOP cache: from the last key frame, at most ``gop_cache_bytes``; a GOP that
        grows beyond is dropped (a new viewer then waits for the next key frame)."""
        if frame.key:
            self.gop, self.gop_bytes = [frame], len(frame.data)
        elif self.gop:
            self.gop.append(frame)
            self.gop_bytes += len(frame.data)
        if self.gop_bytes > self.gop_cache_bytes:
            self.gop, self.gop_bytes = [], 0
            self.gop_overflows += 1
            self.metrics.inc("preview.feed.gop_overflow")

    # -- viewers ----------------------------------------------------------------------------
    def add(self, viewer: Viewer) -> None:
        """A new viewer starts from the cached GOP (or waits for the next key frame)."""
        viewer.start_from(self.gop)
        self.viewers.add(viewer)
        if viewer.waiting_key and self.keyed.done() and not self.ended:
            # The stream flows but no GOP is cached (it overflowed): ask for a key frame.
            self._want_key()

    def remove(self, viewer: Viewer) -> bool:
        """Remove ``viewer``; True when it was the last one."""
        self.viewers.discard(viewer)
        return not self.viewers

    def close(self) -> None:
        self.ended = True
        self.gop = []
        self.gop_bytes = 0
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if not self.started.done():
            self.started.cancel()
        if not self.keyed.done():
            self.keyed.cancel()


class FeedSocket(asyncio.DatagramProtocol):
    """The UDP socket on 127.0.0.1 the relay sends the channel's RTP to."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        source = self.feed.source_port
        if source and addr[1] != source:
            self.feed.metrics.inc("preview.feed.stranger")
            return
        self.feed.on_packet(data)

    def error_received(self, exc: Exception) -> None:
        self.feed.metrics.inc("preview.feed.socket_error")
