"""asyncio transports for SIP: UDP and TCP on the same port (RFC 3261 §18).

The transports move bytes and nothing else. UDP datagrams go to the listener whole; TCP streams
are cut into messages by :class:`~gateway.sip.framing.StreamFramer`. TCP connections are kept
by peer address so a request to a device that registered over TCP travels on its own connection;
connections are limited per remote IP and closed when idle. A connection's loss is reported so
the registrar can mark the device behind it offline.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

import structlog

from gateway.sip.counters import Counters
from gateway.sip.errors import ParseError, TransportError
from gateway.sip.framing import PONG, Ping, Refused, StreamFramer
from gateway.sip.peer import Peer as Peer  # re-exported: callers import it from here

log = structlog.get_logger("gateway.sip.transport")


class Listener(Protocol):
    def message_received(self, data: bytes, peer: Peer) -> None: ...

    def connection_lost(self, peer: Peer) -> None: ...


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner.listener.message_received(data, Peer("udp", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer is gone; retransmission timers decide.
        self.owner.metrics.inc("sip.udp.error")


# Messages handled from one TCP read before the loop serves others: a peer that sends a
# thousand requests in one segment must not hold the gateway for the time they all take.
_BURST = 32


class _TcpConnection(asyncio.Protocol):
    __slots__ = ("backlog", "framer", "last_active", "owner", "peer", "transport")

    def __init__(self, owner: Transports) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None
        self.last_active = 0.0
        self.backlog: list[bytes | Ping | Refused] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        addr = transport.get_extra_info("peername")
        self.peer = Peer("tcp", str(addr[0]), int(addr[1]))
        self.last_active = self.owner.loop.time()
        if not self.owner._admit(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        self.last_active = owner.loop.time()
        try:
            items = self.framer.feed(data)
        except ParseError as exc:
            owner.metrics.inc("sip.tcp.framing_error")
            log.warning("sip.tcp.framing_error", peer=str(self.peer), reason=str(exc))
            self.framer = StreamFramer()  # counted once, as a framing error, not as truncation
            if self.transport is not None:
                self.transport.close()
            return
        if self.backlog is not None:  # reading is paused, but a read may already be queued
            self.backlog.extend(items)
            return
        self._deliver(items)

    def _deliver(self, items: list[bytes | Ping | Refused]) -> None:
        """Hand over up to ``_BURST`` messages; the rest wait for the next loop turn, with
        reading paused so that their order is kept."""
        peer = self.peer
        assert peer is not None
        listener = self.owner.listener
        for item in items[:_BURST]:
            if isinstance(item, Ping):
                if self.transport is not None:
                    self.transport.write(PONG)
            elif isinstance(item, Refused):
                # The stream cannot be framed past this message (RFC 3261 §18.3): answer what
                # can be read of it (400, 513), then close, dropping anything queued behind.
                self.owner.metrics.inc("sip.tcp.framing_error")
                log.warning("sip.tcp.framing_error", peer=str(peer), reason=item.error.reason)
                if item.head:
                    listener.message_received(item.head, peer)
                if self.transport is not None:
                    self.transport.close()
                self.backlog = None
                return
            else:
                listener.message_received(item, peer)
        if len(items) > _BURST and self.transport is not None:
            self.backlog = list(items[_BURST:])
            self.transport.pause_reading()
            self.owner.loop.call_soon(self._continue)

    def _continue(self) -> None:
        items, self.backlog = self.backlog or [], None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._deliver(items)
        if self.backlog is None:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.framer.pending:
            self.owner.metrics.inc("sip.tcp.truncated")
            log.info("sip.tcp.truncated", peer=str(self.peer), pending=self.framer.pending)
        self.owner._forget(self)


class Transports:
    """UDP and TCP sockets on one port, plus outbound TCP connections on demand."""

    def __init__(
        self,
        listener: Listener,
        *,
        metrics: Counters,
        tcp_idle_timeout: float = 300.0,
        max_connections_per_ip: int = 1000,
    ) -> None:
        self.listener = listener
        self.metrics = metrics
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_connections_per_ip = max_connections_per_ip
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host = ""
        self.port = 0
        self._udp: _Udp | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[Peer, _TcpConnection] = {}
        self._per_ip: dict[str, int] = {}
        self._connecting: dict[Peer, asyncio.Future[_TcpConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the transports run on: the running one, taken when first needed (at
        :meth:`start` or :meth:`connect`), so they can be built outside a running loop."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def start(self, host: str, port: int) -> None:
        """Bind UDP and TCP to ``host:port``; with port 0 the OS picks one free for both."""
        for attempt in range(20):
            udp_transport, udp = await self.loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port), reuse_port=False
            )
            sock = udp_transport.get_extra_info("socket")
            bound = sock.getsockname()[1]
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            except OSError:
                pass
            try:
                server = await self.loop.create_server(
                    lambda: _TcpConnection(self), host, bound, reuse_address=True, backlog=1024
                )
            except OSError:
                udp_transport.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            self._udp, self._server = udp, server
            self.host, self.port = host, bound
            break
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        period = max(0.05, min(self.tcp_idle_timeout / 4, 30.0))
        self._sweeper = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.tcp_idle_timeout
        for conn in list(self._conns.values()):
            if conn.last_active < deadline and conn.transport is not None:
                self.metrics.inc("sip.tcp.idle_closed")
                log.info("sip.tcp.idle_closed", peer=str(conn.peer))
                conn.transport.close()
        self._schedule_sweep()

    def _admit(self, conn: _TcpConnection) -> bool:
        peer = conn.peer
        assert peer is not None
        count = self._per_ip.get(peer.host, 0)
        if count >= self.max_connections_per_ip:
            self.metrics.inc("sip.tcp.refused_limit")
            log.warning("sip.tcp.refused_limit", peer=str(peer), limit=self.max_connections_per_ip)
            conn.peer = None
            return False
        self._per_ip[peer.host] = count + 1
        self._conns[peer] = conn
        self.metrics.inc("sip.tcp.accepted")
        return True

    def _forget(self, conn: _TcpConnection) -> None:
        peer = conn.peer
        if peer is None or self._conns.get(peer) is not conn:
            return
        del self._conns[peer]
        left = self._per_ip.get(peer.host, 1) - 1
        if left > 0:
            self._per_ip[peer.host] = left
        else:
            self._per_ip.pop(peer.host, None)
        self.listener.connection_lost(peer)

    def is_connected(self, peer: Peer) -> bool:
        return peer in self._conns

    def send(self, peer: Peer, data: bytes) -> bool:
        """Send now if possible (UDP, or an open TCP connection); ``False`` otherwise."""
        if peer.transport == "udp":
            udp = self._udp
            if udp is None or udp.transport is None:
                return False
            udp.transport.sendto(data, (peer.host, peer.port))
            return True
        conn = self._conns.get(peer)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return False
        conn.transport.write(data)
        conn.last_active = self.loop.time()
        return True

    async def connect(self, peer: Peer, timeout: float = 5.0) -> None:
        """Open a TCP connection to ``peer`` unless one is open (or opening) already."""
        if peer in self._conns:
            return
        pending = self._connecting.get(peer)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[_TcpConnection] = self.loop.create_future()
        self._connecting[peer] = fut
        try:
            try:
                _, proto = await asyncio.wait_for(
                    self.loop.create_connection(lambda: _TcpConnection(self), peer.host, peer.port),
                    timeout,
                )
            except (TimeoutError, OSError) as exc:
                self.metrics.inc("sip.tcp.connect_failed")
                err = TransportError(f"cannot connect to {peer}: {exc}")
                fut.set_exception(err)
                fut.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
                raise err from None
            # The connection registered itself under the address the kernel reports, which
            # is the address we dialled; make sure that holds for name-based hosts too.
            if proto.peer is not None and proto.peer != peer and proto.peer in self._conns:
                self._conns[peer] = self._conns.pop(proto.peer)
                proto.peer = peer
            fut.set_result(proto)
        finally:
            self._connecting.pop(peer, None)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._server is not None:
            await self._server.wait_closed()


def local_address_for(remote_host: str) -> str:
    """The local IP the kernel would use to reach ``remote_host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((remote_host.strip("[]"), 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
