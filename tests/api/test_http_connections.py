"""What a client can make the HTTP server hold: connection caps and the request-head deadline.

Raw sockets against a started gateway (``start_api``) with small limits: an idle or slowly
trickling connection is closed after ``http.header_timeout``; a keep-alive client, a slow but
complete upload and a Server-Sent Event stream are not; connections beyond
``http.max_connections_per_ip`` or ``http.max_connections`` are closed at once and their
places come back when connections close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.api import server as server_module
from gateway.api.server import ConnectionBook
from gateway.metrics import Metrics
from tests.api.conftest import TOKENS, Api

# Waits are for conditions; this only bounds a hang (a loaded 2-core machine included).
WAIT = 15.0
SHORT = {"header_timeout": 0.5}

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(api: Api, source: str = "127.0.0.1") -> Conn:
    assert api.gw.api is not None
    return await asyncio.open_connection("127.0.0.1", api.gw.api.port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF or reset); False if it stays open."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    if not await reader.read(65536):
                        return True
                except ConnectionError:
                    return True
    except TimeoutError:
        return False


async def request(conn: Conn, path: str = "/healthz") -> bytes:
    """One keep-alive GET on ``conn``; the response head and body."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return head + await reader.readexactly(length)


async def wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


def close(*conns: Conn) -> None:
    for _, writer in conns:
        writer.close()


@pytest.mark.timeout(60)
async def test_idle_connection_is_closed_after_the_header_timeout(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(http=SHORT)
    conn = await connect(api)
    assert await closed_by_server(conn[0])
    assert api.gw.metrics.get("http.header_timeouts") == 1
    close(conn)


@pytest.mark.timeout(60)
async def test_a_head_trickled_slowly_is_closed(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(http=SHORT)
    reader, writer = await connect(api)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")

    async def trickle() -> None:
        # A header line every 0.1 s, each well within any per-read timeout: only a deadline
        # on the whole head stops it.
        with pytest.raises(ConnectionError):
            for i in range(int(WAIT * 10)):
                writer.write(b"X-Slow-%d: y\r\n" % i)
                await writer.drain()
                await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        assert await closed_by_server(reader)
    finally:
        sender.cancel()
    assert api.gw.metrics.get("http.header_timeouts") == 1
    writer.close()


@pytest.mark.timeout(60)
async def test_keep_alive_client_is_served_then_closed_when_idle(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(http=SHORT)
    conn = await connect(api)
    for _ in range(3):
        answer = await request(conn)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
    # The deadline starts again after each response: idle from here on, it is closed.
    assert await closed_by_server(conn[0])
    assert api.gw.metrics.get("http.header_timeouts") == 1
    close(conn)


@pytest.mark.timeout(60)
async def test_per_ip_cap_refuses_and_frees_places(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(http={"max_connections_per_ip": 3, "header_timeout": 60})
    held = [await connect(api) for _ in range(3)]
    for conn in held:
        assert (await request(conn)).startswith(b"HTTP/1.1 200")
    extra = await connect(api)
    assert await closed_by_server(extra[0])
    assert api.gw.metrics.get("http.refused_connections") == 1
    # Another address is not held to this one's cap.
    other = await connect(api, "127.0.0.2")
    assert (await request(other)).startswith(b"HTTP/1.1 200")

    assert api.gw.api is not None
    book = api.gw.api.server.book
    close(held.pop())
    await wait_for(lambda: book.per_ip.get("127.0.0.1") == 2)
    again = await connect(api)
    assert (await request(again)).startswith(b"HTTP/1.1 200")
    close(extra, other, again, *held)
    await wait_for(lambda: book.total == 0)
    assert book.per_ip == {}
    assert api.gw.metrics.get("http.refused_connections") == 1


@pytest.mark.timeout(60)
async def test_total_cap_refuses_and_frees_places(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(
        http={"max_connections": 3, "max_connections_per_ip": 2, "header_timeout": 60}
    )
    held = [await connect(api, src) for src in ("127.0.0.1", "127.0.0.1", "127.0.0.2")]
    for conn in held:
        assert (await request(conn)).startswith(b"HTTP/1.1 200")
    extra = await connect(api, "127.0.0.3")
    assert await closed_by_server(extra[0])
    assert api.gw.metrics.get("http.refused_connections") == 1

    assert api.gw.api is not None
    book = api.gw.api.server.book
    close(held.pop(0))
    await wait_for(lambda: book.total == 2)
    again = await connect(api, "127.0.0.3")
    assert (await request(again)).startswith(b"HTTP/1.1 200")
    close(extra, again, *held)
    await wait_for(lambda: book.total == 0)
    assert book.per_ip == {}


@pytest.mark.timeout(60)
async def test_sse_stream_and_slow_upload_outlive_the_header_timeout(
    start_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await start_api(http=SHORT)
    sse_reader, sse_writer = await connect(api)
    sse_writer.write(
        f"GET /api/v1/events?access_token={TOKENS['viewer']} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    )
    async with asyncio.timeout(WAIT):
        head = await sse_reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head

    body = b'{"username": "nobody", "password": "wrong-password"}'
    up_reader, up_writer = await connect(api)
    up_writer.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
    )
    await up_writer.drain()
    assert api.gw.api is not None
    book = api.gw.api.server.book
    await wait_for(lambda: book.total == 2)

    # A connection opened after both is closed by its deadline: theirs have passed too.
    idle = await connect(api)
    assert await closed_by_server(idle[0])
    assert api.gw.metrics.get("http.header_timeouts") == 1
    assert book.total == 2

    up_writer.write(body[10:])
    async with asyncio.timeout(WAIT):
        answer = await up_reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401")
    assert not sse_reader.at_eof()
    close(idle, (sse_reader, sse_writer), (up_reader, up_writer))
    await wait_for(lambda: book.total == 0)


class LogRecorder:
    """Stands in for the module's logger: (level, event, fields) of each line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_refusals_are_all_counted_but_logged_at_most_once_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = LogRecorder()
    monkeypatch.setattr(server_module, "log", recorder)
    metrics = Metrics()
    book = ConnectionBook(max_connections=3, max_per_ip=1, header_timeout=1.0, metrics=metrics)
    assert book.admit("192.0.2.1")
    refused = [book.admit("192.0.2.1") for _ in range(100)]
    assert not any(refused)
    assert book.admit("192.0.2.2") and book.admit("192.0.2.3")
    assert not book.admit("192.0.2.4")
    assert metrics.get("http.refused_connections") == 101
    assert [(level, event, f["reason"]) for level, event, f in recorder.lines] == [
        ("warning", "http.refused_connection", "per_ip")
    ]
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        book.release(ip)
    assert book.total == 0 and book.per_ip == {}
