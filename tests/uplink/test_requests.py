"""The requests the gateway makes out of dialog, and the NOTIFYs of an upper's subscription, as
they leave it (RFC 3261 §8.1.1, RFC 6665 §4.2; GB/T 28181-2022 §9.2, §9.4, §9.5, §9.11, §9.12).

All of them are written by :mod:`gateway.sip.builder` (the NOTIFYs through the dialog of
:class:`gateway.sip.subscription.Notifier`); these tests pin the form each had when it was
written by hand: header order (X-GB-Ver after Content-Type on an INVITE), a To without a tag,
a fresh Call-ID and From tag per request, CSeq as each site counts it. The gateway's endpoint
is watched as it is asked to send, before it adds Via, Max-Forwards and User-Agent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.sip import Endpoint, Peer, Request, parse
from tests.conftest import wait_for
from tests.media.rig import GW, NVR, UP, Rig

pytestmark = pytest.mark.timeout(60)

UP_DOMAIN = UP[:10]  # as the rig configures the upper


def record(monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint) -> list[tuple[Request, Peer]]:
    """Every request ``endpoint`` is asked to send, as it was built (a parsed copy)."""
    sent: list[tuple[Request, Peer]] = []
    original = endpoint.request

    async def request(req: Request, peer: Peer, **kw: Any) -> Any:
        copy = parse(req.to_bytes())
        assert isinstance(copy, Request)
        sent.append((copy, peer))
        return await original(req, peer, **kw)

    monkeypatch.setattr(endpoint, "request", request)
    return sent


def names(req: Request) -> list[str]:
    return [name for name, _ in req.headers() if name != "Content-Length"]


def only(sent: list[tuple[Request, Peer]], match: Callable[[Request], bool]) -> list[Request]:
    return [req for req, _ in sent if match(req)]


async def test_invite_to_a_device_as_written_by_hand(rig_factory, monkeypatch) -> None:
    rig: Rig = await rig_factory(gb_version="3.0")
    domain = rig.gw.config.gateway.domain
    sent = record(monkeypatch, rig.gw.endpoint)
    call = await rig.invite()
    assert call.status == 200
    (req,) = only(sent, lambda r: r.method == "INVITE")
    where = f"127.0.0.1:{rig.nvr.endpoint.port}"
    assert req.uri == f"sip:{rig.channel}@{where}"
    assert names(req) == [
        "From", "To", "Call-ID", "CSeq", "Contact", "Subject", "Content-Type", "X-GB-Ver",
    ]  # fmt: skip
    assert req.get_header("From") == f"<sip:{GW}@{domain}>;tag={req.from_.tag}"
    assert req.from_.tag and len(req.call_id) == 24
    assert req.get_header("To") == f"<sip:{rig.channel}@{where}>"  # no tag (§8.1.1.2)
    assert req.get_header("CSeq") == "1 INVITE"
    assert req.get_header("Contact") == f"<sip:{GW}@127.0.0.1:{rig.gw.port}>"
    ssrc = (req.get_header("Subject") or "").partition(":")[2].partition(",")[0]
    assert req.get_header("Subject") == f"{rig.channel}:{ssrc},{GW}:0"
    assert req.get_header("Content-Type") == "application/sdp"
    assert req.get_header("X-GB-Ver") == "3.0"
    await call.bye()
    await rig.at_rest()


async def test_invite_to_a_2016_device_has_no_version_header(rig_factory, monkeypatch) -> None:
    rig: Rig = await rig_factory()
    sent = record(monkeypatch, rig.gw.endpoint)
    call = await rig.invite()
    (req,) = only(sent, lambda r: r.method == "INVITE")
    assert names(req)[-1] == "Content-Type" and req.get_header("X-GB-Ver") is None
    await call.bye()
    await rig.at_rest()


async def test_broadcast_invite_to_the_upper_as_written_by_hand(rig_factory, monkeypatch) -> None:
    rig: Rig = await rig_factory(audio_outputs=1, upper={"gb_version": "2022"})
    domain = rig.gw.config.gateway.domain
    target = rig.nvr.audio_output_id(1)
    sent = record(monkeypatch, rig.gw.endpoint)
    call = await rig.platform.broadcast(GW, target, transport="any")
    await wait_for(lambda: call.acked, 5, "ACK from the gateway")
    (req,) = only(sent, lambda r: r.method == "INVITE")
    assert req.uri == f"sip:{UP}@127.0.0.1:{rig.platform.endpoint.port}"
    assert names(req) == [
        "From", "To", "Call-ID", "CSeq", "Contact", "Subject", "Content-Type", "X-GB-Ver",
    ]  # fmt: skip
    # From the voice output, to the upper that is the broadcast's source (2022 §9.12).
    assert req.get_header("From") == f"<sip:{target}@{domain}>;tag={req.from_.tag}"
    assert req.get_header("To") == f"<sip:{UP}@{UP_DOMAIN}>"
    assert req.get_header("CSeq") == "1 INVITE"
    assert req.get_header("Contact") == f"<sip:{GW}@127.0.0.1:{rig.gw.port}>"
    ssrc = (req.get_header("Subject") or "").partition(":")[2].partition(",")[0]
    assert req.get_header("Subject") == f"{UP}:{ssrc},{target}:0"
    assert req.get_header("X-GB-Ver") == "3.0"
    await call.bye()
    await rig.at_rest()


async def test_messages_to_the_upper_and_to_a_device(rig_factory, monkeypatch) -> None:
    """A query forwarded to the NVR goes in a MESSAGE whose CSeq is the gateway's running count
    towards devices; the answer goes up in a MESSAGE with CSeq 1; each has its own Call-ID and
    From tag."""
    rig: Rig = await rig_factory()
    domain = rig.gw.config.gateway.domain
    sent = record(monkeypatch, rig.gw.endpoint)
    for _ in range(2):
        result = await rig.platform.device_info(GW, NVR)
        assert result.status == 200 and result.responses
    down = only(sent, lambda r: r.method == "MESSAGE" and r.uri.startswith(f"sip:{NVR}@"))
    up = only(sent, lambda r: r.method == "MESSAGE" and r.uri.startswith(f"sip:{UP}@"))
    up = [r for r in up if b"DeviceInfo" in r.body]
    assert len(down) == 2 and len(up) == 2
    where = f"127.0.0.1:{rig.nvr.endpoint.port}"
    for req in down:
        assert names(req) == ["From", "To", "Call-ID", "CSeq", "Content-Type"]
        assert req.uri == f"sip:{NVR}@{where}"
        assert req.get_header("From") == f"<sip:{GW}@{domain}>;tag={req.from_.tag}"
        assert req.get_header("To") == f"<sip:{NVR}@{where}>"
        assert req.get_header("Content-Type") == "Application/MANSCDP+xml"
    assert down[1].cseq.seq > down[0].cseq.seq and down[0].cseq.method == "MESSAGE"
    for req in up:
        assert names(req) == ["From", "To", "Call-ID", "CSeq", "Content-Type"]
        assert req.uri == f"sip:{UP}@127.0.0.1:{rig.platform.endpoint.port}"
        assert req.get_header("From") == f"<sip:{GW}@{domain}>;tag={req.from_.tag}"
        assert req.get_header("To") == f"<sip:{UP}@{UP_DOMAIN}>"
        assert req.get_header("CSeq") == "1 MESSAGE"
    every = down + up
    assert len({r.call_id for r in every}) == len({r.from_.tag for r in every}) == 4


async def test_notifies_of_an_upper_subscription_as_written_by_hand(
    rig_factory, monkeypatch
) -> None:
    """The uplink's NOTIFYs come from the RFC 6665 dialog the SUBSCRIBE made: its Call-ID,
    our tag (the 200's To tag) in From, the upper's in To, CSeq from 1, the upper's Contact as
    Request-URI, then Contact, Event, Subscription-State, Content-Type; the last one after the
    un-SUBSCRIBE says ``terminated;reason=timeout``."""
    rig: Rig = await rig_factory()
    domain = rig.gw.config.gateway.domain
    sent = record(monkeypatch, rig.gw.endpoint)
    sub = await rig.platform.subscribe(GW, "Alarm", expires=300)
    assert sub.active
    await rig.nvr.send_alarm(rig.channel, priority=1)

    def notifies() -> list[Request]:
        return only(sent, lambda r: r.method == "NOTIFY" and r.call_id == sub.call_id)

    await wait_for(lambda: len(notifies()) == 1, 5, "alarm NOTIFY")
    await rig.platform.unsubscribe(sub)
    await wait_for(lambda: len(notifies()) == 2, 5, "terminating NOTIFY")
    alarm, last = notifies()
    assert alarm.uri == f"sip:{UP}@127.0.0.1:{rig.platform.endpoint.port}"  # its Contact
    assert names(alarm) == [
        "From", "To", "Call-ID", "CSeq", "Contact", "Event", "Subscription-State", "Content-Type",
    ]  # fmt: skip
    assert alarm.get_header("From") == f"<sip:{GW}@{domain}>;tag={sub.remote_tag}"
    assert alarm.get_header("To") == f"<sip:{UP}@{UP_DOMAIN}>;tag={sub.local_tag}"
    assert alarm.get_header("CSeq") == "1 NOTIFY"
    assert alarm.get_header("Contact") == f"<sip:{GW}@127.0.0.1:{rig.gw.port}>"
    assert alarm.get_header("Event") == "presence"
    state = alarm.get_header("Subscription-State") or ""
    assert state.startswith("active;expires=") and 290 <= int(state.partition("=")[2]) <= 300
    assert names(last) == names(alarm)[:-1]  # no body, no Content-Type
    assert last.get_header("CSeq") == "2 NOTIFY" and last.get_header("To") == alarm.get_header("To")
    assert last.get_header("Subscription-State") == "terminated;reason=timeout"
