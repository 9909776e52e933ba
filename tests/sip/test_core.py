"""The transaction-user rules of the sans-I/O core, on a fake clock with no sockets.

Two cores, a UAC and a UAS, are wired to each other through an in-memory network that delivers
each message 10 ms after it is sent (or loses it, when a test says so); every timer runs on a
virtual clock, so 64·T1 passes in no time and to the millisecond.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.sip import (
    MAGIC_COOKIE,
    ParseError,
    Peer,
    Request,
    Response,
    SipCore,
    SipUri,
    TransportError,
    make_response,
    parse,
)
from gateway.sip.headers import Via
from gateway.sip.transaction import ClientTransaction, ServerTransaction, TimerConfig
from tests.sip.fakeclock import FakeClock

UAC = Peer("udp", "10.0.0.1", 5060)
UAS = Peer("udp", "10.0.0.2", 5060)
LATENCY = 0.01
T = TimerConfig()  # RFC 3261 defaults: T1 0.5 s, T2 4 s, T4 5 s


@dataclass
class Sent:
    src: Peer
    dst: Peer
    data: bytes
    at: float

    @property
    def message(self) -> Request | Response:
        return parse(self.data)

    @property
    def status(self) -> int:
        msg = self.message
        return msg.status if isinstance(msg, Response) else 0


class Net:
    """Cores by address; what one sends reaches the other ``LATENCY`` later, unless ``lose``
    says to drop it. Every send is recorded, delivered or not."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cores: dict[Peer, SipCore] = {}
        self.sent: list[Sent] = []
        self.lose: Callable[[Sent], bool] = lambda _: False
        self.down: set[Peer] = set()  # no way to these (a TCP peer not connected)

    def port(self, me: Peer) -> _Port:
        return _Port(self, me)

    def from_(self, src: Peer) -> list[Sent]:
        return [s for s in self.sent if s.src == src]


@dataclass
class _Port:
    net: Net
    me: Peer

    def send(self, peer: Peer, data: bytes) -> bool:
        net = self.net
        if peer in net.down:
            return False
        sent = Sent(self.me, peer, data, net.clock.now)
        net.sent.append(sent)
        core = net.cores.get(peer)
        if core is not None and not net.lose(sent):
            net.clock.call_later(LATENCY, core.receive, data, self.me)
        return True


@dataclass
class User:
    """The UAS's transaction user: records each request; ``answer`` decides what to do."""

    answer: Callable[[Request, ServerTransaction | None], None] | None = None
    requests: list[tuple[Request, Peer, ServerTransaction | None]] = field(default_factory=list)

    def request_received(self, request: Request, peer: Peer, txn: ServerTransaction | None) -> None:
        self.requests.append((request, peer, txn))
        if self.answer is not None:
            self.answer(request, txn)

    @property
    def methods(self) -> list[str]:
        return [r.method for r, _, _ in self.requests]


def ok(status: int = 200) -> Callable[[Request, ServerTransaction | None], None]:
    def answer(req: Request, txn: ServerTransaction | None) -> None:
        if txn is not None:
            txn.respond(make_response(req, status, to_tag="uas"))

    return answer


@dataclass
class Outcome:
    responses: list[Response] = field(default_factory=list)
    timed_out_at: float | None = None

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class Pair:
    """A UAC core and a UAS core on one fake network."""

    def __init__(self, methods: tuple[str, ...] = ("MESSAGE", "INVITE"), **uas: Any) -> None:
        self.clock = FakeClock()
        self.net = Net(self.clock)
        self.user = User()
        self.uac_user = User()
        self.uac_metrics = Metrics()
        self.uas_metrics = Metrics()
        self.uac = SipCore(
            network=self.net.port(UAC),
            user=self.uac_user,
            counters=self.uac_metrics,
            scheduler=self.clock,
            timers=T,
        )
        self.uas = SipCore(
            network=self.net.port(UAS),
            user=self.user,
            counters=self.uas_metrics,
            scheduler=self.clock,
            timers=T,
            **uas,
        )
        for method in methods:
            self.uas.allow(method)
        self.net.cores = {UAC: self.uac, UAS: self.uas}

    def send(self, req: Request, peer: Peer = UAS) -> tuple[Outcome, ClientTransaction]:
        out = Outcome()

        def timed_out() -> None:
            out.timed_out_at = self.clock.now

        txn = self.uac.start_request(
            req,
            peer,
            req.top_via.branch or "",
            on_response=out.responses.append,
            on_timeout=timed_out,
        )
        return out, txn

    def inject(self, data: bytes, src: Peer = UAC) -> None:
        """Bytes that ``src`` sends the UAS outside any client transaction."""
        self.net.port(src).send(UAS, data)

    def to(self, dst: Peer) -> list[Sent]:
        return [s for s in self.net.sent if s.dst == dst]


_counter = itertools.count(1)


def request(
    method: str = "MESSAGE",
    *,
    branch: str | None = None,
    call_id: str | None = None,
    cseq: str | None = None,
    via_host: str = "10.0.0.1:5060",
    rport: bool = True,
    from_tag: str = "uac",
    uri: str = "sip:34020000001320000001@10.0.0.2:5060",
    extra: tuple[tuple[str, str], ...] = (("Max-Forwards", "70"),),
) -> Request:
    n = next(_counter)
    branch = branch if branch is not None else f"{MAGIC_COOKIE}t{n}"
    via = f"SIP/2.0/UDP {via_host}{';rport' if rport else ''};branch={branch}"
    return Request(
        method,
        uri,
        [
            ("Via", via),
            ("From", f"<sip:34020000002000000001@3402000000>;tag={from_tag}"),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", call_id or f"call-{n}"),
            ("CSeq", cseq or f"1 {method}"),
            *extra,
        ],
    )


def param(via: Via, name: str) -> str | None:
    """A Via parameter's value; ``KeyError`` when absent."""
    return dict(via.params)[name]


def cancel_for(invite: Request) -> Request:
    """RFC 3261 §9.1: the CANCEL carries its INVITE's top Via (and so its branch)."""
    return Request(
        "CANCEL",
        invite.uri,
        [
            ("Via", invite.get_headers("Via")[0]),
            ("From", invite.get_header("From") or ""),
            ("To", invite.get_header("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.seq} CANCEL"),
            ("Max-Forwards", "70"),
        ],
    )


# -- server transactions: matching and retransmissions ---------------------------------------


def test_a_retransmission_is_absorbed_and_the_last_response_resent() -> None:
    p = Pair()
    p.user.answer = ok()
    first_response = True

    def lose_first_200(s: Sent) -> bool:
        nonlocal first_response
        if s.src == UAS and first_response:
            first_response = False
            return True
        return False

    p.net.lose = lose_first_200
    out, _ = p.send(request())
    p.clock.advance(T.t1 + 0.1)  # timer E fires once: the request again
    assert len(p.to(UAS)) == 2
    assert out.statuses == [200]
    assert len(p.user.requests) == 1  # the copy never reached the user
    assert p.uas_metrics.get("sip.rx.retransmission") == 1
    sent = p.to(UAC)
    assert len(sent) == 2 and sent[0].data == sent[1].data  # the same bytes, resent


def test_a_retransmission_before_the_answer_is_absorbed_silently() -> None:
    p = Pair()  # the user takes the request and answers later
    out, _ = p.send(request())
    p.clock.advance(T.t1 * 3 + 0.1)  # timer E: copies at 0.5 s and 1.5 s
    assert len(p.to(UAS)) == 3
    assert len(p.user.requests) == 1 and p.to(UAC) == []
    _, _, txn = p.user.requests[0]
    assert txn is not None
    txn.respond(make_response(p.user.requests[0][0], 200, to_tag="late"))
    p.clock.advance(0.1)
    assert out.statuses == [200]


def test_pre_3261_requests_match_on_call_id_cseq_from_tag_and_via() -> None:
    p = Pair()
    p.user.answer = ok()
    old = request(branch="oldstyle1", call_id="pre3261").to_bytes()
    p.inject(old)
    p.inject(old)
    p.clock.advance(0.1)
    assert len(p.user.requests) == 1
    assert p.uas_metrics.get("sip.rx.retransmission") == 1
    assert [s.status for s in p.to(UAC)] == [200, 200]
    # Another From tag is another transaction (RFC 3261 §17.2.3, the RFC 2543 rules).
    p.inject(request(branch="oldstyle1", call_id="pre3261", from_tag="other").to_bytes())
    p.clock.advance(0.1)
    assert len(p.user.requests) == 2


def test_the_server_transaction_ends_after_timer_j() -> None:
    p = Pair()
    p.user.answer = ok()
    p.send(request())
    p.clock.advance(0.1)
    assert len(p.uas.server_transactions) == 1
    p.clock.advance(T.timeout)
    assert len(p.uas.server_transactions) == 0
    assert len(p.uac.client_transactions) == 0  # timer K too


# -- INVITE: 100 Trying, the ACK for a 2xx, CANCEL -----------------------------------------


def test_invite_gets_100_trying_at_once() -> None:
    p = Pair()
    out, _ = p.send(request("INVITE"))
    p.clock.advance(0.05)
    assert out.statuses == [100]
    assert p.user.methods == ["INVITE"]


def test_the_ack_for_a_2xx_stops_its_retransmissions() -> None:
    p = Pair(methods=("INVITE", "ACK"))
    p.user.answer = ok()
    invite = request("INVITE", call_id="ack2xx", cseq="5 INVITE")
    p.send(invite)
    p.clock.advance(2.0)
    oks = [s for s in p.to(UAC) if s.status == 200]
    assert len(oks) >= 3  # timer G resends the 2xx until the ACK comes
    # The ACK for a 2xx is a transaction of its own, with a branch of its own.
    ack = request("ACK", call_id="ack2xx", cseq="5 ACK")
    p.inject(ack.to_bytes())
    p.clock.advance(LATENCY)
    before = len(p.to(UAC))
    p.clock.advance(T.timeout)
    assert len(p.to(UAC)) == before
    assert p.user.methods == ["INVITE", "ACK"]  # and the user hears of it


def test_an_ack_without_max_forwards_still_stops_the_2xx_retransmissions() -> None:
    """An ACK needs only what matching it needs: one without Max-Forwards was dropped as a
    bad request, and the 2xx went on being resent until timer L."""
    p = Pair(methods=("INVITE", "ACK"))
    p.user.answer = ok()
    p.send(request("INVITE", call_id="ackmf", cseq="7 INVITE"))
    p.clock.advance(1.0)
    assert len([s for s in p.to(UAC) if s.status == 200]) >= 2
    p.inject(request("ACK", call_id="ackmf", cseq="7 ACK", extra=()).to_bytes())
    p.clock.advance(LATENCY)
    before = len(p.to(UAC))
    p.clock.advance(T.timeout)
    assert len(p.to(UAC)) == before
    assert p.user.methods == ["INVITE", "ACK"]
    assert p.uas_metrics.get("sip.rx.bad_ack_dropped") == 0


def test_without_the_ack_the_2xx_is_resent_until_timer_l() -> None:
    p = Pair()
    p.user.answer = ok()
    p.send(request("INVITE"))
    p.clock.advance(T.timeout / 2)
    halfway = len([s for s in p.to(UAC) if s.status == 200])
    p.clock.advance(T.timeout / 2 - 1)
    assert len([s for s in p.to(UAC) if s.status == 200]) > halfway
    p.clock.advance(2)
    assert len(p.uas.server_transactions) == 0


def test_cancel_gets_200_and_the_pending_invite_487() -> None:
    p = Pair(methods=("INVITE", "CANCEL"))  # the INVITE rings: nobody answers it
    invite = request("INVITE")
    out, _ = p.send(invite)
    p.clock.advance(0.1)
    cancel_out, _ = p.send(cancel_for(invite))
    p.clock.advance(0.1)
    assert cancel_out.statuses == [200]
    assert out.statuses == [100, 487]
    assert p.user.methods == ["INVITE", "CANCEL"]
    # The UAC's INVITE transaction acknowledged the 487 (RFC 3261 §17.1.1.3), which the UAS
    # transaction absorbed: no 487 retransmissions follow.
    assert [s.message.method for s in p.to(UAS) if isinstance(s.message, Request)][-1] == "ACK"
    sent = len(p.to(UAC))
    p.clock.advance(T.timeout)
    assert len(p.to(UAC)) == sent


def test_cancel_after_the_final_response_changes_nothing() -> None:
    p = Pair()
    p.user.answer = ok(486)
    invite = request("INVITE")
    out, _ = p.send(invite)
    p.clock.advance(0.1)
    cancel_out, _ = p.send(cancel_for(invite))
    p.clock.advance(0.1)
    assert cancel_out.statuses == [200]
    assert out.statuses == [100, 486]


def test_cancel_without_an_invite_gets_481() -> None:
    p = Pair()
    out, _ = p.send(cancel_for(request("INVITE")))
    p.clock.advance(0.1)
    assert out.statuses == [481]
    assert p.user.requests == []


# -- what the core answers by itself ------------------------------------------------------------


def test_rport_and_received_are_stamped_on_the_top_via() -> None:
    p = Pair()
    p.user.answer = ok()
    # Behind a NAT: the Via says 192.168.1.9:5060, the datagram came from 10.0.0.1:5060.
    p.inject(request(via_host="192.168.1.9:5060").to_bytes())
    p.clock.advance(0.1)
    via = p.user.requests[0][0].top_via
    assert param(via, "received") == "10.0.0.1"
    assert param(via, "rport") == "5060"
    assert param(p.to(UAC)[0].message.top_via, "rport") == "5060"  # the answer carries it


def test_received_is_added_without_rport_only_when_the_host_differs() -> None:
    p = Pair()
    p.user.answer = ok()
    p.inject(request(via_host="192.168.1.9:5070", rport=False).to_bytes())
    p.inject(request(via_host="10.0.0.1:5060", rport=False).to_bytes())
    p.clock.advance(0.1)
    moved, same = (r.top_via for r, _, _ in p.user.requests)
    assert param(moved, "received") == "10.0.0.1"
    assert "rport" not in dict(moved.params)
    assert "received" not in dict(same.params)


def test_an_unrouted_method_gets_405_with_allow() -> None:
    p = Pair(methods=("MESSAGE", "INVITE"))
    out, _ = p.send(request("PUBLISH"))
    p.clock.advance(0.1)
    assert out.statuses == [405]
    assert out.responses[0].get_header("Allow") == "ACK, CANCEL, INVITE, MESSAGE"
    assert p.uas_metrics.get("sip.rx.method_not_allowed") == 1
    assert p.user.requests == []


def test_a_request_uri_not_served_gets_404() -> None:
    def serves(uri: SipUri) -> bool:
        return uri.user == "34020000001320000001"

    p = Pair(serves=serves)
    p.user.answer = ok()
    out, _ = p.send(request(uri="sip:34020000001320000099@10.0.0.2:5060"))
    served, _ = p.send(request())
    p.clock.advance(0.1)
    assert out.statuses == [404]
    assert served.statuses == [200]
    assert p.uas_metrics.get("sip.rx.not_served") == 1
    assert len(p.user.requests) == 1


def test_max_forwards_zero_is_processed_by_the_endpoint() -> None:
    """RFC 4475 §3.3.11 (zeromf): 483 is a proxy's answer (RFC 3261 §16.3); the gateway is the
    endpoint of the requests it serves, so a request with Max-Forwards 0 is processed."""
    p = Pair()
    p.user.answer = ok()
    out, _ = p.send(request(extra=(("Max-Forwards", "0"),)))
    p.clock.advance(0.1)
    assert out.statuses == [200]
    assert len(p.user.requests) == 1


@pytest.mark.parametrize(
    ("data", "reason", "counter"),
    [
        (
            request(cseq="1 INFO").to_bytes(),  # a MESSAGE whose CSeq says INFO
            "CSeq Method Mismatch",
            "sip.rx.bad_request",
        ),
        (request(cseq="x MESSAGE").to_bytes(), "Bad CSeq", "sip.rx.bad_request"),
        (
            request(extra=(("Max-Forwards", "x"),)).to_bytes(),
            "Bad Max-Forwards",
            "sip.rx.bad_request",
        ),
        (
            # Unparseable, but enough survives to address an answer.
            request().to_bytes().replace(b"Content-Length: 0", b"Content-Length: 99") + b"abc",
            "Truncated Body",
            "sip.rx.parse_error",
        ),
    ],
)
def test_a_broken_request_gets_400_naming_the_problem(
    data: bytes, reason: str, counter: str
) -> None:
    p = Pair()
    p.user.answer = ok()
    p.inject(data)
    p.clock.advance(0.1)
    [sent] = p.to(UAC)
    resp = sent.message
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (400, reason)
    assert p.uas_metrics.get(counter) == 1
    assert p.user.requests == []
    assert not any(t.state in ("trying", "proceeding") for t in p.uas.server_transactions.values())


def test_garbage_gets_no_answer_and_is_counted() -> None:
    p = Pair()
    p.inject(b"\x00\x01 not sip at all\r\n\r\n")
    p.clock.advance(0.1)
    assert p.to(UAC) == []
    assert p.uas_metrics.get("sip.rx.parse_error") == 1


# -- the transaction user's failures ------------------------------------------------------------


def test_a_crashing_user_gets_500_and_a_parse_error_400() -> None:
    p = Pair(methods=("MESSAGE", "INFO"))

    def answer(req: Request, txn: ServerTransaction | None) -> None:
        if req.method == "MESSAGE":
            raise RuntimeError("boom")
        raise ParseError("Bad Event", "x")

    p.user.answer = answer
    crashed, _ = p.send(request())
    bad, _ = p.send(request("INFO"))
    p.clock.advance(0.1)
    assert crashed.statuses == [500]
    assert (bad.statuses, bad.responses[0].reason) == ([400], "Bad Event")
    assert p.uas_metrics.get("sip.handler_error") == 1
    assert p.uas_metrics.get("sip.rx.bad_request") == 1


def test_a_failure_reported_later_answers_too() -> None:
    """What an asynchronous handler's task does when it fails: ``fail`` answers for it."""
    p = Pair()
    out, _ = p.send(request())
    p.clock.advance(0.1)
    req, peer, txn = p.user.requests[0]
    assert txn is not None and out.statuses == []
    p.uas.fail(txn, req, peer, RuntimeError("late boom"))
    p.clock.advance(0.1)
    assert out.statuses == [500]
    assert p.uas_metrics.get("sip.handler_error") == 1


@pytest.mark.parametrize(("method", "status"), [("MESSAGE", 500), ("INVITE", 408)])
def test_an_unanswered_request_is_answered_after_the_timeout(method: str, status: int) -> None:
    p = Pair()
    p.uas.invite_timeout = 10.0
    limit = T.timeout if method == "MESSAGE" else p.uas.invite_timeout
    # The UAS transaction's INVITE answer goes to nobody: the UAC side's timer B would end it
    # first. Inject, and read what the UAS sends.
    p.inject(request(method).to_bytes())
    p.clock.advance(limit - 0.02)
    finals = [s for s in p.to(UAC) if s.status >= 200]
    assert finals == []
    assert p.uas_metrics.get("sip.rx.unanswered") == 0
    p.clock.advance(0.1)
    [final] = [s for s in p.to(UAC) if s.status >= 200]
    assert isinstance(final.message, Response)
    assert (final.status, final.message.reason) == (status, "No answer in time")
    assert p.uas_metrics.get("sip.rx.unanswered") == 1
    assert not any(t.state in ("trying", "proceeding") for t in p.uas.server_transactions.values())


def test_an_ignored_request_gets_nothing_at_all_and_is_forgotten() -> None:
    """``ignore``: a simulated device that never answers a request: no response, not even the
    guard's 500; retransmissions absorbed while the transaction lasts; then nothing kept."""
    p = Pair()
    data = request().to_bytes()
    p.inject(data)
    p.clock.advance(0.1)
    _, _, txn = p.user.requests[0]
    assert txn is not None
    p.uas.ignore(txn)
    p.clock.advance(T.timeout / 2)
    p.inject(data)  # a retransmission
    assert len(p.user.requests) == 1
    p.clock.advance(T.timeout)
    assert p.to(UAC) == []
    assert p.uas_metrics.get("sip.rx.unanswered") == 0
    assert txn not in p.uas.server_transactions.values()
    p.uas.ignore(txn)  # once done, nothing more happens
    assert p.to(UAC) == []


def test_an_answered_request_is_left_alone_by_the_guard() -> None:
    p = Pair()
    out, _ = p.send(request())
    p.clock.advance(1)
    _, _, txn = p.user.requests[0]
    assert txn is not None
    p.uas.reply(txn, p.user.requests[0][0], 202)
    p.clock.advance(T.timeout * 2)
    assert out.statuses == [202]
    assert p.uas_metrics.get("sip.rx.unanswered") == 0


def test_the_guard_does_not_keep_an_answered_request_alive() -> None:
    """A REGISTER answered once its store write commits is answered late: the guard's timer
    must not hold its parsed request for the guard's whole delay (memory in a storm)."""
    p = Pair()
    p.send(request())
    p.clock.advance(0.1)
    req, _, txn = p.user.requests[0]
    assert txn is not None
    p.user.requests.clear()
    p.uas.reply(txn, req, 200)
    assert txn.request is None
    held = [a for *_, args in p.clock._heap for a in args if isinstance(a, Request)]
    assert held == []


# -- client transactions --------------------------------------------------------------------------


def test_the_client_times_out_after_64_t1_having_retransmitted() -> None:
    p = Pair()
    p.net.lose = lambda s: True  # a black hole
    out, _ = p.send(request())
    p.clock.advance(T.timeout - 0.001)
    assert out.timed_out_at is None
    p.clock.advance(0.002)
    assert out.timed_out_at == pytest.approx(T.timeout)
    # Timer E: at 0.5, 1.5, 3.5, 7.5 s, then every T2 (4 s) until timer F at 32 s.
    times = [s.at for s in p.to(UAS)]
    assert times == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    assert p.uac.client_transactions == {}


def test_an_invite_client_times_out_with_timer_b() -> None:
    p = Pair()
    p.net.lose = lambda s: True
    out, _ = p.send(request("INVITE"))
    p.clock.advance(T.timeout + 0.001)
    assert out.timed_out_at == pytest.approx(T.timeout)
    # Timer A doubles without a cap: 0.5, 1, 2, 4, 8, 16 s between copies.
    assert [s.at for s in p.to(UAS)] == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])


def test_a_request_with_no_way_to_its_peer_raises_transport_error() -> None:
    p = Pair()
    tcp = Peer("tcp", "10.0.0.2", 5060)
    p.net.down.add(tcp)
    out = Outcome()
    with pytest.raises(TransportError):
        p.uac.start_request(
            request(),
            tcp,
            "z9hG4bKdown",
            on_response=out.responses.append,
            on_timeout=lambda: setattr(out, "timed_out_at", p.clock.now),
        )
    assert out.timed_out_at == 0.0
    assert p.uac.client_transactions == {}


def test_responses_match_by_branch_and_cseq_method_and_strays_are_counted() -> None:
    p = Pair()
    p.user.answer = ok()
    out, _ = p.send(request())
    p.clock.advance(0.1)
    assert out.statuses == [200]
    orig = p.to(UAC)[0].message
    assert isinstance(orig, Response)
    # The same branch with another CSeq method is another transaction: a stray here.
    other = orig.to_bytes().replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INFO")
    unknown = orig.to_bytes().replace(orig.top_via.branch.encode(), b"z9hG4bKnobody")
    p.net.port(UAS).send(UAC, other)
    p.net.port(UAS).send(UAC, unknown)
    p.clock.advance(0.1)
    assert out.statuses == [200]
    assert p.uac_metrics.get("sip.rx.stray_response") == 2


def test_a_response_without_cseq_is_counted_as_bad() -> None:
    p = Pair()
    p.net.port(UAS).send(
        UAC, b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\r\n"
    )
    p.clock.advance(0.1)
    assert p.uac_metrics.get("sip.rx.bad_response") + p.uac_metrics.get("sip.rx.parse_error") == 1
    assert p.uac_metrics.get("sip.rx.internal_error") == 0


def test_provisional_then_final_reach_the_client_in_order() -> None:
    p = Pair()

    def ring(req: Request, txn: ServerTransaction | None) -> None:
        assert txn is not None
        txn.respond(make_response(req, 180, to_tag="uas"))
        p.clock.call_later(1.0, txn.respond, make_response(req, 200, to_tag="uas"))

    p.user.answer = ring
    out, txn = p.send(request("INVITE"))
    p.clock.advance(2)
    # Timer G resends the 2xx until an ACK: the copies reach the TU too (it ACKs each one).
    assert out.statuses[:3] == [100, 180, 200] and set(out.statuses[3:]) <= {200}
    assert txn.state == "accepted"  # RFC 6026: the 2xx's ACK is the TU's, not ours
