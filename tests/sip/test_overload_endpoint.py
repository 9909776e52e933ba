"""Overload end to end on a real UDP socket: a backlog the endpoint cannot read in time is seen
by its load guard, which then sheds initial REGISTERs with 503 and Retry-After, and recovers
when the backlog is gone. The loop is blocked on purpose so the backlog builds at once."""

from __future__ import annotations

import asyncio
import socket
import time

from gateway.metrics import Metrics
from gateway.sip import Endpoint, LoadGuard, Request, ServerContext
from tests.sip.test_overload import request


async def test_a_backlog_on_the_socket_turns_into_503s_then_shedding_stops() -> None:
    guard = LoadGuard(queue_delay=0.05, tick=0.05)
    ep = Endpoint(metrics=Metrics(), load_guard=guard)

    def register(req: Request, ctx: ServerContext) -> object:
        time.sleep(0.0005)  # a registration costs something: the backlog drains slowly
        return ctx.endpoint.answer(req, 200)

    ep.route("REGISTER", register)
    await ep.start("127.0.0.1", 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        for n in range(3000):
            client.sendto(request(n=n), ("127.0.0.1", ep.port))
        time.sleep(0.2)  # the loop is held: everything above waits in the socket's queue
        statuses: dict[int, int] = {}
        retry_after: set[int] = set()
        deadline = loop.time() + 30
        while sum(statuses.values()) < 3000 and loop.time() < deadline:
            await asyncio.sleep(0.02)
            while True:
                try:
                    data = client.recv(65535)
                except BlockingIOError:
                    break
                status = int(data.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
                if status == 503:
                    line = next(x for x in data.split(b"\r\n") if x.startswith(b"Retry-After:"))
                    retry_after.add(int(line.split(b":")[1]))
        assert sum(statuses.values()) == 3000, statuses  # every request answered, one way
        assert statuses.get(503, 0) > 0 and statuses.get(200, 0) > 0, statuses
        assert guard.episodes >= 1 and guard.shed == statuses[503]
        assert ep.metrics.get("sip.rx.shed") == statuses[503]
        assert min(retry_after) >= guard.retry_after_min
        # Quiet again: the share climbs back and nothing more is shed.
        deadline = loop.time() + 10
        while guard.share < 1.0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert guard.share == 1.0 and not guard.behind
    finally:
        client.close()
        await ep.close()
