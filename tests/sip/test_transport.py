"""The transports at the network edge: what a stranger can hold, and ICMP errors.

* A TCP message's header block must arrive within ``tcp_message_timeout`` of its first byte;
  trickling bytes do not move that deadline (issue 13, item 4). Its body may go on past it while
  the message keeps arriving at ``tcp_min_body_rate`` (a catalog on a slow uplink).
* TCP connections are capped in all (by default at most 20,000); at the cap the untrusted
  connection idle longest makes room, connections the gateway opened or a device registered over
  are kept, and with nothing to evict a new connection is refused (item 4). The per-IP limit
  stays (``test_endpoint.py::test_per_ip_connection_limit_and_idle_close``).
* The bytes all connections' framers hold are budgeted: over budget, the untrusted connection
  holding the most is closed; trusted ones are kept.
* An ICMP port unreachable for a UDP request fails its client transaction at once, not at timer
  F (RFC 3261 §18.4, §17.1.4; item 19), but only when it quotes that request's branch: anyone
  can forge an ICMP error naming our addresses.
* A listener that raises on one message is logged and counted; the datagrams and messages after
  it are still handed over, and the socket or connection keeps serving.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

import gateway.sip.transport as transport_module
from gateway.metrics import Metrics
from gateway.sip import (
    Endpoint,
    Peer,
    Request,
    Response,
    ServerContext,
    SipCore,
    TimerConfig,
    TransportError,
    make_response,
)
from gateway.sip.framing import StreamFramer
from gateway.sip.transport import (
    DERIVED_CAP_MAX,
    FD_RESERVE,
    Transports,
    connection_cap,
    fatal_icmp,
    raise_fd_limit,
)
from tests.conftest import wait_for
from tests.sip.fakeclock import FakeClock


def register_bytes(port: int, n: int, transport: str = "TCP") -> bytes:
    return (
        f"REGISTER sip:34020000002000000001@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5060;branch=z9hG4bKreg{n}\r\n"
        f"From: <sip:3402000000132000{n:04d}@3402000000>;tag=f{n}\r\n"
        f"To: <sip:3402000000132000{n:04d}@3402000000>\r\n"
        f"Call-ID: reg-{n}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def message_bytes(port: int, n: int) -> bytes:
    return (
        f"MESSAGE sip:34020000002000000001@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKmsg{n}\r\n"
        "From: <sip:34020000001320000001@3402000000>;tag=m\r\n"
        "To: <sip:34020000002000000001@3402000000>\r\n"
        f"Call-ID: msg-{n}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def status_of(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return int(head.split(b" ", 2)[1])


def answering(ep: Endpoint, *, trust: bool = False) -> list[Peer]:
    """Answer REGISTER and MESSAGE with 200; with ``trust``, a REGISTER marks its connection
    trusted as the registrar does after a good REGISTER."""
    seen: list[Peer] = []

    def handler(req: Request, ctx: ServerContext) -> Response:
        seen.append(ctx.peer)
        if trust and req.method == "REGISTER":
            ctx.endpoint.mark_trusted(ctx.peer)
        return make_response(req, 200, to_tag="t")

    ep.route("REGISTER", handler)
    ep.route("MESSAGE", handler)
    return seen


@pytest.fixture
async def endpoints() -> AsyncIterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for ep in made:
        await ep.close()


# -- item 4: the whole-message deadline ----------------------------------------------------


def test_the_framer_says_when_part_of_a_message_is_held() -> None:
    """Only a message's own bytes start the deadline: CRLFs that may become a ping do not."""
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.pending == 2 and not framer.partial
    framer.feed(b"\r\nREG")
    assert framer.partial
    framer.feed(register_bytes(5060, 1)[3:])
    assert not framer.partial and framer.pending == 0


@pytest.mark.timeout(30)
async def test_a_slow_sender_is_closed_at_the_message_deadline_while_a_quick_one_is_served(
    endpoints: list[Endpoint],
) -> None:
    ep = Endpoint(metrics=Metrics(), tcp_message_timeout=0.5)
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    answering(ep)
    loop = asyncio.get_running_loop()

    # A quick peer: its whole REGISTER in one write, answered; its connection then idles.
    quick_reader, quick_writer = await asyncio.open_connection("127.0.0.1", ep.port)
    quick_writer.write(register_bytes(ep.port, 1))
    assert await status_of(quick_reader) == 200

    # A slow peer: one byte per tick, far slower than the deadline allows for the message.
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", ep.port)
    slow = register_bytes(ep.port, 2)
    started = loop.time()

    async def trickle() -> None:
        for i in range(len(slow)):
            if slow_writer.is_closing():
                return
            slow_writer.write(slow[i : i + 1])
            await asyncio.sleep(0.02)

    trickling = asyncio.ensure_future(trickle())
    try:
        # The server closes it: EOF (or a reset) before the message could have been complete.
        try:
            eof = await asyncio.wait_for(slow_reader.read(), 10)
        except ConnectionResetError:
            eof = b""
        closed_after = loop.time() - started
        assert eof == b""  # no answer: the message never arrived whole
        assert not trickling.done()  # closed while bytes were still trickling in
        assert ep.metrics.get("sip.tcp.message_timeout") == 1
        assert closed_after >= 0.5  # the deadline, not an idle timeout, and not earlier
        # The quick connection, idle all this while with nothing pending, is still served.
        quick_writer.write(message_bytes(ep.port, 3))
        assert await status_of(quick_reader) == 200
    finally:
        trickling.cancel()
        slow_writer.close()
        quick_writer.close()


# -- item 4: the connection cap --------------------------------------------------------------


def test_the_default_cap_stays_below_the_descriptor_limit() -> None:
    assert connection_cap(0, 20_000, 10_000) == 20_000 - FD_RESERVE - 10_000
    # A limit too small for the media range still leaves a quarter for SIP, below the limit.
    assert connection_cap(0, 1024, 10_000) == 256
    # A configured cap is used, but never at or above the limit.
    assert connection_cap(300, 20_000, 10_000) == 300
    assert connection_cap(50_000, 20_000, 0) == 20_000 - FD_RESERVE
    # A descriptor limit raised to a hard limit of 524,288 does not make the default that
    # large (each connection costs memory, and the sweep looks at every one); a set value does.
    assert connection_cap(0, 524_288, 10_000) == DERIVED_CAP_MAX == 20_000
    assert connection_cap(0, 1 << 20, 0) == DERIVED_CAP_MAX
    assert connection_cap(100_000, 524_288, 10_000) == 100_000
    limits = raise_fd_limit()
    if limits is not None:
        soft, hard = limits
        assert soft == hard or soft >= 10240  # raised to the hard limit (macOS: OPEN_MAX)


@pytest.mark.timeout(60)
async def test_at_the_cap_idle_strangers_make_room_and_a_registered_device_keeps_working(
    endpoints: list[Endpoint],
) -> None:
    cap = 40
    ep = Endpoint(metrics=Metrics(), max_connections=cap)
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    assert ep.transports.max_connections == cap
    seen = answering(ep, trust=True)

    # A device registers over TCP (from 127.0.0.10): its connection becomes trusted.
    dev_reader, dev_writer = await asyncio.open_connection(
        "127.0.0.1", ep.port, local_addr=("127.0.0.10", 0)
    )
    dev_writer.write(register_bytes(ep.port, 10))
    assert await status_of(dev_reader) == 200

    # 200 idle connections from four other addresses fill the cap many times over.
    idle: list[asyncio.StreamWriter] = []
    try:
        for i in range(200):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", ep.port, local_addr=(f"127.0.0.{2 + i % 4}", 0)
            )
            idle.append(writer)
        await wait_for(
            lambda: ep.metrics.get("sip.tcp.accepted") >= 201, 10, "every connection accepted"
        )
        assert len(ep.transports._conns) <= cap
        assert ep.metrics.get("sip.tcp.evicted") >= 200 + 1 - cap
        assert ep.metrics.get("sip.tcp.refused_cap") == 0

        # A new device from a new address is still answered.
        new_reader, new_writer = await asyncio.open_connection(
            "127.0.0.1", ep.port, local_addr=("127.0.0.20", 0)
        )
        new_writer.write(register_bytes(ep.port, 20))
        assert await status_of(new_reader) == 200
        new_writer.close()

        # The registered device's connection was never evicted: it keeps working.
        dev_writer.write(message_bytes(ep.port, 11))
        assert await status_of(dev_reader) == 200
        assert [p.host for p in seen].count("127.0.0.10") == 2
    finally:
        for writer in idle:
            writer.close()
        dev_writer.close()


async def test_with_nothing_to_evict_a_new_connection_is_refused(
    endpoints: list[Endpoint],
) -> None:
    ep = Endpoint(metrics=Metrics(), max_connections=2)
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    answering(ep, trust=True)
    kept = []
    for n in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
        writer.write(register_bytes(ep.port, n))
        assert await status_of(reader) == 200
        kept.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    try:
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        assert ep.metrics.get("sip.tcp.refused_cap") == 1
        assert ep.metrics.get("sip.tcp.evicted") == 0
        # Both trusted connections still work.
        for n, (r, w) in enumerate(kept):
            w.write(message_bytes(ep.port, 10 + n))
            assert await status_of(r) == 200
    finally:
        writer.close()
        for _, w in kept:
            w.close()


async def test_a_connection_the_gateway_opened_is_not_evicted(
    endpoints: list[Endpoint],
) -> None:
    """Outbound connections (to an upper, to a TCP device) count as trusted."""
    server = Endpoint(metrics=Metrics())
    ep = Endpoint(metrics=Metrics(), max_connections=1)
    endpoints.extend([server, ep])
    await server.start("127.0.0.1", 0)
    await ep.start("127.0.0.1", 0)
    answering(server)
    peer = Peer("tcp", "127.0.0.1", server.port)
    await ep.transports.connect(peer)
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    try:
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        assert ep.metrics.get("sip.tcp.refused_cap") == 1
        assert ep.transports.is_connected(peer)
    finally:
        writer.close()


# -- item 19: ICMP port unreachable ----------------------------------------------------------


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_which_icmp_errors_fail_a_transaction() -> None:
    """RFC 3261 §18.4: unreachable and parameter problem do; TTL exceeded, source quench and
    "fragmentation needed" (path MTU) do not."""
    icmp, icmp6 = 2, 3
    assert fatal_icmp(icmp, 3, 3)  # port unreachable
    assert fatal_icmp(icmp, 3, 1)  # host unreachable
    assert fatal_icmp(icmp, 12, 0)  # parameter problem
    assert not fatal_icmp(icmp, 3, 4)  # fragmentation needed
    assert not fatal_icmp(icmp, 11, 0)  # TTL exceeded
    assert not fatal_icmp(icmp, 4, 0)  # source quench
    assert fatal_icmp(icmp6, 1, 4) and not fatal_icmp(icmp6, 3, 0)
    assert not fatal_icmp(1, 3, 3)  # a local error, not an ICMP message


def test_the_core_fails_only_the_transaction_an_icmp_error_quotes() -> None:
    """Sans-I/O: an ICMP error ends the waiting client transaction whose branch it quotes, to
    the address it names, with a transport error for its TU; a quote without a whole branch
    (forged, or cut short by a router quoting the minimum), or naming another address's
    transaction, ends nothing."""
    clock = FakeClock()
    sent: dict[str, bytes] = {}

    class Net:
        def send(self, peer: Peer, data: bytes) -> bool:
            sent[data.split(b"Call-ID: ")[1].split(b"\r\n")[0].decode()] = data
            return True

    class User:
        def request_received(self, *_: object) -> None:
            pass

    core = SipCore(network=Net(), user=User(), counters=Metrics(), scheduler=clock)
    dead, alive = Peer("udp", "192.0.2.1", 5060), Peer("udp", "192.0.2.2", 5060)
    ended: list[str] = []
    txns = []
    for n, peer in enumerate([dead, dead, alive]):
        branch = f"z9hG4bK{n}x{n}"
        req = Request(
            "MESSAGE",
            f"sip:x@{peer.host}",
            [
                ("Via", f"SIP/2.0/UDP 192.0.2.9:5060;branch={branch}"),
                ("From", "<sip:a@b>;tag=1"),
                ("To", "<sip:c@d>"),
                ("Call-ID", f"c{n}"),
                ("CSeq", "1 MESSAGE"),
            ],
        )
        txns.append(
            core.start_request(
                req,
                peer,
                branch,
                on_response=lambda r: None,
                on_timeout=lambda n=n: ended.append(f"c{n}"),  # type: ignore[misc]
            )
        )
    c0, c1, c2 = sent["c0"], sent["c1"], sent["c2"]
    # Nothing that names no whole branch of a transaction to that address ends anything.
    cut = c1.index(b"z9hG4bK1x1") + len("z9hG4bK1x1")
    for quote in (b"", c1[:8], c1[:cut], c1[: cut - 2], b"SIP/2.0 200 OK\r\n" + c1[16:]):
        assert core.unreachable(dead, quote) == 0
    assert core.unreachable(dead, c2) == 0  # c2 went to another address
    assert core.unreachable(dead, c1.replace(b"MESSAGE", b"OPTIONS", 1)) == 0
    assert ended == [] and len(core.client_transactions) == 3
    # The quote of c0 (as a router quoting 520 bytes gives it) ends c0 alone.
    assert core.unreachable(dead, c0[:520]) == 1
    assert ended == ["c0"]
    assert txns[0].unreachable and txns[1].state == txns[2].state == "trying"
    assert core.unreachable(dead, c0) == 0  # over already
    assert core.unreachable(dead, c1[: cut + 1]) == 1  # the branch whole, then a delimiter
    assert ended == ["c0", "c1"] and len(core.client_transactions) == 1


@pytest.mark.timeout(30)
async def test_a_request_to_a_closed_udp_port_fails_at_once_not_at_timer_f(
    endpoints: list[Endpoint],
) -> None:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig())  # T1 0.5 s: timer F at 32 s
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    if not ep.transports.reports_icmp:
        pytest.skip("ICMP errors are read on Linux only")
    port = closed_udp_port()
    req = Request(
        "MESSAGE",
        f"sip:34020000001320000001@127.0.0.1:{port}",
        [
            ("From", "<sip:34020000002000000001@3402000000>;tag=g"),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", Endpoint.call_id()),
            ("CSeq", "1 MESSAGE"),
        ],
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransportError, match="unreachable"):
        await asyncio.wait_for(ep.request(req, Peer("udp", "127.0.0.1", port)), 20)
    assert loop.time() - started < 10  # well before timer F (32 s)
    assert ep.metrics.get("sip.udp.unreachable") >= 1
    assert ep.metrics.get("sip.tx.unreachable") == 1
    assert not ep.core.client_transactions


@pytest.mark.timeout(30)
async def test_an_icmp_error_that_does_not_quote_the_request_fails_nothing(
    endpoints: list[Endpoint],
) -> None:
    """Linux takes an ICMP error from anyone that names our address and the peer's. Here the
    kernel itself makes one (a datagram to a port just closed), naming the address a request is
    waiting on, but quoting other bytes, as a blind forger's would: the request keeps waiting
    for its answer (timer F decides), and it is logged at debug only."""
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=5.0))  # no resend during the test
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    if not ep.transports.reports_icmp:
        pytest.skip("ICMP errors are read on Linux only")
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.0.1", 0))
    peer = Peer("udp", "127.0.0.1", int(quiet.getsockname()[1]))
    req = Request(
        "MESSAGE",
        f"sip:34020000001320000001@127.0.0.1:{peer.port}",
        [
            ("From", "<sip:34020000002000000001@3402000000>;tag=g"),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", Endpoint.call_id()),
            ("CSeq", "1 MESSAGE"),
        ],
    )
    waiting = asyncio.ensure_future(ep.request(req, peer))
    try:
        await wait_for(lambda: len(ep.core.client_transactions) == 1, 5, "the request sent")
        quiet.close()
        assert ep.transports.send(peer, b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        await wait_for(lambda: ep.metrics.get("sip.udp.unreachable") == 1, 5, "the ICMP error")
        await wait_for(lambda: not ep.transports._unreachable_pending, 5, "the error reported")
        assert not waiting.done()
        assert ep.metrics.get("sip.tx.unreachable") == 0
        assert len(ep.core.client_transactions) == 1
    finally:
        quiet.close()
        waiting.cancel()


@pytest.mark.timeout(30)
async def test_icmp_errors_do_not_stop_the_socket_serving_others(
    endpoints: list[Endpoint],
) -> None:
    """Many unreachable sends interleaved with incoming requests: every request is answered,
    no datagram we send is lost to a pending error, and the error queue is left empty (the loop
    is not woken for it again)."""
    ep = Endpoint(metrics=Metrics())
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    answering(ep)
    dead = [Peer("udp", "127.0.0.1", closed_udp_port()) for _ in range(8)]
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            answers.put_nowait(data)

    client, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        for n in range(200):
            assert ep.transports.send(dead[n % 8], b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            client.sendto(register_bytes(ep.port, n, "UDP"), ("127.0.0.1", ep.port))
            if n % 20 == 0:
                await asyncio.sleep(0)
        for _ in range(200):
            assert (await asyncio.wait_for(answers.get(), 5)).startswith(b"SIP/2.0 200")
        assert ep.metrics.get("sip.udp.send_error") == 0
        if ep.transports.reports_icmp:
            await wait_for(lambda: ep.metrics.get("sip.udp.unreachable") >= 8, 5, "ICMP seen")
    finally:
        client.close()


SERVER = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
from gateway.metrics import Metrics
from gateway.sip import Endpoint, make_response

async def main():
    ep = Endpoint(metrics=Metrics())
    ep.route("REGISTER", lambda r, c: make_response(r, 200, to_tag="t"))
    await ep.start("127.0.0.1", 0)
    print("PORT", ep.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await ep.close()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_idle_connections_cannot_use_up_the_descriptors() -> None:
    """The attack of issue 13 in small: a gateway process allowed 300 descriptors, 400 idle
    connections from four addresses; a REGISTER from a new address is still answered."""
    import os
    import sys

    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("needs RLIMIT_NOFILE")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER.format(limit=300),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    writers: list[asyncio.StreamWriter] = []
    drain: asyncio.Future[bytes] | None = None
    try:
        line = b""
        while not line.startswith(b"PORT "):  # log lines may come first
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, "the server did not start"
        port = int(line.split()[1])
        drain = asyncio.ensure_future(proc.stdout.read())  # its log must not fill the pipe
        for i in range(400):
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 4}", 0)
                    ),
                    5,
                )
            except (OSError, TimeoutError):
                continue  # the old code stops accepting; the connect may then stall
            writers.append(writer)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.20", 0)
        )
        writers.append(writer)
        writer.write(register_bytes(port, 1))
        assert await status_of(reader) == 200
    finally:
        for w in writers:
            w.close()
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if drain is not None:
            await drain


# -- a listener that raises -----------------------------------------------------------------


class Raising:
    """A listener with a bug: it raises on any message holding ``boom``."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.lost: list[Peer] = []

    def message_received(self, data: bytes, peer: Peer) -> None:
        if b"boom" in data:
            raise RuntimeError("a bug in the listener")
        self.got.append(data)

    def connection_lost(self, peer: Peer) -> None:
        self.lost.append(peer)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler (asyncio writes it to stderr, past structlog
    and its rate limit): nothing should."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


class LogRecorder:
    """Stands in for a module's logger: what it was told, as (level, event, fields). (structlog's
    ``capture_logs`` misses a logger another test already used, as loggers are cached.)"""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


@pytest.mark.timeout(30)
async def test_a_listener_that_raises_on_one_datagram_does_not_stop_the_others(
    loop_errors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = LogRecorder()
    monkeypatch.setattr(transport_module, "log", recorder)
    listener, metrics = Raising(), Metrics()
    transports = Transports(listener, metrics=metrics)
    await transports.start("127.0.0.1", 0)
    address = ("127.0.0.1", transports.port)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            # All sent before the loop runs again: read in one batch, the fourth raising.
            for n in range(10):
                client.sendto(b"boom" if n == 3 else b"datagram %d" % n, address)
            await wait_for(lambda: len(listener.got) == 9, 5, "the other datagrams")
            client.sendto(b"later", address)  # the socket keeps serving
            await wait_for(lambda: listener.got[-1:] == [b"later"], 5, "a later datagram")
    finally:
        await transports.close()
    assert listener.got == [b"datagram %d" % n for n in range(10) if n != 3] + [b"later"]
    assert metrics.get("sip.rx.internal_error") == 1
    errors = [(level, f) for level, event, f in recorder.lines if event == "sip.rx.internal_error"]
    assert errors == [("exception", {"peer": errors[0][1]["peer"], "size": 4, "head": b"boom"})]
    assert loop_errors == []


@pytest.mark.timeout(30)
async def test_a_listener_that_raises_on_one_message_does_not_close_the_connection(
    loop_errors: list[dict[str, Any]],
) -> None:
    listener, metrics = Raising(), Metrics()
    transports = Transports(listener, metrics=metrics)
    await transports.start("127.0.0.1", 0)
    port = transports.port
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        boom = message_bytes(port, 2).replace(b"msg-2", b"boom")
        writer.write(message_bytes(port, 1) + boom + message_bytes(port, 3))
        await wait_for(lambda: len(listener.got) == 2, 5, "the messages around it")
        writer.write(message_bytes(port, 4))
        await wait_for(lambda: len(listener.got) == 3, 5, "a later message")
        assert not listener.lost
        writer.close()
    finally:
        await transports.close()
    assert listener.got == [message_bytes(port, n) for n in (1, 3, 4)]
    assert metrics.get("sip.rx.internal_error") == 1
    assert loop_errors == []


# -- the buffer budget ------------------------------------------------------------------------


def partial_message(n: int, size: int, total: int) -> bytes:
    """The first ``size`` bytes of a ``total``-byte MESSAGE (its body all ``x``)."""
    head = (
        "MESSAGE sip:34020000002000000001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKbig{n}\r\n"
        "From: <sip:34020000001320000001@3402000000>;tag=b\r\n"
        "To: <sip:34020000002000000001@3402000000>\r\n"
        f"Call-ID: big-{n}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        "Content-Type: Application/MANSCDP+xml\r\n"
        "Content-Length: ......\r\n\r\n"
    ).encode()
    head = head.replace(b"......", b"%06d" % (total - len(head)))  # leading zeros are allowed
    return (head + b"x" * total)[:size]


@pytest.mark.timeout(30)
async def test_over_the_buffer_budget_the_untrusted_connection_holding_most_is_closed() -> None:
    """Slow senders each holding part of a large message: when together they pass the budget,
    the untrusted one holding the most goes; a trusted one holding even more is kept, and its
    message completes. What is held is counted back down as connections close."""
    listener, metrics = Raising(), Metrics()
    transports = Transports(listener, metrics=metrics, tcp_buffer_budget=20_000)
    await transports.start("127.0.0.1", 0)
    port = transports.port
    writers: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def hold(
        name: str, n: int, size: int, total: int, expect: int, *, trusted: bool = False
    ) -> None:
        """Open a connection and send ``size`` bytes of a message; then ``expect`` are held."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers[name] = reader, writer
        peer = Peer("tcp", *writer.get_extra_info("sockname")[:2])
        await wait_for(lambda: transports.is_connected(peer), 5, "the connection accepted")
        if trusted:
            transports.mark_trusted(peer)
        writer.write(partial_message(n, size, total))
        await wait_for(lambda: transports._held == expect, 5, f"{expect} bytes held ({name})")

    try:
        await hold("device", 1, 9000, 10_000, 9000, trusted=True)
        await hold("small", 2, 3000, 100_000, 12_000)
        await hold("big", 3, 6000, 100_000, 18_000)
        assert metrics.get("sip.tcp.evicted_buffer") == 0
        # 22,000 held, over budget: the big one's 6,000 go, not the trusted device's 9,000.
        await hold("next", 4, 4000, 100_000, 16_000)
        assert metrics.get("sip.tcp.evicted_buffer") == 1
        try:
            assert await asyncio.wait_for(writers["big"][0].read(), 5) == b""
        except ConnectionResetError:
            pass
        assert len(transports._conns) == 3  # the device, the small one and the next one
        # The trusted device's message completes and is delivered.
        writers["device"][1].write(partial_message(1, 10_000, 10_000)[9000:])
        await wait_for(lambda: len(listener.got) == 1, 5, "the device's message")
        assert listener.got[0] == partial_message(1, 10_000, 10_000)
        assert transports._held == 7000
        for _, writer in writers.values():
            writer.close()
        await wait_for(lambda: not transports._conns, 5, "all closed")
        assert transports._held == 0
        assert metrics.get("sip.tcp.evicted_buffer") == 1
    finally:
        for _, writer in writers.values():
            writer.close()
        await transports.close()


# -- the rate floor for a body ----------------------------------------------------------------


async def trickle(writer: asyncio.StreamWriter, data: bytes, chunk: int, pause: float) -> None:
    for i in range(0, len(data), chunk):
        if writer.is_closing():
            return
        writer.write(data[i : i + chunk])
        await asyncio.sleep(pause)


@pytest.mark.timeout(30)
async def test_a_device_sending_a_large_body_slowly_but_steadily_is_not_cut_off(
    endpoints: list[Endpoint],
) -> None:
    """A registered device sends a catalog on a slow uplink: its header block in time, its body
    at six times the floor but past the message deadline. It is answered, not disconnected."""
    ep = Endpoint(metrics=Metrics(), tcp_message_timeout=0.5, tcp_min_body_rate=2000)
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    answering(ep, trust=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    try:
        writer.write(register_bytes(ep.port, 1))
        assert await status_of(reader) == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        message = partial_message(5, 12_600, 12_600)
        # 600 bytes every 50 ms: 12 kB/s, 21 writes, so about a second in all.
        await trickle(writer, message, 600, 0.05)
        assert await status_of(reader) == 200
        assert loop.time() - started > 0.5  # it did go on past the message deadline
        assert ep.metrics.get("sip.tcp.message_timeout") == 0
    finally:
        writer.close()


@pytest.mark.timeout(30)
async def test_a_body_below_the_rate_floor_is_cut_at_the_deadline(
    endpoints: list[Endpoint],
) -> None:
    """A body trickled at 200 B/s (a tenth of the floor) buys no time: the connection is closed
    at the deadline, its message unanswered."""
    ep = Endpoint(metrics=Metrics(), tcp_message_timeout=0.5, tcp_min_body_rate=2000)
    endpoints.append(ep)
    await ep.start("127.0.0.1", 0)
    answering(ep)
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    message = partial_message(6, 6000, 6000)
    head = message.index(b"\r\n\r\n") + 4
    writer.write(message[:head])
    trickling = asyncio.ensure_future(trickle(writer, message[head:], 10, 0.05))
    try:
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        assert not trickling.done()  # cut while the body was still arriving
        assert ep.metrics.get("sip.tcp.message_timeout") == 1
    finally:
        trickling.cancel()
        writer.close()
