"""INVITE dialogs over real sockets: ACK of the 2xx and its retransmissions, CANCEL, a 2xx that
crosses the CANCEL, in-dialog requests (RFC 3261 §9, §12, §13)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.metrics import Metrics
from gateway.sip import (
    Dialog,
    Endpoint,
    InviteFailed,
    OutgoingInvite,
    Peer,
    Request,
    Response,
    ServerContext,
    TimerConfig,
    make_response,
    send_bye,
)
from tests.conftest import wait_for

FAST = TimerConfig(t1=0.05, t2=0.2, t4=0.2)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    a = Endpoint(metrics=Metrics(), timers=FAST)
    b = Endpoint(metrics=Metrics(), timers=FAST)
    await a.start("127.0.0.1", 0)
    await b.start("127.0.0.1", 0)
    yield a, b
    await a.close()
    await b.close()


def invite(port: int) -> Request:
    return Request(
        "INVITE",
        f"sip:34020000001310000001@127.0.0.1:{port}",
        [
            ("From", "<sip:34020000002000000001@3402000000>;tag=a1"),
            ("To", "<sip:34020000001310000001@127.0.0.1>"),
            ("Call-ID", Endpoint.call_id()),
            ("CSeq", "7 INVITE"),
            ("Contact", "<sip:34020000002000000001@127.0.0.1:1>"),
            ("Content-Type", "application/sdp"),
        ],
        b"v=0\r\n",
    )


class Callee:
    """The far end: answers INVITEs after ``delay`` with ``status``; records ACK/BYE/CANCEL."""

    def __init__(self, ep: Endpoint, *, status: int = 200, delay: float = 0.0) -> None:
        self.ep, self.status, self.delay = ep, status, delay
        self.acks: list[Request] = []
        self.byes: list[Request] = []
        self.cancels: list[Request] = []
        self.dialog: Dialog | None = None
        ep.route("INVITE", self.on_invite)
        ep.route("ACK", lambda req, ctx: self.acks.append(req))
        ep.route("BYE", self.on_bye)
        ep.route("CANCEL", lambda req, ctx: self.cancels.append(req))

    async def on_invite(self, req: Request, ctx: ServerContext) -> Response:
        await asyncio.sleep(self.delay)
        tag = self.ep.tag()
        self.dialog = Dialog.as_uas(req, tag, ctx.peer)
        headers = [("Contact", f"<sip:34020000001310000001@127.0.0.1:{self.ep.port}>")]
        return make_response(req, self.status, to_tag=tag, headers=headers)

    def on_bye(self, req: Request, ctx: ServerContext) -> Response:
        self.byes.append(req)
        return make_response(req, 200)


async def test_2xx_is_acked_and_dialog_built(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    callee = Callee(b)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    resp = await call.send(2.0)
    assert resp.status == 200
    await wait_for(lambda: len(callee.acks) == 1, what="ACK")
    ack = callee.acks[0]
    assert ack.cseq.seq == 7 and ack.cseq.method == "ACK"
    assert ack.to.tag == resp.to.tag
    assert call.dialog is not None
    assert call.dialog.target == f"sip:34020000001310000001@127.0.0.1:{b.port}"
    # An in-dialog BYE carries both tags and the next CSeq, and the callee's dialog accepts it.
    answer = await call.bye()
    assert answer is not None and answer.status == 200
    bye = callee.byes[0]
    assert bye.cseq.seq == 8 and bye.from_.tag == "a1" and bye.to.tag == resp.to.tag
    assert callee.dialog is not None and callee.dialog.accepts(bye)
    assert not callee.dialog.accepts(bye)  # the same CSeq again is out of order


async def test_failure_raises_with_status(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    Callee(b, status=486)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    with pytest.raises(InviteFailed) as info:
        await call.send(2.0)
    assert info.value.status == 486
    assert call.dialog is None


async def test_no_answer_is_408_and_the_invite_is_cancelled(
    pair: tuple[Endpoint, Endpoint],
) -> None:
    a, b = pair
    callee = Callee(b, delay=5.0)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    with pytest.raises(InviteFailed) as info:
        await call.send(0.3)
    assert info.value.status == 408
    # RFC 3261 timer C: the far end is told to stop ringing, it does not stream to nobody.
    await wait_for(lambda: len(callee.cancels) == 1, what="CANCEL after the timeout")


async def test_cancel_before_answer_gets_487(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    callee = Callee(b, delay=5.0)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    task = asyncio.ensure_future(call.send(3.0))
    await asyncio.sleep(0.1)  # the 100 Trying is back
    call.cancel()
    with pytest.raises(InviteFailed) as info:
        await task
    assert info.value.status == 487
    assert len(callee.cancels) == 1
    # CANCEL matched the INVITE's transaction: same branch (RFC 3261 §9.1).
    assert callee.cancels[0].top_via.branch == call.request.top_via.branch


async def test_2xx_crossing_cancel_is_acked_then_byed(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    # The callee answers before the CANCEL can reach it: the call comes up, so it is ended.
    callee = Callee(b, delay=0.0)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    call.cancelled = True  # as if cancel() ran just before the 2xx arrived
    with pytest.raises(InviteFailed) as info:
        await call.send(2.0)
    assert info.value.status == 487
    await wait_for(lambda: len(callee.acks) == 1 and len(callee.byes) == 1, what="ACK+BYE")


async def test_caller_giving_up_still_ends_a_late_call(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    callee = Callee(b, delay=0.2)
    call = OutgoingInvite(a, invite(b.port), Peer("udp", "127.0.0.1", b.port))
    task = asyncio.ensure_future(call.send(3.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Either the CANCEL won (no dialog) or the 2xx did and was ACKed and BYEd.
    await wait_for(
        lambda: callee.cancels or (callee.acks and callee.byes), timeout=3.0, what="ended"
    )


def test_matches_checks_tags_and_host() -> None:
    inv = invite(5060)
    dlg = Dialog.as_uas(inv, "b9", Peer("udp", "127.0.0.1", 5070))
    good = Request(
        "BYE",
        "sip:x@127.0.0.1",
        [
            ("From", "<sip:34020000002000000001@3402000000>;tag=a1"),
            ("To", "<sip:34020000001310000001@127.0.0.1>;tag=b9"),
            ("Call-ID", inv.call_id),
            ("CSeq", "8 BYE"),
        ],
    )
    assert dlg.matches(good, Peer("udp", "127.0.0.1", 5999))
    assert not dlg.matches(good, Peer("udp", "10.0.0.9", 5070))  # another host
    forged = Request(
        "BYE", good.uri, [(k, v.replace("tag=a1", "tag=zz")) for k, v in good.headers()]
    )
    assert not dlg.matches(forged, Peer("udp", "127.0.0.1", 5070))


async def test_send_bye_without_answer_returns_none(pair: tuple[Endpoint, Endpoint]) -> None:
    a, _ = pair
    dead = Dialog(
        "c", "l", "r", "<sip:a@x>", "<sip:b@y>", "sip:b@127.0.0.1:9", Peer("udp", "127.0.0.1", 9), 1
    )
    assert await send_bye(a, dead, timeout=0.3) is None
