"""SIP transactions: the four state machines of RFC 3261 §17, with RFC 6026's Accepted state.

No I/O here. A transaction is given a ``send`` callable (bytes to its peer) and a scheduler with
``call_later(delay, callback, *args) -> handle`` whose handles have ``cancel()``: an asyncio loop
in production, a fake clock in tests. Timer names are the RFC's letters.

* INVITE client (§17.1.1): Calling → Proceeding → Completed / Accepted → Terminated; A, B, D, M.
* non-INVITE client (§17.1.2): Trying → Proceeding → Completed → Terminated; E, F, K.
* INVITE server (§17.2.1): Proceeding → Completed → Confirmed / Accepted → Terminated; G, H, I, L.
  RFC 6026 hands 2xx retransmission to the TU; this machine does that job for its TU (timer G
  schedule, until the endpoint reports the ACK or timer L fires) so the UAS core stays simple.
* non-INVITE server (§17.2.2): Trying → Proceeding → Completed → Terminated; J.

Over a reliable transport nothing is retransmitted and the wait timers D, I, J, K are zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.sip.message import Request, Response

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
CONFIRMED = "confirmed"
ACCEPTED = "accepted"
TERMINATED = "terminated"


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle: ...


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 base values: T1 (RTT estimate), T2 (max non-INVITE retransmit
    interval), T4 (max time a message stays in the network)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        """64·T1: timers B, F, H, J, L, M."""
        return 64 * self.t1


class _Base:
    __slots__ = (
        "_main",
        "_retx",
        "_retx_interval",
        "cfg",
        "on_terminated",
        "reliable",
        "sched",
        "send",
        "state",
    )

    def __init__(
        self,
        *,
        reliable: bool,
        sched: Scheduler,
        cfg: TimerConfig,
        send: Callable[[bytes], None],
        on_terminated: Callable[[Any], None] | None = None,
    ) -> None:
        self.reliable = reliable
        self.sched = sched
        self.cfg = cfg
        self.send = send
        self.on_terminated = on_terminated
        self.state = ""
        self._main: Handle | None = None
        self._retx: Handle | None = None
        self._retx_interval = cfg.t1

    def _set_main(self, name: str, delay: float) -> None:
        if self._main is not None:
            self._main.cancel()
        self._main = self.sched.call_later(delay, self._fire, name)

    def _set_retx(self, name: str, delay: float) -> None:
        if self._retx is not None:
            self._retx.cancel()
        self._retx_interval = delay
        self._retx = self.sched.call_later(delay, self._fire, name)

    def _stop_retx(self) -> None:
        if self._retx is not None:
            self._retx.cancel()
            self._retx = None

    def _terminate(self) -> None:
        if self.state == TERMINATED:
            return
        self.state = TERMINATED
        self._stop_retx()
        if self._main is not None:
            self._main.cancel()
            self._main = None
        if self.on_terminated is not None:
            self.on_terminated(self)

    def _fire(self, name: str) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------
# client side


def ack_for(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300–699 response (RFC 3261 §17.1.1.3):
    same Request-URI, Call-ID, From, top Via and Route; To from the response; CSeq method ACK."""
    headers: list[tuple[str, str]] = []
    via = request.get_header("Via")
    if via is not None:
        headers.append(("Via", via.split(",")[0].strip()))
    for name in ("Max-Forwards", "From"):
        value = request.get_header(name)
        if value is not None:
            headers.append((name, value))
    headers.append(("To", response.get_header("To") or request.get_header("To") or ""))
    headers.append(("Call-ID", request.get_header("Call-ID") or ""))
    headers.append(("CSeq", f"{request.cseq.seq} ACK"))
    headers.extend(("Route", r) for r in request.get_headers("Route"))
    return Request("ACK", request.uri, headers)


class ClientTransaction(_Base):
    """Both client machines; ``invite`` selects which. The TU hears of responses through
    ``on_response`` and of timer B/F (or a transport error) through ``on_timeout``."""

    __slots__ = ("_ack", "data", "invite", "on_response", "on_timeout", "request", "unreachable")

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        sched: Scheduler,
        cfg: TimerConfig,
        send: Callable[[bytes], None],
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        on_terminated: Callable[[Any], None] | None = None,
        data: bytes | None = None,
    ) -> None:
        super().__init__(
            reliable=reliable, sched=sched, cfg=cfg, send=send, on_terminated=on_terminated
        )
        self.request = request
        self.invite = request.method == "INVITE"
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.data = data if data is not None else request.to_bytes()
        self._ack: bytes | None = None
        # Ended by a transport error (§17.1.4) rather than by timer B/F: the TU may tell the two
        # apart (RFC 3261 §8.1.3.1 treats the first as a 503).
        self.unreachable = False

    def start(self) -> None:
        """Send the request and arm the timers (Calling / Trying)."""
        self.state = CALLING if self.invite else TRYING
        self.send(self.data)
        if self.invite:
            if not self.reliable:
                self._set_retx("A", self.cfg.t1)
            self._set_main("B", self.cfg.timeout)
        else:
            if not self.reliable:
                self._set_retx("E", self.cfg.t1)
            self._set_main("F", self.cfg.timeout)

    def receive_response(self, resp: Response) -> None:
        status = resp.status
        state = self.state
        if state == TERMINATED:
            return
        if self.invite:
            if state in (CALLING, PROCEEDING):
                if status < 200:
                    self.state = PROCEEDING
                    self._stop_retx()
                    self.on_response(resp)
                elif status < 300:
                    # RFC 6026 §8.4: Accepted, 2xx retransmissions go to the TU for its ACK.
                    self.state = ACCEPTED
                    self._stop_retx()
                    self._set_main("M", self.cfg.timeout)
                    self.on_response(resp)
                else:
                    self.state = COMPLETED
                    self._stop_retx()
                    self._ack = ack_for(self.request, resp).to_bytes()
                    self.send(self._ack)
                    self._set_main("D", 0.0 if self.reliable else 32.0)
                    self.on_response(resp)
            elif state == COMPLETED:
                if status >= 300 and self._ack is not None:
                    self.send(self._ack)
            elif state == ACCEPTED and 200 <= status < 300:
                self.on_response(resp)
            return
        if state in (TRYING, PROCEEDING):
            if status < 200:
                if state == TRYING:
                    self.state = PROCEEDING
                self.on_response(resp)
            else:
                self.state = COMPLETED
                self._stop_retx()
                self._set_main("K", 0.0 if self.reliable else self.cfg.t4)
                self.on_response(resp)
        # Completed: retransmitted finals are absorbed.

    def transport_error(self) -> None:
        """RFC 3261 §17.1.4: the transport failed; inform the TU and terminate."""
        if self.state in (CALLING, TRYING, PROCEEDING):
            self.unreachable = True
            self.on_timeout()
        self._terminate()

    def _fire(self, name: str) -> None:
        state = self.state
        if state == TERMINATED:
            return
        if name == "A" and state == CALLING:
            self.send(self.data)
            self._set_retx("A", self._retx_interval * 2)
        elif name == "E" and state in (TRYING, PROCEEDING):
            self.send(self.data)
            nxt = self.cfg.t2 if state == PROCEEDING else min(self._retx_interval * 2, self.cfg.t2)
            self._set_retx("E", nxt)
        elif (name == "B" and state == CALLING) or (name == "F" and state in (TRYING, PROCEEDING)):
            self.on_timeout()
            self._terminate()
        elif name == "B" and state == PROCEEDING:
            # RFC 3261 leaves an INVITE in Proceeding to the TU (e.g. its own 180 timeout).
            pass
        elif name in ("D", "K", "M"):
            self._terminate()


# ----------------------------------------------------------------------------------------
# server side


class ServerTransaction(_Base):
    """Both server machines. The TU answers through :meth:`respond`; the endpoint feeds
    retransmitted requests to :meth:`receive_request` and the ACK to :meth:`receive_ack`.
    ``on_timeout`` is told when timer H fires (no ACK for a final response)."""

    __slots__ = ("ack_key", "invite", "key", "last_response", "on_timeout", "request", "status")

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        sched: Scheduler,
        cfg: TimerConfig,
        send: Callable[[bytes], None],
        on_terminated: Callable[[Any], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            reliable=reliable, sched=sched, cfg=cfg, send=send, on_terminated=on_terminated
        )
        # The request is dropped once a final response is sent: from then on the transaction
        # only resends bytes, and over UDP it lives 32 s (timer J) for every message answered.
        self.request: Request | None = request
        self.key: tuple[str, ...] = ()
        self.ack_key: tuple[str, int] | None = None  # (Call-ID, CSeq) for the ACK to a 2xx
        self.invite = request.method == "INVITE"
        self.state = PROCEEDING if self.invite else TRYING
        self.last_response: bytes | None = None
        self.status = 0
        self.on_timeout = on_timeout

    def receive_request(self) -> None:
        """A retransmission of the request arrived (RFC 3261 §17.2.1, §17.2.2)."""
        state = self.state
        if state in (PROCEEDING, COMPLETED) and self.last_response is not None:
            self.send(self.last_response)
        # Trying: absorbed. Accepted / Confirmed: absorbed (RFC 6026 §8.7).

    def respond(self, resp: Response) -> None:
        """Send a response from the TU. A response in a state that takes none is dropped."""
        state = self.state
        if state not in (TRYING, PROCEEDING):
            return
        data = resp.to_bytes()
        status = resp.status
        self.last_response = data
        self.status = status
        self.send(data)
        if status < 200:
            self.state = PROCEEDING
            return
        self.request = None
        if self.invite:
            if status < 300:
                self.state = ACCEPTED
                if not self.reliable:
                    self._set_retx("G", self.cfg.t1)
                self._set_main("L", self.cfg.timeout)
            else:
                self.state = COMPLETED
                if not self.reliable:
                    self._set_retx("G", self.cfg.t1)
                self._set_main("H", self.cfg.timeout)
        else:
            self.state = COMPLETED
            if self.reliable:
                self._terminate()
            else:
                self._set_main("J", self.cfg.timeout)

    def receive_ack(self) -> None:
        """The ACK for our final response arrived."""
        if self.state == COMPLETED and self.invite:
            self.state = CONFIRMED
            self._stop_retx()
            if self.reliable:
                self._terminate()
            else:
                self._set_main("I", self.cfg.t4)
        elif self.state == ACCEPTED:
            self._stop_retx()  # 2xx retransmissions end; L keeps absorbing INVITE copies

    def _fire(self, name: str) -> None:
        state = self.state
        if state == TERMINATED:
            return
        if name == "G" and state in (COMPLETED, ACCEPTED) and self.last_response is not None:
            self.send(self.last_response)
            self._set_retx("G", min(self._retx_interval * 2, self.cfg.t2))
        elif name == "H" and state == COMPLETED:
            if self.on_timeout is not None:
                self.on_timeout()
            self._terminate()
        elif name in ("I", "J", "L"):
            self._terminate()
