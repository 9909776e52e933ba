"""The endpoint over real sockets: the asyncio adapter wires the core to UDP and TCP.

The transaction-user rules themselves (matching, retransmissions, ACK for 2xx, CANCEL, 400, 404,
405, 483, the unanswered-request guard, client timeouts) are tested on a fake clock in
``test_core.py``; here, a few of each kind over 127.0.0.1 show that bytes, timers, handlers
(plain and asynchronous) and futures are connected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.metrics import Metrics
from gateway.sip import (
    Endpoint,
    ParseError,
    Peer,
    Request,
    Response,
    ServerContext,
    TimerConfig,
    TransactionTimeout,
    TransportError,
    make_response,
    parse,
)
from tests.conftest import RawUdp, wait_for

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


def message(to_port: int, body: bytes = b"hi") -> Request:
    return Request(
        "MESSAGE",
        f"sip:34020000001320000001@127.0.0.1:{to_port}",
        [
            ("From", "<sip:34020000002000000001@3402000000>;tag=a1"),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", Endpoint.call_id()),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ],
        body,
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_request_and_response(pair: tuple[Endpoint, Endpoint], transport: str) -> None:
    a, b = pair
    got: list[tuple[Request, Peer]] = []

    def handler(req: Request, ctx: ServerContext) -> Response:
        got.append((req, ctx.peer))
        return make_response(req, 200, to_tag="b1")

    b.route("MESSAGE", handler)
    resp = await a.request(message(b.port), Peer(transport, "127.0.0.1", b.port))
    assert resp.status == 200 and resp.to.tag == "b1"
    req, peer = got[0]
    assert req.body == b"hi"
    assert req.get_header("Max-Forwards") == "70"
    assert req.top_via.transport == transport.upper()
    assert req.top_via.branch and req.top_via.branch.startswith("z9hG4bK")
    assert peer.transport == transport


async def test_tcp_connection_is_reused_in_both_directions(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    seen_by_a: list[Peer] = []
    seen_by_b: list[Peer] = []
    a.route("MESSAGE", lambda r, c: seen_by_a.append(c.peer) or make_response(r, 200))
    b.route("MESSAGE", lambda r, c: seen_by_b.append(c.peer) or make_response(r, 200))
    # a dials b; b answers a request back on the very connection a opened.
    assert (await a.request(message(b.port), Peer("tcp", "127.0.0.1", b.port))).status == 200
    back = seen_by_b[0]
    assert back.port != a.port  # an ephemeral client port, not a's listening port
    assert (await b.request(message(a.port), back)).status == 200
    assert seen_by_a[0] == Peer("tcp", "127.0.0.1", b.port)
    assert b.metrics.get("sip.tcp.accepted") == 1
    assert a.metrics.get("sip.tcp.accepted") == 1  # only the outbound connection, no new one


async def test_timeout_and_unreachable(raw_udp: RawUdp) -> None:
    # T1 = 5 ms: timer F (64·T1) fires after 0.32 s of real time.
    a = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.005, t2=0.04, t4=0.04))
    await a.start("127.0.0.1", 0)
    try:
        with pytest.raises(TransactionTimeout):
            await a.request(message(raw_udp.port), Peer("udp", "127.0.0.1", raw_udp.port))
        # Timer E retransmitted the request over UDP, on the loop, before timer F fired.
        copies = raw_udp.queue.qsize()
        assert copies >= 5
        with pytest.raises(TransportError):
            await a.request(message(1), Peer("tcp", "127.0.0.1", 1))
        assert a.core.client_transactions == {}
    finally:
        await a.close()


async def test_handler_failures_become_responses(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair

    def crash(req: Request, ctx: ServerContext) -> Response:
        raise RuntimeError("boom")

    def bad(req: Request, ctx: ServerContext) -> Response:
        raise ParseError("Bad Event", "x")

    async def slow(req: Request, ctx: ServerContext) -> Response:
        await asyncio.sleep(0.01)
        return make_response(req, 202)

    async def slow_crash(req: Request, ctx: ServerContext) -> Response:
        await asyncio.sleep(0.01)
        raise RuntimeError("late boom")

    peer = Peer("udp", "127.0.0.1", b.port)
    for method, handler, status in [
        ("MESSAGE", crash, 500),
        ("NOTIFY", bad, 400),
        ("INFO", slow, 202),
        ("BYE", slow_crash, 500),
    ]:
        b.route(method, handler)
        req = message(b.port)
        req.method = method
        req.set_header("CSeq", f"1 {method}")
        assert (await a.request(req, peer)).status == status
    req = message(b.port)
    req.method = "PUBLISH"
    req.set_header("CSeq", "1 PUBLISH")
    resp = await a.request(req, peer)
    assert resp.status == 405 and "MESSAGE" in (resp.get_header("Allow") or "")
    assert b.metrics.get("sip.handler_error") == 2


async def test_invite_gets_100_and_cancel_gets_487(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    b.route("INVITE", lambda r, c: None)  # never answers by itself
    cancelled: list[Request] = []
    b.route("CANCEL", lambda r, c: cancelled.append(r))
    provisional: list[int] = []
    invite = message(b.port, b"v=0\r\n")
    invite.method = "INVITE"
    invite.set_header("CSeq", "1 INVITE")
    peer = Peer("udp", "127.0.0.1", b.port)
    task = asyncio.create_task(
        a.request(invite, peer, on_provisional=lambda r: provisional.append(r.status))
    )
    await wait_for(lambda: provisional == [100], 3, "100 Trying")
    cancel = Request(
        "CANCEL",
        invite.uri,
        [
            ("Via", invite.get_headers("Via")[0]),
            ("From", invite.get_header("From") or ""),
            ("To", invite.get_header("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", "1 CANCEL"),
            ("Max-Forwards", "70"),
        ],
    )
    a.transports.send(peer, cancel.to_bytes())
    final = await asyncio.wait_for(task, 5)
    assert final.status == 487
    assert len(cancelled) == 1


async def test_crlf_ping_gets_pong(pair: tuple[Endpoint, Endpoint]) -> None:
    _, b = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), 3) == b"\r\n"
    writer.close()


async def test_per_ip_connection_limit_and_idle_close() -> None:
    ep = Endpoint(metrics=Metrics(), max_connections_per_ip=2, tcp_idle_timeout=0.3)
    await ep.start("127.0.0.1", 0)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", ep.port) for _ in range(3)]
        # The third is refused: the server closes it at once.
        assert await asyncio.wait_for(conns[2][0].read(), 3) == b""
        assert ep.metrics.get("sip.tcp.refused_limit") == 1
        # The first two are closed once idle.
        assert await asyncio.wait_for(conns[0][0].read(), 3) == b""
        await wait_for(lambda: ep.metrics.get("sip.tcp.idle_closed") == 2, 3, "idle close")
        for _, w in conns:
            w.close()
    finally:
        await ep.close()


async def test_bad_max_forwards_gets_400_and_leaves_no_transaction(
    pair: tuple[Endpoint, Endpoint], raw_udp: RawUdp
) -> None:
    _, b = pair
    b.route("MESSAGE", lambda r, c: make_response(r, 200))
    template = (
        "MESSAGE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{n}\r\n"
        "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: mf{n}\r\nCSeq: 1 MESSAGE\r\n"
        "Max-Forwards: {mf}\r\nContent-Length: 0\r\n\r\n"
    )
    for n, mf in enumerate(["x", "²", "70"]):
        raw_udp.send(template.format(n=n, mf=mf).encode(), b.port)
        resp = parse(await raw_udp.recv())
        assert isinstance(resp, Response)
        assert resp.status == (200 if mf == "70" else 400)
    assert not any(t.state in ("trying", "proceeding") for t in b.core.server_transactions.values())
    # Over TCP, a bad message does not take the connection (and what follows it) down.
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    bad = template.format(n=7, mf="x").replace("UDP", "TCP")
    good = template.format(n=8, mf="70").replace("UDP", "TCP")
    writer.write((bad + good).encode())
    await writer.drain()
    statuses = []
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        statuses.append(int(head.split(b" ")[1]))
    assert statuses == [400, 200]
    writer.close()
    assert b.metrics.get("sip.rx.internal_error") == 0


async def test_invite_answered_only_provisionally_times_out_both_sides(
    pair: tuple[Endpoint, Endpoint],
) -> None:
    a, b = pair
    b.invite_timeout = 0.5
    assert b.core.invite_timeout == 0.5  # the guard lives in the core and reads it there
    b.route("INVITE", lambda r, c: None)  # rings forever
    invite = message(b.port, b"v=0\r\n")
    invite.method = "INVITE"
    invite.set_header("CSeq", "1 INVITE")
    peer = Peer("udp", "127.0.0.1", b.port)
    with pytest.raises(TransactionTimeout):
        await a.request(invite, peer, timeout=0.3)
    # The UAS side gives up too: its guard answers 408 instead of keeping the transaction.
    await wait_for(lambda: b.metrics.get("sip.rx.unanswered") == 1, 3, "server guard")
    assert not any(t.state == "proceeding" for t in b.core.server_transactions.values())


async def test_a_burst_on_one_tcp_connection_lets_the_loop_serve_others(
    pair: tuple[Endpoint, Endpoint],
) -> None:
    """200 requests in one TCP segment are handled in order, a few dozen per loop turn."""
    _, b = pair
    seen: list[str] = []
    turns: list[int] = []
    loop = asyncio.get_running_loop()

    def handler(req: Request, ctx: ServerContext) -> Response:
        seen.append(req.call_id)
        if len(seen) == 1:
            loop.call_soon(lambda: turns.append(len(seen)))  # runs at the next loop turn
        return make_response(req, 200, "OK", to_tag="t")

    b.route("MESSAGE", handler)
    _, writer = await asyncio.open_connection("127.0.0.1", b.port)
    ids = [f"burst-{i}" for i in range(200)]
    burst = b"".join(
        (
            f"MESSAGE sip:34020000001320000001@127.0.0.1:{b.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK{i}x\r\n"
            "From: <sip:34020000002000000001@3402000000>;tag=a\r\n"
            "To: <sip:34020000001320000001@3402000000>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        for i, call_id in enumerate(ids)
    )
    writer.write(burst)
    await writer.drain()
    try:
        await wait_for(lambda: len(seen) == 200, 5, "every request")
        assert seen == ids  # in order
        assert turns and turns[0] < 200  # the loop ran before the whole burst was handled
    finally:
        writer.close()


def test_an_endpoint_can_be_built_before_its_loop_runs() -> None:
    """The transports and timers take the running loop at start, not at construction."""
    ep = Endpoint(metrics=Metrics())

    async def run() -> int:
        await ep.start("127.0.0.1", 0)
        try:
            return ep.port
        finally:
            await ep.close()

    assert asyncio.run(run()) > 0
