"""What the UAS takes from a peer that bends the rules, and what it still refuses (issue 15):
a missing Max-Forwards is served, a CSeq whose method is not the line's is refused 400 (and
reported to whoever listens), an in-dialog CSeq equal to the last under another method is in
order (RFC 3261 §12.2.2)."""

from __future__ import annotations

import pytest

from gateway.sip import Dialog, ParseError, Peer, Request, parse
from tests.sip.sipcore_rig import PEER, Rig
from tests.sip.test_hardening import raw


@pytest.mark.timeout(120, method="signal")
def test_requests_without_max_forwards_are_served_and_leave_what_any_request_leaves() -> None:
    rig = Rig()
    count = 2_000
    for n in range(count):
        finals = [r for r in rig.feed(raw("INVITE", n, drop="Max-Forwards")) if r.status >= 200]
        assert [r.status for r in finals] == [200]
    assert len(rig.user.seen) == count
    assert rig.metrics.get("sip.rx.no_max_forwards") == count
    assert rig.metrics.get("sip.rx.bad_request") == 0
    # Each INVITE's transaction ends on its timers, as any answered request's does.
    rig.clock.advance(64 * 0.5 + 1)
    assert dict(rig.core.server_transactions) == {}
    assert rig.core._invites == {}


@pytest.mark.parametrize("value", ["x", "256", "-1", ""])
def test_a_max_forwards_that_is_there_must_still_parse(value: str) -> None:
    rig = Rig()
    resp = rig.final(raw("OPTIONS", change={"Max-Forwards": value}))
    assert (resp.status, resp.reason) == (400, "Bad Max-Forwards")
    assert rig.user.seen == []


def test_a_cseq_of_another_method_gets_400_and_is_reported() -> None:
    rig = Rig(methods=("INFO",))
    heard: list[tuple[Request, Peer, ParseError]] = []
    rig.core.on_refused = lambda req, peer, exc: heard.append((req, peer, exc))
    resp = rig.final(raw("INFO", change={"CSeq": "{n} Info"}))
    assert (resp.status, resp.reason) == (400, "CSeq Method Mismatch")
    assert resp.cseq.method == "Info"  # copied as it came (RFC 3261 §8.2.6.2)
    assert [(r.method, p, e.reason) for r, p, e in heard] == [
        ("INFO", PEER, "CSeq Method Mismatch")
    ]
    assert rig.user.seen == [] and dict(rig.core.server_transactions) == {}
    # A listener that fails does not stop the core.
    rig.core.on_refused = lambda req, peer, exc: 1 / 0  # type: ignore[func-returns-value]
    assert rig.final(raw("INFO", 1, change={"CSeq": "{n} Info"})).status == 400
    assert rig.final(raw("INFO", 2)).status == 200


def invite(cseq: int = 1) -> Request:
    msg = parse(
        (
            f"INVITE sip:a@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKi\r\n"
            f"From: <sip:up@x>;tag=up\r\nTo: <sip:a@x>\r\nCall-ID: c1\r\nCSeq: {cseq} INVITE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def in_dialog(method: str, cseq: int) -> Request:
    msg = parse(
        (
            f"{method} sip:a@192.0.2.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK{cseq}\r\n"
            f"From: <sip:up@x>;tag=up\r\nTo: <sip:a@x>;tag=gw\r\nCall-ID: c1\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def test_an_in_dialog_cseq_equal_to_the_invites_is_taken_once() -> None:
    """§12.2.2 refuses a lower CSeq. The first request after the INVITE numbered like it (an
    INFO or BYE of a platform that does so) is taken; any later request under a number already
    used in the dialog, or a lower one, is not (alternating INFO 5 / BYE 5 / INFO 5 would
    otherwise all pass)."""
    dialog = Dialog.as_uas(invite(5), "gw", PEER)
    assert dialog.accepts(in_dialog("INFO", 5))
    assert not dialog.accepts(in_dialog("INFO", 5))  # a second INFO under 5
    assert not dialog.accepts(in_dialog("BYE", 5))  # another method, but 5 is used twice now
    assert not dialog.accepts(in_dialog("INFO", 4))  # lower
    assert dialog.accepts(in_dialog("INFO", 6))
    assert not dialog.accepts(in_dialog("BYE", 6))
    other = Dialog.as_uas(invite(5), "gw", PEER)
    assert other.accepts(in_dialog("BYE", 5))
    assert not other.accepts(in_dialog("INVITE", 5))  # a re-INVITE is never numbered so
    assert dialog.accepts(in_dialog("ACK", 1))  # ACKs are never ordered
