"""asyncio transports for SIP: UDP and TCP on the same port (RFC 3261 §18).

The transports move bytes and nothing else. UDP datagrams go to the listener whole; TCP streams
are cut into messages by :class:`~gateway.sip.framing.StreamFramer`. TCP connections are kept
by peer address so a request to a device that registered over TCP travels on its own connection.
A connection's loss is reported so the registrar can mark the device behind it offline.

What a stranger can hold is bounded: connections per remote IP, connections in all (below the
descriptor limit, which :meth:`Transports.start` raises to the hard limit, and by default at
most :data:`DERIVED_CAP_MAX`), the bytes all connections' framers hold together (a budget), a
deadline for a message's header block once its first byte has arrived (a slow sender cannot
keep a connection by trickling bytes), a floor on the rate its body then arrives at, and an
idle timeout. When the cap is reached, the untrusted connection idle longest makes room; when
the budget is exceeded, the untrusted connection holding the most bytes is closed; connections
the gateway opened, and those a device registered over (:meth:`Transports.mark_trusted`), are
never evicted.

A listener that raises does not reach the loop: the error is logged (``sip.rx.internal_error``)
and counted, and the next datagram or message is handed over as usual.

RFC 3261 §18.4: an ICMP error (port, host or network unreachable; parameter problem) for a
datagram we sent is reported at once, with the start of that datagram's payload as the error
quotes it, so the client transaction whose request it quotes fails now rather than at timer
B/F (an error that quotes no branch is ignored: anyone can forge one). Linux reports ICMP
errors on an unconnected UDP socket only with ``IP_RECVERR``, which queues them on the socket's
error queue (read with ``MSG_ERRQUEUE``; the address is the datagram's destination, the data
the quoted payload). That queue must be drained by us: under uvloop, libuv's UDP handle reads
it itself and passes the errno with the wrong sign (a crash), and a loop's reader on the socket
would see ``POLLERR`` (libuv stops the watcher). So the UDP socket is our own, kept in a
private epoll set whose descriptor the loop watches; that descriptor is only ever readable. A
pending ICMP error is reported by the next ``recvfrom`` (or ``sendto``), which is when the
queue is read; a wake-up that finds no datagram reads it too (errors that leave no pending
error, local ones, would otherwise keep the set readable). Elsewhere the socket is watched
directly and ICMP errors are not seen.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, cast

import structlog

from gateway.sip.counters import Counters
from gateway.sip.errors import TransportError
from gateway.sip.framing import PONG, Ping, Refused, StreamFramer
from gateway.sip.overload import LoadGuard
from gateway.sip.peer import Peer as Peer  # re-exported: callers import it from here

_EPOLL: Any = getattr(select, "epoll", None)  # Linux only
log = structlog.get_logger("gateway.sip.transport")

_LINUX = sys.platform.startswith("linux")
# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>; Python names only some of them.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11 if _LINUX else None)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25 if _LINUX else None)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000 if _LINUX else None)
_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
_EE_ORIGIN_ICMP = 2
_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err

# Datagrams read, and error-queue entries drained, per wake-up: the loop serves others between.
_UDP_BATCH = 64
_ERRQUEUE_BATCH = 64
# What an error-queue read takes of the quoted datagram: an IPv4 ICMP error quotes at most 576
# bytes of IP packet, an IPv6 one at most 1280; the branch is in the first few hundred bytes.
_QUOTE_MAX = 2048
UDP_MAX = 65536
# UDP peers remembered per extra address (which socket answers them): a bound on what
# strangers sending from many ports can make us hold.
UDP_ROUTES = 100_000
UDP_BUFFER = 4 * 1024 * 1024

FD_RESERVE = 256
"""Descriptors kept back from the TCP connection cap besides what the caller reserves (media
ports): listening sockets, the store, log files, worker pipes, DNS look-ups, the error queue."""

DERIVED_CAP_MAX = 20_000
"""The most TCP connections the derived cap allows, whatever the descriptor limit (often
524,288 or more once raised to the hard limit). Each connection costs some kilobytes of kernel
and Python memory even idle, is looked at by the idle sweep, and may hold a partial message
until its deadline; a GB28181 gateway serves hundreds to a few thousand devices, most over UDP,
so 20,000 is ample headroom while keeping strangers' connections in the tens of megabytes.
More takes ``sip.max_connections`` set explicitly."""

TCP_BUFFER_BUDGET = 256 * 1024 * 1024
"""Bytes of incomplete messages all TCP connections may hold together (``sip.tcp_buffer_budget``).
A message normally sits in a framer for milliseconds; 256 MiB is 256 catalogs of the largest
size (1 MiB) arriving at once, or 4,096 header blocks of the largest, far above a legitimate
peak, while without it the cap times 1 MiB would be tens of gigabytes a stranger could make
the gateway hold."""

TCP_MIN_BODY_RATE = 2000.0
"""Bytes per second a message must average, from its first byte, for its body to go on past
the message deadline (``sip.tcp_min_body_rate``): 16 kbit/s, slower than any working uplink; a
1 MiB body may then take up to 524 s. What a sender holds so is paid for in bytes sent, and
counts against the buffer budget."""


class Listener(Protocol):
    def message_received(self, data: bytes, peer: Peer) -> None: ...

    def connection_lost(self, peer: Peer) -> None: ...


def fatal_icmp(origin: int, icmp_type: int, code: int) -> bool:
    """RFC 3261 §18.4: host, network, port or protocol unreachable and parameter problem are
    failures to send; source quench, TTL exceeded and "fragmentation needed" are not."""
    if origin == _EE_ORIGIN_ICMP:
        return (icmp_type == 3 and code != 4) or icmp_type == 12
    if origin == _EE_ORIGIN_ICMP6:
        return icmp_type in (1, 4)
    return False


class _Udp:
    """The SIP UDP socket, read on the loop; on Linux with ICMP errors (see the module doc)."""

    __slots__ = ("_fd", "_poller", "_wakes", "_watched", "extra", "loop", "owner", "sock")

    def __init__(
        self,
        owner: Transports,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        *,
        extra: bool = False,
    ):
        self.owner = owner
        self.sock = sock
        self.loop = loop
        # One more address (:meth:`Transports.listen_also`): answers to those heard here
        # leave from here.
        self.extra = extra
        self._fd = sock.fileno()
        self._poller: Any = None
        self._wakes = 0
        if _EPOLL is not None and _MSG_ERRQUEUE is not None and _enable_recverr(sock):
            try:
                poller = _EPOLL()
                poller.register(self._fd, select.EPOLLIN)
            except OSError:
                pass
            else:
                self._poller = poller
        self._watched = self._poller.fileno() if self._poller is not None else self._fd
        loop.add_reader(self._watched, self._readable)

    @property
    def reports_icmp(self) -> bool:
        return self._poller is not None

    def _readable(self) -> None:
        sock = self.sock
        owner = self.owner
        listener = owner.listener
        read = 0
        for _ in range(_UDP_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                if owner.load_guard is not None:
                    owner.load_guard.drained()
                break
            except OSError as exc:
                owner.metrics.inc("sip.udp.error")
                if exc.errno not in _PENDING_ICMP:
                    log.info("sip.udp.recv_error", error=exc.strerror)
                    break
                # The pending error of a queued ICMP message (IP_RECVERR): read the queue.
                self.drain_errors()
                continue
            read += 1
            peer = Peer("udp", addr[0], addr[1])  # (str, int) already, for IPv4 and IPv6
            if self.extra:
                owner._heard_on(self, peer)
            try:
                listener.message_received(data, peer)
            except Exception:
                owner._internal_error(data, peer)
        else:
            # A full batch: the loop calls again, and the queue is behind us.
            if owner.load_guard is not None:
                owner.load_guard.backlogged()
            return
        if self._poller is not None:
            self._wakes += 1
            # Woken with no datagram: the set is readable for the error queue alone (errors
            # that leave no pending error behind, local ones). Read it, or the loop would be
            # woken for it forever; and now and then anyway, should datagrams never stop.
            if not read or not self._wakes % _UDP_BATCH:
                self.drain_errors()

    def drain_errors(self) -> None:
        """Read the error queue (bounded per call; what is left keeps the set readable)."""
        if self._poller is None:
            return
        assert _MSG_ERRQUEUE is not None
        sock = self.sock
        for _ in range(_ERRQUEUE_BATCH):
            try:
                # The data of an error-queue entry is the payload of the datagram it is about,
                # as far as the ICMP message quotes it.
                quoted, ancdata, _, addr = sock.recvmsg(_QUOTE_MAX, 512, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for level, kind, payload in ancdata:
                if (level, kind) not in ((_SOL_IP, _IP_RECVERR), (_SOL_IPV6, _IPV6_RECVERR)):
                    continue
                if len(payload) < _EXTENDED_ERR.size or not isinstance(addr, tuple):
                    continue
                err, origin, icmp_type, code, _, _, _ = _EXTENDED_ERR.unpack_from(payload)
                if fatal_icmp(origin, icmp_type, code):
                    peer = Peer("udp", str(addr[0]), int(addr[1]))
                    self.owner._unreachable(peer, err, quoted)

    def send(self, data: bytes, addr: tuple[str, int]) -> bool:
        owner = self.owner
        for attempt in range(2):
            try:
                self.sock.sendto(data, addr)
                return True
            except (BlockingIOError, InterruptedError):
                # The 4 MiB send buffer is full: UDP may lose a datagram; SIP retransmits.
                owner.metrics.inc("sip.udp.send_dropped")
                return True
            except OSError as exc:
                if attempt == 0 and exc.errno in _PENDING_ICMP:
                    # A queued ICMP error was reported here instead of this datagram being
                    # sent (the error is now cleared): read the queue, then send it again.
                    owner.metrics.inc("sip.udp.error")
                    self.drain_errors()
                    continue
                owner.metrics.inc("sip.udp.send_error")
                log.info("sip.udp.send_error", host=addr[0], port=addr[1], error=exc.strerror)
                return False
        return False

    def close(self) -> None:
        try:
            self.loop.remove_reader(self._watched)
        except (RuntimeError, ValueError, OSError):
            pass
        if self._poller is not None:
            self._poller.close()
        self.sock.close()


_PENDING_ICMP = frozenset(
    (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOPROTOOPT,
        errno.EPROTO,
        getattr(errno, "EHOSTDOWN", errno.EHOSTUNREACH),
        getattr(errno, "ENONET", errno.EHOSTUNREACH),
    )
)


def _enable_recverr(sock: socket.socket) -> bool:
    if sock.family == socket.AF_INET6:
        level, option = _SOL_IPV6, _IPV6_RECVERR
    else:
        level, option = _SOL_IP, _IP_RECVERR
    if option is None:
        return False
    try:
        sock.setsockopt(level, option, 1)
    except OSError:
        return False
    return True


def _bind_udp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER)
            except OSError:
                pass
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return (soft, hard) as they are now,
    or ``None`` where there is no such limit. A connection per device needs a descriptor."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    kind = resource.RLIMIT_NOFILE
    soft, hard = resource.getrlimit(kind)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(kind, (target, hard))
        except (ValueError, OSError):
            try:  # macOS refuses more than OPEN_MAX
                resource.setrlimit(kind, (min(target, 10240), hard))
            except (ValueError, OSError):
                pass
    soft, hard = resource.getrlimit(kind)
    infinite = 1 << 20
    return (
        infinite if soft == resource.RLIM_INFINITY else soft,
        infinite if hard == resource.RLIM_INFINITY else hard,
    )


def connection_cap(configured: int, fd_limit: int | None, reserve: int) -> int:
    """The cap on TCP connections: ``configured`` when set (kept below ``fd_limit``), else the
    descriptor limit less :data:`FD_RESERVE` and ``reserve`` (the caller's other descriptors:
    the media ports), but at least a quarter of the limit, and at most
    :data:`DERIVED_CAP_MAX`."""
    if fd_limit is None:
        return configured if configured > 0 else 10_000
    ceiling = max(1, fd_limit - FD_RESERVE)
    if configured > 0:
        return min(configured, ceiling)
    derived = max(fd_limit - FD_RESERVE - reserve, fd_limit // 4)
    return max(1, min(ceiling, derived, DERIVED_CAP_MAX))


# Messages handled from one TCP read before the loop serves others: a peer that sends a
# thousand requests in one segment must not hold the gateway for the time they all take.
_BURST = 32


class _TcpConnection(asyncio.Protocol):
    __slots__ = (
        "backlog",
        "deadline",
        "framer",
        "last_active",
        "owner",
        "peer",
        "started",
        "transport",
        "trusted",
    )

    def __init__(self, owner: Transports, *, trusted: bool = False) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None
        self.last_active = 0.0
        self.backlog: list[bytes | Ping | Refused] | None = None
        # When the message now arriving must be complete (its first byte started the clock,
        # at ``started``).
        self.deadline: asyncio.TimerHandle | None = None
        self.started = 0.0
        # Opened by us, or a device registered over it: never evicted to make room.
        self.trusted = trusted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        addr = transport.get_extra_info("peername")
        self.peer = Peer("tcp", str(addr[0]), int(addr[1]))
        self.last_active = self.owner.loop.time()
        if not self.owner._admit(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner._active(self)
        framer = self.framer
        held = framer.pending
        items = framer.feed(data)  # a broken stream ends in a Refused item (see _deliver)
        owner._held += framer.pending - held
        if owner._held > owner.tcp_buffer_budget:
            owner._over_budget()
            if self.framer is not framer:  # this connection was closed to make room
                return
        # The message deadline: started by a message's first byte, not moved by the bytes
        # after it (but see _too_slow for a body), restarted only for the next message.
        deadline = self.deadline
        if deadline is not None and (items or not framer.partial):
            deadline.cancel()
            self.deadline = deadline = None
        if deadline is None and framer.partial:
            loop = owner.loop
            self.started = loop.time()
            self.deadline = loop.call_later(owner.tcp_message_timeout, self._too_slow)
        if self.backlog is not None:  # reading is paused, but a read may already be queued
            self.backlog.extend(items)
            return
        self._deliver(items)

    def _too_slow(self) -> None:
        """The message deadline passed. The header block must be in by then; a body may go on
        while the message has averaged ``tcp_min_body_rate`` since its first byte, so that a
        device on a slow uplink can send a large catalog: the deadline moves to when the
        bytes received so far would fall below that rate (each byte buys 1/rate seconds)."""
        self.deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        owner = self.owner
        framer = self.framer
        loop = owner.loop
        rate = owner.tcp_min_body_rate
        body = framer.reading_body
        if body and rate > 0:
            until = self.started + framer.pending / rate
            if until > loop.time():
                self.deadline = loop.call_at(until, self._too_slow)
                return
        owner.metrics.inc("sip.tcp.message_timeout")
        log.warning(
            "sip.tcp.message_timeout",
            peer=str(self.peer),
            pending=framer.pending,
            part="body" if body else "header",
            elapsed=round(loop.time() - self.started, 3),
            limit=owner.tcp_message_timeout,
        )
        owner._release(self)  # counted here, not again as a truncation
        transport.abort()  # not close(): a peer that does not read would keep it open

    def _deliver(self, items: list[bytes | Ping | Refused]) -> None:
        """Hand over up to ``_BURST`` messages; the rest wait for the next loop turn, with
        reading paused so that their order is kept."""
        peer = self.peer
        assert peer is not None
        deliver = self.owner._hand_over
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
                    deliver(item.head, peer)
                if self.transport is not None:
                    self.transport.close()
                self.backlog = None
                return
            else:
                deliver(item, peer)
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
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.framer.pending:
            self.owner.metrics.inc("sip.tcp.truncated")
            log.info("sip.tcp.truncated", peer=str(self.peer), pending=self.framer.pending)
        self.owner._release(self)
        self.owner._forget(self)


class Transports:
    """UDP and TCP sockets on one port, plus outbound TCP connections on demand.

    ``max_connections`` caps TCP connections in all (0: derived at :meth:`start` from the
    descriptor limit, less ``fd_reserve`` descriptors the caller needs for other things, see
    :func:`connection_cap`). ``tcp_buffer_budget`` bounds the bytes of incomplete messages all
    connections hold together; ``tcp_min_body_rate`` lets a body go on past
    ``tcp_message_timeout`` while it keeps arriving (see :meth:`_TcpConnection._too_slow`).
    ``on_unreachable(peer, quoted)`` hears, at the next loop turn, of each ICMP error that
    reported ``peer`` unreachable, with what it quotes of the datagram (RFC 3261 §18.4); it
    returns how many transactions that ended.
    """

    def __init__(
        self,
        listener: Listener,
        *,
        metrics: Counters,
        tcp_idle_timeout: float = 300.0,
        tcp_message_timeout: float = 30.0,
        max_connections_per_ip: int = 1000,
        max_connections: int = 0,
        fd_reserve: int = 0,
        tcp_buffer_budget: int = TCP_BUFFER_BUDGET,
        tcp_min_body_rate: float = TCP_MIN_BODY_RATE,
    ) -> None:
        self.listener = listener
        self.metrics = metrics
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.tcp_buffer_budget = tcp_buffer_budget
        self.tcp_min_body_rate = tcp_min_body_rate
        # Bytes the connections' framers hold together (kept up to date at every feed).
        self._held = 0
        self.max_connections_per_ip = max_connections_per_ip
        self.configured_max_connections = max_connections
        self.max_connections = max_connections or 10_000  # settled at start()
        self.fd_reserve = fd_reserve
        self.on_unreachable: Callable[[Peer, bytes], int] | None = None
        # Told when the UDP receive queue is found full or empty (gateway.sip.overload).
        self.load_guard: LoadGuard | None = None
        self._unreachable_pending: list[tuple[Peer, int, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host = ""
        self.port = 0
        self._udp: _Udp | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[Peer, _TcpConnection] = {}
        # Untrusted connections, the one idle longest first: who makes room at the cap.
        self._untrusted: OrderedDict[_TcpConnection, None] = OrderedDict()
        self._per_ip: dict[str, int] = {}
        self._connecting: dict[Peer, asyncio.Future[_TcpConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # More addresses listened on (listen_also), and which of their UDP sockets each UDP
        # peer was last heard on (bounded: the oldest forgotten first).
        self._extra: dict[tuple[str, int], tuple[_Udp, asyncio.Server]] = {}
        self._udp_route: OrderedDict[tuple[str, int], _Udp] = OrderedDict()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the transports run on: the running one, taken when first needed (at
        :meth:`start` or :meth:`connect`), so they can be built outside a running loop."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def reports_icmp(self) -> bool:
        """Whether ICMP errors for our UDP datagrams are seen (Linux)."""
        return self._udp is not None and self._udp.reports_icmp

    async def start(self, host: str, port: int) -> None:
        """Bind UDP and TCP to ``host:port``; with port 0 the OS picks one free for both."""
        limits = raise_fd_limit()
        self.max_connections = connection_cap(
            self.configured_max_connections, limits[0] if limits else None, self.fd_reserve
        )
        log.info(
            "sip.fd_limit",
            soft=limits[0] if limits else None,
            hard=limits[1] if limits else None,
            max_connections=self.max_connections,
        )
        loop = self.loop
        for attempt in range(20):
            sock = _bind_udp(host, port)
            bound = sock.getsockname()[1]
            try:
                server = await loop.create_server(
                    lambda: _TcpConnection(self), host, bound, reuse_address=True, backlog=1024
                )
            except OSError:
                sock.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            self._udp, self._server = _Udp(self, sock, loop), server
            self.host, self.port = host, bound
            break
        self._schedule_sweep()

    async def listen_also(self, host: str, port: int) -> None:
        """Take SIP on one more address, UDP and TCP (a floating address a node of a cluster
        takes over from a dead one). What comes in is handled as on the main address; answers
        to a UDP peer last heard there leave from that address (RFC 3261 §18.2.2: the
        response goes back whence the request came), as do requests to it."""
        if (host, port) in self._extra:
            return
        loop = self.loop
        sock = _bind_udp(host, port)
        try:
            server = await loop.create_server(
                lambda: _TcpConnection(self), host, port, reuse_address=True, backlog=1024
            )
        except OSError:
            sock.close()
            raise
        self._extra[(host, port)] = (_Udp(self, sock, loop, extra=True), server)
        log.info("sip.listening_also", host=host, port=port)

    def stop_listening(self, host: str, port: int) -> None:
        """Give back an address taken with :meth:`listen_also` (its TCP connections stay)."""
        found = self._extra.pop((host, port), None)
        if found is None:
            return
        udp, server = found
        for addr in [a for a, u in self._udp_route.items() if u is udp]:
            del self._udp_route[addr]
        udp.close()
        server.close()
        log.info("sip.stopped_listening", host=host, port=port)

    def _heard_on(self, udp: _Udp, peer: Peer) -> None:
        route = self._udp_route
        key = (peer.host, peer.port)
        if route.get(key) is not udp:
            route[key] = udp
            if len(route) > UDP_ROUTES:
                route.popitem(last=False)

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
        if len(self._conns) >= self.max_connections and not self._evict():
            self.metrics.inc("sip.tcp.refused_cap")
            log.warning("sip.tcp.refused_cap", peer=str(peer), limit=self.max_connections)
            conn.peer = None
            return False
        self._per_ip[peer.host] = self._per_ip.get(peer.host, 0) + 1
        self._conns[peer] = conn
        if not conn.trusted:
            self._untrusted[conn] = None
        self.metrics.inc("sip.tcp.accepted")
        return True

    def _evict(self) -> bool:
        """Make room at the cap: close the untrusted connection idle longest. Its slot is free
        at once (the socket itself closes on the next loop turn)."""
        while self._untrusted:
            victim, _ = self._untrusted.popitem(last=False)
            peer, transport = victim.peer, victim.transport
            if peer is None or transport is None or self._conns.get(peer) is not victim:
                continue
            self.metrics.inc("sip.tcp.evicted")
            log.info(
                "sip.tcp.evicted",
                peer=str(peer),
                idle=round(self.loop.time() - victim.last_active, 3),
                limit=self.max_connections,
            )
            self._release(victim)
            self._forget(victim)
            transport.abort()
            return True
        return False

    def _over_budget(self) -> None:
        """The framers hold more than ``tcp_buffer_budget``: close the untrusted connections
        holding the most bytes until they hold less (a scan of the connections, done only
        when over budget). Trusted connections are kept, whatever they hold."""
        while self._held > self.tcp_buffer_budget:
            victim: _TcpConnection | None = None
            most = 0
            for conn in self._untrusted:
                pending = conn.framer.pending
                if pending > most:
                    victim, most = conn, pending
            if victim is None:
                return
            peer, transport = victim.peer, victim.transport
            self.metrics.inc("sip.tcp.evicted_buffer")
            log.warning(
                "sip.tcp.evicted_buffer",
                peer=str(peer),
                pending=most,
                held=self._held,
                budget=self.tcp_buffer_budget,
            )
            if victim.deadline is not None:
                victim.deadline.cancel()
                victim.deadline = None
            self._release(victim)
            self._forget(victim)
            if transport is not None:
                transport.abort()

    def _release(self, conn: _TcpConnection) -> None:
        """Drop what ``conn``'s framer holds (it is closing), off the budget's count."""
        self._held -= conn.framer.pending
        conn.framer = StreamFramer()

    def _hand_over(self, data: bytes, peer: Peer) -> None:
        """Hand a message to the listener; should it raise, log and count it here, so that
        the messages after it (the rest of a datagram batch, or of a stream) still go."""
        try:
            self.listener.message_received(data, peer)
        except Exception:
            self._internal_error(data, peer)

    def _internal_error(self, data: bytes, peer: Peer) -> None:
        self.metrics.inc("sip.rx.internal_error")
        log.exception("sip.rx.internal_error", peer=str(peer), size=len(data), head=data[:64])

    def _active(self, conn: _TcpConnection) -> None:
        conn.last_active = self.loop.time()
        if not conn.trusted and conn in self._untrusted:
            self._untrusted.move_to_end(conn)

    def _forget(self, conn: _TcpConnection) -> None:
        self._untrusted.pop(conn, None)
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

    def mark_trusted(self, peer: Peer) -> None:
        """The connection to ``peer`` carries a registered device (its REGISTER succeeded):
        it is no longer evicted to make room for new connections. UDP peers: nothing to do."""
        conn = self._conns.get(peer)
        if conn is not None and not conn.trusted:
            conn.trusted = True
            self._untrusted.pop(conn, None)

    def _unreachable(self, peer: Peer, err: int, quoted: bytes) -> None:
        """Note an ICMP error and what it quotes of our datagram; the transactions hear of it
        at the next loop turn (not from inside a send), all the errors of a drain at once."""
        self.metrics.inc("sip.udp.unreachable")
        pending = self._unreachable_pending
        if not pending:
            self.loop.call_soon(self._report_unreachable)
        if len(pending) < _ERRQUEUE_BATCH * 4:
            pending.append((peer, err, quoted))

    def _report_unreachable(self) -> None:
        pending, self._unreachable_pending = self._unreachable_pending, []
        callback = self.on_unreachable
        failed = 0
        if callback is not None:
            for peer, _, quoted in pending:
                failed += callback(peer, quoted)
        # At info only when it ended something: spoofed ICMP must not flood the log.
        (log.info if failed else log.debug)(
            "sip.udp.unreachable",
            peers=[f"{p} ({errno.errorcode.get(e, e)})" for p, e, _ in pending[:4]],
            errors=len(pending),
            transactions=failed,
        )

    def is_connected(self, peer: Peer) -> bool:
        return peer in self._conns

    def send(self, peer: Peer, data: bytes) -> bool:
        """Send now if possible (UDP, or an open TCP connection); ``False`` otherwise."""
        if peer.transport == "udp":
            udp = self._udp
            if self._udp_route:
                udp = self._udp_route.get((peer.host, peer.port), udp)
            if udp is None:
                return False
            return udp.send(data, (peer.host, peer.port))
        conn = self._conns.get(peer)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return False
        conn.transport.write(data)
        conn.last_active = self.loop.time()
        return True

    async def connect(self, peer: Peer, timeout: float = 5.0) -> None:
        """Open a TCP connection to ``peer`` unless one is open (or opening) already. A
        connection the gateway opens is trusted: it is never evicted to make room."""
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
                    self.loop.create_connection(
                        lambda: _TcpConnection(self, trusted=True), peer.host, peer.port
                    ),
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
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for host, port in list(self._extra):
            self.stop_listening(host, port)
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
