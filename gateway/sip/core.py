"""The SIP transaction user core, sans I/O (RFC 3261 §8.2, §9.2, §17.1.3, §17.2.3; RFC 3581 §4).

In aioquic's shape: calls in, events out, time handed in. Bytes from the network come in through
:meth:`SipCore.receive`; requests go out through :meth:`SipCore.start_request`. What the core
sends goes to its ``network`` (``send(peer, data) -> bool``); each request a transaction user
must see goes to its ``user`` (``request_received(request, peer, txn)``), who answers through
``txn.respond`` or :meth:`SipCore.reply`, at once or later, and reports a failed handler through
:meth:`SipCore.fail`. Timers run on the ``scheduler`` (``call_later``): an event loop in
production, a fake clock in tests. Nothing here touches a socket, a loop or a coroutine, so the
rules below are tested with two cores wired to each other on a fake clock.

The rules, on the server side: RFC 3261 §17.2.3 matching (and the pre-3261 fallback key), so a
retransmission is absorbed and the last response resent; the ACK for a 2xx matched to its INVITE
by Call-ID and CSeq number (§13.2.2.4, RFC 6026); CANCEL per §9.2; ``received``/``rport``
stamped on the top Via (RFC 3581 §4); a request checked before any transaction state is kept
for it (Via, From, To, Call-ID, CSeq matching the method, a Max-Forwards that parses when
present, a Require list: present, well formed and not given twice, §8.2.2) and else answered 400
naming the header, statelessly (505 for
another SIP version, 513 for a message too large; an ACK is never answered); 100 Trying for an
INVITE (§17.2.1); 405 with Allow (§8.2.1); 416 for a Request-URI scheme other than sip/sips and
404 for a Request-URI not served (§8.2.2.1); 420 with Unsupported for a Require (§8.2.2.3: the
core supports no extension); 500 for a handler's crash; and a guard
that answers a request its user never answers (500, or 408 for an INVITE) rather than keep its
transaction forever. While its load guard sheds (:mod:`gateway.sip.overload`), new work
is answered 503 with a Retry-After (§21.5.4) before any state is kept: an initial REGISTER
from its bytes, other new out-of-dialog requests after the retransmission check, never what
``known_sender`` vouches for. On the client side: responses matched to transactions by
(branch, CSeq method) (§17.1.3); the rest counted as stray.

Direct calls rather than a queue of event objects: keepalives and REGISTERs pass through here at
10,000+/s, and a call allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog

from gateway.sip.builder import MAGIC_COOKIE, new_tag
from gateway.sip.counters import Counters
from gateway.sip.errors import ParseError, TransportError
from gateway.sip.headers import CSeq, Via, split_commas
from gateway.sip.message import (
    Request,
    Response,
    check_addresses,
    check_single_values,
    make_response,
    parse,
    salvage_request,
    warning_value,
)
from gateway.sip.overload import (
    LoadGuard,
    from_user,
    is_initial_register,
    quick_response,
    scan_register,
    shed_response,
)
from gateway.sip.peer import Peer
from gateway.sip.transaction import (
    COMPLETED,
    PROCEEDING,
    TRYING,
    ClientTransaction,
    Scheduler,
    ServerTransaction,
    TimerConfig,
)
from gateway.sip.uri import SipUri

log = structlog.get_logger("gateway.sip.core")

# Counter names by method, made once: the hot path looks one up instead of formatting it, and a
# stranger's made-up method counts as ``other`` (the names stay a bounded set).
_METHODS = (
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
)
_SHED_STATUS = b"SIP/2.0 503 Service Unavailable"
# Not shed: what SipCore._shed_register says of a request to serve (else the Retry-After
# booked for a shed one, seconds >= 0).
_SERVE = -1
_RX_REQUEST = {m: f"sip.rx.request.{m}" for m in _METHODS}
_TX_RESPONSE = {m: f"sip.tx.response.{m}." for m in _METHODS}


def _tx_response_prefix(method: str) -> str:
    """``sip.tx.response.<METHOD>.``, to which the status is added for each response sent."""
    return _TX_RESPONSE.get(method, "sip.tx.response.other.")


class Network(Protocol):
    """Where the core's bytes go. ``False``: there is no way to ``peer`` now (no connection)."""

    def send(self, peer: Peer, data: bytes) -> bool: ...


class TransactionUser(Protocol):
    """Who the core hands requests to (RFC 3261 §8.2: the UAS core's transaction user).

    ``txn`` is the server transaction to answer through (``txn.respond``), now or later; it is
    ``None`` for an ACK or a CANCEL, which are answered by the core or not at all. An exception
    raised here becomes the answer (see :meth:`SipCore.fail`).
    """

    def request_received(
        self, request: Request, peer: Peer, txn: ServerTransaction | None
    ) -> None: ...


def server_key(req: Request, method: str | None = None) -> tuple[str, ...]:
    """RFC 3261 §17.2.3 matching; the pre-3261 fallback when the branch lacks the cookie.
    ``method`` overrides the request's own (a CANCEL looks up its INVITE)."""
    via = req.top_via
    branch = via.branch or ""
    if method is None:
        method = "INVITE" if req.method == "ACK" else req.method
    if branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by, method)
    return (req.call_id, str(req.cseq.seq), method, req.from_.tag or "", via.sent_by, branch)


def stamp_via(req: Request, peer: Peer) -> None:
    """RFC 3581 §4 / RFC 3261 §18.2.1: add ``received`` and fill ``rport``."""
    via = req.top_via
    has_rport = False
    out: list[tuple[str, str | None]] = []
    for k, v in via.params:
        low = k.lower()
        if low == "rport":
            has_rport = True
            out.append((k, str(peer.port)))
        elif low != "received":
            out.append((k, v))
    if not has_rport and via.host == peer.host:
        return
    out.append(("received", peer.host))
    # Built directly: NamedTuple._replace goes through keyword arguments, a few microseconds
    # on every request.
    req.replace_top_via(Via(via.transport, via.host, via.port, tuple(out)))


class SipCore:
    """Server and client transaction tables and the transaction-user rules around them."""

    def __init__(
        self,
        *,
        network: Network,
        user: TransactionUser,
        counters: Counters,
        scheduler: Scheduler,
        timers: TimerConfig | None = None,
        serves: Callable[[SipUri], bool] | None = None,
    ) -> None:
        self.network = network
        self.user = user
        self.counters = counters
        self.scheduler = scheduler
        self.timers = timers or TimerConfig()
        self.serves = serves
        # RFC 3261 timer C: how long an INVITE may stay unanswered after a provisional.
        self.invite_timeout = 180.0
        self._methods: set[str] = set()
        self._server_txns: dict[tuple[str, ...], ServerTransaction] = {}
        self._client_txns: dict[tuple[str, str], ClientTransaction] = {}
        # INVITE server transactions by (Call-ID, CSeq number), for the ACK to a 2xx.
        self._invites: dict[tuple[str, int], ServerTransaction] = {}
        #: sheds new work while the gateway is behind (see :mod:`gateway.sip.overload`)
        self.guard: LoadGuard | None = None
        # The Retry-After header lines given so far, by value (a few hundred at most).
        self._retry_lines: dict[int, bytes] = {}
        #: whether a new out-of-dialog request comes from someone the gateway serves already:
        #: ``known_sender(from_user, peer)`` (a device registered at that host, a configured
        #: upper). Such requests are never shed, a registered device's refresh included.
        self.known_sender: Callable[[str, Peer], bool] | None = None
        #: told of each request refused by :func:`check_request` (after its 400 went out), with
        #: the error: who sent what wrong, for a transaction user that keeps per-peer records.
        #: The request failed validation: read only what the error says is sound.
        self.on_refused: Callable[[Request, Peer, ParseError], None] | None = None

    # -- configuration --------------------------------------------------------------------
    def allow(self, method: str) -> None:
        """Requests of ``method`` go to the user; others get 405 (ACK and CANCEL excepted)."""
        self._methods.add(method.upper())

    @property
    def allowed(self) -> str:
        """The Allow header value (RFC 3261 §20.5)."""
        return ", ".join(sorted({*self._methods, "ACK", "CANCEL"}))

    @property
    def server_transactions(self) -> Mapping[tuple[str, ...], ServerTransaction]:
        return self._server_txns

    @property
    def client_transactions(self) -> Mapping[tuple[str, str], ClientTransaction]:
        return self._client_txns

    @staticmethod
    def tag() -> str:
        return new_tag()

    # -- answering ------------------------------------------------------------------------
    def reply(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        """Answer ``request`` in ``txn`` with a response built from it and a fresh To tag."""
        txn.respond(
            make_response(request, status, reason, to_tag=self.tag(), headers=headers, body=body)
        )

    def fail(
        self, txn: ServerTransaction, request: Request, peer: Peer, exc: BaseException
    ) -> None:
        """The user failed to answer: a :class:`ParseError` (something in the request it could
        not read) becomes a 400 whose phrase is the error's short fixed ``reason`` ("Bad
        Contact"), its detail going to the log and a ``Warning: 399`` header (RFC 3261 §20.43);
        anything else a 500 (RFC 3261 §21.5.1)."""
        if isinstance(exc, ParseError):
            self.counters.inc("sip.rx.bad_request")
            log.warning(
                "sip.rx.bad_request",
                peer=str(peer),
                method=request.method,
                reason=exc.reason,
                detail=exc.detail[:120],
            )
            self.reply(txn, request, 400, exc.reason, _warning(exc))
        else:
            self.counters.inc("sip.handler_error")
            log.error("sip.handler_error", peer=str(peer), method=request.method, exc_info=exc)
            self.reply(txn, request, 500, "Server Internal Error")

    # -- incoming -------------------------------------------------------------------------
    def receive(self, data: bytes, peer: Peer) -> None:
        """One message from ``peer`` (a datagram, or one framed off a stream)."""
        shed = _SERVE
        guard = self.guard
        if guard is not None and guard.share < 1.0 and data.startswith(b"REGISTER "):
            decided = self._shed_register(data, peer, guard)
            if decided is None:
                return
            shed = decided
        try:
            self._receive(data, peer, shed)
        except Exception:
            # Last resort: whatever a peer sends must not reach the transport (a TCP
            # connection would be torn down with every message queued behind it).
            self.counters.inc("sip.rx.internal_error")
            log.exception("sip.rx.internal_error", peer=str(peer), size=len(data))

    def _shed_register(self, data: bytes, peer: Peer, guard: LoadGuard) -> int | None:
        """While shedding: the storm's own request, an initial REGISTER, decided before it is
        parsed, from one look at its bytes (:func:`scan_register`), so that a shed one costs
        a few microseconds. ``None``: shed, and answered 503 from its bytes. ``_SERVE``: not
        shed (not an initial REGISTER, a known sender's, or taken by the draw). Otherwise
        shed but not plain enough to answer from its bytes: the Retry-After booked for it,
        to answer with once it is parsed (one place in the calendar per answer sent). (A
        retransmission of a taken initial REGISTER is shed too: the device then waits as
        told instead of retransmitting.)"""
        known = self.known_sender
        scan = scan_register(data)
        if scan is False:
            return _SERVE
        if not isinstance(scan, tuple):  # not plain: the bytes are read the slow way
            if (
                not is_initial_register(data)
                or (known is not None and known(from_user(data), peer))
                or not guard.shed_new()
            ):
                return _SERVE
            seconds = guard.retry_after()
            answer = quick_response(data, 503, "Service Unavailable", self._retry_line(seconds))
            if answer is None:
                return seconds
        else:
            user, lines, to = scan
            if (known is not None and known(user, peer)) or not guard.shed_new():
                return _SERVE
            answer = shed_response(lines, to, _SHED_STATUS, self._retry_line(guard.retry_after()))
        self.counters.inc("sip.rx.shed")
        self.network.send(peer, answer)
        return None

    def _receive(self, data: bytes, peer: Peer, shed: int = _SERVE) -> None:
        try:
            msg = parse(data)
        except ParseError as exc:
            self.counters.inc("sip.rx.parse_error")
            log.warning(
                "sip.rx.parse_error",
                peer=str(peer),
                reason=exc.reason,
                detail=exc.detail[:120],
                size=len(data),
            )
            # Tell the sender why, when enough of the request survives to address an answer.
            salvaged = salvage_request(data)
            if salvaged is not None and salvaged.method != "ACK":
                self._reject(salvaged, peer, exc.status, exc.reason, _warning(exc))
            return
        if isinstance(msg, Response):
            self._response_received(msg, peer)
        else:
            self._request_received(msg, peer, shed)

    def _reject(
        self,
        req: Request,
        peer: Peer,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer outside any transaction (the request is too broken to key one): nothing is
        kept, the answer goes to the address the request came from."""
        try:
            resp = make_response(req, status, reason, to_tag=self.tag(), headers=headers)
            self.network.send(peer, resp.to_bytes())
            self.counters.inc(f"{_tx_response_prefix(req.method)}{status}")
        except Exception:
            log.debug("sip.reject_failed", peer=str(peer))

    def _request_received(self, req: Request, peer: Peer, shed: int = _SERVE) -> None:
        counters = self.counters
        try:
            cseq, require = check_request(req)
            key = server_key(req)
        except ParseError as exc:
            # Decided before any state is kept: a request that cannot be keyed or answered in
            # a transaction leaves nothing behind (RFC 3261 §8.2.2, §16.3).
            counters.inc("sip.rx.bad_request")
            log.warning(
                "sip.rx.bad_request",
                peer=str(peer),
                method=req.method[:20],
                reason=exc.reason,
                detail=exc.detail[:120],
            )
            if req.method == "ACK":
                counters.inc("sip.rx.bad_ack_dropped")
            else:
                self._reject(req, peer, exc.status, exc.reason, _warning(exc))
            refused = self.on_refused
            if refused is not None:
                try:
                    refused(req, peer, exc)
                except Exception:
                    log.exception("sip.on_refused_failed", peer=str(peer))
            return
        counters.inc(_RX_REQUEST.get(req.method, "sip.rx.request.other"))
        if req.method != "ACK" and req.max_forwards is None:
            counters.inc("sip.rx.no_max_forwards")
        stamp_via(req, peer)

        txn = self._server_txns.get(key)
        if txn is not None:
            if req.method == "ACK":
                txn.receive_ack()
            else:
                counters.inc("sip.rx.retransmission")
                txn.receive_request()
            return
        method = req.method
        if method == "ACK":
            # The ACK for a 2xx has a branch of its own (RFC 3261 §13.2.2.4): match it to the
            # INVITE by Call-ID and CSeq number, so the 2xx retransmissions stop.
            invite = self._invites.get((req.call_id, cseq.seq))
            if invite is not None:
                invite.receive_ack()
            if "ACK" in self._methods:
                self._notify(req, peer)
            return
        if method == "CANCEL":
            self._cancel(req, peer)
            return
        guard = self.guard
        if (
            guard is not None
            and guard.share < 1.0
            and method == "REGISTER"
            and req.get_header("Authorization") is not None
        ):
            guard.registered()
        if shed != _SERVE or (
            guard is not None
            and guard.share < 1.0
            and method != "REGISTER"  # decided in receive()
            and req.to.tag is None
            and not (
                self.known_sender is not None and self.known_sender(req.from_.uri.user or "", peer)
            )
            and guard.shed_new()
        ):
            counters.inc("sip.rx.shed")
            seconds = shed if shed != _SERVE else self._booked()
            self._reject(req, peer, 503, "Service Unavailable", [("Retry-After", str(seconds))])
            return

        txn = ServerTransaction(
            req,
            reliable=peer.reliable,
            sched=self.scheduler,
            cfg=self.timers,
            send=_Sender(self, peer, _tx_response_prefix(req.method)),
            on_terminated=self._server_done,
        )
        txn.key = key
        self._server_txns[key] = txn
        try:
            self._serve(txn, req, peer, cseq, require)
        except Exception as exc:
            # Backstop: a transaction is kept from here on, so it is answered whatever
            # happens (400 for what could not be read, else 500) and nothing reaches receive.
            self._backstop(txn, req, peer, exc)

    def _serve(
        self, txn: ServerTransaction, req: Request, peer: Peer, cseq: CSeq, require: list[str]
    ) -> None:
        """A new request in its new server transaction: the core's own answers, else the
        user's."""
        counters = self.counters
        method = req.method
        if method == "INVITE":
            txn.ack_key = (req.call_id, cseq.seq)
            self._invites[txn.ack_key] = txn
            txn.respond(make_response(req, 100))
        # Max-Forwards 0 is no reason to refuse here: §16.3's 483 is a proxy's rule, and the
        # gateway is the endpoint of every request it serves (RFC 4475 §3.3.11: process it).
        if method not in self._methods:
            counters.inc("sip.rx.method_not_allowed")
            log.info("sip.rx.method_not_allowed", peer=str(peer), method=method)
            self.reply(txn, req, 405, "Method Not Allowed", [("Allow", self.allowed)])
            return
        scheme = req.uri.partition(":")[0].lower()
        if scheme != "sip" and scheme != "sips":
            counters.inc("sip.rx.unsupported_uri")
            log.info("sip.rx.unsupported_uri", peer=str(peer), method=method, scheme=scheme[:20])
            self.reply(txn, req, 416, "Unsupported URI Scheme")
            return
        if self.serves is not None:
            try:
                served = self.serves(req.request_uri)
            except ParseError:
                served = False
            if not served:
                counters.inc("sip.rx.not_served")
                log.info("sip.rx.not_served", peer=str(peer), method=method, uri=req.uri[:120])
                self.reply(txn, req, 404, "Not Found (no such user here)")
                return
        if require:
            # RFC 3261 §8.2.2.3: the core implements no extension, so every option named is
            # unsupported (and listed back).
            counters.inc("sip.rx.bad_extension")
            options = ", ".join(require)
            log.info("sip.rx.bad_extension", peer=str(peer), method=method, require=options[:80])
            self.reply(txn, req, 420, "Bad Extension", [("Unsupported", options[:1000])])
            return
        try:
            self.user.request_received(req, peer, txn)
        except Exception as exc:
            self.fail(txn, req, peer, exc)
            return
        if txn.state in ("trying", "proceeding"):
            # Answered later by a task or a callback. Should that never happen, answer for it
            # rather than keep the transaction forever.
            # The timer holds the transaction, not the request: once answered, the transaction
            # lets its request go, so a slow answer (a REGISTER waiting for its group commit)
            # does not keep every parsed request alive for the whole delay.
            delay = self.timers.timeout if method != "INVITE" else self.invite_timeout
            self.scheduler.call_later(delay, self._unanswered, txn, peer)

    def _backstop(self, txn: ServerTransaction, req: Request, peer: Peer, exc: Exception) -> None:
        """The core itself failed on a request it keeps a transaction for: answer it (400 for
        a :class:`ParseError`, else 500) so the transaction ends on its timers; should even
        that fail, forget the transaction rather than keep it unanswered."""
        self.counters.inc("sip.rx.backstop")
        log.error("sip.rx.backstop", peer=str(peer), method=req.method[:20], exc_info=exc)
        try:
            if txn.state in ("trying", "proceeding"):
                if isinstance(exc, ParseError):
                    self.reply(txn, req, 400, exc.reason, _warning(exc))
                else:
                    self.reply(txn, req, 500, "Server Internal Error")
        except Exception:
            log.debug("sip.backstop_failed", peer=str(peer))
        if txn.state in ("trying", "proceeding"):
            self._server_done(txn)

    def _booked(self) -> int:
        assert self.guard is not None
        return self.guard.retry_after()

    def _retry_line(self, seconds: int) -> bytes:
        """``Retry-After: <seconds>`` as a header line, made once per value."""
        line = self._retry_lines.get(seconds)
        if line is None:
            line = b"Retry-After: %d\r\n" % seconds
            if len(self._retry_lines) < 4096:
                self._retry_lines[seconds] = line
        return line

    def ignore(self, txn: ServerTransaction) -> None:
        """The user will never answer this request (a simulated peer playing one that ignores
        it): nothing is sent, not even the unanswered guard's 500; retransmissions are absorbed
        for the request's timeout (64 x T1), then the transaction is forgotten."""
        if txn.state not in (TRYING, PROCEEDING):
            return
        txn.state = COMPLETED  # with no last response: a retransmission gets nothing
        self.scheduler.call_later(self.timers.timeout, self._server_done, txn)

    def _unanswered(self, txn: ServerTransaction, peer: Peer) -> None:
        req = txn.request
        if req is not None and txn.state in ("trying", "proceeding"):
            self.counters.inc("sip.rx.unanswered")
            log.warning("sip.rx.unanswered", peer=str(peer), method=req.method)
            self.reply(txn, req, 408 if req.method == "INVITE" else 500, "No answer in time")

    def _notify(self, req: Request, peer: Peer) -> None:
        """Hand the user a request it cannot answer (an ACK, a CANCEL)."""
        try:
            self.user.request_received(req, peer, None)
        except Exception:
            self.counters.inc("sip.handler_error")
            log.exception("sip.handler_error", peer=str(peer), method=req.method)

    def _cancel(self, req: Request, peer: Peer) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE if it is still unanswered;
        481 when no INVITE matches."""
        target = self._server_txns.get(server_key(req, "INVITE"))
        if target is None:
            self._reject(req, peer, 481, "Call/Transaction Does Not Exist")
            return
        self._reject(req, peer, 200, "OK")
        if "CANCEL" in self._methods:
            self._notify(req, peer)
        if target.state == "proceeding" and target.request is not None:
            target.respond(make_response(target.request, 487, to_tag=self.tag()))

    def _server_done(self, txn: ServerTransaction) -> None:
        if self._server_txns.get(txn.key) is txn:
            del self._server_txns[txn.key]
        if txn.ack_key is not None and self._invites.get(txn.ack_key) is txn:
            del self._invites[txn.ack_key]

    def _response_received(self, resp: Response, peer: Peer) -> None:
        try:
            key = (resp.top_via.branch or "", resp.cseq.method)
        except ParseError as exc:
            self.counters.inc("sip.rx.bad_response")
            log.warning("sip.rx.bad_response", peer=str(peer), reason=str(exc))
            return
        txn = self._client_txns.get(key)
        if txn is None:
            self.counters.inc("sip.rx.stray_response")
            log.debug("sip.rx.stray_response", peer=str(peer), status=resp.status)
            return
        # Matched to a transaction of ours: its method is one the gateway sends.
        self.counters.inc(f"sip.rx.response.{key[1]}.{resp.status}")
        txn.receive_response(resp)

    # -- outgoing -------------------------------------------------------------------------
    def start_request(
        self,
        req: Request,
        peer: Peer,
        branch: str,
        *,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> ClientTransaction:
        """Send ``req`` (its top Via carrying ``branch``) in a new client transaction.

        Responses matching (``branch``, method) go to ``on_response``; timer B/F, or a later
        ``transport_error()`` on the returned transaction, to ``on_timeout``. Raises
        :class:`TransportError` when the first send finds no way to ``peer`` (the transaction
        is then over, and ``on_timeout`` has been told).
        """
        key = (branch, req.method)
        client_txns = self._client_txns
        sender = _ClientSender(self.network, peer)

        def forget(_: object) -> None:
            client_txns.pop(key, None)

        txn = ClientTransaction(
            req,
            reliable=peer.reliable,
            sched=self.scheduler,
            cfg=self.timers,
            send=sender,
            on_response=on_response,
            on_timeout=on_timeout,
            on_terminated=forget,
        )
        client_txns[key] = txn
        self.counters.inc(f"sip.tx.request.{req.method}")
        txn.start()
        if sender.failed:
            txn.transport_error()
            raise TransportError(f"cannot send {req.method} to {peer}")
        return txn

    def unreachable(self, peer: Peer, quoted: bytes) -> int:
        """An ICMP error says a datagram to ``peer`` could not be delivered (RFC 3261 §18.4);
        ``quoted`` is what the error quotes of that datagram's payload. The client transaction
        whose request it was, if still waiting for a final response, fails now (§17.1.4, its TU
        sees a transport error) instead of at timer B/F.

        Anyone can send an ICMP error naming our address and ``peer``'s, so the error counts
        only for the transaction it names: the quote must hold the request line's method and a
        whole Via branch (``z9hG4bK…`` followed by a delimiter, §8.1.1.7) of a transaction to
        ``peer``, something a blind forger cannot guess. A quote too short for that (RFC 792
        asks for no more than 8 bytes of the datagram, here the UDP header) fails nothing:
        timer B/F decides. A response's quote names no client transaction. Looked up by key,
        a few branches per quote at most. Returns how many failed (0 or 1)."""
        space = quoted.find(b" ", 0, 32)
        if space <= 0 or quoted.startswith(b"SIP/"):
            return 0
        try:
            method = quoted[:space].decode("ascii")
        except UnicodeDecodeError:
            return 0
        cookie = MAGIC_COOKIE.encode()
        punctuation = b"-.!%*_+`'~"
        size = len(quoted)
        start = quoted.find(cookie)
        for _ in range(4):  # the top Via's branch comes first; a forged quote gets no more
            if start < 0:
                return 0
            end = start + len(cookie)
            while end < size and (quoted[end : end + 1].isalnum() or quoted[end] in punctuation):
                end += 1
            if end == size:  # cut off by the end of the quote: maybe not the whole branch
                return 0
            txn = self._client_txns.get((quoted[start:end].decode("ascii"), method))
            if (
                txn is not None
                and isinstance(txn.send, _ClientSender)
                and txn.send.peer == peer
                and txn.state in ("calling", "trying", "proceeding")
            ):
                txn.transport_error()
                self.counters.inc("sip.tx.unreachable")
                return 1
            start = quoted.find(cookie, end)
        return 0


def check_request(req: Request) -> tuple[CSeq, list[str]]:
    """The checks a request passes before the core keeps anything for it (RFC 3261 §8.2.2,
    §16.3): no header given twice that may appear once, a top Via, From and To that parse, a
    Call-ID that is one, a CSeq whose method is the request's, a Max-Forwards of 1*DIGIT when
    there is one, and a Require list that splits. Raises :class:`ParseError` naming the header.
    A Via of several values is checked whole (RFC 4475 §3.1.2.1: empty values are an error).

    A missing Max-Forwards is accepted (issue 15; counted as ``sip.rx.no_max_forwards`` by the
    caller). RFC 3261 §8.1.1.6 makes it a UAC's MUST, but the UAS rules of §8.2 do not check
    it: it is a proxy's loop guard (§16.3), and the gateway is the endpoint of every request it
    serves, never forwarding one (what it sends on is a new request with its own
    Max-Forwards). Real upper platforms leave it out, and RFC 4475 §3.4 asks for such
    (RFC 2543) requests to be processed. Nothing more is kept for such a request than for any
    other that passes here. Returns the CSeq, and the options of the Require headers (``[]``
    without one)."""
    census = check_single_values(req)
    if not census.vias:
        raise ParseError("Missing Via")
    _ = req.top_via
    if census.vias > 1 or census.via_list:
        _ = req.vias
    check_addresses(req)
    _ = req.call_id
    cseq = req.cseq
    method = req.method
    if cseq.method != method:
        raise ParseError("CSeq Method Mismatch", f"{cseq.method[:20]} != {method[:20]}")
    # A Max-Forwards that is there must be 1*DIGIT; one that is missing is no reason to refuse
    # (see the docstring).
    _ = req.max_forwards
    if not census.require:
        return cseq, []
    try:
        options = [o for v in req.get_headers("Require") for o in split_commas(v)]
    except ParseError as exc:
        raise ParseError("Bad Require", exc.detail) from None
    return cseq, options


def _warning(exc: ParseError) -> list[tuple[str, str]]:
    """The detail of a refusal for its answer, as a Warning header (RFC 3261 §20.43)."""
    return [("Warning", warning_value("gateway", exc.detail))] if exc.detail else []


class _Sender:
    """Sends a server transaction's bytes to its peer. A three-slot object rather than a closure
    or a partial (a quarter of their size): one lives in every transaction kept for timer J.

    Each response sent (a retransmission too: messages on the wire) is counted as
    ``sip.tx.response.<METHOD>.<status>``; ``counted`` is that name without the status, and the
    status is read from the status line's fixed place (``SIP/2.0 200 ...``)."""

    __slots__ = ("core", "counted", "peer")

    def __init__(self, core: SipCore, peer: Peer, counted: str) -> None:
        self.core = core
        self.peer = peer
        self.counted = counted

    def __call__(self, data: bytes) -> None:
        core = self.core
        if not core.network.send(self.peer, data):
            core.counters.inc("sip.tx.unroutable")
            return
        core.counters.inc(self.counted + data[8:11].decode("ascii", "replace"))


class _ClientSender:
    """Sends a client transaction's bytes; remembers whether a send found no way to the peer."""

    __slots__ = ("failed", "network", "peer")

    def __init__(self, network: Network, peer: Peer) -> None:
        self.network = network
        self.peer = peer
        self.failed = False

    def __call__(self, data: bytes) -> None:
        if not self.network.send(self.peer, data):
            self.failed = True
