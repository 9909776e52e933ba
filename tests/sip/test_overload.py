"""Overload shedding (gateway.sip.overload): what is shed and what never is, the control loop
that sets how much new work is taken, and the calendar that spreads the shed ones' returns."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.sip import LoadGuard, Peer, Request, Response, SipCore, parse
from gateway.sip.overload import from_user, is_initial_register, quick_response
from tests.sip.fakeclock import FakeClock

DEVICE = Peer("udp", "10.0.0.7", 5060)
STRANGER = Peer("udp", "10.0.0.99", 5060)


def request(
    method: str = "REGISTER",
    *,
    n: int = 1,
    auth: bool = False,
    to_tag: str = "",
    extra: str = "",
    compact: bool = False,
    user: str = "34020000001320000001",
) -> bytes:
    via, frm, to, cid = ("v", "f", "t", "i") if compact else ("Via", "From", "To", "Call-ID")
    lines = [
        f"{method} sip:34020000002000000001@3402000000 SIP/2.0",
        f"{via}: SIP/2.0/UDP 10.0.0.7:5060;rport;branch=z9hG4bK{n:09d}",
        f"{via}: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKproxy{n}",
        f"{frm}: <sip:{user}@3402000000>;tag=f{n}",
        f"{to}: <sip:{user}@3402000000>" + (f";tag={to_tag}" if to_tag else ""),
        f"{cid}: call{n}@10.0.0.7",
        f"CSeq: {2 if auth else 1} {method}",
        "Max-Forwards: 70",
        f"Contact: <sip:{user}@10.0.0.7:5060>",
    ]
    if auth:
        lines.append(
            f'Authorization: Digest username="{user}", realm="3402000000", nonce="abc", '
            'uri="sip:34020000002000000001@3402000000", response="0123456789abcdef"'
        )
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


# -- the bytes-only path ------------------------------------------------------------------
def test_initial_register_is_told_from_the_authenticated_one_in_any_case() -> None:
    assert is_initial_register(request())
    assert not is_initial_register(request(auth=True))
    assert not is_initial_register(request(auth=True).replace(b"Authorization", b"AUTHORIZATION"))
    assert not is_initial_register(request("MESSAGE"))
    # a body mentioning the header does not make a REGISTER authenticated
    body = b"\r\nAuthorization: x"
    data = request().replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + body
    assert is_initial_register(data)


def test_from_user_reads_who_the_request_says_it_is() -> None:
    assert from_user(request()) == "34020000001320000001"
    assert from_user(request(compact=True, user="34020000001320000042")) == "34020000001320000042"
    assert from_user(request().replace(b"From: <sip:", b'FROM: "cam" <sip:')) == (
        "34020000001320000001"
    )
    assert from_user(request().replace(b"From: <sip:", b"From: <tel:")) == ""
    assert from_user(b"REGISTER sip:x SIP/2.0\r\nVia: a\r\n\r\n") == ""


@pytest.mark.parametrize("compact", [False, True])
def test_quick_response_is_a_response_to_that_request(compact: bool) -> None:
    data = request(compact=compact)
    out = quick_response(data, 503, "Service Unavailable", b"Retry-After: 17\r\n")
    assert out is not None
    resp = parse(out)
    req = parse(data)
    assert isinstance(resp, Response) and isinstance(req, Request)
    assert (resp.status, resp.reason) == (503, "Service Unavailable")
    assert resp.get_header("Retry-After") == "17"
    assert [v.branch for v in resp.vias] == [v.branch for v in req.vias]  # both, in order
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    assert resp.from_.tag == req.from_.tag
    assert resp.to.tag  # added: a final response needs one (RFC 3261 §8.2.6.2)
    assert resp.to.uri.user == req.to.uri.user
    assert resp.body == b""


def test_quick_response_keeps_a_to_tag_that_is_there() -> None:
    out = quick_response(request(to_tag="abc"), 503, "Service Unavailable")
    assert out is not None
    assert parse(out).to.tag == "abc"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(b"\r\nCall-ID: call1@10.0.0.7", b""),  # missing
        lambda d: d.replace(b"CSeq: 1", b"CSeq: 1 REGISTER\r\nCSeq: 1"),  # twice
        lambda d: d.replace(b";tag=f1", b";\r\n tag=f1"),  # folded
        lambda d: d.replace(b"\r\n\r\n", b"\r\n"),  # no end of headers
        lambda d: d.replace(b"Max-Forwards: 70", b"no colon here"),
    ],
)
def test_quick_response_leaves_what_is_not_plain_to_the_parser(mangle: Any) -> None:
    assert quick_response(mangle(request()), 503, "Service Unavailable") is None


# -- the control loop ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_share_falls_while_the_queue_stays_full_and_comes_back_when_it_drains() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock, queue_delay=0.1)
    guard.backlogged()
    clock.now += 0.05
    guard.tick(0.0)
    assert guard.share == 1.0  # a short burst is not overload
    shares = []
    for _ in range(5):
        clock.now += 0.1
        guard.tick(0.0)
        shares.append(guard.share)
    assert shares == sorted(shares, reverse=True) and shares[-1] < 0.2
    assert guard.episodes == 1
    guard.drained()
    for _ in range(100):
        clock.now += 0.1
        guard.tick(0.0)
    assert guard.share == 1.0 and not guard.behind


def test_after_a_cut_the_share_is_held_while_the_queue_shows_its_effect() -> None:
    # Cutting every tick until the queue drains would overshoot far below what the gateway
    # can take; one cut per queue_delay lets the queue answer first.
    clock = Clock()
    guard = LoadGuard(clock=clock, queue_delay=0.15)
    guard.backlogged()
    shares = []
    for _ in range(8):
        clock.now += 0.1
        guard.tick(0.0)
        shares.append(round(guard.share, 4))
    assert shares == [1.0, 0.7, 0.7, 0.49, 0.49, 0.343, 0.343, 0.2401]


def test_loop_lag_alone_is_overload_too() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock, loop_lag=0.25)
    guard.tick(0.3)
    assert guard.behind and guard.share < 1.0
    guard.tick(0.01)
    assert not guard.behind


def test_disabled_guard_sees_overload_but_never_sheds() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock, enabled=False)
    guard.backlogged()
    clock.now += 1.0
    guard.tick(1.0)
    assert guard.behind and guard.share == 1.0
    assert not any(guard.shed_new() for _ in range(100))


def test_share_decides_the_fraction_shed() -> None:
    draws = iter([i / 100 for i in range(100)])
    guard = LoadGuard(rng=lambda: next(draws))
    guard.share = 0.3
    shed = sum(guard.shed_new() for _ in range(100))
    assert shed == 70 and guard.admitted == 30 and guard.shed == 70


def test_the_quota_follows_the_registrations_completed_while_shedding() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock)
    guard.backlogged()
    for _ in range(50):  # 5 s behind, 1,000 registrations completed a second
        clock.now += 0.1
        for _ in range(100):
            guard.registered()
        guard.tick(0.0)
    assert guard.share < 1.0 and 900 <= guard.rate <= 1000
    for _ in range(5):  # the lull at the storm's end: nothing completes for half a second
        clock.now += 0.1
        guard.tick(0.0)
    assert guard.rate > 700


# -- the calendar of returns --------------------------------------------------------------
def test_returns_are_booked_a_quota_per_second_from_the_minimum_on() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock, retry_after_min=5, retry_after_max=60)
    guard.rate = 100.0 / 0.9  # 100 returns per second
    values = [guard.retry_after() for _ in range(1000)]
    assert values == sorted(values)
    assert values[0] == 5 and values[-1] == 14
    assert all(values.count(v) == 100 for v in range(5, 15))
    # a second later the calendar goes on where it was, not from the start
    clock.now += 1
    assert guard.retry_after() == 14


def test_a_full_calendar_spreads_over_the_whole_window() -> None:
    clock = Clock()
    guard = LoadGuard(clock=clock, retry_after_min=5, retry_after_max=20)
    guard.rate = 10.0 / 0.9
    values = [guard.retry_after() for _ in range(2000)]
    assert min(values) == 5 and max(values) == 20
    late = values[160:]  # the 16 seconds of the calendar hold 160
    assert len(set(late)) > 10  # spread at random, not piled on the last second


# -- the core: what is shed and what never is ---------------------------------------------
class Rig:
    """One core, its answers recorded; its user answers every request 200 at once."""

    def __init__(self, known: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.sent: list[tuple[Peer, bytes]] = []
        self.seen: list[str] = []
        self.metrics = Metrics()
        self.core = SipCore(network=self, user=self, counters=self.metrics, scheduler=FakeClock())
        for m in ("REGISTER", "MESSAGE", "INVITE", "BYE", "SUBSCRIBE"):
            self.core.allow(m)
        self.guard = LoadGuard(rng=lambda: 0.5)
        self.core.guard = self.guard
        self.core.known_sender = lambda user, peer: user in known

    def send(self, peer: Peer, data: bytes) -> bool:
        self.sent.append((peer, data))
        return True

    def request_received(self, req: Request, peer: Peer, txn: Any) -> None:
        self.seen.append(req.method)
        if txn is not None:
            self.core.reply(txn, req, 200)

    def answer(self, data: bytes, peer: Peer = DEVICE) -> Response:
        before = len(self.sent)
        self.core.receive(data, peer)
        assert len(self.sent) == before + 1, "one answer"
        msg = parse(self.sent[-1][1])
        assert isinstance(msg, Response)
        return msg


def test_shedding_answers_new_registers_503_and_keeps_nothing() -> None:
    rig = Rig()
    rig.guard.share = 0.0
    resp = rig.answer(request())
    assert resp.status == 503
    assert 5 <= int(resp.get_header("Retry-After") or 0) <= 300
    assert not rig.core.server_transactions and rig.seen == []
    assert rig.metrics.get("sip.rx.shed") == 1
    # not plain enough for the bytes-only answer: parsed, and shed all the same
    folded = request(n=2).replace(b";tag=f2", b";\r\n tag=f2")
    assert rig.answer(folded).status == 503
    assert not rig.core.server_transactions
    assert rig.metrics.get("sip.rx.shed") == 2


def test_what_is_never_shed() -> None:
    rig = Rig(known={"34020000001320000001"})
    # a REGISTER taken before the overload: its retransmission is absorbed, not shed
    first = request("MESSAGE", n=1)
    assert rig.answer(first).status == 200
    rig.guard.share = 0.0
    assert rig.answer(first).status == 200 and rig.seen == ["MESSAGE"]
    # the authenticated second REGISTER, counted as a registration completed while shedding
    assert rig.answer(request(auth=True, n=2)).status == 200
    assert rig.guard.completed == 1
    # an in-dialog request, whoever sends it
    bye = request("BYE", n=3, to_tag="t3", user="34020000001320000099")
    assert rig.answer(bye, STRANGER).status == 200
    # a keepalive of a registered device
    assert rig.answer(request("MESSAGE", n=4)).status == 200
    # a response to the gateway's own request is not answered, and not refused either
    rig.core.receive(b"SIP/2.0 200 OK\r\n" + request("MESSAGE", n=5).split(b"\r\n", 1)[1], DEVICE)
    assert rig.metrics.get("sip.rx.stray_response") == 1
    assert rig.metrics.get("sip.rx.shed") == 0
    # but a new request from a stranger is
    resp = rig.answer(request("MESSAGE", n=6, user="34020000001320000099"), STRANGER)
    assert resp.status == 503 and resp.get_header("Retry-After")
    assert rig.metrics.get("sip.rx.shed") == 1


def test_a_registered_device_refreshing_is_not_shed() -> None:
    # Its refresh starts without Authorization like any first REGISTER; shedding it could let
    # its registration lapse while it waits.
    rig = Rig(known={"34020000001320000001"})
    rig.guard.share = 0.0
    assert rig.answer(request()).status == 200
    assert rig.answer(request(n=2, user="34020000001320000002")).status == 503
    assert rig.metrics.get("sip.rx.shed") == 1


def test_not_shedding_serves_everyone() -> None:
    rig = Rig()
    assert rig.answer(request()).status == 200
    assert rig.answer(request("MESSAGE", n=2, user="34020000001320000099"), STRANGER).status == 200
    assert rig.metrics.get("sip.rx.shed") == 0 and rig.guard.admitted == 0
