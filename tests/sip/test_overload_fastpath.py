"""The shed path's one look at an initial REGISTER (gateway.sip.overload.scan_register and
shed_response): what it reads, what it leaves to the slow way, that its answer is the one the
slow way gives, and that what it remembers (the shapes of header blocks) stays bounded."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import Response, parse
from gateway.sip import overload as overload_module
from gateway.sip.overload import (
    from_user,
    is_initial_register,
    quick_response,
    scan_register,
    shed_response,
)
from tests.sip.test_overload import DEVICE, Rig, request

STATUS = b"SIP/2.0 503 Service Unavailable"
RETRY = b"Retry-After: 17\r\n"
USER = "34020000001320000001"


def without_added_tag(data: bytes) -> bytes:
    """A response with the To tag the gateway adds taken out (it is random)."""
    return re.sub(rb"(?i)(\r\n(?:to|t)[ \t]*:[^\r\n]*);tag=[0-9a-f]{8}\r\n", rb"\1\r\n", data)


def fast(data: bytes) -> tuple[str, bytes]:
    scan = scan_register(data)
    assert isinstance(scan, tuple), scan
    user, lines, to = scan
    return user, shed_response(lines, to, STATUS, RETRY)


def slow(data: bytes) -> bytes:
    out = quick_response(data, 503, "Service Unavailable", RETRY)
    assert out is not None
    return out


# -- what it reads ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d,
        lambda d: d.replace(b"Via:", b"v:").replace(b"From:", b"f:").replace(b"To:", b"t:"),
        lambda d: d.replace(b"Call-ID:", b"i:"),
        lambda d: d.replace(b"Via:", b"VIA:").replace(b"CSeq:", b"cseq:").replace(b"To:", b"tO:"),
        lambda d: d.replace(b"Max-Forwards: 70\r\n", b"").replace(
            b"CSeq", b"Max-Forwards: 70\r\nCSeq"
        ),
        lambda d: d.replace(b"Contact:", b"Subject: sip:a@b\r\nContact:"),
        lambda d: d.replace(b"To: <sip:34020000001320000001@3402000000>", b"To: <sip:x@y> ;tag=t9"),
        lambda d: d.replace(b"To: <sip:34020000001320000001@3402000000>", b"To: <sip:x@y>   "),
    ],
)
def test_the_answer_is_the_one_the_slow_way_gives(mangle: Callable[[bytes], bytes]) -> None:
    data = mangle(request())
    user, out = fast(data)
    assert user == from_user(data) == USER
    assert without_added_tag(out) == without_added_tag(slow(data))
    resp = parse(out)
    assert isinstance(resp, Response) and resp.status == 503 and resp.to.tag
    assert [v.branch for v in resp.vias] == ["z9hG4bK000000001", "z9hG4bKproxy1"]
    assert resp.get_header("Retry-After") == "17"


def test_a_to_tag_that_is_there_is_kept() -> None:
    _, out = fast(request(to_tag="abc"))
    assert parse(out).to.tag == "abc"
    assert out.count(b"tag=") == 2  # From's and To's: none added


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(b"From: <sip:", b"From : <sip:"),
        lambda d: d.replace(b"From: <sip:", b"f\t: <sip:"),
    ],
)
def test_the_from_user_is_read_where_the_parser_reads_a_from(
    mangle: Callable[[bytes], bytes],
) -> None:
    # Space before the colon is allowed (RFC 3261 §7.3.1: HCOLON); the slow reading missed
    # such a From, so a registered device writing it so was taken for a stranger.
    data = mangle(request())
    assert fast(data)[0] == USER
    assert parse(data).from_.uri.user == USER


def test_a_registered_device_writing_from_with_a_space_is_not_shed() -> None:
    rig = Rig(known={USER})
    rig.guard.share = 0.0
    assert rig.answer(request().replace(b"From: <sip:", b"From : <sip:")).status == 200
    assert rig.metrics.get("sip.rx.shed") == 0


def test_no_user_when_the_from_has_none_to_read() -> None:
    assert fast(request().replace(b"From: <sip:", b"From: <tel:"))[0] == ""
    far = request().replace(b"@3402000000>;tag=f1", b"x" * 70 + b"@3402000000>;tag=f1")
    assert fast(far)[0] == ""


# -- what it leaves to the slow way -------------------------------------------------------
@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(b";tag=f1", b";\r\n tag=f1"),  # folded
        lambda d: d.replace(b"Contact: <", b"Contact:\r\n\t<"),  # folded, not a copied line
        lambda d: d.replace(b"\r\nCall-ID", b"\nCall-ID"),  # the To ends in a bare LF
        lambda d: d.replace(b"\r\nCall-ID: call1@10.0.0.7", b""),  # missing
        lambda d: d.replace(b"CSeq: 1", b"CSeq: 1 REGISTER\r\nCSeq: 1"),  # twice
        lambda d: d.replace(b"To:", b"to: <sip:a@b>\r\nTo:"),  # twice, in two cases
        lambda d: d.replace(b"\r\n\r\n", b"\r\n"),  # no end of headers
    ],
)
def test_what_is_not_plain_is_left_to_the_slow_way(mangle: Callable[[bytes], bytes]) -> None:
    data = mangle(request())
    assert scan_register(data) is None
    assert is_initial_register(data)  # which still sees the initial REGISTER in it


@pytest.mark.parametrize(
    "data",
    [
        request(auth=True),
        request(auth=True).replace(b"Authorization", b"AUTHORIZATION"),
        request(extra="authorization-info: x"),  # starts with the name: errs on serving
        request("MESSAGE"),
        b"SIP/2.0 200 OK\r\n" + request().split(b"\r\n", 1)[1],
    ],
)
def test_what_is_not_an_initial_register(data: bytes) -> None:
    assert scan_register(data) is False
    assert not is_initial_register(data)


def test_authorization_in_the_body_does_not_count() -> None:
    body = b"\r\nAuthorization: x"
    data = request().replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + body
    assert fast(data)[0] == USER


def test_a_folded_authorization_is_served_not_shed() -> None:
    rig = Rig()
    rig.guard.share = 0.0
    data = request(auth=True).replace(b'Digest username="', b'Digest\r\n username="')
    assert scan_register(data) is None  # the slow way: it finds the Authorization
    assert rig.answer(data).status == 200
    assert rig.metrics.get("sip.rx.shed") == 0


def test_each_shed_answer_books_one_return() -> None:
    rig = Rig()
    rig.guard.share = 0.0
    booked: list[int] = []
    book = rig.guard.retry_after

    def counted() -> int:
        booked.append(book())
        return booked[-1]

    rig.guard.retry_after = counted  # type: ignore[method-assign]
    for n, data in enumerate(
        [
            request(n=1),  # from the bytes, one look
            request(n=2).replace(b"\r\nCall-ID", b"\nCall-ID"),  # the slow way
            request(n=3).replace(b";tag=f3", b";\r\n tag=f3"),  # parsed
        ]
    ):
        resp = rig.answer(data)
        assert resp.status == 503 and resp.get_header("Retry-After") == str(booked[n])
    assert len(booked) == 3 and rig.metrics.get("sip.rx.shed") == 3
    assert not rig.core.server_transactions and rig.seen == []


# -- what it remembers --------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_the_shapes_it_remembers_stay_few_and_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overload_module, "_SHAPES", {})
    rig = Rig()
    rig.guard.share = 0.0
    head, *fields = request().split(b"\r\n")[:7]  # the request line, 2 Vias, From ... CSeq
    rest = request().split(b"\r\n", 7)[7]
    sent = 0
    # 360 shapes: the copied headers in every order, with 1 to 3 Vias more
    for extra in range(1, 4):
        vias = [
            *fields[:2],
            *[b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx%d" % i for i in range(extra)],
        ]
        for order in itertools.permutations([b"\r\n".join(vias), *fields[2:]]):
            data = b"\r\n".join([head, *order, rest])
            resp = rig.answer(data)
            sent += 1
            assert resp.status == 503 and len(resp.vias) == 2 + extra
    # and a long one: 100 Vias
    data = request().replace(
        b"Max-Forwards", b"v: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKy\r\n" * 100 + b"Max-Forwards"
    )
    assert len(rig.answer(data).vias) == 102
    shapes = overload_module._SHAPES
    assert len(shapes) == overload_module._SHAPES_MAX  # full, and no more
    assert all(len(key) <= overload_module._SHAPE_LEN for key in shapes)
    assert rig.metrics.get("sip.rx.shed") == sent + 1


# -- the same answer as the slow way, whatever the spelling --------------------------------
_NAMES = {
    "Via": ["Via", "v", "VIA", "via"],
    "From": ["From", "f", "FROM", "from"],
    "To": ["To", "t", "TO", "to"],
    "Call-ID": ["Call-ID", "i", "call-id", "CALL-ID"],
    "CSeq": ["CSeq", "cseq", "CSEQ"],
}


@st.composite
def registers(draw: st.DrawFn) -> tuple[bytes, str]:
    user = draw(st.from_regex(r"[0-9]{20}", fullmatch=True))
    values = [
        ("Via", "SIP/2.0/UDP 10.0.0.7:5060;rport;branch=z9hG4bKa1"),
        *[
            ("Via", f"SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bKb{i}")
            for i in range(draw(st.integers(0, 3)))
        ],
        ("From", f'"cam" <sip:{user}@3402000000>;tag=x9'),
        ("To", f"<sip:{user}@3402000000>" + draw(st.sampled_from(["", ";tag=t1", " "]))),
        ("Call-ID", "c1@10.0.0.7"),
        ("CSeq", "1 REGISTER"),
        ("Contact", f"<sip:{user}@10.0.0.7:5060>"),
        ("Max-Forwards", "70"),
        ("Expires", "3600"),
    ]
    order = draw(st.permutations(values))
    lines = ["REGISTER sip:34020000002000000001@3402000000 SIP/2.0"]
    for name, value in order:
        spelled = draw(st.sampled_from(_NAMES.get(name, [name])))
        lines.append(f"{spelled}{draw(st.sampled_from(['', ' ', chr(9)]))}: {value}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), user


@settings(max_examples=300, deadline=None)
@given(registers())
def test_the_one_look_agrees_with_the_slow_way(case: tuple[bytes, str]) -> None:
    data, user = case
    got, out = fast(data)
    assert got == user
    assert parse(data).from_.uri.user == user
    quick = quick_response(data, 503, "Service Unavailable", RETRY)
    if quick is not None:  # the slow way reads no space before a colon: it then parses
        assert without_added_tag(out) == without_added_tag(quick)
    resp, req = parse(out), parse(data)
    assert isinstance(resp, Response) and resp.status == 503
    assert [v.branch for v in resp.vias] == [v.branch for v in req.vias]
    assert (resp.call_id, resp.cseq, resp.from_.tag) == (req.call_id, req.cseq, req.from_.tag)
    assert resp.to.tag and (req.to.tag is None or resp.to.tag == req.to.tag)


def test_a_stranger_is_shed_from_the_bytes_and_a_device_served() -> None:
    rig = Rig(known={USER})
    rig.guard.share = 0.0
    assert rig.answer(request(), DEVICE).status == 200
    assert rig.answer(request(n=2, user="34020000001320000002")).status == 503
