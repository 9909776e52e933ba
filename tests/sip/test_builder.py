"""The request builder: out-of-dialog requests (RFC 3261 §8.1.1), REGISTER sequences (§10.2),
the in-dialog requests a Dialog writes through it, and values that could inject a header."""

from __future__ import annotations

import pytest

from gateway.sip import (
    MAGIC_COOKIE,
    Dialog,
    HeaderValueError,
    Peer,
    Request,
    RequestSequence,
    SipError,
    build_request,
    compose,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    random_token,
)

GW = "34020000002000000001"
DOMAIN = "3402000000"
DEV = "34020000001320000001"
PEER = Peer("udp", "192.168.1.64", 5060)


def roundtrip(req: Request) -> Request:
    msg = parse(req.to_bytes())
    assert isinstance(msg, Request)
    return msg


def names(req: Request) -> list[str]:
    return [name for name, _ in req.headers()]


def test_out_of_dialog_request_round_trips_in_order() -> None:
    req = build_request(
        "MESSAGE",
        f"sip:{DEV}@192.168.1.64:5060",
        from_uri=f"sip:{GW}@{DOMAIN}",
        to_uri=f"sip:{DEV}@192.168.1.64:5060",
        cseq=7,
        contact=f"sip:{GW}@10.0.0.1:5060",
        headers=[("Subject", "a:b,c:0"), ("Accept", "Application/MANSCDP+xml")],
        body=b"<?xml version='1.0'?><Query/>",
        content_type="Application/MANSCDP+xml",
    )
    got = roundtrip(req)
    assert got.method == "MESSAGE" and got.uri == f"sip:{DEV}@192.168.1.64:5060"
    assert names(got) == [
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Subject",
        "Accept",
        "Content-Type",
        "Content-Length",
    ]
    assert str(got.from_.uri) == f"sip:{GW}@{DOMAIN}" and got.from_.tag
    assert str(got.to.uri) == f"sip:{DEV}@192.168.1.64:5060" and got.to.tag is None
    assert got.call_id and (got.cseq.seq, got.cseq.method) == (7, "MESSAGE")
    assert str(got.contacts[0].uri) == f"sip:{GW}@10.0.0.1:5060"
    assert got.get_header("Content-Type") == "Application/MANSCDP+xml"
    assert got.body == b"<?xml version='1.0'?><Query/>"
    # Via, Max-Forwards and User-Agent are the endpoint's to add.
    assert got.get_header("Via") is None and got.get_header("Max-Forwards") is None


def test_each_request_gets_a_fresh_tag_and_call_id_unless_given() -> None:
    def make(**kw: str) -> Request:
        return build_request(
            "MESSAGE", f"sip:{DEV}@h", from_uri=f"sip:{GW}@{DOMAIN}", to_uri=f"sip:{DEV}@h", **kw
        )

    a, b = make(), make()
    assert a.from_.tag != b.from_.tag and a.call_id != b.call_id
    assert a.cseq.seq == 1  # a lone request starts its CSeq at 1
    kept = make(from_tag="abc", call_id="x@y")
    assert kept.from_.tag == "abc" and kept.call_id == "x@y"
    assert "Content-Type" not in names(kept)


def test_token_generators() -> None:
    assert len(random_token(4)) == 8 and int(random_token(4), 16) >= 0
    assert len(new_tag()) == 12 and len(new_call_id()) == 24
    assert new_branch().startswith(MAGIC_COOKIE) and new_branch() != new_branch()
    assert len({new_tag() for _ in range(1000)}) == 1000


def test_register_sequence_keeps_call_id_and_counts_cseq() -> None:
    seq = RequestSequence()

    def register() -> Request:
        return seq.request(
            "REGISTER",
            f"sip:{DOMAIN}@10.0.0.2:5060",
            from_uri=f"sip:{GW}@{DOMAIN}",
            to_uri=f"sip:{GW}@{DOMAIN}",
            contact=f"sip:{GW}@10.0.0.1:5060",
            headers=[("Expires", "3600")],
        )

    first, second = register(), register()
    assert first.call_id == second.call_id and first.from_.tag == second.from_.tag
    assert [first.cseq.seq, second.cseq.seq] == [1, 2]
    seq.restart()
    third = register()
    assert third.call_id != first.call_id and third.cseq.seq == 1
    assert third.from_.tag == first.from_.tag


def test_wire_form_of_a_register_as_the_uplink_sent_it_before() -> None:
    req = build_request(
        "REGISTER",
        f"sip:{DOMAIN}@10.0.0.2:5060",
        from_uri=f"sip:{GW}@{DOMAIN}",
        to_uri=f"sip:{GW}@{DOMAIN}",
        from_tag="t1",
        call_id="c1",
        cseq=3,
        contact=f"sip:{GW}@10.0.0.1:5060",
        headers=[("Expires", "3600"), ("X-GB-Ver", "3.0"), ("Authorization", "Digest x=1")],
    )
    assert (
        req.to_bytes()
        == (
            f"REGISTER sip:{DOMAIN}@10.0.0.2:5060 SIP/2.0\r\n"
            f"From: <sip:{GW}@{DOMAIN}>;tag=t1\r\n"
            f"To: <sip:{GW}@{DOMAIN}>\r\n"
            "Call-ID: c1\r\n"
            "CSeq: 3 REGISTER\r\n"
            f"Contact: <sip:{GW}@10.0.0.1:5060>\r\n"
            "Expires: 3600\r\n"
            "X-GB-Ver: 3.0\r\n"
            "Authorization: Digest x=1\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


@pytest.mark.parametrize(
    "field",
    ["uri", "from_uri", "to_uri", "contact", "header", "header_name", "content_type", "call_id"],
)
@pytest.mark.parametrize("bad", ["\r\nVia: evil", "\nX: 1", "a\rb", "a\x00b"])
def test_cr_lf_from_a_caller_never_reaches_the_wire(field: str, bad: str) -> None:
    kwargs: dict[str, object] = {
        "uri": f"sip:{DEV}@h",
        "from_uri": f"sip:{GW}@{DOMAIN}",
        "to_uri": f"sip:{DEV}@h",
        "contact": f"sip:{GW}@h",
        "headers": [("Event", "presence")],
        "content_type": "Application/MANSCDP+xml",
        "call_id": "c1",
    }
    if field == "header":
        kwargs["headers"] = [("Event", f"presence{bad}")]
    elif field == "header_name":
        kwargs["headers"] = [(f"Event{bad}", "presence")]
    else:
        kwargs[field] = f"x{bad}"
    uri = kwargs.pop("uri")
    with pytest.raises(HeaderValueError):
        build_request("MESSAGE", uri, **kwargs)  # type: ignore[arg-type]


def test_bad_method_tag_and_cseq_refused() -> None:
    common = {"from_uri": "sip:a@b", "to_uri": "sip:c@d"}
    with pytest.raises(HeaderValueError):
        build_request("MES SAGE", "sip:c@d", **common)
    with pytest.raises(HeaderValueError):
        build_request("MESSAGE", "sip:c@d", from_tag="t\r\nX: y", **common)
    with pytest.raises(HeaderValueError):
        build_request("MESSAGE", "sip:c@d", cseq=2**31, **common)
    with pytest.raises(HeaderValueError):
        build_request("MESSAGE", "sip:c@d", cseq=-1, **common)
    # A layer error, and a ValueError for callers that treat it as bad input.
    assert issubclass(HeaderValueError, SipError) and issubclass(HeaderValueError, ValueError)


def test_compose_writes_a_to_tag_only_when_given() -> None:
    base = {
        "from_": '"Gateway" <sip:a@b>',
        "from_tag": "f",
        "to": "<sip:c@d>",
        "call_id": "c",
        "cseq": 2,
    }
    with_tag = compose("BYE", "sip:c@d", to_tag="t", **base)  # type: ignore[arg-type]
    without = compose("BYE", "sip:c@d", to_tag="", **base)  # type: ignore[arg-type]
    assert with_tag.get_header("To") == "<sip:c@d>;tag=t"
    assert without.get_header("To") == "<sip:c@d>"
    assert roundtrip(with_tag).from_.display == "Gateway"


def test_dialog_requests_go_through_the_builder() -> None:
    dialog = Dialog(
        call_id="c9",
        local_tag="l",
        remote_tag="r",
        local=f"<sip:{GW}@{DOMAIN}>",
        remote=f"<sip:{DEV}@{DOMAIN}>",
        target=f"sip:{DEV}@192.168.1.64:5060",
        peer=PEER,
        local_cseq=4,
    )
    bye = roundtrip(dialog.request("BYE"))
    assert (bye.cseq.seq, bye.from_.tag, bye.to.tag, bye.call_id) == (5, "l", "r", "c9")
    info = dialog.request(
        "INFO",
        contact=f"sip:{GW}@10.0.0.1:5060",
        headers=[("X-A", "1")],
        body=b"PLAY",
        content_type="Application/MANSRTSP",
    )
    assert names(info) == ["From", "To", "Call-ID", "CSeq", "Contact", "X-A", "Content-Type"]
    assert info.cseq.seq == 6
    dialog.remote = "<sip:x@y>\r\nVia: evil"
    with pytest.raises(HeaderValueError):
        dialog.request("BYE")
