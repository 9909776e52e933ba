"""``Endpoint.listen_also``: SIP on one more address (a floating address taken over), UDP and
TCP, answers to a UDP peer leaving from the address it sent to (RFC 3261 §18.2.2), and the
address given back."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.metrics import Metrics
from gateway.sip import Endpoint, Request, Response, ServerContext, TimerConfig

FLOAT = "127.0.0.5"


def options(port: int, transport: str = "UDP") -> bytes:
    return (
        f"OPTIONS sip:{FLOAT}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK-{transport}-1;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
        f"Call-ID: float-{transport}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.timeout(30)
async def test_listen_also_answers_from_the_extra_address() -> None:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))

    def answer(req: Request, ctx: ServerContext) -> Response:
        return ep.answer(req, 200, "OK")

    ep.route("OPTIONS", answer)
    await ep.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind((FLOAT, 0))
        port = probe.getsockname()[1]
        probe.close()
        await ep.listen_also(FLOAT, port)
        # UDP: the answer comes from the address the request went to, not the main one.
        got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.put_nowait((data, addr))

        udp, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
        udp.sendto(options(port), (FLOAT, port))
        data, source = await asyncio.wait_for(got.get(), 5)
        assert data.startswith(b"SIP/2.0 200")
        assert source == (FLOAT, port)
        # TCP on the same address and port.
        reader, writer = await asyncio.open_connection(FLOAT, port)
        writer.write(options(port, "TCP"))
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"SIP/2.0 200")
        writer.close()
        # Given back: nothing listens there any more.
        ep.stop_listening(FLOAT, port)
        with pytest.raises(OSError):
            await asyncio.open_connection(FLOAT, port)
        udp.close()
    finally:
        await ep.close()
