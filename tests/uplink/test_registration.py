"""The lifetime the uplink takes from an upper's 200 OK to its REGISTER (RFC 3261 §10.2.4),
with a stand-in endpoint: no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.metrics import Metrics
from gateway.settings import GatewaySection, UpperPlatform
from gateway.sip import Peer, Request, Response, make_response
from gateway.uplink.registration import UpperLink

GW = "34020000002000000001"
UP = "34010000002000000001"
OUR_CONTACT = f"sip:{GW}@192.0.2.10:5060"


class StubEndpoint:
    """Answers every REGISTER with 200 OK carrying the given headers; writes our Contact."""

    def __init__(self, headers: Sequence[tuple[str, str]]) -> None:
        self.headers = list(headers)
        self.sent: list[Request] = []

    def contact_uri(self, user: str, peer: Peer) -> str:
        return f"sip:{user}@192.0.2.10:5060"

    async def request(self, req: Request, peer: Peer, timeout: float | None = None) -> Response:
        self.sent.append(req)
        return make_response(req, 200, "OK", headers=self.headers)


async def granted(headers: Sequence[tuple[str, str]], asked: int = 1800) -> int:
    endpoint = StubEndpoint(headers)
    link = UpperLink(
        UpperPlatform(id=UP, domain=UP[:10], host="198.51.100.1", password="12345678"),
        identity=GatewaySection(id=GW),
        endpoint=endpoint,  # type: ignore[arg-type]
        metrics=Metrics(),
        on_online=lambda link: None,
        on_offline=lambda link, reason: None,
        next_sn=lambda: 1,
    )
    assert await link.register(asked)
    assert link.online and endpoint.sent
    return link.expires


@pytest.mark.parametrize(
    "contacts",
    [
        # Issue 13 item 18: another binding's short time must not become ours.
        [f"<sip:{GW}@203.0.113.5:5060>;expires=10", f"<{OUR_CONTACT}>;expires=3600"],
        [f"<{OUR_CONTACT}>;expires=3600", "<sip:34020000002000000099@192.0.2.10>;expires=10"],
        # One header with both, our URI written without its default port.
        [f"<sip:other@192.0.2.10:5070>;expires=10, <sip:{GW}@192.0.2.10>;expires=3600"],
    ],
)
async def test_the_lifetime_is_that_of_our_own_contact(contacts: list[str]) -> None:
    headers = [("Contact", c) for c in contacts] + [("Expires", "7200")]
    assert await granted(headers) == 3600


async def test_our_contact_rewritten_by_a_nat_aware_registrar_still_counts() -> None:
    headers = [("Contact", f"<sip:{GW}@203.0.113.77:40123>;expires=900"), ("Expires", "7200")]
    assert await granted(headers) == 900


async def test_without_our_contact_the_expires_header_then_what_we_asked() -> None:
    others = [
        ("Contact", "<sip:34020000002000000099@203.0.113.5>;expires=10"),
        ("Contact", f"<sip:{GW}@203.0.113.6>;expires=20"),
        ("Contact", f"<sip:{GW}@203.0.113.7>;expires=30"),
    ]
    assert await granted([*others, ("Expires", "2400")]) == 2400
    assert await granted(others, asked=1800) == 1800
    # Our Contact without ;expires: the header.
    assert await granted([("Contact", f"<{OUR_CONTACT}>"), ("Expires", "600")]) == 600
