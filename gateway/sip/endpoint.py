"""The SIP endpoint: the transaction user's door to the network (RFC 3261 §8, §17.1.3, §17.2.3).

Incoming requests are matched to server transactions (retransmissions absorbed), then routed by
method to one handler each. A handler returns a :class:`Response`, an awaitable of one, or
``None`` when it will answer later through :meth:`ServerContext.respond`. Bad input never escapes:
a malformed request gets a 400 whose reason phrase names the problem, a handler's crash gets
500, an unknown method 405, a Request-URI the endpoint does not serve 404; anything that cannot
even be answered is dropped. Every case is logged with the peer and counted.

Outgoing requests: ``await endpoint.request(req, peer)`` runs a client transaction and returns
the final response, or raises :class:`TransactionTimeout` / :class:`TransportError`.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from gateway.metrics import Metrics
from gateway.sip.errors import ParseError, TransactionTimeout, TransportError
from gateway.sip.message import Request, Response, make_response, parse, salvage_request
from gateway.sip.timers import TimerQueues
from gateway.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerConfig,
)
from gateway.sip.transport import Peer, Transports, local_address_for
from gateway.sip.uri import SipUri

log = structlog.get_logger("gateway.sip.endpoint")

MAGIC_COOKIE = "z9hG4bK"

HandlerResult = Response | Awaitable[Response] | None
Handler = Callable[[Request, "ServerContext"], HandlerResult]


# Tags, branches and Call-IDs must be unique, not secret (RFC 3261 §19.3): the seeded PRNG
# is enough and avoids a system call per message.
_rng = random.Random(os.urandom(16))


def random_token(nbytes: int = 8) -> str:
    return f"{_rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


class ServerContext:
    """What a handler knows about an incoming request besides the request itself."""

    __slots__ = ("_txn", "endpoint", "peer", "request")

    def __init__(
        self, endpoint: Endpoint, peer: Peer, txn: ServerTransaction, request: Request
    ) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self._txn = txn
        self.request = request

    def respond(self, resp: Response) -> None:
        self._txn.respond(resp)

    def reply(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self._txn.respond(
            make_response(
                self.request,
                status,
                reason,
                to_tag=self.endpoint.tag(),
                headers=headers or (),
                body=body,
            )
        )


def _server_key(req: Request, method: str | None = None) -> tuple[str, ...]:
    """RFC 3261 §17.2.3 matching; the pre-3261 fallback when the branch lacks the cookie.
    ``method`` overrides the request's own (a CANCEL looks up its INVITE)."""
    via = req.top_via
    branch = via.branch or ""
    if method is None:
        method = "INVITE" if req.method == "ACK" else req.method
    if branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by, method)
    return (req.call_id, str(req.cseq.seq), method, req.from_.tag or "", via.sent_by, branch)


class Endpoint:
    def __init__(
        self,
        *,
        metrics: Metrics,
        timers: TimerConfig | None = None,
        advertised_host: str = "",
        user_agent: str = "gb28181-gateway",
        serves: Callable[[SipUri], bool] | None = None,
        tcp_idle_timeout: float = 300.0,
        max_connections_per_ip: int = 1000,
    ) -> None:
        self.metrics = metrics
        self.timers = timers or TimerConfig()
        self.advertised_host = advertised_host
        self.user_agent = user_agent
        self.serves = serves
        self.loop = asyncio.get_running_loop()
        self.transports = Transports(
            self,
            metrics=metrics,
            tcp_idle_timeout=tcp_idle_timeout,
            max_connections_per_ip=max_connections_per_ip,
        )
        self._handlers: dict[str, Handler] = {}
        self._server_txns: dict[tuple[str, ...], ServerTransaction] = {}
        self._client_txns: dict[tuple[str, str], ClientTransaction] = {}
        self._connection_lost: list[Callable[[Peer], None]] = []
        self._local_hosts: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers = TimerQueues(self.loop)
        # INVITE server transactions by (Call-ID, CSeq number), for the ACK to a 2xx.
        self._invites: dict[tuple[str, int], ServerTransaction] = {}
        # RFC 3261 timer C: how long an INVITE may stay unanswered after a provisional.
        self.invite_timeout = 180.0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        await self.transports.start(host, port)
        self._bound_host = host

    @property
    def port(self) -> int:
        return self.transports.port

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._timers.close()
        await self.transports.close()

    def route(self, method: str, handler: Handler) -> None:
        self._handlers[method.upper()] = handler

    def on_connection_lost(self, callback: Callable[[Peer], None]) -> None:
        self._connection_lost.append(callback)

    @property
    def allowed(self) -> str:
        return ", ".join(sorted({*self._handlers, "ACK", "CANCEL"}))

    # -- addressing -----------------------------------------------------------------------
    def local_host(self, peer: Peer) -> str:
        """The host we write into Via/Contact for messages to ``peer``."""
        if self.advertised_host:
            return self.advertised_host
        bound = getattr(self, "_bound_host", "")
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

    @staticmethod
    def branch() -> str:
        return MAGIC_COOKIE + random_token(8)

    @staticmethod
    def tag() -> str:
        return random_token(6)

    @staticmethod
    def call_id() -> str:
        return random_token(12)

    # -- incoming -------------------------------------------------------------------------
    def connection_lost(self, peer: Peer) -> None:
        for callback in self._connection_lost:
            try:
                callback(peer)
            except Exception:
                log.exception("sip.connection_lost_callback_failed", peer=str(peer))

    def message_received(self, data: bytes, peer: Peer) -> None:
        try:
            self._message_received(data, peer)
        except Exception:
            # Last resort: whatever a peer sends must not reach the transport (a TCP
            # connection would be torn down with every message queued behind it).
            self.metrics.inc("sip.rx.internal_error")
            log.exception("sip.rx.internal_error", peer=str(peer), size=len(data))

    def _message_received(self, data: bytes, peer: Peer) -> None:
        try:
            msg = parse(data)
        except ParseError as exc:
            self.metrics.inc("sip.rx.parse_error")
            log.warning("sip.rx.parse_error", peer=str(peer), reason=str(exc), size=len(data))
            # Tell the sender why, when enough of the request survives to address an answer.
            salvaged = salvage_request(data)
            if salvaged is not None and salvaged.method != "ACK":
                self._reject(salvaged, peer, 400, exc.reason)
            return
        if isinstance(msg, Response):
            self._response_received(msg, peer)
        else:
            self._request_received(msg, peer)

    def _reject(self, req: Request, peer: Peer, status: int, reason: str) -> None:
        """Answer outside any transaction (the request is too broken to key one)."""
        try:
            resp = make_response(req, status, reason, to_tag=self.tag())
            self.transports.send(peer, resp.to_bytes())
        except Exception:
            log.debug("sip.reject_failed", peer=str(peer))

    def _request_received(self, req: Request, peer: Peer) -> None:
        metrics = self.metrics
        try:
            # From and To are parsed when a handler asks for them; a ParseError there still
            # becomes a 400 (see _dispatch), so a keepalive pays only for what it uses.
            key = _server_key(req)
            cseq = req.cseq
            if cseq.method != req.method:
                raise ParseError("CSeq Method Mismatch", f"{cseq.method} != {req.method}")
            max_forwards = req.max_forwards
        except ParseError as exc:
            metrics.inc("sip.rx.bad_request")
            log.warning("sip.rx.bad_request", peer=str(peer), method=req.method, reason=str(exc))
            if req.method != "ACK" and req.get_header("Via") is not None:
                self._reject(req, peer, 400, exc.reason)
            return
        self._stamp_via(req, peer)

        txn = self._server_txns.get(key)
        if txn is not None:
            if req.method == "ACK":
                txn.receive_ack()
            else:
                metrics.inc("sip.rx.retransmission")
                txn.receive_request()
            return
        method = req.method
        if method == "ACK":
            # The ACK for a 2xx has a branch of its own (RFC 3261 §13.2.2.4): match it to the
            # INVITE by Call-ID and CSeq number, so the 2xx retransmissions stop.
            invite = self._invites.get((req.call_id, cseq.seq))
            if invite is not None:
                invite.receive_ack()
            handler = self._handlers.get("ACK")
            if handler is not None:
                self._run_ack(handler, req, peer)
            return
        if method == "CANCEL":
            self._cancel(req, peer)
            return

        txn = ServerTransaction(
            req,
            reliable=peer.reliable,
            sched=self._timers,
            cfg=self.timers,
            send=self._sender(peer),
            on_terminated=self._server_done,
        )
        txn.key = key
        self._server_txns[key] = txn
        ctx = ServerContext(self, peer, txn, req)
        if method == "INVITE":
            txn.ack_key = (req.call_id, cseq.seq)
            self._invites[txn.ack_key] = txn
            txn.respond(make_response(req, 100))
        if max_forwards == 0:
            ctx.reply(483, "Too Many Hops")
            return
        handler = self._handlers.get(method)
        if handler is None:
            metrics.inc("sip.rx.method_not_allowed")
            log.info("sip.rx.method_not_allowed", peer=str(peer), method=method)
            ctx.reply(405, "Method Not Allowed", [("Allow", self.allowed)])
            return
        if self.serves is not None:
            try:
                served = self.serves(req.request_uri)
            except ParseError:
                served = False
            if not served:
                metrics.inc("sip.rx.not_served")
                log.info("sip.rx.not_served", peer=str(peer), method=method, uri=req.uri)
                ctx.reply(404, "Not Found (no such user here)")
                return
        self._dispatch(handler, req, ctx)
        if txn.state in ("trying", "proceeding"):
            # Answered later by a task or a callback. Should that never happen, answer for it
            # rather than keep the transaction forever.
            delay = self.timers.timeout if method != "INVITE" else self.invite_timeout
            self._timers.call_later(delay, self._unanswered, txn, ctx)

    def _unanswered(self, txn: ServerTransaction, ctx: ServerContext) -> None:
        if txn.state in ("trying", "proceeding"):
            self.metrics.inc("sip.rx.unanswered")
            log.warning("sip.rx.unanswered", peer=str(ctx.peer), method=ctx.request.method)
            ctx.reply(408 if ctx.request.method == "INVITE" else 500, "No answer in time")

    def _dispatch(self, handler: Handler, req: Request, ctx: ServerContext) -> None:
        try:
            result = handler(req, ctx)
        except ParseError as exc:
            self.metrics.inc("sip.rx.bad_request")
            log.warning(
                "sip.rx.bad_request", peer=str(ctx.peer), method=req.method, reason=str(exc)
            )
            ctx.reply(400, exc.reason)
            return
        except Exception:
            self.metrics.inc("sip.handler_error")
            log.exception("sip.handler_error", peer=str(ctx.peer), method=req.method)
            ctx.reply(500, "Server Internal Error")
            return
        if result is None:
            return
        if isinstance(result, Response):
            ctx.respond(result)
            return
        task = asyncio.ensure_future(result)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._async_done(t, req, ctx))

    def _async_done(self, task: asyncio.Future[Response], req: Request, ctx: ServerContext) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            ctx.respond(task.result())
        elif isinstance(exc, ParseError):
            self.metrics.inc("sip.rx.bad_request")
            log.warning(
                "sip.rx.bad_request", peer=str(ctx.peer), method=req.method, reason=str(exc)
            )
            ctx.reply(400, exc.reason)
        else:
            self.metrics.inc("sip.handler_error")
            log.error("sip.handler_error", peer=str(ctx.peer), method=req.method, exc_info=exc)
            ctx.reply(500, "Server Internal Error")

    def _run_ack(self, handler: Handler, req: Request, peer: Peer) -> None:
        try:
            result = handler(req, ServerContext(self, peer, _NullTxn(), req))  # type: ignore[arg-type]
            if result is not None and not isinstance(result, Response):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            self.metrics.inc("sip.handler_error")
            log.exception("sip.handler_error", peer=str(peer), method="ACK")

    def _cancel(self, req: Request, peer: Peer) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE if it is still unanswered."""
        target = self._server_txns.get(_server_key(req, "INVITE"))
        if target is None:
            self._reject(req, peer, 481, "Call/Transaction Does Not Exist")
            return
        self._reject(req, peer, 200, "OK")
        handler = self._handlers.get("CANCEL")
        if handler is not None:
            self._run_ack(handler, req, peer)
        if target.state == "proceeding" and target.request is not None:
            target.respond(make_response(target.request, 487, to_tag=self.tag()))

    def _stamp_via(self, req: Request, peer: Peer) -> None:
        """RFC 3581 §4 / RFC 3261 §18.2.1: add ``received`` and fill ``rport``."""
        via = req.top_via
        params = via.params
        has_rport = False
        out: list[tuple[str, str | None]] = []
        for k, v in params:
            low = k.lower()
            if low == "rport":
                has_rport = True
                out.append((k, str(peer.port)))
            elif low != "received":
                out.append((k, v))
        if not has_rport and via.host == peer.host:
            return
        out.append(("received", peer.host))
        req.replace_top_via(via._replace(params=tuple(out)))

    def _server_done(self, txn: ServerTransaction) -> None:
        if self._server_txns.get(txn.key) is txn:
            del self._server_txns[txn.key]
        if txn.ack_key is not None and self._invites.get(txn.ack_key) is txn:
            del self._invites[txn.ack_key]

    def _sender(self, peer: Peer) -> Callable[[bytes], None]:
        return _Sender(self, peer)

    def _response_received(self, resp: Response, peer: Peer) -> None:
        try:
            key = (resp.top_via.branch or "", resp.cseq.method)
        except ParseError as exc:
            self.metrics.inc("sip.rx.bad_response")
            log.warning("sip.rx.bad_response", peer=str(peer), reason=str(exc))
            return
        txn = self._client_txns.get(key)
        if txn is None:
            self.metrics.inc("sip.rx.stray_response")
            log.debug("sip.rx.stray_response", peer=str(peer), status=resp.status)
            return
        txn.receive_response(resp)

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
        fut: asyncio.Future[Response] = self.loop.create_future()
        key = (branch, req.method)

        def on_response(resp: Response) -> None:
            if resp.status < 200:
                if on_provisional is not None:
                    on_provisional(resp)
            elif not fut.done():
                fut.set_result(resp)
            elif on_2xx_retransmission is not None and resp.status < 300:
                on_2xx_retransmission(resp)

        def on_timeout() -> None:
            if not fut.done():
                fut.set_exception(TransactionTimeout(f"{req.method} to {peer}: no final response"))

        failed = False
        transports = self.transports

        def send(data: bytes) -> None:
            nonlocal failed
            if not transports.send(peer, data):
                failed = True

        def forget(_: object) -> None:
            self._client_txns.pop(key, None)

        txn = ClientTransaction(
            req,
            reliable=peer.reliable,
            sched=self._timers,
            cfg=self.timers,
            send=send,
            on_response=on_response,
            on_timeout=on_timeout,
            on_terminated=forget,
        )
        self._client_txns[key] = txn
        txn.start()
        if failed:
            txn.transport_error()
            fut.exception()
            raise TransportError(f"cannot send {req.method} to {peer}")
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

    def send_response_stateless(self, resp: Response, peer: Peer) -> None:
        self.transports.send(peer, resp.to_bytes())


class _Sender:
    """Sends a transaction's bytes to its peer. A two-slot object rather than a closure or a
    partial (a quarter of their size): one lives in every transaction kept for timer J."""

    __slots__ = ("endpoint", "peer")

    def __init__(self, endpoint: Endpoint, peer: Peer) -> None:
        self.endpoint = endpoint
        self.peer = peer

    def __call__(self, data: bytes) -> None:
        if not self.endpoint.transports.send(self.peer, data):
            self.endpoint.metrics.inc("sip.tx.unroutable")


class _NullTxn:
    """Stand-in transaction for ACK/CANCEL handlers: they never answer."""

    def respond(self, resp: Response) -> None:  # pragma: no cover - ACK has no response
        pass
