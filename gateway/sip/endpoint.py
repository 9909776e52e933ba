"""The SIP endpoint: the asyncio adapter around the sans-I/O :class:`~gateway.sip.core.SipCore`.

The core holds the transactions and the transaction-user rules (RFC 3261 §8.2, §9.2, §17.2.3;
RFC 3581); this adapter owns what needs an event loop: the transports (UDP and TCP sockets), the
timer queues, a future per outgoing request and a task per asynchronous handler.

Incoming requests are routed by method to one handler each. A handler returns a
:class:`Response`, an awaitable of one, or ``None`` when it will answer later through
:meth:`ServerContext.respond`. Bad input never escapes: a malformed request gets a 400 whose
reason phrase names the problem, a handler's crash gets 500, an unknown method 405, a
Request-URI the endpoint does not serve 404; anything that cannot even be answered is dropped.
Every case is logged with the peer and counted.

Outgoing requests: ``await endpoint.request(req, peer)`` runs a client transaction and returns
the final response, or raises :class:`TransactionTimeout` / :class:`TransportError` (no way to
the peer: no connection, or an ICMP error said it is unreachable).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from gateway.sip.builder import MAGIC_COOKIE as MAGIC_COOKIE
from gateway.sip.builder import new_branch, new_call_id, new_tag
from gateway.sip.builder import random_token as random_token
from gateway.sip.core import SipCore
from gateway.sip.counters import Counters
from gateway.sip.errors import ParseError, TransactionTimeout, TransportError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.overload import LoadGuard
from gateway.sip.timers import TimerQueues
from gateway.sip.transaction import ClientTransaction, ServerTransaction, TimerConfig
from gateway.sip.transport import (
    TCP_BUFFER_BUDGET,
    TCP_MIN_BODY_RATE,
    Peer,
    Transports,
    local_address_for,
)
from gateway.sip.uri import SipUri

log = structlog.get_logger("gateway.sip.endpoint")

HandlerResult = Response | Awaitable[Response] | None
Handler = Callable[[Request, "ServerContext"], HandlerResult]


class ServerContext:
    """What a handler knows about an incoming request besides the request itself. For an ACK
    or a CANCEL there is nothing to answer: :meth:`respond` and :meth:`reply` do nothing."""

    __slots__ = ("_txn", "endpoint", "peer", "request")

    def __init__(
        self, endpoint: Endpoint, peer: Peer, txn: ServerTransaction | None, request: Request
    ) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self._txn = txn
        self.request = request

    def respond(self, resp: Response) -> None:
        if self._txn is not None:
            self._txn.respond(resp)

    def reply(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if self._txn is not None:
            self.endpoint.core.reply(self._txn, self.request, status, reason, headers or (), body)

    def ignore(self) -> None:
        """Never answer this request (:meth:`SipCore.ignore`)."""
        if self._txn is not None:
            self.endpoint.core.ignore(self._txn)


class Endpoint:
    """The asyncio side of a SIP endpoint; the rules live in :attr:`core`."""

    def __init__(
        self,
        *,
        metrics: Counters,
        timers: TimerConfig | None = None,
        advertised_host: str = "",
        user_agent: str = "gb28181-gateway",
        serves: Callable[[SipUri], bool] | None = None,
        tcp_idle_timeout: float = 300.0,
        tcp_message_timeout: float = 30.0,
        max_connections_per_ip: int = 1000,
        max_connections: int = 0,
        fd_reserve: int = 0,
        tcp_buffer_budget: int = TCP_BUFFER_BUDGET,
        tcp_min_body_rate: float = TCP_MIN_BODY_RATE,
        load_guard: LoadGuard | None = None,
    ) -> None:
        self.metrics = metrics
        self.advertised_host = advertised_host
        self.user_agent = user_agent
        # The transports and the timer queues take the running loop when first used, so an
        # endpoint can be built before the loop runs (or inside it).
        self.transports = Transports(
            self,
            metrics=metrics,
            tcp_idle_timeout=tcp_idle_timeout,
            tcp_message_timeout=tcp_message_timeout,
            max_connections_per_ip=max_connections_per_ip,
            max_connections=max_connections,
            fd_reserve=fd_reserve,
            tcp_buffer_budget=tcp_buffer_budget,
            tcp_min_body_rate=tcp_min_body_rate,
        )
        self._timers = TimerQueues()
        self.core = SipCore(
            network=self.transports,
            user=self,
            counters=metrics,
            scheduler=self._timers,
            timers=timers,
            serves=serves,
        )
        # RFC 3261 §18.4: an ICMP error fails the client transactions to its address at once.
        self.transports.on_unreachable = self.core.unreachable
        # Overload: the transports report the UDP queue, the core sheds, a tick steers.
        self.load_guard = load_guard
        self.core.guard = load_guard
        self.transports.load_guard = load_guard
        self._load_tick: asyncio.TimerHandle | None = None
        self._handlers: dict[str, Handler] = {}
        self._connection_lost: list[Callable[[Peer], None]] = []
        self._local_hosts: dict[str, str] = {}
        self._bound_host = ""
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- settings the core applies ----------------------------------------------------------
    @property
    def timers(self) -> TimerConfig:
        return self.core.timers

    @timers.setter
    def timers(self, value: TimerConfig) -> None:
        self.core.timers = value

    @property
    def invite_timeout(self) -> float:
        """RFC 3261 timer C: how long an INVITE may stay unanswered after a provisional."""
        return self.core.invite_timeout

    @invite_timeout.setter
    def invite_timeout(self, value: float) -> None:
        self.core.invite_timeout = value

    @property
    def serves(self) -> Callable[[SipUri], bool] | None:
        return self.core.serves

    @serves.setter
    def serves(self, value: Callable[[SipUri], bool] | None) -> None:
        self.core.serves = value

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.transports.loop

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        await self.transports.start(host, port)
        self._bound_host = host
        if self.load_guard is not None:
            self._schedule_load_tick(self.loop.time())

    def _schedule_load_tick(self, now: float) -> None:
        assert self.load_guard is not None
        due = now + self.load_guard.tick_interval
        self._load_tick = self.loop.call_at(due, self._on_load_tick, due)

    def _on_load_tick(self, due: float) -> None:
        """The guard's tick, its lateness being the loop's lag."""
        assert self.load_guard is not None
        now = self.loop.time()
        try:
            self.load_guard.tick(max(0.0, now - due))
        finally:
            self._schedule_load_tick(now)

    @property
    def port(self) -> int:
        return self.transports.port

    async def listen_also(self, host: str, port: int) -> None:
        """SIP on one more address (:meth:`Transports.listen_also`)."""
        await self.transports.listen_also(host, port)

    def stop_listening(self, host: str, port: int) -> None:
        self.transports.stop_listening(host, port)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._timers.close()
        if self._load_tick is not None:
            self._load_tick.cancel()
        await self.transports.close()

    def route(self, method: str, handler: Handler) -> None:
        """``method`` is answered by ``handler``. A second handler for one method is a wiring
        mistake, refused here rather than silently replacing the first."""
        method = method.upper()
        if method in self._handlers:
            raise ValueError(f"{method} has a handler already")
        self._handlers[method] = handler
        self.core.allow(method)

    def on_connection_lost(self, callback: Callable[[Peer], None]) -> None:
        self._connection_lost.append(callback)

    def on_refused(self, callback: Callable[[Request, Peer, ParseError], None]) -> None:
        """``callback`` hears of each request the core refused before any transaction (its
        400, 505 or 513 already sent), with the error (:attr:`SipCore.on_refused`)."""
        previous = self.core.on_refused
        if previous is None:
            self.core.on_refused = callback
            return

        def both(req: Request, peer: Peer, exc: ParseError) -> None:
            previous(req, peer, exc)
            callback(req, peer, exc)

        self.core.on_refused = both

    def mark_trusted(self, peer: Peer) -> None:
        """A device registered from ``peer``: over TCP, its connection is kept when the
        connection cap makes room for new ones (see :class:`Transports`)."""
        self.transports.mark_trusted(peer)

    @property
    def allowed(self) -> str:
        return self.core.allowed

    # -- addressing -----------------------------------------------------------------------
    def local_host(self, peer: Peer) -> str:
        """The host we write into Via/Contact for messages to ``peer``."""
        if self.advertised_host:
            return self.advertised_host
        bound = self._bound_host
        if bound and bound not in ("0.0.0.0", "::"):
            return bound
        host = self._local_hosts.get(peer.host)
        if host is None:
            host = local_address_for(peer.host)
            self._local_hosts[peer.host] = host
        return host

    def via(self, peer: Peer, branch: str | None = None) -> str:
        transport = "TCP" if peer.reliable else "UDP"
        return (
            f"SIP/2.0/{transport} {self.local_host(peer)}:{self.port};rport;"
            f"branch={branch or self.branch()}"
        )

    def contact_uri(self, user: str, peer: Peer) -> str:
        suffix = ";transport=tcp" if peer.reliable else ""
        return f"sip:{user}@{self.local_host(peer)}:{self.port}{suffix}"

    def answer(
        self,
        req: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """The response a handler returns (RFC 3261 §8.2.6), with this endpoint's To tag: a
        fresh one unless ``to_tag`` gives the dialog's."""
        return make_response(
            req, status, reason, to_tag=to_tag or new_tag(), headers=headers, body=body
        )

    @staticmethod
    def branch() -> str:
        return new_branch()

    @staticmethod
    def tag() -> str:
        return new_tag()

    @staticmethod
    def call_id() -> str:
        return new_call_id()

    # -- incoming (the transports' Listener, the core's TransactionUser) --------------------
    def connection_lost(self, peer: Peer) -> None:
        for callback in self._connection_lost:
            try:
                callback(peer)
            except Exception:
                log.exception("sip.connection_lost_callback_failed", peer=str(peer))

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.core.receive(data, peer)

    def request_received(self, request: Request, peer: Peer, txn: ServerTransaction | None) -> None:
        """Run the route's handler; an awaitable it returns runs as a task whose result answers
        (or, should it fail, goes to :meth:`SipCore.fail`). Exceptions go back to the core."""
        handler = self._handlers.get(request.method)
        if handler is None:  # the core hands over routed methods only
            return
        ctx = ServerContext(self, peer, txn, request)
        result = handler(request, ctx)
        if result is None:
            return
        if isinstance(result, Response):
            if txn is not None:
                txn.respond(result)
            return
        task = asyncio.ensure_future(result)
        self._tasks.add(task)
        if txn is None:  # an ACK or a CANCEL: nothing to answer
            task.add_done_callback(self._tasks.discard)
        else:
            task.add_done_callback(lambda t: self._async_done(t, ctx, txn))

    def _async_done(
        self, task: asyncio.Future[Response], ctx: ServerContext, txn: ServerTransaction
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            txn.respond(task.result())
        else:
            self.core.fail(txn, ctx.request, ctx.peer, exc)

    # -- outgoing -------------------------------------------------------------------------
    async def request(
        self,
        req: Request,
        peer: Peer,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_2xx_retransmission: Callable[[Response], None] | None = None,
        timeout: float | None = None,
        keep_via: bool = False,
    ) -> Response:
        """Send ``req`` to ``peer`` in a new client transaction; return the final response.

        A Via with a fresh branch is put on top (callers never write Via), and Max-Forwards and
        User-Agent are added when missing. ``keep_via`` sends the request with the Via it has
        (a CANCEL carries its INVITE's, RFC 3261 §9.1). ``on_2xx_retransmission`` hears the
        copies of an INVITE's 2xx that arrive after the first (the UAC re-sends its ACK for
        each, RFC 3261 §13.2.2.4).
        """
        if peer.reliable and not self.transports.is_connected(peer):
            await self.transports.connect(peer)
        if keep_via:
            branch = req.top_via.branch or self.branch()
        else:
            branch = self.branch()
            req.prepend_header("Via", self.via(peer, branch))
        if req.get_header("Max-Forwards") is None:
            req.add_header("Max-Forwards", "70")
        if req.get_header("User-Agent") is None:
            req.add_header("User-Agent", self.user_agent)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        txn: ClientTransaction | None = None

        def on_response(resp: Response) -> None:
            if resp.status < 200:
                if on_provisional is not None:
                    on_provisional(resp)
            elif not fut.done():
                fut.set_result(resp)
            elif on_2xx_retransmission is not None and resp.status < 300:
                on_2xx_retransmission(resp)

        def on_timeout() -> None:
            if fut.done():
                return
            if txn is not None and txn.unreachable:  # an ICMP error (RFC 3261 §18.4)
                fut.set_exception(TransportError(f"{req.method} to {peer}: unreachable"))
            else:
                self.metrics.inc(f"sip.tx.timeout.{req.method}")
                fut.set_exception(TransactionTimeout(f"{req.method} to {peer}: no final response"))

        try:
            txn = self.core.start_request(
                req, peer, branch, on_response=on_response, on_timeout=on_timeout
            )
        except TransportError:
            if fut.done():
                fut.exception()  # retrieved: the TransportError raised here tells the caller
            raise
        # Timers B/F bound a transaction until its first provisional; after a 1xx an INVITE
        # has no bound of its own (timer C is the TU's), so one applies here.
        limit = (
            timeout
            if timeout is not None
            else (self.invite_timeout if req.method == "INVITE" else None)
        )
        try:
            if limit is None:
                return await fut
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self.metrics.inc(f"sip.tx.timeout.{req.method}")
            raise TransactionTimeout(
                f"{req.method} to {peer}: no final response in {limit} s"
            ) from None
        finally:
            if txn.state != "terminated" and (fut.cancelled() or not fut.done()):
                txn.transport_error()

    def send_stateless(self, req: Request, peer: Peer) -> bool:
        """Send a request outside any transaction: the ACK for a 2xx (RFC 3261 §13.2.2.4),
        which the UAC core sends itself. A fresh Via branch goes on top."""
        req.prepend_header("Via", self.via(peer, self.branch()))
        if req.get_header("Max-Forwards") is None:
            req.add_header("Max-Forwards", "70")
        return self.transports.send(peer, req.to_bytes())
