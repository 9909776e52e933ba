"""The registrar over real UDP and TCP sockets on 127.0.0.1 (GB/T 28181-2022 §9.1, §9.6)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice, keepalive_body
from gateway.events import DeviceOffline, DeviceOnline
from gateway.metrics import Metrics
from gateway.sip import DigestClient, Endpoint, Peer, Request, Response, parse
from tests.conftest import RawUdp, make_config, sim, wait_for

DEV = "34020000001320000001"
DEV2 = "34020000001320000002"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$")


def events_of(gw: Any) -> list[object]:
    seen: list[object] = []
    gw.events.subscribe(DeviceOnline, seen.append)
    gw.events.subscribe(DeviceOffline, seen.append)
    return seen


async def challenge_of(dev: SimDevice) -> dict[str, str]:
    """Send an unauthenticated REGISTER and return the parameters of the 401's challenge."""
    challenge = await dev.endpoint.request(dev.build_register(3600), dev.server)
    params = challenge.auth_params("WWW-Authenticate")
    assert challenge.status == 401 and params is not None
    return params[1]


async def test_register_with_qop_gets_date_contact_expires_and_version(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway()
    seen = events_of(gw)
    dev = sim(device_endpoint, gw, DEV, gb_version="3.0", expires=3600)
    resp = await dev.register()
    assert resp.status == 200
    first = dev.responses[0]
    assert first.status == 401
    challenge = first.get_header("WWW-Authenticate") or ""
    assert 'realm="3402000000"' in challenge and 'qop="auth"' in challenge
    assert first.get_header("X-GB-Ver") == "3.0"
    assert DATE.match(resp.get_header("Date") or "")
    assert resp.get_header("Expires") == "3600"
    assert resp.contacts[0].uri.user == DEV
    assert resp.contacts[0].param("expires") == "3600"
    assert resp.get_header("X-GB-Ver") == "3.0"
    device = gw.registrar.devices[DEV]
    assert device.online and device.transport == "udp"
    assert device.port == device_endpoint.port and device.gb_version == "3.0"
    assert seen == [DeviceOnline(DEV, "udp", "127.0.0.1", device_endpoint.port, True)]


async def test_register_without_qop(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(auth={"qop": False})
    dev = sim(device_endpoint, gw, DEV)
    resp = await dev.register()
    assert resp.status == 200
    assert "qop" not in (dev.responses[0].get_header("WWW-Authenticate") or "")
    assert resp.get_header("X-GB-Ver") is None  # only echoed when the device sends it


async def test_wrong_password_unknown_device_and_bad_id(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(
        auth={
            "unknown_devices": "reject",
            "devices": [{"id": DEV, "password": "secret"}],
        }
    )
    good = await sim(device_endpoint, gw, DEV, password="secret").register()
    assert good.status == 200
    wrong = await sim(device_endpoint, gw, DEV, password="12345678").register()
    assert (wrong.status, wrong.reason) == (403, "Forbidden (wrong password)")
    unknown = await sim(device_endpoint, gw, DEV2).register()
    assert (unknown.status, unknown.reason) == (403, "Forbidden (unknown device)")
    bad = await sim(device_endpoint, gw, "3402000000132000000X").register()
    assert bad.status == 400 and "20 digits" in bad.reason
    short = await sim(device_endpoint, gw, "123").register()
    assert short.status == 400
    assert gw.metrics.get("register.auth.bad_password") == 1
    assert gw.metrics.get("register.unknown_device") == 1
    assert gw.metrics.get("register.bad_id") == 2
    assert set(gw.registrar.devices) == {DEV}


async def test_stale_nonce_gets_stale_challenge_then_succeeds(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(auth={"nonce_ttl": 0.3})
    dev = sim(device_endpoint, gw, DEV)
    params = await challenge_of(dev)
    await asyncio.sleep(0.5)
    auth = DigestClient(DEV, "12345678").authorization(params, "REGISTER", dev.server_uri)
    stale = await device_endpoint.request(dev.build_register(3600, auth), dev.server)
    assert stale.status == 401
    assert "stale=true" in (stale.get_header("WWW-Authenticate") or "")
    assert gw.metrics.get("register.auth.stale") == 1
    assert (await dev.register()).status == 200


async def test_replayed_nonce_count_is_refused(start_gateway, device_endpoint) -> None:
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    params = await challenge_of(dev)
    auth = DigestClient(DEV, "12345678").authorization(params, "REGISTER", dev.server_uri)
    first = await device_endpoint.request(dev.build_register(3600, auth), dev.server)
    assert first.status == 200
    # An eavesdropper replays the same Authorization (same nonce, same nc).
    replay = await device_endpoint.request(dev.build_register(3600, auth), dev.server)
    assert replay.status == 401
    assert "replayed" in replay.reason
    assert "WWW-Authenticate" in dict(replay.headers())
    assert gw.metrics.get("register.auth.replay") == 1


async def test_unregister_and_expires_clamping(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(
        registrar={"min_expires": 60, "max_expires": 7200, "default_expires": 3600}
    )
    seen = events_of(gw)
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register(10**6)).get_header("Expires") == "7200"
    assert (await dev.register(5)).get_header("Expires") == "60"
    resp = await dev.unregister()
    assert resp.status == 200 and resp.get_header("Expires") == "0"
    assert not gw.registrar.devices[DEV].online
    assert seen[-1] == DeviceOffline(DEV, "unregistered")
    # A keepalive after unregistering must make the device register again.
    assert (await dev.keepalive()).status == 404


async def test_refresh_same_call_id_and_out_of_order_cseq(start_gateway, device_endpoint) -> None:
    gw = await start_gateway()
    seen = events_of(gw)
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register()).status == 200
    assert (await dev.register()).status == 200  # refresh: same Call-ID, higher CSeq
    assert len([e for e in seen if isinstance(e, DeviceOnline)]) == 1
    assert gw.registrar.devices[DEV].cseq == dev.cseq
    dev.cseq -= 3  # go backwards on the same Call-ID
    resp = await dev.register()
    assert resp.status == 500 and "out-of-order" in resp.reason


async def test_keepalive_refreshes_and_unregistered_gets_404(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.keepalive()).status == 404
    assert (await dev.register()).status == 200
    before = gw.registrar.devices[DEV].last_seen
    await asyncio.sleep(0.02)
    hik = "<Info>\r\n<DeviceID>34020000001310000003</DeviceID>\r\n</Info>\r\n"
    resp = await dev.keepalive(extra=hik)
    assert resp.status == 200 and resp.body == b""
    assert gw.registrar.devices[DEV].last_seen > before
    assert gw.metrics.get("keepalive.ok") == 1
    assert gw.metrics.get("keepalive.unregistered") == 1


async def test_keepalive_from_new_address_does_not_move_device(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register()).status == 200
    other = Endpoint(metrics=Metrics())
    await other.start("127.0.0.1", 0)
    try:
        spoof = SimDevice(other, DEV, dev.server)
        assert (await spoof.keepalive()).status == 200
        device = gw.registrar.devices[DEV]
        assert device.port == device_endpoint.port  # still the REGISTER's source
        assert gw.metrics.get("keepalive.address_mismatch") == 1
        # A REGISTER with valid credentials from the new address does move it.
        assert (await spoof.register()).status == 200
        assert gw.registrar.devices[DEV].port == other.port
    finally:
        await other.close()


async def test_offline_after_missed_keepalives(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(
        keepalive={"interval": 0.2, "timeout_count": 2, "check_interval": 0.05}
    )
    seen = events_of(gw)
    alive = sim(device_endpoint, gw, DEV)
    silent = sim(device_endpoint, gw, DEV2)
    assert (await alive.register()).status == 200
    assert (await silent.register()).status == 200
    for _ in range(8):
        await asyncio.sleep(0.1)
        assert (await alive.keepalive()).status == 200
    assert gw.registrar.devices[DEV].online
    assert not gw.registrar.devices[DEV2].online
    assert DeviceOffline(DEV2, "keepalive timeout") in seen
    assert (await silent.keepalive()).status == 404


async def test_offline_when_registration_expires(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(
        registrar={"min_expires": 1, "default_expires": 1},
        keepalive={"check_interval": 0.05},
    )
    seen = events_of(gw)
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register(1)).status == 200
    await wait_for(lambda: not gw.registrar.devices[DEV].online, 3, "expiry")
    assert DeviceOffline(DEV, "expired") in seen


async def test_tcp_register_keepalive_and_connection_drop(start_gateway) -> None:
    gw = await start_gateway()
    seen = events_of(gw)
    ep = Endpoint(metrics=Metrics())
    await ep.start("127.0.0.1", 0)
    dev = sim(ep, gw, DEV, transport="tcp")
    assert (await dev.register()).status == 200
    assert (await dev.keepalive()).status == 200
    device = gw.registrar.devices[DEV]
    assert device.transport == "tcp" and device.online
    await ep.close()
    await wait_for(lambda: not gw.registrar.devices[DEV].online, 3, "TCP drop")
    assert DeviceOffline(DEV, "connection lost") in seen


async def test_retransmitted_register_is_absorbed(start_gateway, raw_udp: RawUdp) -> None:
    gw = await start_gateway()
    raw = (
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{raw_udp.port};rport;branch=z9hG4bKretx1\r\n"
        f"From: <sip:{DEV}@3402000000>;tag=1\r\nTo: <sip:{DEV}@3402000000>\r\n"
        "Call-ID: retx@test\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nExpires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    raw_udp.send(raw, gw.port)
    first = await raw_udp.recv()
    raw_udp.send(raw, gw.port)
    second = await raw_udp.recv()
    assert first == second  # the same 401, nonce included: resent, not recomputed
    assert gw.metrics.get("register.received") == 1
    assert gw.metrics.get("sip.rx.retransmission") == 1
    resp = parse(first)
    assert isinstance(resp, Response) and resp.status == 401
    assert resp.top_via.param("rport") == str(raw_udp.port)
    assert resp.top_via.param("received") == "127.0.0.1"


async def test_bad_input_is_answered_or_dropped_and_counted(
    start_gateway, device_endpoint, raw_udp: RawUdp
) -> None:
    gw = await start_gateway()
    port = gw.port
    raw_udp.send(b"\x00\xff garbage \x01", port)
    raw_udp.send(b"REGISTER sip:a@b SIP/2.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n", port)
    bad_cseq = (
        "MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{raw_udp.port};branch=z9hG4bKbad1\r\n"
        f"From: <sip:{DEV}@3402000000>;tag=1\r\nTo: <sip:34020000002000000001@3402000000>\r\n"
        "Call-ID: bad@test\r\nCSeq: many MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    raw_udp.send(bad_cseq, port)
    resp = parse(await raw_udp.recv())
    assert isinstance(resp, Response) and (resp.status, resp.reason) == (400, "Bad CSeq")
    no_body = bad_cseq.replace(b"many MESSAGE", b"1 MESSAGE").replace(b"bad1", b"bad2")
    raw_udp.send(no_body, port)
    resp = parse(await raw_udp.recv())
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.reason == "Bad Request (MANSCDP body)"
    assert "empty body" in (resp.get_header("Warning") or "")
    # A method nobody answers here (PUBLISH, RFC 3903): 405 with Allow.
    publish = no_body.replace(b"MESSAGE", b"PUBLISH").replace(b"bad2", b"bad3")
    raw_udp.send(publish, port)
    resp = parse(await raw_udp.recv())
    assert isinstance(resp, Response) and resp.status == 405
    assert "REGISTER" in (resp.get_header("Allow") or "")
    wrong_target = no_body.replace(
        b"MESSAGE sip:34020000002000000001", b"MESSAGE sip:34020000002000000999"
    )
    raw_udp.send(wrong_target.replace(b"bad2", b"bad4"), port)
    resp = parse(await raw_udp.recv())
    assert isinstance(resp, Response) and resp.status == 404

    # TCP: a truncated message, then an oversize header block.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"REGISTER sip:a@b SIP/2.0\r\nContent-Length: 50\r\n\r\nshort")
    await writer.drain()
    writer.close()
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
    writer2.write(b"REGISTER sip:a@b SIP/2.0\r\nX: " + b"a" * 70000)
    await writer2.drain()
    assert await asyncio.wait_for(reader2.read(), 3) == b""  # the gateway closed it
    writer2.close()
    await wait_for(lambda: gw.metrics.get("sip.tcp.truncated") == 1, 3, "truncation counted")

    # Everyone else keeps being served.
    assert (await sim(device_endpoint, gw, DEV).register()).status == 200
    assert gw.metrics.get("sip.rx.parse_error") == 2
    assert gw.metrics.get("sip.rx.bad_request") == 1
    assert gw.metrics.get("sip.tcp.framing_error") == 1
    assert gw.metrics.get("message.bad_body") == 1
    assert gw.metrics.get("sip.rx.method_not_allowed") == 1
    assert gw.metrics.get("sip.rx.not_served") == 1


async def test_restart_keeps_registrations(tmp_path: Path, start_gateway) -> None:
    config = make_config(tmp_path)
    gw = await start_gateway(config)
    udp_ep = Endpoint(metrics=Metrics())
    await udp_ep.start("127.0.0.1", 0)
    tcp_ep = Endpoint(metrics=Metrics())
    await tcp_ep.start("127.0.0.1", 0)
    try:
        assert (await sim(udp_ep, gw, DEV).register()).status == 200
        assert (await sim(tcp_ep, gw, DEV2, transport="tcp").register()).status == 200
        await gw.close()
        from gateway.app import Gateway

        gw2 = Gateway(config)
        await gw2.start()
        try:
            udp_dev = gw2.registrar.devices[DEV]
            assert udp_dev.online and udp_dev.transport == "udp" and udp_dev.port == udp_ep.port
            assert udp_dev.expires_at > udp_dev.registered_at
            tcp_dev = gw2.registrar.devices[DEV2]
            assert tcp_dev.transport == "tcp" and not tcp_dev.online
            # The UDP device's keepalive is accepted by the new process without re-registering.
            resp = await SimDevice(udp_ep, DEV, Peer("udp", "127.0.0.1", gw2.port)).keepalive()
            assert resp.status == 200
        finally:
            await gw2.close()
    finally:
        await udp_ep.close()
        await tcp_ep.close()


async def test_many_devices_keep_registering_during_garbage(
    start_gateway, device_endpoint, raw_udp: RawUdp
) -> None:
    gw = await start_gateway()

    async def spray() -> None:
        for i in range(300):
            raw_udp.send(b"INVITE garbage %d\r\n\r\n" % i, gw.port)
            if i % 50 == 0:
                await asyncio.sleep(0)

    ids = [f"340200000013200{i:05d}" for i in range(50)]
    results = await asyncio.gather(spray(), *(sim(device_endpoint, gw, d).register() for d in ids))
    assert all(r.status == 200 for r in results[1:])
    assert sum(d.online for d in gw.registrar.devices.values()) == 50
    await wait_for(lambda: gw.metrics.get("sip.rx.parse_error") == 300, 3, "garbage counted")


async def test_unknown_cmd_type_gets_501_naming_it(start_gateway, device_endpoint) -> None:
    """A MESSAGE whose CmdType the standard does not define gets an honest 501."""
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register()).status == 200
    body = keepalive_body(DEV, 1).replace(b"Keepalive", b"VendorStatus")
    req: Request = dev.build_message(body)
    resp = await device_endpoint.request(req, dev.server)
    assert resp.status == 501 and "Notify VendorStatus" in resp.reason


async def test_digest_for_another_server_or_realm_is_refused(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(auth={"qop": False})
    dev = sim(device_endpoint, gw, DEV)
    params = await challenge_of(dev)
    client = DigestClient(DEV, "12345678")
    other = client.authorization(params, "REGISTER", "sip:34020000002000000999@3402000000")
    resp = await device_endpoint.request(dev.build_register(3600, other), dev.server)
    assert resp.status == 400 and "digest uri" in resp.reason
    realm = client.authorization({**params, "realm": "elsewhere"}, "REGISTER", dev.server_uri)
    resp = await device_endpoint.request(dev.build_register(3600, realm), dev.server)
    assert resp.status == 401 and "realm" in resp.reason
    # An address-only digest uri (sip:IP:port) is how some devices answer: accepted.
    ip_uri = client.authorization(params, "REGISTER", f"sip:127.0.0.1:{gw.port}")
    assert (
        await device_endpoint.request(dev.build_register(3600, ip_uri), dev.server)
    ).status == 200


async def test_replayed_register_without_qop_cannot_move_the_device(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(auth={"qop": False})
    dev = sim(device_endpoint, gw, DEV)
    params = await challenge_of(dev)
    auth = DigestClient(DEV, "12345678").authorization(params, "REGISTER", dev.server_uri)
    assert (await device_endpoint.request(dev.build_register(3600, auth), dev.server)).status == 200
    attacker = Endpoint(metrics=Metrics())
    await attacker.start("127.0.0.1", 0)
    try:
        thief = SimDevice(attacker, DEV, dev.server, call_id="stolen")
        resp = await attacker.request(thief.build_register(3600, auth), dev.server)
        assert resp.status == 401 and "replayed" in resp.reason
        assert gw.registrar.devices[DEV].port == device_endpoint.port
    finally:
        await attacker.close()


async def test_request_with_a_broken_header_line_gets_400(start_gateway, raw_udp: RawUdp) -> None:
    gw = await start_gateway()
    raw = (
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{raw_udp.port};rport;branch=z9hG4bKbroken\r\n"
        f"From: <sip:{DEV}@3402000000>;tag=1\r\nTo: <sip:{DEV}@3402000000>\r\n"
        "Call-ID: broken@test\r\nCSeq: 1 REGISTER\r\nthis line has no colon\r\n"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    raw_udp.send(raw, gw.port)
    resp = parse(await raw_udp.recv())
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (400, "Bad Header")
    assert resp.call_id == "broken@test" and resp.cseq.seq == 1
    assert gw.metrics.get("sip.rx.parse_error") == 1
    assert gw.metrics.get("register.received") == 0


async def test_rebooted_device_may_reuse_its_call_id(start_gateway, device_endpoint) -> None:
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    assert (await dev.register()).status == 200
    assert (await dev.unregister()).status == 200
    dev.cseq = 0  # rebooted: same Call-ID, CSeq starts over
    assert (await dev.register()).status == 200
    assert gw.registrar.devices[DEV].online


async def test_refreshes_do_not_grow_the_expiry_heap(start_gateway, device_endpoint) -> None:
    gw = await start_gateway(auth={"qop": False})
    dev = sim(device_endpoint, gw, DEV)
    for _ in range(40):
        assert (await dev.register()).status == 200
    registrar = gw.registrar
    for _ in range(3000):  # what 3,000 more refreshes do to the heap
        registrar._push_expiry(registrar.devices[DEV])
    assert len(registrar._expiries) <= 2 * registrar.online_count() + 1024
    assert min(registrar._expiries)[1] == DEV


# -- password guessing (issue 13 item 3) and unsupported schemes (item 13) --------------------

LIMITS = {
    "max_failures_per_device": 3,
    "max_failures_per_address": 6,
    "failure_window": 600,
    "lockout_seconds": 600,
}


@pytest.fixture
async def second_endpoint() -> AsyncIterator[Endpoint]:
    """A device at another source address (127.0.0.2 is loopback too)."""
    ep = Endpoint(metrics=Metrics())
    await ep.start("127.0.0.2", 0)
    yield ep
    await ep.close()


async def answer_with(dev: SimDevice, password: str, params: dict[str, str]) -> Response:
    auth = DigestClient(dev.device_id, password).authorization(params, "REGISTER", dev.server_uri)
    return await dev.endpoint.request(dev.build_register(3600, auth), dev.server)


async def test_a_failed_answer_uses_up_its_nonce(start_gateway, device_endpoint) -> None:
    gw = await start_gateway()
    dev = sim(device_endpoint, gw, DEV)
    params = await challenge_of(dev)
    assert (await answer_with(dev, "87654321", params)).status == 403
    # The right password on the nonce the wrong one used: a fresh challenge, not a 200.
    again = await answer_with(dev, "12345678", params)
    assert (again.status, again.reason) == (401, "Unauthorized (nonce used up)")
    fresh = again.auth_params("WWW-Authenticate")
    assert fresh is not None and fresh[1]["nonce"] != params["nonce"]
    assert "stale" not in fresh[1]  # stale=true would ask for the same password again
    assert DEV not in gw.registrar.devices
    assert (await answer_with(dev, "12345678", fresh[1])).status == 200
    assert gw.metrics.get("register.auth.used_up") == 1


class LogRecorder:
    """Stands in for a module's structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


async def test_password_guessing_is_locked_out_without_checking_the_password(
    start_gateway, device_endpoint, second_endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = LogRecorder()
    monkeypatch.setattr("gateway.downlink.registrar.log", logs)
    gw = await start_gateway(auth=LIMITS)
    guesser = sim(device_endpoint, gw, DEV)
    spare = await challenge_of(guesser)  # taken before the lock-out, answered during it
    for guess in range(3):
        params = await challenge_of(guesser)
        resp = await answer_with(guesser, f"{guess:08d}", params)
        assert (resp.status, resp.reason) == (403, "Forbidden (wrong password)")
    for _ in range(3):  # locked out: not even a challenge, and the right password is refused
        locked = await guesser.endpoint.request(guesser.build_register(3600), guesser.server)
        assert (locked.status, locked.reason) == (403, "Forbidden (too many failed attempts)")
        assert 300 < int(locked.get_header("Retry-After") or "0") <= 600  # seconds left
    right = await answer_with(guesser, "12345678", spare)
    assert right.status == 403 and right.get_header("Retry-After") is not None
    assert DEV not in gw.registrar.devices
    assert gw.metrics.get("register.ok") == 0
    assert gw.metrics.get("register.auth.bad_password") == 3
    assert gw.metrics.get("register.locked_out.device") == 1
    assert gw.metrics.get("register.refused_locked.device") == 4
    lockouts = [fields for _, event, fields in logs.lines if event == "register.locked_out"]
    assert len(lockouts) == 1 and lockouts[0]["limit"] == "device"
    # The real device, from an address that never failed, registers as usual.
    real = SimDevice(second_endpoint, DEV, guesser.server)
    assert (await real.register()).status == 200
    assert gw.registrar.devices[DEV].host == "127.0.0.2"


async def test_an_address_locked_out_does_not_affect_other_addresses(
    start_gateway, device_endpoint, second_endpoint
) -> None:
    gw = await start_gateway(auth=LIMITS)
    ids = [f"340200000013200001{i:02d}" for i in range(6)]
    for device_id in ids:  # spread over IDs, under the per-device limit
        dev = sim(device_endpoint, gw, device_id)
        assert (await answer_with(dev, "00000000", await challenge_of(dev))).status == 403
    assert gw.metrics.get("register.locked_out.address") == 1
    other_id = sim(device_endpoint, gw, DEV2)
    resp = await other_id.endpoint.request(other_id.build_register(3600), other_id.server)
    assert resp.status == 403 and resp.get_header("Retry-After") is not None
    assert gw.metrics.get("register.refused_locked.address") == 1
    for device_id in (*ids, DEV2):
        assert (
            await SimDevice(second_endpoint, device_id, other_id.server).register()
        ).status == 200


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda a: "Basic " + base64.b64encode(b"x:12345678").decode(), id="basic"),
        pytest.param(lambda a: a.replace("algorithm=MD5", "algorithm=MD5-sess"), id="md5-sess"),
        pytest.param(lambda a: a.replace("algorithm=MD5", "algorithm=SHA-256"), id="sha-256"),
        pytest.param(
            lambda a: a.replace("algorithm=MD5", "algorithm=SHA-512-256"), id="sha-512-256"
        ),
        pytest.param(lambda a: a.replace("qop=auth", "qop=auth-int"), id="auth-int"),
    ],
)
async def test_an_unsupported_scheme_or_algorithm_is_challenged_again(
    start_gateway, device_endpoint, rewrite: Any
) -> None:
    gw = await start_gateway(auth={**LIMITS, "max_failures_per_device": 1})
    dev = sim(device_endpoint, gw, DEV)
    for _ in range(3):  # no failed guess: repeating it locks nothing out
        params = await challenge_of(dev)
        auth = DigestClient(DEV, "12345678").authorization(params, "REGISTER", dev.server_uri)
        other = rewrite(auth)
        assert other != auth
        resp = await device_endpoint.request(dev.build_register(3600, other), dev.server)
        assert (resp.status, resp.reason) == (401, "Unauthorized (only MD5 digest)")
        challenge = resp.auth_params("WWW-Authenticate")
        assert challenge is not None and challenge[0] == "Digest"
        assert challenge[1]["nonce"] != params["nonce"]
        assert challenge[1]["algorithm"] == "MD5"
    assert gw.metrics.get("register.auth.unsupported") == 3
    assert gw.metrics.get("register.auth.bad_password") == 0
    assert (await dev.register()).status == 200


# -- review of issue 13: nonces bound to their host, a NAT's working devices -------------------
@pytest.mark.timeout(60)
async def test_wrong_answers_with_a_forged_source_count_no_failure(
    start_gateway, device_endpoint, second_endpoint
) -> None:
    # The guesser takes challenges at its own address (127.0.0.1) and sends the wrong answers
    # from the victim's (127.0.0.2, standing in for a forged UDP source): each gets a fresh
    # challenge, nothing is counted, and nothing is locked out, however many it sends.
    gw = await start_gateway(auth=LIMITS)
    guesser = sim(device_endpoint, gw, DEV)
    forged = SimDevice(second_endpoint, DEV, guesser.server)
    for guess in range(50):
        params = await challenge_of(guesser)
        resp = await answer_with(forged, f"{guess:08d}", params)
        assert (resp.status, resp.reason) == (401, "Unauthorized (nonce not issued here)")
        fresh = resp.auth_params("WWW-Authenticate")
        assert fresh is not None and fresh[1]["nonce"] != params["nonce"]
    assert gw.metrics.get("register.auth.bad_password") == 0
    assert gw.metrics.get("register.auth.unknown_nonce") == 50
    assert gw.registrar.limits.size() == 0
    # The device at the address the answers claimed to come from registers as usual, and so
    # does one at the guesser's own address (no failure was ever counted there either).
    assert (await forged.register()).status == 200
    assert (await sim(device_endpoint, gw, DEV2).register()).status == 200


async def test_a_registered_device_keeps_refreshing_through_its_nat_address_lock_out(
    start_gateway, device_endpoint
) -> None:
    gw = await start_gateway(auth=LIMITS)
    working = sim(device_endpoint, gw, DEV)
    assert (await working.register()).status == 200
    # Two misconfigured neighbours behind the same address fail until the address is locked.
    for n in range(2):
        neighbour = sim(device_endpoint, gw, f"3402000000132000{n + 10:04d}")
        for _ in range(3):
            resp = await answer_with(neighbour, "00000000", await challenge_of(neighbour))
            assert resp.status == 403
    assert gw.metrics.get("register.locked_out.address") == 1
    # An ID not registered from there is refused...
    stranger = sim(device_endpoint, gw, DEV2)
    resp = await stranger.endpoint.request(stranger.build_register(3600), stranger.server)
    assert (resp.status, resp.reason) == (403, "Forbidden (too many failed attempts)")
    # ...the working device refreshes, its registration holds...
    assert (await working.register()).status == 200
    assert gw.registrar.devices[DEV].online
    # ...and a guesser for its ID at that address still meets the per-device limit.
    for _ in range(3):
        assert (await answer_with(working, "00000000", await challenge_of(working))).status == 403
    resp = await working.endpoint.request(working.build_register(3600), working.server)
    assert (resp.status, resp.reason) == (403, "Forbidden (too many failed attempts)")
    assert gw.metrics.get("register.refused_locked.device") == 1
