"""The relay's media ports: a pool of even ports and the sockets bound on them.

RTP takes the even port and leaves the next odd one to RTCP (RFC 3550 §11; RFC 4566 §5.14 says
an SDP ``m=`` port is the RTP port). The relay does not relay RTCP, so only the even port is
bound. Ports are handed out oldest-freed first, so a port just released is not reused while
stray packets of its previous stream may still arrive. A port some other program holds is
skipped and retried later. A stream's input port number is taken for UDP and TCP at once until
the far end's answer says which it uses (an answer may pick the other one than offered).
"""

from __future__ import annotations

import errno
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from gateway.media._relay_types import PortsExhausted, RelayError

T = TypeVar("T")

SOCKET_BUFFER = 4 * 1024 * 1024
"""Kernel buffer per media socket: at 4 Mbit/s, 4 MiB holds ~8 s of a stream, enough to ride
out a pause of the event loop without loss (the kernel charges only what is queued)."""

# Linux <asm-generic/socket.h>; Python's socket module does not name them.
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_PORT_TAKEN = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


class PortPool:
    """Even ports of ``[port_min, port_max]``; :meth:`take` binds one with a caller's function."""

    __slots__ = ("_free", "_range", "size")

    def __init__(self, port_min: int, port_max: int) -> None:
        if not 0 < port_min <= port_max <= 65535:
            raise RelayError(f"bad media port range {port_min}-{port_max}")
        first = port_min + (port_min & 1)
        self._range = range(first, port_max + 1, 2)
        self._free: deque[int] = deque(self._range)
        self.size = len(self._free)

    def free(self) -> int:
        return len(self._free)

    def holds(self, port: int) -> bool:
        """Is ``port`` taken from this pool now (bound by the relay)? Linear in the free
        ports; asked once per media answer, not per packet."""
        return port in self._range and port not in self._free

    def take(self, bind: Callable[[int], T]) -> tuple[int, T]:
        """The first free port ``bind`` succeeds on, with what it returned.

        ``bind`` raises ``OSError`` when the port is taken; such ports go to the back of the
        queue. Raises :class:`PortsExhausted` when no port could be bound.
        """
        for _ in range(len(self._free)):
            port = self._free.popleft()
            try:
                return port, bind(port)
            except OSError as exc:
                self._free.append(port)
                if exc.errno not in _PORT_TAKEN:
                    raise RelayError(f"cannot bind media port {port}: {exc}") from exc
        raise PortsExhausted(f"no free even media port ({self.size} in the range)")

    def give(self, port: int) -> None:
        self._free.append(port)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_buffer(sock: socket.socket, receive: bool, size: int = SOCKET_BUFFER) -> None:
    """Ask for a large kernel buffer; as root, past ``net.core.[rw]mem_max`` (``*BUFFORCE``)."""
    opt = socket.SO_RCVBUF if receive else socket.SO_SNDBUF
    if sys.platform == "linux":
        try:
            force = _SO_RCVBUFFORCE if receive else _SO_SNDBUFFORCE
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:  # not privileged: capped at the sysctl maximum
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)
    except OSError:
        pass


def bind_udp(host: str, port: int, *, receive: bool) -> socket.socket:
    """A non-blocking UDP socket on ``host:port`` with a large receive or send buffer."""
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_buffer(sock, receive)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int, *, listen: bool) -> socket.socket:
    """A non-blocking TCP socket on ``host:port``: listening, or bound to connect from."""
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Rebinding while an old connection of this port is in TIME_WAIT is fine for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int, *, udp: bool) -> socket.socket:
    """A socket that only holds ``host:port`` for UDP or TCP (bound, not listening, default
    buffers): nobody else takes the number while it is open."""
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
