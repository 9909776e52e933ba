"""Asyncio media endpoints of the simulated peers: a PS-over-RTP sender and a receiver.

One leg is one socket, over UDP or TCP (GB/T 28181-2022 Annex D; reference §6.5):

* ``"udp"``: RTP over UDP from/to a bound socket (symmetric: the sender sends from the port it
  bound, the one it announces in its SDP).
* ``"tcp-active"``: this end connects (``a=setup:active``), retrying every ``retry_interval``
  seconds (≥ 1 s and at least 3 retries by default, as 2022 Annex D asks of a TCP client).
* ``"tcp-passive"``: this end listens (``a=setup:passive``) and takes one connection.

Over TCP every RTP packet is framed per RFC 4571. The sender is paced by loop timers on a
monotonic schedule (no task, no busy wait), so one process can run tens of them; it packs one
frame per PS pack and one pack per RTP timestamp (reference §6.3), advancing the timestamp by
90000/fps per frame whatever the playback speed. Playback control (reference §6.6) maps onto
:meth:`MediaSender.pause`, :meth:`~MediaSender.resume`, :meth:`~MediaSender.set_scale` and
:meth:`~MediaSender.seek`; the end of the clip in playback calls ``on_end`` (where the device
sends ``MediaStatus`` 121).

The receiver reassembles RTP, demuxes PS, and decodes H.264 with FFmpeg to prove the video is
real, not merely well framed.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import cast

import structlog

from .clip import Frame
from .decode import H264Counter
from .ps import PsDemuxer, ps_pack
from .rtp import MAX_PAYLOAD, RtpReassembler, TcpDeframer, frame_rfc4571, packetise

TRANSPORTS = ("udp", "tcp-active", "tcp-passive")
MIN_SCALE, MAX_SCALE = 0.25, 8.0
# A late timer sends the frames it owes, but at most this many at once; further behind than
# LATE_RESET seconds, the schedule restarts from now instead of bursting.
MAX_BURST = 8
LATE_RESET = 1.0

log = structlog.get_logger("conformance.media")

Address = tuple[str, int]


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")


def _tcp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``(host, port)``, to connect from a known port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            if port == 0:
                raise
            sock.bind((host, 0))  # the port we announced was taken meanwhile; any will do
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Leg:
    """One media socket and what both ends do with it: bind, connect with retries, close."""

    def __init__(
        self,
        transport: str,
        local_host: str,
        port: int,
        retry_interval: float,
        retries: int,
    ) -> None:
        _check_transport(transport)
        self.transport = transport
        self.local_host = local_host
        self.local_port = port
        self.retry_interval = retry_interval
        self.retries = retries
        self.connect_attempts = 0
        self.error: str | None = None
        self._closed = False
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Transport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._connector: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """A TCP connection is up (always False over UDP)."""
        return self._tcp is not None

    async def bind(self) -> int:
        """Create the local socket; return its port.

        udp: the bound socket; tcp-passive: the listening socket; tcp-active: the port the
        connection will come from, reserved now so that it can be announced in the SDP.
        """
        if self._closed:
            raise RuntimeError("closed")
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagram(self), local_addr=(self.local_host, self.local_port)
            )
            self._udp = udp
            self.local_port = int(udp.get_extra_info("sockname")[1])
        elif self.transport == "tcp-passive":
            self._server = await loop.create_server(
                lambda: _Stream(self), self.local_host, self.local_port, reuse_address=True
            )
            self.local_port = int(self._server.sockets[0].getsockname()[1])
        else:
            self._sock = _tcp_socket(self.local_host, self.local_port)
            self.local_port = int(self._sock.getsockname()[1])
        return self.local_port

    def _begin_connect(self, remote: Address, retry_interval: float | None) -> None:
        if self._connector is not None:
            raise RuntimeError("already connecting")
        interval = self.retry_interval if retry_interval is None else retry_interval
        self._connector = asyncio.get_running_loop().create_task(self._connect(remote, interval))

    async def _connect(self, remote: Address, interval: float) -> None:
        """Connect to ``remote``, retrying ``retries`` times ``interval`` apart (2022 Annex D).

        A socket whose connect failed is not reused (POSIX leaves its state unspecified); each
        retry binds a fresh one to the same local port.
        """
        loop = asyncio.get_running_loop()
        sock, self._sock = self._sock, None
        error: OSError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(interval)
            try:
                current = (
                    sock if sock is not None else _tcp_socket(self.local_host, self.local_port)
                )
            except OSError as exc:
                error = exc
                continue
            sock = None
            self.connect_attempts += 1
            try:
                await loop.sock_connect(current, remote)
                await loop.create_connection(lambda: _Stream(self), sock=current)
            except OSError as exc:
                current.close()
                error = exc
                continue
            except BaseException:
                current.close()
                raise
            return
        self._connect_failed(f"could not connect to {remote[0]}:{remote[1]}: {error}")

    async def close(self) -> None:
        """Release the sockets (idempotent)."""
        self._closed = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            try:
                await self._connector
            except asyncio.CancelledError:
                pass
        for transport in (self._udp, self._tcp):
            if transport is not None:
                transport.close()
        self._udp = self._tcp = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # Hooks for the two ends; the protocols below call them.

    def _datagram(self, data: bytes, addr: Address) -> None:
        pass

    def _attached(self, stream: _Stream) -> bool:
        """A TCP connection is up; False refuses it."""
        return False

    def _stream_data(self, stream: _Stream, data: bytes) -> None:
        pass

    def _detached(self, stream: _Stream, exc: Exception | None) -> None:
        pass

    def _flow(self, blocked: bool) -> None:
        pass

    def _connect_failed(self, reason: str) -> None:
        self.error = reason
        log.info("media.connect_failed", reason=reason)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, leg: _Leg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.leg._datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors are advisory for RTP over UDP (the far end may come back): log only.
        log.debug("media.udp_error", error=str(exc))


class _Stream(asyncio.Protocol):
    def __init__(self, leg: _Leg) -> None:
        self.leg = leg
        self.transport: asyncio.Transport | None = None
        self.deframer = TcpDeframer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if not self.leg._attached(self):
            self.transport.close()
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.leg._stream_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.leg._detached(self, exc)

    def pause_writing(self) -> None:
        self.leg._flow(True)

    def resume_writing(self) -> None:
        self.leg._flow(False)


class MediaSender(_Leg):
    """Streams a clip as PS over RTP to one receiver, live (looping) or as a playback."""

    def __init__(
        self,
        frames: Sequence[Frame],
        *,
        ssrc: int,
        transport: str,
        local_host: str = "127.0.0.1",
        fps: float = 25.0,
        loop: bool = True,
        limit: int | None = None,
        start_frame: int = 0,
        payload_type: int = 96,
        on_end: Callable[[], None] | None = None,
        port: int = 0,
        retry_interval: float = 1.0,
        retries: int = 3,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        super().__init__(transport, local_host, port, retry_interval, retries)
        if not frames:
            raise ValueError("a sender needs at least one frame")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.clip = tuple(frames)
        self.ssrc = ssrc
        self.fps = fps
        self.loop = loop
        self.limit = limit
        self.payload_type = payload_type
        self.on_end = on_end
        self.max_payload = max_payload
        self._keys = [n for n, frame in enumerate(self.clip) if frame.key] or [0]
        self.position = self._key_at_or_before(start_frame)  # the next frame to send
        self.frames_sent = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.finished = False
        self.paused = False
        self.scale = 1.0
        self.remote: Address | None = None
        self.started = False
        # RFC 3550 §5.1: random initial sequence number and timestamp.
        self.seq = random.randrange(0x10000)
        self.timestamp0 = random.randrange(0x1_0000_0000)
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0
        self._blocked = False  # the TCP send buffer is full: wait for resume_writing

    def start(self, remote: Address | None, *, retry_interval: float | None = None) -> None:
        """Send to ``remote`` (udp, tcp-active), or to whoever connects (tcp-passive)."""
        if self.started:
            raise RuntimeError("sender already started")
        if self._closed:
            raise RuntimeError("sender closed")
        if self.transport != "tcp-passive" and remote is None:
            raise ValueError(f"a {self.transport} sender needs the remote address")
        if self.transport == "udp" and self._udp is None:
            raise RuntimeError("bind() a udp sender before start()")
        if self.transport == "tcp-passive" and self._server is None and self._tcp is None:
            raise RuntimeError("bind() a tcp-passive sender before start()")
        self.started = True
        self.remote = remote
        if self.transport == "tcp-active":
            assert remote is not None
            self._begin_connect(remote, retry_interval)
        else:
            self._kick()

    def pause(self) -> None:
        """Stop sending where we are (MANSRTSP ``PAUSE``)."""
        self.paused = True
        self._cancel_timer()

    def resume(self) -> None:
        """Continue from the pause point at the same scale (``PLAY``, ``Range: npt=now-``)."""
        if self.paused:
            self.paused = False
            self._kick()

    def set_scale(self, scale: float) -> None:
        """Play ``scale`` times as fast (``Scale:``); RTP timestamps still advance per frame."""
        if not MIN_SCALE <= scale <= MAX_SCALE:
            raise ValueError(f"scale {scale} outside {MIN_SCALE}..{MAX_SCALE}")
        self.scale = scale

    def seek(self, seconds: float) -> None:
        """Continue from ``seconds`` into the clip (``Range: npt=<s>-``).

        The position snaps back to the key frame at or before frame ``int(seconds * fps)``, as
        recorders seek by GOP, so that the receiver can decode from the first frame it gets.
        """
        if seconds < 0:
            raise ValueError("cannot seek before the start")
        self.position = self._key_at_or_before(int(seconds * self.fps))

    async def close(self) -> None:
        """Stop and release the sockets; ``on_end`` is not called."""
        self.finished = True
        self._cancel_timer()
        await super().close()

    # -- pacing ----------------------------------------------------------------------------

    def _key_at_or_before(self, index: int) -> int:
        index = max(0, min(index, len(self.clip) - 1))
        return self._keys[max(0, bisect.bisect_right(self._keys, index) - 1)]

    def _ready(self) -> bool:
        if self.finished or self.paused or self._blocked or not self.started:
            return False
        return self._udp is not None or self._tcp is not None

    def _kick(self) -> None:
        """(Re)start the schedule now, if sending is possible."""
        if self._ready():
            loop = asyncio.get_running_loop()
            self._cancel_timer()
            self._next_at = loop.time()
            self._timer = loop.call_at(self._next_at, self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        burst = 0
        while self._ready() and self._next_at <= now and burst < MAX_BURST:
            self._send_frame()
            burst += 1
            self._next_at += 1.0 / (self.fps * self.scale)
        if not self._ready():
            return  # paused, ended, failed or flow-controlled: each path restarts us if needed
        if self._next_at < now - LATE_RESET:
            self._next_at = now
        self._timer = loop.call_at(self._next_at, self._tick)

    def _send_frame(self) -> None:
        frame = self.clip[self.position]
        timestamp = self.timestamp0 + round(self.frames_sent * 90000 / self.fps)
        pack = ps_pack(frame, timestamp)
        packets = packetise(
            pack,
            seq=self.seq,
            timestamp=timestamp,
            ssrc=self.ssrc,
            payload_type=self.payload_type,
            max_payload=self.max_payload,
        )
        try:
            if self._udp is not None:
                assert self.remote is not None
                for packet in packets:
                    self._udp.sendto(packet, self.remote)
            elif self._tcp is not None:
                if self._tcp.is_closing():
                    raise ConnectionResetError("connection closing")
                self._tcp.write(b"".join(frame_rfc4571(packet) for packet in packets))
        except (OSError, RuntimeError) as exc:
            self._fail(f"send failed: {exc}")
            return
        self.seq = (self.seq + len(packets)) & 0xFFFF
        self.frames_sent += 1
        self.packets_sent += len(packets)
        self.bytes_sent += len(pack)
        self.position += 1
        if self.position >= len(self.clip):
            if not self.loop:
                self._end()
                return
            self.position = 0
        if self.limit is not None and self.frames_sent >= self.limit:
            self._end()

    def _end(self) -> None:
        """The natural end: the clip (playback) or the frame limit is exhausted."""
        self.finished = True
        self._cancel_timer()
        if self.on_end is not None:
            try:
                self.on_end()
            except Exception:
                log.exception("media.on_end_failed", ssrc=self.ssrc)

    def _fail(self, reason: str) -> None:
        if self._closed or self.finished:
            return
        self.finished = True
        self.error = reason
        self._cancel_timer()
        log.info("media.sender_stopped", ssrc=self.ssrc, reason=reason)

    # -- socket events ---------------------------------------------------------------------

    def _attached(self, stream: _Stream) -> bool:
        if self._closed or self._tcp is not None or self.finished:
            return False
        self._tcp = stream.transport
        if self._server is not None:
            self._server.close()  # one connection per leg (a=connection:new)
            self._server = None
        self._kick()
        return True

    def _detached(self, stream: _Stream, exc: Exception | None) -> None:
        if stream.transport is self._tcp:
            self._tcp = None
            self._fail(f"connection lost: {exc}" if exc else "peer closed the connection")

    def _flow(self, blocked: bool) -> None:
        self._blocked = blocked
        if not blocked:
            self._kick()

    def _connect_failed(self, reason: str) -> None:
        super()._connect_failed(reason)
        self._fail(reason)


class MediaReceiver(_Leg):
    """Receives PS over RTP on one leg: counts frames, decodes them, and can keep the bytes.

    ``decode=False`` skips H.264 decoding (:meth:`wait_frames` then counts PS frames);
    ``keep=True`` stores the reassembled PS stream in :attr:`data` (what a download saves).
    Over TCP a new connection replaces the current one (a sender that reconnects).
    """

    def __init__(
        self,
        *,
        transport: str,
        local_host: str = "127.0.0.1",
        decode: bool = True,
        keep: bool = False,
        port: int = 0,
        retry_interval: float = 1.0,
        retries: int = 3,
        window: int = 16,
    ) -> None:
        super().__init__(transport, local_host, port, retry_interval, retries)
        self.decode = decode
        self.frames = 0
        self.bytes = 0
        self.framing_errors = 0
        self.last_packet_at: float | None = None
        self.source: Address | None = None  # where UDP packets come from (symmetric RTP)
        self.data: bytearray | None = bytearray() if keep else None
        self.rtp = RtpReassembler(window)
        self.ps = PsDemuxer()
        self.h264 = H264Counter() if decode else None

    @property
    def decoded(self) -> int:
        return self.h264.frames if self.h264 is not None else 0

    @property
    def decode_errors(self) -> int:
        return self.h264.errors if self.h264 is not None else 0

    @property
    def packets(self) -> int:
        return self.rtp.packets

    @property
    def lost(self) -> int:
        return self.rtp.lost

    @property
    def ssrcs(self) -> set[int]:
        return self.rtp.ssrcs

    @property
    def payload_types(self) -> set[int]:
        return self.rtp.payload_types

    @property
    def keyframes(self) -> int:
        return self.ps.keyframe_packs

    def connect(self, remote: Address, *, retry_interval: float | None = None) -> None:
        """tcp-active: connect to the sender at ``remote`` (with retries) in the background."""
        if self.transport != "tcp-active":
            raise RuntimeError("only a tcp-active receiver connects")
        self._begin_connect(remote, retry_interval)

    async def wait_frames(self, n: int, timeout: float = 10.0) -> int:
        """Wait until ``n`` frames decoded (PS frames when not decoding); return the count."""
        deadline = time.monotonic() + timeout
        while self._count() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._count()

    def _count(self) -> int:
        return self.decoded if self.decode else self.frames

    # -- data path -------------------------------------------------------------------------

    def _packet(self, packet: bytes) -> None:
        self.bytes += len(packet)
        self.last_packet_at = time.monotonic()
        for unit in self.rtp.push(packet):
            self._unit(unit)

    def _unit(self, unit: bytes) -> None:
        """One frame's RTP payloads joined: a PS pack."""
        if self.data is not None:
            self.data += unit
        access_units = self.ps.feed(unit)
        access_units += self.ps.flush()
        self.frames += len(access_units)
        if self.h264 is not None:
            for access_unit in access_units:
                self.h264.decode(access_unit)

    def _datagram(self, data: bytes, addr: Address) -> None:
        self.source = addr
        self._packet(data)

    def _attached(self, stream: _Stream) -> bool:
        if self._closed:
            return False
        if self._tcp is not None:
            self._tcp.close()
        self._tcp = stream.transport
        return True

    def _stream_data(self, stream: _Stream, data: bytes) -> None:
        try:
            packets = stream.deframer.feed(data)
        except ValueError as exc:
            self.framing_errors += 1
            self.error = str(exc)
            log.info("media.tcp_framing_lost", reason=str(exc))
            if stream.transport is not None:
                stream.transport.close()
            return
        for packet in packets:
            self._packet(packet)

    def _detached(self, stream: _Stream, exc: Exception | None) -> None:
        if stream.transport is self._tcp:
            self._tcp = None
