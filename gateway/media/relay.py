"""The RTP relay: one input leg per stream, fanned out to its outputs with each output's SSRC.

Media always passes through the gateway (GB/T 28181-2022 §6.1 media distribution, Annex L: one
request per source stream, served to many). A *stream* receives RTP from a device (or, for voice
broadcast, from the upper platform) on one port; every packet goes out unchanged to each of the
stream's *outputs* except for the SSRC, which becomes the output's own (RFC 3550 §5.1 and §8.2;
GB/T 28181 ``y=``, reference §6.4). Nothing beyond the RTP header is parsed, except the first
bytes of packets that start a PS pack, to notice key frames (reference §6.3, Annex C.1).

Legs are UDP (RTP/AVP) or TCP (TCP/RTP/AVP, RFC 4571 framing, GB/T 28181-2022 Annex D):
``tcp-passive`` listens for the peer, ``tcp-active`` connects to it and retries a failed connect
three times, one second apart (2022 Annex D). Ports are even ports of a configured range
(:mod:`gateway.media._relay_ports`).

UDP input is the hot path: the socket is read with ``recvmmsg`` in batches into buffers shared
by the whole relay and written to every UDP output with one ``sendmmsg`` that splices the
output's SSRC in by scatter/gather, each camera frame's run of equal-size packets as one UDP GSO
message where the kernel has it (:mod:`gateway.media._relay_udp`). Per packet, Python only does
the sequence-number accounting. TCP legs use asyncio transports; a TCP output whose peer is
absent or slow drops packets (counted) rather than buffering without bound.

Events: ``"idle"`` once when a stream has had no packet for its ``idle_timeout`` (counted from
the open if none ever came; again only after traffic resumed and stopped; ``idle_timeout <= 0``
turns it off), ``"closed"`` when a TCP peer closes an input or output connection, or a
tcp-active leg gave up connecting, and ``"unreachable"`` once when a UDP output's receiver has
refused its packets (ICMP port, host or network unreachable, reported on the connected socket)
for the stream's ``idle_timeout``: the receiver's RTP timeout, as the input's is the sender's.
What the relay itself closes is not reported.

:class:`LocalRelay` runs in the caller's event loop; :class:`WorkerRelay` spreads streams over
relay worker processes (:mod:`gateway.media.worker`); :func:`make_relay` picks one.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

import structlog

from gateway.media._relay_ports import (
    PortPool,
    bind_tcp,
    bind_udp,
    family_of,
    reserve_port,
    set_buffer,
)
from gateway.media._relay_types import (
    TRANSPORTS,
    EventSink,
    LegStats,
    OutputStats,
    PortsExhausted,
    Relay,
    RelayError,
    StreamStats,
    Transport,
    UnknownStream,
)
from gateway.media._relay_udp import (
    Mmsg,
    RecvBatch,
    Runs,
    SendBatch,
    gso_runs,
    gso_supported,
    is_again,
    last_errno,
    load_mmsg,
)
from gateway.media._relay_workers import WorkerRelay
from gateway.media.rtp import (
    PLAIN_FIRST_BYTES,
    RTP_HEADER,
    RTP_SECOND_BYTES,
    V2_FIRST_BYTES,
    FramingError,
    SeqCounter,
    TcpDeframer,
    is_keyframe_pack,
    packet_is_keyframe,
)
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "EventSink",
    "LegStats",
    "LocalRelay",
    "OutputStats",
    "PortsExhausted",
    "Relay",
    "RelayError",
    "StreamStats",
    "Transport",
    "UnknownStream",
    "WorkerRelay",
    "make_relay",
]

log = structlog.get_logger("gateway.media.relay")

CONNECT_ATTEMPTS = 4
"""A tcp-active leg tries once and retries three times (GB/T 28181-2022 Annex D: ≥ 3 retries)."""
CONNECT_RETRY_INTERVAL = 1.0
"""Seconds between connect attempts (2022 Annex D: at least 1 s)."""
CONNECT_TIMEOUT = 3.0
TCP_HIGH_WATER = 2 * 1024 * 1024
"""A TCP output with more than this queued in user space drops packets instead of queueing."""
PENDING_LIMIT = 2 * 1024 * 1024
"""Bytes a TCP output holds while its receiver has not connected yet (a few seconds of a 4 Mbit/s
camera: enough for the upper to connect after our answer)."""
MAX_BATCHES_PER_WAKEUP = 16
"""Batches read from one socket per readiness callback, so one busy stream cannot starve others."""
BITRATE_WINDOW = 1.0
"""The bitrate is measured over the last one to two windows."""

Packet = bytes | memoryview
_T = TypeVar("_T")
_UNREACHABLE = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH))
"""What a connected UDP socket's send reports after an ICMP error for an earlier datagram."""
_TRANSIENT = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)) | _UNREACHABLE
REFUSAL_GAP = 3.0
"""Seconds without a refusal that end a run of them. A receiver that is gone refuses every
datagram, but the kernel reports about one ICMP error a second per host (``icmp_ratelimit``),
each failing one send: while packets flow, refusals come at least that often."""


class _TcpLink(asyncio.Protocol):
    """One TCP connection of a leg; what it reads and its end go to its :class:`_TcpEnd`."""

    __slots__ = ("deframer", "end", "transport")

    def __init__(self, end: _TcpEnd) -> None:
        self.end = end
        self.transport: asyncio.Transport | None = None
        self.deframer = TcpDeframer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.end.link_made(self)

    def data_received(self, data: bytes) -> None:
        self.end.link_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end.link_lost(self)


class _TcpEnd:
    """A TCP leg (input or output): listens (tcp-passive) or connects (tcp-active, with retries),
    and holds at most one connection. A second connection to a listening leg is refused."""

    __slots__ = (
        "_server",
        "_sock",
        "_task",
        "closing",
        "link",
        "on_connected",
        "on_packets",
        "output_id",
        "port",
        "relay",
        "stream_id",
    )

    def __init__(
        self,
        relay: LocalRelay,
        stream_id: str,
        output_id: str | None,
        port: int,
        sock: socket.socket,
        on_packets: _Stream | None,
    ) -> None:
        self.relay, self.stream_id, self.output_id, self.port = relay, stream_id, output_id, port
        self._sock: socket.socket | None = sock
        self.on_packets = on_packets  # the stream, for an input leg; None for an output
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.link: _TcpLink | None = None
        self.closing = False
        self.on_connected: Callable[[], None] | None = None  # an output flushes what it held

    async def listen(self) -> None:
        sock, self._sock = self._sock, None
        assert sock is not None
        set_buffer(sock, receive=self.on_packets is not None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TcpLink(self), sock=sock)

    def connect(self, remote: tuple[str, int]) -> None:
        """Start connecting in the background; a connection already made or being made goes."""
        if self._task is not None:
            self._task.cancel()
        if self.link is not None and self.link.transport is not None:
            old, self.link = self.link, None
            assert old.transport is not None
            old.transport.abort()
        self._task = asyncio.get_running_loop().create_task(self._connect(remote))

    async def _connect(self, remote: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(CONNECT_RETRY_INTERVAL)
            sock, self._sock = self._sock, None
            try:
                if sock is None:
                    sock = bind_tcp(self.relay.host, self.port, listen=False)
                set_buffer(sock, receive=self.on_packets is not None)
                await asyncio.wait_for(loop.sock_connect(sock, remote), CONNECT_TIMEOUT)
                if sock.getsockname() == sock.getpeername():
                    # TCP simultaneous open with itself (RFC 793 §3.4): the far end named our
                    # own address and port. Nobody is there; never take it for a peer.
                    self.relay.metrics.inc("relay.tcp.self_connect")
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "connected to itself")
                await loop.create_connection(lambda: _TcpLink(self), sock=sock)
                log.info(
                    "relay.tcp.connected",
                    stream_id=self.stream_id,
                    output_id=self.output_id,
                    remote=f"{remote[0]}:{remote[1]}",
                    attempt=attempt + 1,
                )
                return
            except (OSError, TimeoutError) as exc:
                if sock is not None:
                    sock.close()
                last = exc
                self.relay.metrics.inc("relay.tcp.connect_attempt_failed")
            except asyncio.CancelledError:
                if sock is not None and self.link is None:
                    sock.close()
                raise
        self._task = None
        self.relay.metrics.inc("relay.tcp.connect_failed")
        log.warning(
            "relay.tcp.connect_failed",
            stream_id=self.stream_id,
            output_id=self.output_id,
            remote=f"{remote[0]}:{remote[1]}",
            attempts=CONNECT_ATTEMPTS,
            reason=str(last),
        )
        self.relay.emit(self.stream_id, self.output_id, "closed")

    def link_made(self, link: _TcpLink) -> None:
        assert link.transport is not None
        if self.closing or self.link is not None:
            self.relay.metrics.inc("relay.tcp.refused")
            log.info(
                "relay.tcp.refused",
                stream_id=self.stream_id,
                output_id=self.output_id,
                peer=str(link.transport.get_extra_info("peername")),
            )
            link.transport.abort()
            return
        self.link = link
        self._task = None
        if self.on_connected is not None:
            self.on_connected()

    def link_data(self, link: _TcpLink, data: bytes) -> None:
        if link is not self.link or self.on_packets is None:
            return  # an output ignores what its receiver sends (RTCP is not relayed)
        try:
            packets = link.deframer.feed(data)
        except FramingError as exc:
            if exc.packets:  # what came before the bad bytes is good
                self.on_packets.relay_packets(exc.packets, time.monotonic())
            self.relay.metrics.inc("relay.tcp.framing_lost")
            assert link.transport is not None
            log.warning(
                "relay.tcp.framing_lost",
                stream_id=self.stream_id,
                peer=str(link.transport.get_extra_info("peername")),
                reason=str(exc),
            )
            link.transport.abort()
            return
        if packets:
            self.on_packets.relay_packets(packets, time.monotonic())

    def link_lost(self, link: _TcpLink) -> None:
        if link is not self.link:
            return
        self.link = None
        if not self.closing:
            log.info("relay.tcp.closed", stream_id=self.stream_id, output_id=self.output_id)
            self.relay.emit(self.stream_id, self.output_id, "closed")

    def writable(self) -> asyncio.Transport | None:
        """The connection's transport if a packet may be queued on it now."""
        link = self.link
        if link is None or link.transport is None:
            return None
        transport = link.transport
        if transport.is_closing() or transport.get_write_buffer_size() > TCP_HIGH_WATER:
            return None
        return transport

    def close(self) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.link is not None and self.link.transport is not None:
            self.link.transport.abort()
            self.link = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Output:
    """One output of a stream: its SSRC and counters; subclasses move the bytes."""

    __slots__ = ("bytes", "dropped", "output_id", "packets", "port", "relay", "ssrc", "transport")

    def __init__(
        self, relay: LocalRelay, output_id: str, transport: Transport, port: int, ssrc: int
    ) -> None:
        self.relay, self.output_id, self.transport, self.port = relay, output_id, transport, port
        self.ssrc = ssrc.to_bytes(4, "big")
        self.packets = self.bytes = self.dropped = 0

    @property
    def connected(self) -> bool:
        return True

    def send_batch(
        self,
        rx: RecvBatch,
        n: int,
        lengths: list[int],
        tails: list[int],
        total: int,
        runs: Runs | None,
    ) -> None:
        """Relay the first ``n`` packets of the shared receive slots (``runs``: for UDP GSO)."""
        raise NotImplementedError

    def send_packets(self, packets: Sequence[Packet]) -> None:
        raise NotImplementedError

    def drop(self, n: int) -> None:
        self.dropped += n
        self.relay.metrics.inc("relay.output.dropped", n)

    def close(self) -> None:
        raise NotImplementedError

    def stats(self) -> OutputStats:
        return OutputStats(self.output_id, self.packets, self.bytes, self.dropped, self.connected)


class _UdpOutput(_Output):
    """Sends from its own bound port, connected to the receiver (one route lookup, not one per
    packet); ``sendmmsg`` with the SSRC spliced in when available.

    Connected, the socket hears of ICMP errors for what it sent: a send fails with
    ``ECONNREFUSED`` (or host/network unreachable) once per error. Refusals that go on, with no
    gap of :data:`REFUSAL_GAP`, for ``timeout`` seconds mean nobody receives any more (an upper
    that dropped the session without its BYE reaching us): reported once as ``"unreachable"``.
    Only failed sends are looked at; the hot path is unchanged."""

    __slots__ = ("_batch", "_fd", "_sock", "refused_last", "refused_since", "stream_id", "timeout")

    def __init__(
        self,
        relay: LocalRelay,
        output_id: str,
        port: int,
        ssrc: int,
        sock: socket.socket,
        batch: SendBatch | None,
        *,
        stream_id: str = "",
        timeout: float = 0.0,
    ) -> None:
        super().__init__(relay, output_id, "udp", port, ssrc)
        self._sock, self._fd, self._batch = sock, sock.fileno(), batch
        self.stream_id, self.timeout = stream_id, timeout
        # The run of refusals now going on (0.0: none), and its latest refusal.
        self.refused_since = self.refused_last = 0.0

    def _refused(self) -> None:
        now = time.monotonic()
        if self.refused_since < 0:  # reported already
            return
        if not self.refused_since or now - self.refused_last > REFUSAL_GAP:
            self.refused_since = now
        self.refused_last = now
        self.relay.metrics.inc("relay.udp.refused")
        if self.timeout <= 0 or now - self.refused_since < self.timeout:
            return
        self.relay.metrics.inc("relay.udp.unreachable")
        log.info(
            "relay.udp.unreachable",
            stream_id=self.stream_id,
            output_id=self.output_id,
            refused_for=round(now - self.refused_since, 1),
        )
        self.refused_since = -1.0
        self.relay.emit(self.stream_id, self.output_id, "unreachable")

    def send_batch(
        self,
        rx: RecvBatch,
        n: int,
        lengths: list[int],
        tails: list[int],
        total: int,
        runs: Runs | None,
    ) -> None:
        batch = self._batch
        assert batch is not None
        batch.set_tails(n, tails)
        done = 0
        if runs is not None and batch.gso:
            done = batch.send_runs(self._fd, runs)
            if done == n:
                self.packets += n
                self.bytes += total
                return
            if done < 0:
                err = last_errno()
                if err in _UNREACHABLE:
                    self._refused()
                elif err not in _TRANSIENT:  # GSO refused on this route (EIO, EINVAL: MTU)
                    batch.gso = False
                    self.relay.metrics.inc("relay.udp.gso_off")
                    log.info("relay.udp.gso_off", output_id=self.output_id, errno=err)
                done = 0
        # One entry per packet. A pending ICMP error (the receiver's port was closed a moment)
        # fails one call without sending: retry a little, then count the rest as dropped.
        for _ in range(4):
            sent = batch.send(self._fd, done, n)
            if sent > 0:
                done += sent
            elif sent < 0:
                err = last_errno()
                if is_again(err):
                    break
                if err in _UNREACHABLE:
                    self._refused()
            if done >= n:
                break
        self.packets += done
        self.bytes += total if done == n else sum(lengths[:done])
        if done < n:
            self.drop(n - done)

    def send_packets(self, packets: Sequence[Packet]) -> None:
        sock, ssrc = self._sock, self.ssrc
        for p in packets:
            view = memoryview(p)
            try:
                sock.sendmsg((view[:8], ssrc, view[12:]))
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    self._refused()
                try:  # a pending ICMP error fails one send
                    sock.sendmsg((view[:8], ssrc, view[12:]))
                except OSError:
                    self.drop(1)
                    continue
            self.packets += 1
            self.bytes += len(view)

    def close(self) -> None:
        self._sock.close()


class _TcpOutput(_Output):
    """RFC 4571 framing to one connection. Until the receiver's connection is up (it connects
    after our answer, or we are still connecting to it), packets are held, up to
    ``PENDING_LIMIT`` bytes, and written when it comes: the key frame at the start of a stream
    is not lost to the connection set-up. Once connected, packets that find the send buffer
    full are dropped and counted."""

    __slots__ = ("end", "pending", "pending_bytes", "pending_packets", "pending_size")

    def __init__(
        self, relay: LocalRelay, output_id: str, transport: Transport, port: int, ssrc: int
    ) -> None:
        super().__init__(relay, output_id, transport, port, ssrc)
        self.end: _TcpEnd | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0  # framed bytes held
        self.pending_packets = 0
        self.pending_size = 0  # RTP bytes held (for the byte count)

    @property
    def connected(self) -> bool:
        return self.end is not None and self.end.link is not None

    def _deliver(self, data: bytes, n: int, size: int) -> None:
        assert self.end is not None
        transport = self.end.writable()
        if transport is not None:
            transport.write(data)
            self.packets += n
            self.bytes += size
        elif self.end.link is None and not self.end.closing:
            if self.pending_bytes + len(data) > PENDING_LIMIT:
                self.drop(n)
                return
            self.pending.append(data)
            self.pending_bytes += len(data)
            self.pending_packets += n
            self.pending_size += size
        else:
            self.drop(n)

    def flush_pending(self) -> None:
        """The connection is up: write what was held while it was not."""
        if not self.pending or self.end is None:
            return
        transport = self.end.writable()
        data, n, size = b"".join(self.pending), self.pending_packets, self.pending_size
        self.pending.clear()
        self.pending_bytes = self.pending_packets = self.pending_size = 0
        if transport is None:
            self.drop(n)
            return
        transport.write(data)
        self.packets += n
        self.bytes += size

    def send_batch(
        self,
        rx: RecvBatch,
        n: int,
        lengths: list[int],
        tails: list[int],
        total: int,
        runs: Runs | None,
    ) -> None:
        view, slot, ssrc = rx.view, rx.slot, self.ssrc
        parts: list[bytes | memoryview] = []
        at = 0
        for length in lengths:
            head = length.to_bytes(2, "big")
            parts += (head, view[at : at + 8], ssrc, view[at + 12 : at + length])
            at += slot
        self._deliver(b"".join(parts), n, total)

    def send_packets(self, packets: Sequence[Packet]) -> None:
        ssrc = self.ssrc
        parts: list[bytes | memoryview] = []
        size = 0
        for p in packets:
            view = memoryview(p)
            parts += (len(view).to_bytes(2, "big"), view[:8], ssrc, view[12:])
            size += len(view)
        self._deliver(b"".join(parts), len(packets), size)

    def close(self) -> None:
        self.pending.clear()
        if self.end is not None:
            self.end.close()


class _Stream:
    """One stream: its input leg, its counters and its outputs."""

    __slots__ = (
        "_fd",
        "_idle_handle",
        "_rate_b0",
        "_rate_b1",
        "_rate_t0",
        "_rate_t1",
        "_sock",
        "_source",
        "bytes",
        "foreign",
        "idle_reported",
        "idle_timeout",
        "last_keyframe_at",
        "last_packet_at",
        "opened_at",
        "outputs",
        "outs",
        "packets",
        "port",
        "relay",
        "remote",
        "reserve",
        "seq",
        "ssrc",
        "stream_id",
        "tcp",
        "transport",
    )

    def __init__(
        self,
        relay: LocalRelay,
        stream_id: str,
        transport: Transport,
        port: int,
        idle_timeout: float,
        remote: tuple[str, int] | None,
    ) -> None:
        self.relay, self.stream_id, self.transport, self.port = relay, stream_id, transport, port
        self.idle_timeout, self.remote = idle_timeout, remote
        self.outputs: dict[str, _Output] = {}
        self.outs: tuple[_Output, ...] = ()
        self._sock: socket.socket | None = None
        self._fd = -1
        self.tcp: _TcpEnd | None = None
        self.packets = self.bytes = self.foreign = 0
        self.seq = SeqCounter()
        self.ssrc: int | None = None
        self.last_packet_at: float | None = None
        self.last_keyframe_at: float | None = None
        self.opened_at = time.monotonic()
        self._rate_t0 = self._rate_t1 = self.opened_at
        self._rate_b0 = self._rate_b1 = 0
        self._source: bytes | tuple[object, ...] | None = None
        # The port number bound for the other protocol until the far end's answer settles
        # the input's transport (LocalRelay.settle_input).
        self.reserve: socket.socket | None = None
        self.idle_reported = False
        self._idle_handle: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start_udp(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock, self._fd = sock, sock.fileno()
        rx = self.relay.rx
        loop.add_reader(self._fd, self._on_readable if rx is not None else self._on_readable_plain)

    def arm_idle(self) -> None:
        if self.idle_timeout > 0:
            self._idle_handle = asyncio.get_running_loop().call_later(
                self.idle_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        self._idle_handle = None
        now = time.monotonic()
        due = (self.last_packet_at or self.opened_at) + self.idle_timeout
        if now + 0.001 < due:
            self._idle_handle = asyncio.get_running_loop().call_later(due - now, self._check_idle)
            return
        self.idle_reported = True  # re-armed by the next packet
        self.relay.metrics.inc("relay.idle")
        log.info("relay.idle", stream_id=self.stream_id, idle_timeout=self.idle_timeout)
        self.relay.emit(self.stream_id, None, "idle")

    def close_input(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the input leg's socket (UDP) or connection and listener (TCP)."""
        if self._sock is not None:
            loop.remove_reader(self._fd)
            self._sock.close()
            self._sock = None
            self._fd = -1
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        self._source = None

    def close(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        """Close every socket; returns the ports to give back."""
        ports = [self.port]
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.close_input(loop)
        if self.reserve is not None:
            self.reserve.close()
            self.reserve = None
        for out in self.outputs.values():
            out.close()
            ports.append(out.port)
        self.outputs.clear()
        self.outs = ()
        return ports

    # -- the hot path ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        rx = self.relay.rx
        assert rx is not None
        fd = self._fd
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            n = rx.recv(fd)
            if n <= 0:
                if n < 0 and not is_again(last_errno()):
                    self.relay.metrics.inc("relay.udp.recv_error")
                return
            self._relay_batch(rx, n)
            if n < rx.slots:
                return

    def _relay_batch(self, rx: RecvBatch, n: int) -> None:
        now = time.monotonic()
        lengths = rx.lengths(n)
        view, slot = rx.view, rx.slot
        end = n * slot
        first = view[0:end:slot].tobytes()
        if (
            min(lengths) < RTP_HEADER
            or first.translate(None, V2_FIRST_BYTES)
            or view[1:end:slot].tobytes().translate(None, RTP_SECOND_BYTES)
        ):
            self._relay_odd_batch(rx, n, lengths, now)
            return
        source = self._source
        if source is None or not rx.sources_are(cast(bytes, source), n):
            self._check_sources(rx, n)
        self.seq.update(view[2:end:slot].tobytes(), view[3:end:slot].tobytes())
        total = sum(lengths)
        self.packets += n
        at = end - slot
        self.ssrc = int.from_bytes(view[at + 8 : at + 12], "big")
        if first.translate(None, PLAIN_FIRST_BYTES):  # CSRCs or an extension: find each payload
            for i in range(n):
                if packet_is_keyframe(view, i * slot, lengths[i]):
                    self.last_keyframe_at = now
        else:
            marks = view[15:end:slot].tobytes()  # the 4th payload byte: 0xBA in a pack header
            i = marks.find(0xBA)
            while i >= 0:
                at = i * slot
                if is_keyframe_pack(view, at + RTP_HEADER, at + lengths[i]):
                    self.last_keyframe_at = now
                i = marks.find(0xBA, i + 1)
        self._account(now)
        self.bytes += total
        if self.outs:
            tails = [length - RTP_HEADER for length in lengths]
            runs = gso_runs(lengths) if self.relay.gso else None
            for out in self.outs:
                out.send_batch(rx, n, lengths, tails, total, runs)

    def _account(self, now: float) -> None:
        """Per-batch bookkeeping before ``bytes`` grows: bitrate window, idle re-arm."""
        if now - self._rate_t1 >= BITRATE_WINDOW:
            self._rate_t0, self._rate_b0 = self._rate_t1, self._rate_b1
            self._rate_t1, self._rate_b1 = now, self.bytes
        if self.last_packet_at is None:  # the first packet starts the bitrate window
            self._rate_t0 = self._rate_t1 = now
            self._rate_b0 = self._rate_b1 = self.bytes
        self.last_packet_at = now
        if self.idle_reported:
            self.idle_reported = False
            self.arm_idle()

    def _check_sources(self, rx: RecvBatch, n: int) -> None:
        """The slow half of the source check: latch the first source, count the others."""
        if self._source is None:
            self._source = rx.source(0) * rx.slots
        first = cast(bytes, self._source)[: rx.name_size]
        foreign = sum(1 for i in range(n) if rx.source(i) != first)
        if foreign:
            self._count_foreign(foreign)

    def _count_foreign(self, n: int) -> None:
        if not self.foreign:
            log.info("relay.udp.foreign_source", stream_id=self.stream_id)
        self.foreign += n
        self.relay.metrics.inc("relay.udp.foreign", n)

    def _relay_odd_batch(self, rx: RecvBatch, n: int, lengths: list[int], now: float) -> None:
        """A batch holding something that is not RTP: the per-packet path."""
        self._check_sources(rx, n)
        view, slot = rx.view, rx.slot
        self.relay_packets([view[i * slot : i * slot + lengths[i]] for i in range(n)], now)

    def _on_readable_plain(self) -> None:
        """Without ``recvmmsg``: one ``recvfrom`` per datagram, then the per-packet path."""
        sock = self._sock
        assert sock is not None
        packets: list[Packet] = []
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.relay.metrics.inc("relay.udp.recv_error")
                break
            if self._source is None:
                self._source = tuple(addr)
            elif tuple(addr) != self._source:
                self._count_foreign(1)
            packets.append(data)
        if packets:
            self.relay_packets(packets, time.monotonic())

    def relay_packets(self, packets: Sequence[Packet], now: float) -> None:
        """The per-packet path (TCP input, odd UDP batches, no ``recvmmsg``)."""
        good = [
            p for p in packets if len(p) >= RTP_HEADER and p[0] >> 6 == 2 and not 200 <= p[1] <= 204
        ]
        if len(good) != len(packets):
            self.relay.metrics.inc("relay.rtp.invalid", len(packets) - len(good))
            if not good:
                return
        self.seq.update(bytes(p[2] for p in good), bytes(p[3] for p in good))
        self.packets += len(good)
        last = good[-1]
        self.ssrc = int.from_bytes(last[8:12], "big")
        for p in good:
            if packet_is_keyframe(p, 0, len(p)):
                self.last_keyframe_at = now
        self._account(now)
        self.bytes += sum(len(p) for p in good)
        for out in self.outs:
            out.send_packets(good)

    # -- reports --------------------------------------------------------------------------------

    def bitrate(self, now: float) -> float:
        if self.last_packet_at is None or now - self.last_packet_at > 2 * BITRATE_WINDOW:
            return 0.0
        span = now - self._rate_t0
        return (self.bytes - self._rate_b0) * 8 / span if span > 0.001 else 0.0

    def stats(self) -> StreamStats:
        now = time.monotonic()
        leg = LegStats(
            packets=self.packets,
            bytes=self.bytes,
            lost=self.seq.lost,
            reordered=self.seq.reordered,
            bitrate=self.bitrate(now),
            last_packet_at=self.last_packet_at,
            last_keyframe_at=self.last_keyframe_at,
            ssrc=self.ssrc,
            foreign=self.foreign,
        )
        return StreamStats(self.stream_id, leg, [o.stats() for o in self.outs], self.port)


class LocalRelay:
    """The relay in the calling process's event loop (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port_min: int,
        port_max: int,
        on_event: EventSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.metrics = metrics if metrics is not None else Metrics()
        self._on_event = on_event
        self._pool = PortPool(port_min, port_max)
        self._streams: dict[str, _Stream] = {}
        self._mmsg: Mmsg | None = load_mmsg()
        self.rx: RecvBatch | None = None
        self.gso = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._mmsg is not None and self.rx is None:
            self.rx = RecvBatch(self._mmsg)
            with socket.socket(family_of(self.host), socket.SOCK_DGRAM) as probe:
                self.gso = gso_supported(probe)
        log.info(
            "relay.started",
            host=self.host,
            ports=self._pool.size,
            batched=self.rx is not None,
            gso=self.gso,
        )

    async def close(self) -> None:
        for stream_id in list(self._streams):
            await self.close_stream(stream_id)

    def ports_free(self) -> int:
        return self._pool.free()

    async def holds_port(self, port: int) -> bool:
        """Is ``port`` one of the relay's media ports in use now (a stream's or an output's)?"""
        return self._pool.holds(port)

    # -- streams --------------------------------------------------------------------------------

    async def open_stream(
        self,
        stream_id: str,
        transport: Transport,
        *,
        idle_timeout: float,
        remote: tuple[str, int] | None = None,
    ) -> int:
        loop = self._running()
        _check_transport(transport)
        if stream_id in self._streams:
            raise RelayError(f"stream {stream_id} is already open")
        port, (sock, reserve) = self._take_input_port(transport)
        stream = _Stream(self, stream_id, transport, port, idle_timeout, remote)
        stream.reserve = reserve
        self._streams[stream_id] = stream
        try:
            await self._start_input(stream, sock, loop)
        except BaseException:
            sock.close()
            await self.close_stream(stream_id)
            raise
        stream.arm_idle()
        log.info("relay.stream_opened", stream_id=stream_id, transport=transport, port=port)
        return port

    async def _start_input(
        self, stream: _Stream, sock: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> None:
        if stream.transport == "udp":
            stream.start_udp(sock, loop)
            return
        stream.tcp = _TcpEnd(self, stream.stream_id, None, stream.port, sock, stream)
        if stream.transport == "tcp-passive":
            await stream.tcp.listen()
        elif stream.remote is not None:
            stream.tcp.connect(stream.remote)

    async def settle_input(self, stream_id: str, transport: Transport) -> None:
        """The far end's answer settled the input's transport (see
        :func:`gateway.media.sdp.settled_transport`): take the input again on the same port
        number when it differs from the one opened, and give up the number's reservation for
        the other protocol. A stream's port number is bound for UDP and TCP from its opening
        (:meth:`_take_input_port`), so a device answering UDP to a TCP offer, or the other way
        round, finds the number it was offered free. :class:`RelayError` when the input cannot
        be taken; outputs are untouched."""
        loop = self._running()
        _check_transport(transport)
        stream = self._stream(stream_id)
        reserve, stream.reserve = stream.reserve, None
        if transport == stream.transport:
            if reserve is not None:
                reserve.close()
            return
        stream.close_input(loop)
        udp = transport == "udp"
        try:
            if reserve is not None and (reserve.type == socket.SOCK_DGRAM) == udp:
                sock, reserve = reserve, None
                if transport == "tcp-passive":
                    sock.listen(8)
                set_buffer(sock, receive=True)
            elif udp:
                sock = bind_udp(self.host, stream.port, receive=True)
            else:
                sock = bind_tcp(self.host, stream.port, listen=transport == "tcp-passive")
        except OSError as exc:
            raise RelayError(f"cannot take port {stream.port} for {transport}: {exc}") from exc
        finally:
            if reserve is not None:
                reserve.close()
        previous, stream.transport = stream.transport, transport
        stream.remote = None
        try:
            await self._start_input(stream, sock, loop)
        except OSError as exc:
            sock.close()
            raise RelayError(f"cannot take port {stream.port} for {transport}: {exc}") from exc
        self.metrics.inc("relay.input_switched")
        log.info(
            "relay.input_switched",
            stream_id=stream_id,
            port=stream.port,
            was=previous,
            transport=transport,
        )

    async def connect_stream(self, stream_id: str, remote: tuple[str, int]) -> None:
        stream = self._stream(stream_id)
        stream.remote = remote
        if stream.transport == "tcp-active":
            assert stream.tcp is not None
            stream.tcp.connect(remote)

    async def close_stream(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        for port in stream.close(self._running()):
            self._pool.give(port)
        log.info("relay.stream_closed", stream_id=stream_id, packets=stream.packets)

    # -- outputs --------------------------------------------------------------------------------

    async def add_output(
        self,
        stream_id: str,
        output_id: str,
        transport: Transport,
        *,
        remote: tuple[str, int] | None,
        ssrc: int,
    ) -> int:
        self._running()
        _check_transport(transport)
        stream = self._stream(stream_id)
        if output_id in stream.outputs:
            raise RelayError(f"stream {stream_id} already has output {output_id}")
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise RelayError(f"SSRC {ssrc} does not fit 32 bits")
        if remote is None and transport != "tcp-passive":
            raise RelayError(f"a {transport} output needs the receiver's address")
        port, sock = self._take_port(transport, receive=False)
        out: _Output
        try:
            if transport == "udp":
                assert remote is not None
                sock.connect(remote)
                batch = (
                    SendBatch(self._mmsg, self.rx, ssrc, gso=self.gso)
                    if self.rx is not None and self._mmsg is not None
                    else None
                )
                out = _UdpOutput(
                    self,
                    output_id,
                    port,
                    ssrc,
                    sock,
                    batch,
                    stream_id=stream_id,
                    timeout=stream.idle_timeout,
                )
            else:
                tcp_out = _TcpOutput(self, output_id, transport, port, ssrc)
                tcp_out.end = _TcpEnd(self, stream_id, output_id, port, sock, None)
                tcp_out.end.on_connected = tcp_out.flush_pending
                out = tcp_out
                if transport == "tcp-passive":
                    await tcp_out.end.listen()
                else:
                    assert remote is not None
                    tcp_out.end.connect(remote)
        except OSError as exc:
            sock.close()
            self._pool.give(port)
            raise RelayError(f"cannot open output {output_id}: {exc}") from exc
        if self._streams.get(stream_id) is not stream:  # closed while we listened
            out.close()
            self._pool.give(port)
            raise UnknownStream(stream_id)
        stream.outputs[output_id] = out
        stream.outs = (*stream.outs, out)
        log.info(
            "relay.output_added",
            stream_id=stream_id,
            output_id=output_id,
            transport=transport,
            port=port,
            ssrc=ssrc,
        )
        return port

    async def remove_output(self, stream_id: str, output_id: str) -> None:
        stream = self._stream(stream_id)
        out = stream.outputs.pop(output_id, None)
        if out is None:
            raise UnknownStream(f"stream {stream_id} has no output {output_id}")
        stream.outs = tuple(o for o in stream.outs if o is not out)
        out.close()
        self._pool.give(out.port)
        log.info("relay.output_removed", stream_id=stream_id, output_id=output_id)

    async def stats(self, stream_id: str) -> StreamStats:
        return self._stream(stream_id).stats()

    # -- helpers --------------------------------------------------------------------------------

    def emit(self, stream_id: str, output_id: str | None, event: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(stream_id, output_id, event)
        except Exception:
            log.exception("relay.event_sink_failed", stream_id=stream_id, event=event)

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RelayError("the relay is not started")
        return self._loop

    def _stream(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStream(stream_id) from None

    def _take_input_port(
        self, transport: Transport
    ) -> tuple[int, tuple[socket.socket, socket.socket]]:
        """A port number free for both UDP and TCP: the input's socket, and one of the other
        protocol that keeps the number for :meth:`settle_input` (bound, not listening, with
        the system's default buffer)."""
        host = self.host

        def bind(port: int) -> tuple[socket.socket, socket.socket]:
            if transport == "udp":
                sock = bind_udp(host, port, receive=True)
            else:
                sock = bind_tcp(host, port, listen=transport == "tcp-passive")
            try:
                return sock, reserve_port(host, port, udp=transport != "udp")
            except BaseException:
                sock.close()
                raise

        return self._from_pool(bind)

    def _take_port(self, transport: Transport, *, receive: bool) -> tuple[int, socket.socket]:
        host = self.host

        def bind(port: int) -> socket.socket:
            if transport == "udp":
                return bind_udp(host, port, receive=receive)
            return bind_tcp(host, port, listen=transport == "tcp-passive")

        return self._from_pool(bind)

    def _from_pool(self, bind: Callable[[int], _T]) -> tuple[int, _T]:
        try:
            return self._pool.take(bind)
        except PortsExhausted:
            self.metrics.inc("relay.ports_exhausted")
            log.warning("relay.ports_exhausted", ports=self._pool.size)
            raise


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise RelayError(f"unknown transport {transport!r}")


def make_relay(
    *,
    workers: int,
    host: str,
    port_min: int,
    port_max: int,
    on_event: EventSink | None = None,
    metrics: Metrics | None = None,
) -> Relay:
    """A :class:`LocalRelay` for ``workers == 0``, else a :class:`WorkerRelay` of that many."""
    if workers < 0:
        raise RelayError("the number of relay workers cannot be negative")
    if workers == 0:
        return LocalRelay(
            host=host, port_min=port_min, port_max=port_max, on_event=on_event, metrics=metrics
        )
    return WorkerRelay(
        workers=workers,
        host=host,
        port_min=port_min,
        port_max=port_max,
        on_event=on_event,
        metrics=metrics,
    )
