"""RFC 6665 subscriptions, both sides, with plain calls: SUBSCRIBE initial / refresh / end,
the dialog the 2xx (or an early NOTIFY) makes, NOTIFY matching, the notifier's NOTIFYs and
their Subscription-State."""

from __future__ import annotations

import pytest

from gateway.sip import HeaderValueError, Peer, Request, Response, make_response, parse
from gateway.sip.subscription import (
    Notifier,
    Subscriber,
    SubscriptionState,
    active_state,
    event_matches,
    parse_subscription_state,
    terminated_state,
)

GW = "34020000002000000001"
DOMAIN = "3402000000"
DEV = "34020000001320000001"
UPPER = "34020000002000000009"
DEV_URI = f"sip:{DEV}@192.168.1.64:5060"
PEER = Peer("udp", "192.168.1.64", 5060)


def roundtrip(req: Request) -> Request:
    msg = parse(req.to_bytes())
    assert isinstance(msg, Request)
    return msg


def names(req: Request) -> list[str]:
    return [name for name, _ in req.headers()]


def subscriber(event: str = "Catalog;id=1000") -> Subscriber:
    return Subscriber.create(
        target=DEV_URI, local_uri=f"sip:{GW}@{DOMAIN}", remote_uri=DEV_URI, event=event, peer=PEER
    )


def answer(req: Request, tag: str = "dev1", expires: int | None = 600) -> Response:
    headers = [("Expires", str(expires))] if expires is not None else []
    resp = make_response(req, 200, to_tag=tag, headers=headers)
    parsed = parse(resp.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def notify_from_device(
    sub: Subscriber,
    *,
    from_tag: str = "dev1",
    to_tag: str | None = None,
    call_id: str | None = None,
    event: str | None = None,
    cseq: int = 1,
    state: str = "active;expires=600",
) -> Request:
    raw = (
        f"NOTIFY sip:{GW}@10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.168.1.64:5060;branch=z9hG4bKn1\r\n"
        f"From: <{DEV_URI}>;tag={from_tag}\r\n"
        f"To: <sip:{GW}@{DOMAIN}>;tag={sub.dialog.local_tag if to_tag is None else to_tag}\r\n"
        f"Call-ID: {sub.call_id if call_id is None else call_id}\r\n"
        f"CSeq: {cseq} NOTIFY\r\n"
        f"Event: {sub.event if event is None else event}\r\n"
        f"Subscription-State: {state}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse(raw)
    assert isinstance(msg, Request)
    return msg


# -- subscriber ------------------------------------------------------------------------------
def test_initial_refresh_and_unsubscribe_in_one_dialog() -> None:
    sub = subscriber()
    contact = f"sip:{GW}@10.0.0.1:5060"
    first = roundtrip(
        sub.subscribe(
            600, contact=contact, body=b"<Query/>", content_type="Application/MANSCDP+xml"
        )
    )
    assert names(first) == [
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Event",
        "Expires",
        "Content-Type",
        "Content-Length",
    ]
    assert first.uri == DEV_URI and first.to.tag is None and first.from_.tag
    assert (first.cseq.seq, first.cseq.method) == (1, "SUBSCRIBE")
    assert first.get_header("Event") == "Catalog;id=1000" and first.expires == 600
    assert not sub.confirmed
    assert sub.confirm(answer(first, expires=300)) == 300
    assert sub.confirmed and sub.dialog.remote_tag == "dev1"
    refresh = roundtrip(sub.subscribe(600, contact=contact))
    assert refresh.call_id == first.call_id and refresh.from_.tag == first.from_.tag
    assert refresh.to.tag == "dev1" and refresh.cseq.seq == 2
    # A later 2xx cannot move the dialog to another tag.
    assert sub.confirm(answer(refresh, tag="other", expires=None)) is None
    assert sub.dialog.remote_tag == "dev1"
    end = roundtrip(sub.subscribe(0, contact=contact))
    assert end.expires == 0 and end.cseq.seq == 3 and end.to.tag == "dev1"


def test_retries_before_the_2xx_stay_without_a_to_tag() -> None:
    sub = subscriber()
    sub.subscribe(600)
    again = sub.subscribe(600)
    assert again.cseq.seq == 2 and roundtrip(again).to.tag is None


def test_wire_form_of_a_subscribe_as_the_downlink_sent_it_before() -> None:
    sub = Subscriber.create(
        target=DEV_URI,
        local_uri=f"sip:{GW}@{DOMAIN}",
        remote_uri=DEV_URI,
        event="presence",
        peer=PEER,
        call_id="c1",
        local_tag="t1",
    )
    req = sub.subscribe(
        3600,
        contact=f"sip:{GW}@10.0.0.1:5060",
        body=b"<Query/>",
        content_type="Application/MANSCDP+xml",
    )
    assert (
        req.to_bytes()
        == (
            f"SUBSCRIBE {DEV_URI} SIP/2.0\r\n"
            f"From: <sip:{GW}@{DOMAIN}>;tag=t1\r\n"
            f"To: <{DEV_URI}>\r\n"
            "Call-ID: c1\r\n"
            "CSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:{GW}@10.0.0.1:5060>\r\n"
            "Event: presence\r\n"
            "Expires: 3600\r\n"
            "Content-Type: Application/MANSCDP+xml\r\n"
            "Content-Length: 8\r\n\r\n<Query/>"
        ).encode()
    )


def test_notify_matching_by_call_id_tags_and_event() -> None:
    sub = subscriber()
    sub.confirm(answer(sub.subscribe(600)))
    assert sub.matches(notify_from_device(sub))
    assert not sub.matches(notify_from_device(sub, call_id="elsewhere"))
    assert not sub.matches(notify_from_device(sub, to_tag="not-ours"))
    assert not sub.matches(notify_from_device(sub, from_tag="another-notifier"))
    assert not sub.matches(notify_from_device(sub, event="Alarm;id=1000"))
    assert not sub.matches(notify_from_device(sub, event="Catalog"))  # the id is missing
    assert not sub.matches(notify_from_device(sub, event="Catalog;id=1001"))
    assert not sub.matches(notify_from_device(sub, event="catalog;id=1000"))  # byte by byte
    assert sub.matches(notify_from_device(sub, event="Catalog;x=1;id=1000"))


def test_notify_in_cseq_order() -> None:
    sub = subscriber()
    sub.confirm(answer(sub.subscribe(600)))
    assert sub.accept_notify(notify_from_device(sub, cseq=2))
    assert not sub.accept_notify(notify_from_device(sub, cseq=2))  # a replay
    assert not sub.accept_notify(notify_from_device(sub, cseq=1))  # out of order
    assert sub.accept_notify(notify_from_device(sub, cseq=3))
    assert not sub.accept_notify(notify_from_device(sub, cseq=4, to_tag="x"))


def test_a_notify_before_the_2xx_makes_the_dialog() -> None:
    sub = subscriber()
    req = sub.subscribe(600)
    early = notify_from_device(sub, from_tag="early")
    assert sub.matches(early)  # any notifier tag until the dialog is made
    assert sub.accept_notify(early)
    assert sub.confirmed and sub.dialog.remote_tag == "early"
    assert sub.confirm(answer(req, tag="early")) == 600
    assert not sub.matches(notify_from_device(sub, from_tag="late", cseq=2))
    assert roundtrip(sub.subscribe(600)).to.tag == "early"


def test_renewed_subscription_is_a_new_dialog() -> None:
    sub = subscriber("presence")
    sub.confirm(answer(sub.subscribe(600)))
    sub.subscribe(600)
    fresh = sub.renewed()
    assert fresh.call_id != sub.call_id and fresh.dialog.local_tag != sub.dialog.local_tag
    assert not fresh.confirmed and fresh.event == "presence"
    first = roundtrip(fresh.subscribe(600))
    assert first.cseq.seq == 1 and first.to.tag is None and first.uri == DEV_URI
    assert sub.dialog.remote_tag == "dev1"  # the old one is untouched


def test_readdress_follows_a_device_that_moved() -> None:
    sub = subscriber()
    moved = f"sip:{DEV}@192.168.1.65:5070"
    sub.readdress(moved, moved, Peer("udp", "192.168.1.65", 5070))
    req = roundtrip(sub.subscribe(600))
    assert req.uri == moved and str(req.to.uri) == moved
    assert sub.dialog.peer.port == 5070


def test_cr_lf_in_an_event_never_reaches_the_wire() -> None:
    with pytest.raises(HeaderValueError):
        subscriber("presence\r\nVia: evil").subscribe(600)


# -- notifier --------------------------------------------------------------------------------
def subscribe_from_upper(
    *, contact: bool = True, to_tag: str = "", event: str = "Catalog", call_id: str = "s1"
) -> Request:
    raw = (
        f"SUBSCRIBE sip:{GW}@{DOMAIN} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKs1\r\n"
        f"From: <sip:{UPPER}@{DOMAIN}>;tag=up1\r\n"
        f"To: <sip:{GW}@{DOMAIN}>{f';tag={to_tag}' if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 20 SUBSCRIBE\r\n"
        + (f"Contact: <sip:{UPPER}@10.0.0.9:5060>\r\n" if contact else "")
        + f"Event: {event}\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse(raw)
    assert isinstance(msg, Request)
    return msg


def test_notifier_dialog_from_the_subscribe() -> None:
    req = subscribe_from_upper()
    n = Notifier.accept(req, Peer("udp", "10.0.0.9", 5060), expires_at=1600.0)
    d = n.dialog
    assert (d.call_id, d.remote_tag, d.remote_cseq) == ("s1", "up1", 20)
    assert d.target == f"sip:{UPPER}@10.0.0.9:5060" and n.event == "Catalog"
    assert d.local == f"<sip:{GW}@{DOMAIN}>" and d.remote == f"<sip:{UPPER}@{DOMAIN}>"
    assert n.local_tag and n.call_id == "s1"
    # No Contact: NOTIFYs go to the From URI.
    bare = Notifier.accept(subscribe_from_upper(contact=False), PEER, expires_at=0.0)
    assert bare.dialog.target == f"sip:{UPPER}@{DOMAIN}"


def test_notifies_count_their_cseq_and_carry_the_state() -> None:
    n = Notifier.accept(
        subscribe_from_upper(),
        Peer("udp", "10.0.0.9", 5060),
        expires_at=1600.0,
        local_tag="gw1",
        local_uri=f"sip:{GW}@{DOMAIN}",
        remote_uri=f"sip:{UPPER}@{DOMAIN}",
        event="Catalog",
    )
    contact = f"sip:{GW}@10.0.0.1:5060"
    first = n.notify(
        n.active(1000.4),
        contact=contact,
        body=b"<Notify/>",
        content_type="Application/MANSCDP+xml",
    )
    assert (
        first.to_bytes()
        == (
            f"NOTIFY sip:{UPPER}@10.0.0.9:5060 SIP/2.0\r\n"
            f"From: <sip:{GW}@{DOMAIN}>;tag=gw1\r\n"
            f"To: <sip:{UPPER}@{DOMAIN}>;tag=up1\r\n"
            "Call-ID: s1\r\n"
            "CSeq: 1 NOTIFY\r\n"
            f"Contact: <{contact}>\r\n"
            "Event: Catalog\r\n"
            "Subscription-State: active;expires=599\r\n"
            "Content-Type: Application/MANSCDP+xml\r\n"
            "Content-Length: 9\r\n\r\n<Notify/>"
        ).encode()
    )
    n.extend(2000.0, 300)
    second = roundtrip(n.notify(n.active(2000.0), contact=contact))
    assert second.cseq.seq == 2 and second.get_header("Subscription-State") == (
        "active;expires=300"
    )
    assert "Content-Type" not in names(second)
    assert not n.terminated
    last = roundtrip(n.notify(n.terminate("timeout"), contact=contact))
    assert n.terminated and last.cseq.seq == 3
    assert last.get_header("Subscription-State") == "terminated;reason=timeout"
    assert n.remaining(5000.0) == 0 and n.active(5000.0) == "active;expires=0"


def test_notifier_expiry_on_the_callers_clock() -> None:
    n = Notifier.accept(subscribe_from_upper(), PEER, expires_at=1060.0)
    assert not n.expired(1000.0) and n.remaining(1000.0) == 60
    assert not n.expired(1059.9) and n.remaining(1059.9) == 0
    assert n.expired(1060.0) and n.expired(2000.0)
    n.extend(1060.0, 120)  # a refresh after the deadline was noticed still counts from now
    assert not n.expired(1060.0) and n.remaining(1060.0) == 120 and n.expired(1180.0)


def test_notifier_matches_refreshes_of_its_dialog_only() -> None:
    n = Notifier.accept(subscribe_from_upper(), PEER, expires_at=0.0, local_tag="gw1")
    assert n.matches(subscribe_from_upper(to_tag="gw1"))
    assert not n.matches(subscribe_from_upper(to_tag="other"))
    assert not n.matches(subscribe_from_upper())  # no To tag: a new subscription
    assert not n.matches(subscribe_from_upper(to_tag="gw1", call_id="s2"))
    assert not n.matches(subscribe_from_upper(to_tag="gw1", event="Alarm"))


# -- Subscription-State and Event ------------------------------------------------------------
def test_subscription_state_values() -> None:
    assert active_state(600) == "active;expires=600"
    assert terminated_state("noresource") == "terminated;reason=noresource"
    assert parse_subscription_state(" active;expires=599 ") == SubscriptionState(
        "active", 599, None
    )
    ended = parse_subscription_state("Terminated;reason=rejected")
    assert ended.terminated and ended.reason == "rejected" and ended.expires is None
    assert parse_subscription_state("pending") == SubscriptionState("pending")
    assert not parse_subscription_state("").terminated
    # Parameters that cannot be read are ignored: the NOTIFY still gets its 200.
    odd = parse_subscription_state("terminated;=x;expires=abc")
    assert odd.terminated and odd.reason is None and odd.expires is None


def test_event_matching_rule() -> None:
    assert event_matches("presence", "presence")
    assert event_matches("Catalog;id=7", "Catalog ;id=7")
    assert not event_matches("Catalog;id=7", "Catalog")
    assert not event_matches("Catalog", "Catalog;id=7")
    assert not event_matches("presence", "Presence")
