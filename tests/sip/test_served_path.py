"""The served path's own costs: what the core does to every request it takes must not make the
request's later reading slower (RFC 3581 stamping keeps the parser's census of headers)."""

from __future__ import annotations

from gateway.sip import Peer, Request, parse
from gateway.sip.core import stamp_via
from gateway.sip.message import header_census
from tests.sip.test_overload import request


def test_stamping_the_via_keeps_the_census_of_headers() -> None:
    req = parse(request("MESSAGE", extra="Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKz"))
    assert isinstance(req, Request)
    census = req._cache.get("census")
    assert census is not None
    stamp_via(req, Peer("udp", "192.0.2.1", 40000))
    # still there: the header look-ups after stamping use it instead of scanning the list
    assert req._cache.get("census") is census
    assert req.top_via.param("received") == "192.0.2.1"
    assert req.top_via.param("rport") == "40000"
    assert len(req.vias) == 3
    assert header_census(req._items) == census  # what a fresh count of the headers says
    again = parse(req.to_bytes())
    assert isinstance(again, Request)
    assert again.top_via == req.top_via
    assert (req.call_id, req.cseq, req.from_.tag) == (again.call_id, again.cseq, again.from_.tag)
