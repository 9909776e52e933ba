"""uvicorn inside the gateway's own event loop.

The server is given a socket bound here (so ``port = 0`` works and the bound port is known at
once), installs no signal handlers (``gateway.app.serve`` owns SIGINT/SIGTERM) and stops
within ``SHUTDOWN_GRACE`` seconds even with Server-Sent Event streams open.

What a stranger can make it hold is bounded (uvicorn itself closes nothing before a response
and its ``limit_concurrency`` only answers 503): the protocol class given to uvicorn closes a
new connection at once beyond ``http.max_connections`` in all or
``http.max_connections_per_ip`` from one address, and closes a connection that has not
delivered a whole request head (RFC 9112 §2.1: start line and header fields) within
``http.header_timeout`` seconds of opening or of the end of the previous response. Once a head
is in, the request runs as long as it needs (a slow upload, a Server-Sent Event stream): the
body is bounded by ``BodyLimit`` in ``factory.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Generator
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from gateway.metrics import Metrics

log = structlog.get_logger("gateway.api")

SHUTDOWN_GRACE = 2
# Seconds between two log lines about refused or timed-out connections (the rest are counted).
LOG_EVERY = 10.0


class ConnectionBook:
    """The open HTTP connections, in all and per client address, and the limits on them."""

    def __init__(
        self,
        max_connections: int = 256,
        max_per_ip: int = 64,
        header_timeout: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.header_timeout = header_timeout
        self.metrics = metrics
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        """Take a place for a new connection from ``ip``; False (counted, logged) when full."""
        held = self.per_ip.get(ip, 0)
        if self.total >= self.max_connections or held >= self.max_per_ip:
            reason = "per_ip" if held >= self.max_per_ip else "total"
            self._note("http.refused_connections", "http.refused_connection", ip, reason=reason)
            return False
        self.total += 1
        self.per_ip[ip] = held + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_ip[ip] - 1
        if left:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]

    def timed_out(self, ip: str) -> None:
        self._note("http.header_timeouts", "http.header_timeout", ip)

    def _note(self, counter: str, event: str, ip: str, **fields: Any) -> None:
        if self.metrics is not None:
            self.metrics.inc(counter)
        now = time.monotonic()
        if now - self._logged.get(event, -LOG_EVERY) < LOG_EVERY:
            self._unlogged[event] = self._unlogged.get(event, 0) + 1
            return
        self._logged[event] = now
        log.warning(
            event,
            client=ip,
            total=self.total,
            from_client=self.per_ip.get(ip, 0),
            not_logged=self._unlogged.pop(event, 0),
            **fields,
        )


def guarded_protocol(book: ConnectionBook) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) held to ``book``.

    Both implementations make ``self.cycle`` when a request head is complete and call
    ``on_response_complete`` when its response is sent; the head deadline is armed at
    ``connection_made`` and at each ``on_response_complete``, and when it fires a connection
    with a request under way is left alone.
    """
    base: Any = AutoHTTPProtocol

    class GuardedProtocol(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._client_ip = ""
            self._admitted = False
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            self._client_ip = ip
            if not book.admit(ip):
                transport.close()
                return
            self._admitted = True
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            if not self._admitted:
                return  # refused: uvicorn never saw it
            self._admitted = False
            book.release(self._client_ip)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._admitted:
                super().data_received(data)

        def eof_received(self) -> bool | None:
            if self._admitted:
                result: bool | None = super().eof_received()
                return result
            return None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(book.header_timeout, self._head_deadline)

        def _cancel_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline(self) -> None:
            self._head_timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return  # a head is in and its request runs; its response arms the next one
            if self.transport.is_closing():
                return
            book.timed_out(self._client_ip)
            self.transport.close()

    return GuardedProtocol


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the gateway handles signals itself


class HttpServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, book: ConnectionBook | None = None
    ) -> None:
        self.app = app
        if book is None:
            ctx = getattr(app.state, "ctx", None)
            if ctx is None:
                book = ConnectionBook()
            else:
                http = ctx.config.http
                book = ConnectionBook(
                    http.max_connections,
                    http.max_connections_per_ip,
                    http.header_timeout,
                    ctx.metrics,
                )
        self.book = book
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says TCP (else every response waits ~40 ms on a delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(1024)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            http=guarded_protocol(self.book),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            timeout_keep_alive=30,
            limit_concurrency=2000,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = _Server(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        log.info("http.started", host=self.host, port=self.port)

    async def close(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), SHUTDOWN_GRACE + 3)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._server = None
