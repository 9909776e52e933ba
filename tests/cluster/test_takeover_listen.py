"""``Endpoint.listen_also``: SIP on one more address (a floating address taken over), UDP and
TCP, answers to a UDP peer leaving from the address it sent to (RFC 3261 §18.2.2), and the
address given back."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway.cluster import Cluster, FloatingAddresses
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Request, Response, ServerContext, TimerConfig
from tests.conftest import wait_for
from tests.redisrig import REDIS_SERVER, RedisServer

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


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="redis-server is not installed")
async def test_an_address_that_cannot_be_bound_is_tried_again(tmp_path: Path) -> None:
    """A dead node's floating address is busy (its owner back, or in production not yet on
    this machine): the survivor gives the lease back and tries again a lease time later, and
    takes it once it can bind it."""
    redis = RedisServer(tmp_path / "redis").start()
    host = "127.0.0.6"
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind((host, 0))
    port = busy.getsockname()[1]
    dead = Cluster(
        url=redis.url,
        prefix="t:",
        node_id="dead",
        lease_seconds=1.0,
        info={"floating_host": host, "sip_port": port},
    )
    survivor = Cluster(url=redis.url, prefix="t:", node_id="alive", lease_seconds=1.0)
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    taken: list[str] = []

    async def adopt(node_id: str, info: dict[str, object]) -> None:
        taken.append(node_id)

    floating = FloatingAddresses(survivor, ep, own_host="", on_taken=adopt)
    try:
        await ep.start("127.0.0.1", 0)
        members, dead_client = survivor.membership, dead.client
        assert dead.membership is not None and members is not None and dead_client is not None
        await dead.membership.beat()
        survivor.start()
        floating.start()
        await wait_for(lambda: "dead" in members.alive(), 5, "dead seen")
        await dead_client.aclose()
        await wait_for(lambda: survivor.metrics.get("cluster.lease_lost") >= 1, 10, "bind refused")
        assert taken == []
        busy.close()
        await wait_for(lambda: taken == ["dead"], 10, "taken once free")
        assert floating.taken == {host: port}
    finally:
        busy.close()
        floating.close()
        await survivor.close()
        await ep.close()
        redis.stop()
