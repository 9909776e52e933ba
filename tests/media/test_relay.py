"""The RTP relay on real sockets (127.0.0.1), and its sans-I/O parts without them.

Rules under test: SSRC rewrite per output with the payload untouched (RFC 3550 §5.1, reference
§6.4), fan-out, every UDP/TCP transport pair with RFC 4571 framing and the ``$``-interleaved
variant (reference §6.5), lost framing dropping the connection, RFC 3550 A.1/A.3 loss and
reordering with 16-bit wrap, key frames by PS system header/PSM (reference §6.3), idle and
closed events, tcp-active retries (2022 Annex D), even ports from the pool, worker processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psutil
import pytest

import gateway.media.relay as relay_module
from gateway.media import (
    LocalRelay,
    PortsExhausted,
    RelayError,
    Transport,
    UnknownStream,
    WorkerRelay,
    make_relay,
)
from gateway.media._relay_udp import gso_runs
from gateway.media.rtp import FramingError, SeqCounter, TcpDeframer, frame_rfc4571
from gateway.metrics import Metrics
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(15)

HOST = "127.0.0.1"
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp-passive", "tcp-active")
PACK = b"\x00\x00\x01\xba" + bytes([0x44, 0, 4, 0, 4, 1, 1, 0x89, 0xC3, 0xF8])  # no stuffing
SYSTEM_HEADER = b"\x00\x00\x01\xbb\x00\x0c" + bytes(12)
PES = b"\x00\x00\x01\xe0\x00\x10" + bytes(16)


def rtp(seq: int, payload: bytes = b"", *, ssrc: int = 0x0BEBC201, first: int = 0x80) -> bytes:
    """An RTP packet (PT 96, PS); ``payload`` defaults to bytes that name the sequence number."""
    body = payload or (b"payload-%05d-" % seq) * 8
    return (
        bytes([first, 96])
        + (seq & 0xFFFF).to_bytes(2, "big")
        + (seq * 3600 & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + body
    )


def port_range(width: int = 200) -> tuple[int, int]:
    """A random slice of high ports: tests running side by side rarely meet, and a port
    something else holds is skipped by the pool anyway."""
    base = random.randrange(20000, 60000 - width) & ~1
    return base, base + width - 1


class Events:
    """What the relay reported through ``on_event``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str]] = []

    def __call__(self, stream_id: str, output_id: str | None, event: str) -> None:
        self.seen.append((stream_id, output_id, event))

    def count(self, *event: str | None) -> int:
        return self.seen.count(event)  # type: ignore[arg-type]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def relay(events: Events) -> AsyncIterator[LocalRelay]:
    low, high = port_range()
    r = LocalRelay(host=HOST, port_min=low, port_max=high, on_event=events, metrics=Metrics())
    await r.start()
    yield r
    await r.close()


async def quiet_for(seconds: float) -> None:
    """Let time pass to show that something does *not* happen (no condition to wait on)."""
    await asyncio.sleep(seconds)


# -- the two ends of a leg, for each transport --------------------------------------------------


class Source:
    """Sends RTP into a stream over the stream's transport."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None

    @classmethod
    async def open(cls, relay: LocalRelay, stream_id: str, transport: Transport) -> Source:
        src = cls()
        src.port = await relay.open_stream(stream_id, transport, idle_timeout=30)
        if transport == "udp":
            src.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            src.sock.bind((HOST, 0))
        elif transport == "tcp-passive":
            _, src.writer = await asyncio.open_connection(HOST, src.port)
        else:
            accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.Future()

            def on_connect(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if not accepted.done():
                    accepted.set_result(w)

            src.server = await asyncio.start_server(on_connect, HOST, 0)
            await relay.connect_stream(stream_id, (HOST, src.server.sockets[0].getsockname()[1]))
            src.writer = await asyncio.wait_for(accepted, 5)
        return src

    async def send(self, packets: list[bytes]) -> None:
        if self.sock is not None:
            for p in packets:
                self.sock.sendto(p, (HOST, self.port))
        else:
            assert self.writer is not None
            self.writer.write(b"".join(frame_rfc4571(p) for p in packets))
            await self.writer.drain()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()


class Sink:
    """Receives an output's RTP over the output's transport."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def open(
        cls, relay: LocalRelay, stream_id: str, output_id: str, transport: Transport, ssrc: int
    ) -> Sink:
        sink = cls()
        if transport == "udp":
            sink.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.sock.bind((HOST, 0))
            sink.sock.setblocking(False)
            remote: tuple[str, int] | None = sink.sock.getsockname()
            sink.port = await relay.add_output(
                stream_id, output_id, transport, remote=remote, ssrc=ssrc
            )
        elif transport == "tcp-passive":
            sink.port = await relay.add_output(
                stream_id, output_id, transport, remote=None, ssrc=ssrc
            )
            sink.reader, sink.writer = await asyncio.open_connection(HOST, sink.port)
        else:
            accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
            accepted = asyncio.Future()

            def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if not accepted.done():
                    accepted.set_result((r, w))

            sink.server = await asyncio.start_server(on_connect, HOST, 0)
            remote = (HOST, sink.server.sockets[0].getsockname()[1])
            sink.port = await relay.add_output(
                stream_id, output_id, transport, remote=remote, ssrc=ssrc
            )
            sink.reader, sink.writer = await asyncio.wait_for(accepted, 5)
        if transport != "udp":  # until the relay has the connection, it drops (and counts)
            await wait_for_connected(relay, stream_id, output_id)
        return sink

    async def recv(self, n: int, timeout: float = 5.0) -> list[bytes]:
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while len(got) < n:
                if self.sock is not None:
                    got.append(await loop.sock_recv(self.sock, 65536))
                else:
                    assert self.reader is not None
                    size = int.from_bytes(await self.reader.readexactly(2), "big")
                    got.append(await self.reader.readexactly(size))
        return got

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()


async def wait_for_connected(relay: LocalRelay, stream_id: str, output_id: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        stats = await relay.stats(stream_id)
        if any(o.output_id == output_id and o.connected for o in stats.outputs):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"output {output_id} never connected")
        await asyncio.sleep(0.01)


@pytest.fixture
def cleanup() -> Iterator[Callable[[Any], Any]]:
    opened: list[Any] = []
    yield lambda x: opened.append(x) or x
    for x in opened:
        x.close()


# -- relaying -----------------------------------------------------------------------------------


async def test_ssrc_rewritten_per_output_payload_identical_fan_out(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    a = cleanup(await Sink.open(relay, "s", "a", "udp", ssrc=0x11111111))
    b = cleanup(await Sink.open(relay, "s", "b", "udp", ssrc=0x22222222))
    sent = [rtp(seq) for seq in range(1, 21)]
    await src.send(sent)
    for sink, ssrc in ((a, 0x11111111), (b, 0x22222222)):
        got = await sink.recv(20)
        assert [g[8:12] for g in got] == [ssrc.to_bytes(4, "big")] * 20
        assert [g[:8] + g[12:] for g in got] == [p[:8] + p[12:] for p in sent]
    stats = await relay.stats("s")
    assert stats.input.packets == 20 and stats.input.bytes == sum(map(len, sent))
    assert stats.input.ssrc == 0x0BEBC201
    assert stats.input.lost == stats.input.reordered == stats.input.foreign == 0
    assert stats.input.last_packet_at is not None
    assert [(o.output_id, o.packets, o.dropped) for o in stats.outputs] == [
        ("a", 20, 0),
        ("b", 20, 0),
    ]


async def test_removing_one_output_keeps_the_other(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    a = cleanup(await Sink.open(relay, "s", "a", "udp", ssrc=1))
    b = cleanup(await Sink.open(relay, "s", "b", "udp", ssrc=2))
    await src.send([rtp(1)])
    await a.recv(1)
    await b.recv(1)
    await relay.remove_output("s", "a")
    await src.send([rtp(2), rtp(3)])
    assert [g[2:4] for g in await b.recv(2)] == [b"\x00\x02", b"\x00\x03"]
    assert [o.output_id for o in (await relay.stats("s")).outputs] == ["b"]
    with pytest.raises(BlockingIOError):
        assert a.sock is not None
        a.sock.recv(2048)  # b got both, so a's would have arrived by now had it been sent
    with pytest.raises(UnknownStream):
        await relay.remove_output("s", "a")


async def test_batches_of_mixed_sizes_stay_separate_datagrams(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    """UDP GSO sends runs of equal-size packets as one message; the receiver must still see
    every RTP packet as its own datagram, with its own size, in order."""
    src = cleanup(await Source.open(relay, "s", "udp"))
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=7))
    sizes = [1400] * 5 + [300] + [1400] * 3 + [200, 200, 900] + [1400] * 70
    sent = [rtp(i, bytes([i]) * (size - 12)) for i, size in enumerate(sizes)]
    await src.send(sent)
    got = await sink.recv(len(sent))
    assert [len(g) for g in got] == sizes
    assert [g[12:] for g in got] == [p[12:] for p in sent]


def test_gso_runs_close_each_run_with_at_most_one_shorter_packet() -> None:
    assert gso_runs([1400, 1400, 1400, 700, 1400, 1400]) == ([0, 4], [4, 2], [1400, 1400])
    assert gso_runs([500, 900, 900]) == ([0, 1], [1, 2], [500, 900])
    assert gso_runs([100, 100, 50, 50]) == ([0, 3], [3, 1], [100, 50])
    starts, counts, _ = gso_runs([1400] * 100)
    assert counts == [46, 46, 8] and starts == [0, 46, 92]  # 64 KiB per message


@pytest.mark.parametrize("tin", TRANSPORTS)
@pytest.mark.parametrize("tout", TRANSPORTS)
async def test_every_transport_combination(
    relay: LocalRelay, cleanup: Callable[[Any], Any], tin: Transport, tout: Transport
) -> None:
    src = cleanup(await Source.open(relay, "s", tin))
    sink = cleanup(await Sink.open(relay, "s", "o", tout, ssrc=0xCAFEBABE))
    sent = [rtp(seq) for seq in range(100, 130)]
    await src.send(sent)
    got = await sink.recv(len(sent))
    assert [g[:8] + g[12:] for g in got] == [p[:8] + p[12:] for p in sent]
    assert {g[8:12] for g in got} == {b"\xca\xfe\xba\xbe"}
    stats = await relay.stats("s")
    assert stats.input.packets == 30 and stats.outputs[0].packets == 30


async def test_per_packet_path_without_recvmmsg(
    monkeypatch: pytest.MonkeyPatch, events: Events, cleanup: Callable[[Any], Any]
) -> None:
    """Where libc has no recvmmsg/sendmmsg the relay reads and sends one packet at a time."""
    monkeypatch.setattr(relay_module, "load_mmsg", lambda: None)
    low, high = port_range()
    r = LocalRelay(host=HOST, port_min=low, port_max=high, on_event=events)
    await r.start()
    try:
        assert r.rx is None
        src = cleanup(await Source.open(r, "s", "udp"))
        sink = cleanup(await Sink.open(r, "s", "o", "udp", ssrc=9))
        sent = [rtp(5), rtp(7), rtp(6)]
        await src.send(sent)
        got = await sink.recv(3)
        assert [g[12:] for g in got] == [p[12:] for p in sent]
        assert {g[8:12] for g in got} == {(9).to_bytes(4, "big")}
        stats = await r.stats("s")
        assert (stats.input.lost, stats.input.reordered) == (0, 1)
    finally:
        await r.close()


async def test_foreign_sources_are_counted_and_still_relayed(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=3))
    other = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    await src.send([rtp(1), rtp(2)])
    await sink.recv(2)
    for seq in (3, 4, 5):
        other.sendto(rtp(seq), (HOST, src.port))
    await src.send([rtp(6)])
    assert len(await sink.recv(4)) == 4
    stats = await relay.stats("s")
    assert stats.input.foreign == 3 and stats.input.packets == 6
    assert relay.metrics.get("relay.udp.foreign") == 3


async def test_what_is_not_rtp_is_dropped_and_counted(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=3))
    rtcp_rr = bytes([0x81, 201, 0, 7]) + bytes(28)
    assert src.sock is not None
    for data in (rtp(1), b"short", rtcp_rr, bytes([0x40]) + bytes(30), rtp(2)):
        src.sock.sendto(data, (HOST, src.port))
    got = await sink.recv(2)
    assert [g[2:4] for g in got] == [b"\x00\x01", b"\x00\x02"]
    await wait_for(lambda: relay.metrics.get("relay.rtp.invalid") == 3, what="3 invalid")
    assert (await relay.stats("s")).input.packets == 2


# -- TCP framing --------------------------------------------------------------------------------


async def test_interleaved_framing_is_accepted_and_rtcp_channels_skipped(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    port = await relay.open_stream("s", "tcp-passive", idle_timeout=30)
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=5))
    _, writer = await asyncio.open_connection(HOST, port)
    cleanup(writer)
    rtcp = bytes([0x81, 200, 0, 6]) + bytes(24)

    def interleaved(channel: int, packet: bytes) -> bytes:
        return b"$" + bytes([channel]) + len(packet).to_bytes(2, "big") + packet

    data = (
        interleaved(0, rtp(1))
        + interleaved(1, rtcp)
        + frame_rfc4571(rtp(2))  # the two framings may even alternate
        + interleaved(0, rtp(3))
    )
    for i in range(0, len(data), 7):  # frames cut across reads
        writer.write(data[i : i + 7])
        await writer.drain()
    got = await sink.recv(3)
    assert [g[2:4] for g in got] == [b"\x00\x01", b"\x00\x02", b"\x00\x03"]


async def test_lost_framing_drops_the_connection_and_counts(
    relay: LocalRelay, events: Events, cleanup: Callable[[Any], Any]
) -> None:
    port = await relay.open_stream("s", "tcp-passive", idle_timeout=30)
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=5))
    reader, writer = await asyncio.open_connection(HOST, port)
    cleanup(writer)
    writer.write(frame_rfc4571(rtp(1)) + b"\x00\x20GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert len(await sink.recv(1)) == 1  # what came before the garbage still went out
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(5):
            await reader.readexactly(1)
    assert relay.metrics.get("relay.tcp.framing_lost") == 1
    await wait_for(lambda: events.count("s", None, "closed") == 1, what="closed event")


def test_deframer_rules() -> None:
    d = TcpDeframer()
    assert d.feed(frame_rfc4571(rtp(1))[:5]) == []
    assert d.feed(frame_rfc4571(rtp(1))[5:] + frame_rfc4571(rtp(2))) == [rtp(1), rtp(2)]
    assert d.pending == 0
    with pytest.raises(FramingError):
        TcpDeframer().feed(b"\x00\x05\x80\x60\x00")  # RTP-looking, but shorter than a header
    with pytest.raises(FramingError) as caught:
        TcpDeframer().feed(frame_rfc4571(rtp(3)) + b"hello world")
    assert caught.value.packets == [rtp(3)]


def test_deframer_interleaved_frame_cut_after_five_bytes() -> None:
    """A TCP segment may end five bytes into a ``$`` frame: the channel is known, the RTP
    header not yet (reading its second byte there used to raise IndexError)."""
    frame = b"$\x00" + len(rtp(7)).to_bytes(2, "big") + rtp(7)
    rtcp = b"$\x01" + len(rtp(8)).to_bytes(2, "big") + rtp(8)  # odd channel: RTCP
    d = TcpDeframer()
    assert d.feed(frame[:5]) == []
    assert d.feed(frame[5:] + rtcp[:5]) == [rtp(7)]
    assert d.feed(rtcp[5:]) == []
    assert (d.interleaved, d.skipped, d.pending) == (2, 1, 0)


def test_deframer_stays_broken() -> None:
    d = TcpDeframer()
    with pytest.raises(FramingError):
        d.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FramingError):
        d.feed(frame_rfc4571(rtp(1)))  # good bytes after bad ones are not trusted


# -- counters -----------------------------------------------------------------------------------


async def test_loss_and_reordering_with_sequence_wrap(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=3))
    # 65532..65535, the wrap, then 0..9 with 2 and 7 missing and 4 arriving after 5.
    order = [65532, 65533, 65534, 65535, 0, 1, 3, 5, 4, 6, 8, 9]
    await src.send([rtp(seq) for seq in order])
    await sink.recv(len(order))
    stats = await relay.stats("s")
    assert stats.input.packets == len(order)
    assert (stats.input.lost, stats.input.reordered) == (2, 1)


def test_seq_counter_cases() -> None:
    def count(seqs: list[int], batch: int = 3) -> SeqCounter:
        c = SeqCounter()
        for i in range(0, len(seqs), batch):
            part = seqs[i : i + batch]
            c.update(bytes(s >> 8 for s in part), bytes(s & 0xFF for s in part))
        return c

    c = count([65534, 65535, 0, 1, 2])
    assert (c.lost, c.reordered) == (0, 0)
    c = count([65534, 0, 3])  # 65535, 1, 2 missing across the wrap
    assert (c.lost, c.reordered) == (3, 0)
    c = count([10, 12, 11, 13])  # late, not lost
    assert (c.lost, c.reordered) == (0, 1)
    c = count([100, 101, 103, 40000, 40001])  # lost 102, then the source restarted
    assert (c.lost, c.reordered) == (1, 0)
    c = count([5, 6, 7, 8, 9, 10, 11, 4])  # behind the first packet: reordered, not lost
    assert (c.lost, c.reordered) == (0, 1)
    c = count([1, 2, 2, 4])  # a duplicate counts as received (RFC 3550 A.3) and hides a loss
    assert (c.lost, c.reordered) == (0, 0)


async def test_keyframe_time_set_by_system_header_only(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    src = cleanup(await Source.open(relay, "s", "udp"))
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=3))
    stuffed = PACK[:13] + bytes([PACK[13] | 0x02]) + b"\xff\xff"  # 2 stuffing bytes
    await src.send([rtp(1, PACK + PES), rtp(2, stuffed + PES), rtp(3, b"\x00\x00\x01\xba")])
    await sink.recv(3)
    assert (await relay.stats("s")).input.last_keyframe_at is None
    # A pack header with stuffing, then the system header: a key frame.
    await src.send([rtp(4, b"x" * 100), rtp(5, stuffed + SYSTEM_HEADER + PES)])
    await sink.recv(2)
    first = (await relay.stats("s")).input.last_keyframe_at
    assert first is not None
    # The PSM alone marks one too, also behind a CSRC list (payload further on).
    psm = b"\x00\x00\x01\xbc\x00\x12" + bytes(18)
    csrc = rtp(6, b"\x00\x00\x00\x09" + PACK + psm, first=0x81)
    await src.send([csrc])
    await sink.recv(1)
    second = (await relay.stats("s")).input.last_keyframe_at
    assert second is not None and second > first


# -- events -------------------------------------------------------------------------------------


async def test_idle_fires_once_after_packets_stop_not_while_they_flow(
    relay: LocalRelay, events: Events, cleanup: Callable[[Any], Any]
) -> None:
    port = await relay.open_stream("s", "udp", idle_timeout=0.3)
    tx = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    started = time.monotonic()
    seq = 0
    last_sent = started
    while time.monotonic() - started < 1.0:  # three idle timeouts' worth of traffic
        tx.sendto(rtp(seq), (HOST, port))
        last_sent = time.monotonic()
        seq += 1
        await asyncio.sleep(0.03)
    assert events.count("s", None, "idle") == 0
    sent_bits = seq * len(rtp(0)) * 8
    assert 0.5 * sent_bits < (await relay.stats("s")).input.bitrate < 2 * sent_bits  # ~1 s
    await wait_for(lambda: events.count("s", None, "idle") == 1, what="idle event")
    # Idle counts from the last packet (a busy machine may oversleep the loop's last wait).
    assert time.monotonic() - last_sent >= 0.25
    await quiet_for(0.7)
    assert events.count("s", None, "idle") == 1
    tx.sendto(rtp(seq), (HOST, port))  # traffic again re-arms it
    await wait_for(lambda: events.count("s", None, "idle") == 2, what="second idle event")


@pytest.mark.parametrize("mmsg", [True, False], ids=["sendmmsg", "per-packet"])
async def test_a_udp_output_whose_receiver_is_gone_is_reported_unreachable_once(
    monkeypatch: pytest.MonkeyPatch, events: Events, cleanup: Callable[[Any], Any], mmsg: bool
) -> None:
    """An upper that closed its RTP port (its BYE lost, or sent from where we could not take
    it) answers every datagram with ICMP port unreachable: after the stream's idle timeout of
    refusals that output is reported, once; a live output beside it is not, and keeps
    receiving."""
    if not mmsg:
        monkeypatch.setattr(relay_module, "load_mmsg", lambda: None)
    low, high = port_range()
    metrics = Metrics()
    r = LocalRelay(host=HOST, port_min=low, port_max=high, on_event=events, metrics=metrics)
    await r.start()
    try:
        port = await r.open_stream("s", "udp", idle_timeout=0.5)
        gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gone.bind((HOST, 0))
        gone_port = gone.getsockname()[1]
        gone.close()  # nobody listens there any more: the kernel answers ICMP port unreachable
        live = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        live.bind((HOST, 0))
        live.setblocking(False)
        await r.add_output("s", "gone", "udp", remote=(HOST, gone_port), ssrc=1)
        await r.add_output("s", "live", "udp", remote=live.getsockname(), ssrc=2)
        tx = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        received = 0
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < 1.5:  # three timeouts of refusals
            tx.sendto(rtp(seq), (HOST, port))
            seq += 1
            await asyncio.sleep(0.02)
            try:
                while live.recv(2048):
                    received += 1
            except BlockingIOError:
                pass
        assert events.seen == [("s", "gone", "unreachable")]
        assert metrics.get("relay.udp.unreachable") == 1
        assert metrics.get("relay.udp.refused") >= 2
        assert received >= seq // 2  # the live receiver was served all along
    finally:
        await r.close()


async def test_a_udp_output_refused_only_for_a_moment_is_not_reported(
    relay: LocalRelay, events: Events, cleanup: Callable[[Any], Any]
) -> None:
    """A receiver that closed its port for a moment and opened it again (a restart) refused a
    few datagrams: that is no run as long as the timeout."""
    port = await relay.open_stream("s", "udp", idle_timeout=0.5)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((HOST, 0))
    address = receiver.getsockname()
    receiver.close()
    await relay.add_output("s", "o", "udp", remote=address, ssrc=1)
    tx = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    for seq in range(5):  # refused: nobody there
        tx.sendto(rtp(seq), (HOST, port))
        await asyncio.sleep(0.02)
    back = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    back.bind(address)  # the receiver is back on its port
    back.setblocking(False)
    for seq in range(5, 60):  # 1 s of traffic, twice the timeout
        tx.sendto(rtp(seq), (HOST, port))
        await asyncio.sleep(0.02)
    assert events.seen == []
    assert back.recv(2048)


async def test_idle_counts_from_open_when_nothing_ever_arrives(
    relay: LocalRelay, events: Events
) -> None:
    opened = time.monotonic()
    await relay.open_stream("s", "tcp-passive", idle_timeout=0.2)
    await wait_for(lambda: events.count("s", None, "idle") == 1, what="idle event")
    assert time.monotonic() - opened >= 0.19


async def test_closed_events_on_tcp_close(
    relay: LocalRelay, events: Events, cleanup: Callable[[Any], Any]
) -> None:
    src = await Source.open(relay, "s", "tcp-passive")
    sink = await Sink.open(relay, "s", "o", "tcp-passive", ssrc=1)
    sink.close()
    await wait_for(lambda: events.count("s", "o", "closed") == 1, what="output closed")
    src.close()
    await wait_for(lambda: events.count("s", None, "closed") == 1, what="input closed")
    # Our own closing reports nothing.
    src2 = cleanup(await Source.open(relay, "t", "tcp-active"))
    cleanup(await Sink.open(relay, "t", "o", "tcp-active", ssrc=1))
    assert src2.writer is not None
    await relay.close_stream("t")
    await quiet_for(0.2)
    assert [e for e in events.seen if e[0] == "t"] == []


async def test_tcp_active_retries_then_reports_closed(
    relay: LocalRelay, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "CONNECT_RETRY_INTERVAL", 0.2)
    # The port refuses connections (bound, not listening) until the first attempt has failed.
    target_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    target_sock.bind((HOST, 0))
    target_sock.setblocking(False)
    target = target_sock.getsockname()[1]
    try:
        await relay.open_stream("s", "tcp-active", idle_timeout=30, remote=(HOST, target))
        await wait_for(
            lambda: relay.metrics.get("relay.tcp.connect_attempt_failed") == 1, what="refused"
        )
        target_sock.listen(1)
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(target_sock), 3)
        conn.close()
    finally:
        target_sock.close()
    # Nobody ever listens: four attempts (one plus three retries), then "closed".
    await relay.open_stream("u", "tcp-active", idle_timeout=30)
    started = time.monotonic()
    await relay.connect_stream("u", (HOST, target))
    await wait_for(lambda: events.count("u", None, "closed") == 1, what="closed after retries")
    assert time.monotonic() - started >= 3 * 0.2
    assert relay.metrics.get("relay.tcp.connect_failed") == 1
    assert relay.metrics.get("relay.tcp.connect_attempt_failed") == 1 + 4


# -- ports --------------------------------------------------------------------------------------


async def test_even_ports_pool_exhaustion_and_return(events: Events) -> None:
    low, _ = port_range()
    # [low+1, low+6] holds the even ports low+2, low+4, low+6; something else holds low+2.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((HOST, low + 2))
    metrics = Metrics()
    r = LocalRelay(host=HOST, port_min=low + 1, port_max=low + 6, on_event=events, metrics=metrics)
    await r.start()
    try:
        assert r.ports_free() == 3
        port = await r.open_stream("s", "udp", idle_timeout=30)
        out = await r.add_output("s", "o", "udp", remote=(HOST, 9), ssrc=1)
        assert {port, out} == {low + 4, low + 6}
        assert r.ports_free() == 1  # low+2, skipped, stays in the pool for later
        with pytest.raises(PortsExhausted):
            await r.open_stream("t", "udp", idle_timeout=30)
        assert metrics.get("relay.ports_exhausted") == 1
        squatter.close()
        assert await r.open_stream("t", "udp", idle_timeout=30) == low + 2
        assert r.ports_free() == 0
        await r.remove_output("s", "o")
        assert r.ports_free() == 1
        await r.close_stream("s")
        await r.close_stream("s")  # idempotent
        assert r.ports_free() == 2
        await r.close_stream("t")
        assert r.ports_free() == 3
    finally:
        squatter.close()
        await r.close()


async def test_errors(relay: LocalRelay) -> None:
    with pytest.raises(UnknownStream):
        await relay.stats("nope")
    with pytest.raises(KeyError):  # UnknownStream is a KeyError too
        await relay.add_output("nope", "o", "udp", remote=(HOST, 9), ssrc=1)
    await relay.open_stream("s", "udp", idle_timeout=30)
    with pytest.raises(RelayError):
        await relay.open_stream("s", "udp", idle_timeout=30)
    with pytest.raises(RelayError):
        await relay.add_output("s", "o", "udp", remote=None, ssrc=1)
    with pytest.raises(RelayError):
        await relay.add_output("s", "o", "udp", remote=(HOST, 9), ssrc=1 << 32)
    free = relay.ports_free()
    await relay.close()
    assert relay.ports_free() == free + 1


# -- worker processes ---------------------------------------------------------------------------


async def test_worker_relay_relays_reports_idle_and_stops_its_processes(
    events: Events, cleanup: Callable[[Any], Any]
) -> None:
    low, high = port_range()
    metrics = Metrics()
    r = make_relay(
        workers=2, host=HOST, port_min=low, port_max=high, on_event=events, metrics=metrics
    )
    assert isinstance(r, WorkerRelay)
    await r.start()
    pids = r.worker_pids()
    try:
        assert len(pids) == 2 and r.ports_free() == 100
        sinks: list[Sink] = []
        ports = []
        for i in range(4):  # least loaded first: two streams on each worker
            ports.append(await r.open_stream(f"s{i}", "udp", idle_timeout=0.5 + i))
            sink = cleanup(Sink())
            sink.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.sock.bind((HOST, 0))
            sink.sock.setblocking(False)
            remote = sink.sock.getsockname()
            await r.add_output(f"s{i}", "o", "udp", remote=remote, ssrc=0x100 + i)
            sinks.append(sink)
        assert sum(low <= p < low + 100 for p in ports) == 2
        tx = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        for i, port in enumerate(ports):
            tx.sendto(rtp(i), (HOST, port))
        for i, sink in enumerate(sinks):
            (got,) = await sink.recv(1)
            assert got[8:12] == (0x100 + i).to_bytes(4, "big") and got[12:] == rtp(i)[12:]
        stats = await r.stats("s2")
        assert stats.input.packets == 1 and stats.outputs[0].packets == 1
        await wait_for(lambda: events.count("s0", None, "idle") == 1, what="idle from a worker")
        with pytest.raises(UnknownStream):
            await r.stats("nope")
        # A worker that dies reports its streams closed; the other keeps relaying.
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(
            lambda: sum(e[2] == "closed" for e in events.seen) == 2, what="closed streams"
        )
        closed = {e[0] for e in events.seen if e[2] == "closed"}
        survivor = next(i for i in range(4) if f"s{i}" not in closed)
        tx.sendto(rtp(9), (HOST, ports[survivor]))
        await sinks[survivor].recv(1)
        await wait_for(lambda: metrics.get("relay.worker_died") == 1, what="metric")
    finally:
        await r.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert r.worker_pids() == []


async def test_tcp_output_holds_packets_until_its_receiver_connects(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    """The upper connects to a tcp-passive output only after our answer, by which time the
    device may be sending: the first packets (the key frame) are held, not dropped."""
    src = cleanup(await Source.open(relay, "s", "udp"))
    port = await relay.add_output("s", "o", "tcp-passive", remote=None, ssrc=0xABCDEF01)
    sent = [rtp(seq) for seq in range(1, 11)]
    await src.send(sent)
    await wait_for_packets(relay, "s", 10)
    stats = await relay.stats("s")
    assert stats.outputs[0].dropped == 0 and not stats.outputs[0].connected
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        got = []
        async with asyncio.timeout(5):
            while len(got) < 10:
                size = int.from_bytes(await reader.readexactly(2), "big")
                got.append(await reader.readexactly(size))
        assert [g[:8] + g[12:] for g in got] == [p[:8] + p[12:] for p in sent]
        assert {g[8:12] for g in got} == {(0xABCDEF01).to_bytes(4, "big")}
        assert (await relay.stats("s")).outputs[0].packets == 10
    finally:
        writer.close()


async def test_tcp_output_hold_is_bounded(
    relay: LocalRelay, cleanup: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "PENDING_LIMIT", 5_000)
    src = cleanup(await Source.open(relay, "s", "udp"))
    await relay.add_output("s", "o", "tcp-passive", remote=None, ssrc=1)
    for seq in range(1, 11):  # 1,000-byte packets, one read each
        await src.send([rtp(seq, bytes(988))])
        await wait_for_packets(relay, "s", seq)
    out = (await relay.stats("s")).outputs[0]
    assert out.dropped == 6  # four framed packets fit in 5,000 bytes


async def wait_for_packets(relay: LocalRelay, stream_id: str, n: int) -> None:
    deadline = time.monotonic() + 5
    while (await relay.stats(stream_id)).input.packets < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream_id} never got {n} packets")
        await asyncio.sleep(0.01)


# -- the input as the far end answered it (issue 13, items 15 and 16) ---------------------------


async def test_tcp_active_never_takes_itself_for_its_peer(
    relay: LocalRelay, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A far end that names the stream's own address and port: on Linux a connect from a port
    # to itself succeeds (TCP simultaneous open), and the stream would wait on itself for ever.
    monkeypatch.setattr(relay_module, "CONNECT_RETRY_INTERVAL", 0.05)
    port = await relay.open_stream("s", "tcp-active", idle_timeout=30)
    await relay.connect_stream("s", (HOST, port))
    await wait_for(lambda: events.count("s", None, "closed") == 1, what="closed, not connected")
    assert relay.metrics.get("relay.tcp.self_connect") >= 1
    assert relay.metrics.get("relay.tcp.connect_failed") == 1
    assert not any(o.connected for o in (await relay.stats("s")).outputs)


async def test_settle_input_receives_on_the_same_port_with_the_answered_transport(
    relay: LocalRelay, cleanup: Callable[[Any], Any]
) -> None:
    port = await relay.open_stream("s", "tcp-active", idle_timeout=30)
    sink = cleanup(await Sink.open(relay, "s", "o", "udp", ssrc=0x11111111))
    # The far end answered RTP/AVP: UDP on the port number the offer named.
    await relay.settle_input("s", "udp")
    sender = cleanup(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    for seq in range(1, 6):
        sender.sendto(rtp(seq), (HOST, port))
    got = await sink.recv(5)
    assert [g[8:12] for g in got] == [(0x11111111).to_bytes(4, "big")] * 5
    # Or it answered a=setup:active to our active: we listen there, it connects.
    await relay.settle_input("s", "tcp-passive")
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"".join(frame_rfc4571(rtp(seq)) for seq in range(6, 9)))
    await writer.drain()
    assert len(await sink.recv(3)) == 3
    writer.close()
    assert relay.metrics.get("relay.input_switched") == 2
    assert (await relay.stats("s")).input.packets == 8


async def test_input_port_number_is_kept_for_both_protocols_until_settled(
    relay: LocalRelay,
) -> None:
    # Offered over TCP, the number is also held for UDP (the answer may pick UDP), and the
    # other way round; once the answer has settled the transport, the spare is given up.
    for transport, other in (("tcp-passive", socket.SOCK_DGRAM), ("udp", socket.SOCK_STREAM)):
        port = await relay.open_stream("s", transport, idle_timeout=30)
        with socket.socket(socket.AF_INET, other) as squatter, pytest.raises(OSError):
            squatter.bind((HOST, port))
        await relay.settle_input("s", transport)
        with socket.socket(socket.AF_INET, other) as squatter:
            squatter.bind((HOST, port))
        await relay.close_stream("s")
    assert relay.ports_free() == relay._pool.size
    assert relay.metrics.get("relay.input_switched") == 0


async def test_port_held_elsewhere_for_the_other_protocol_is_skipped(events: Events) -> None:
    UDP = socket.SOCK_DGRAM
    for _ in range(50):  # a slice whose two ports nothing else holds now (other tests run)
        low, _ = port_range()
        try:
            for port, kind in ((low, UDP), (low + 2, UDP), (low + 2, socket.SOCK_STREAM)):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind((HOST, port))
        except OSError:
            continue
        break
    squatter = socket.socket(socket.AF_INET, UDP)
    squatter.bind((HOST, low))  # UDP only: the TCP number is free, but not both
    r = LocalRelay(host=HOST, port_min=low, port_max=low + 2, on_event=events)
    await r.start()
    try:
        assert await r.open_stream("s", "tcp-passive", idle_timeout=30) == low + 2
    finally:
        squatter.close()
        await r.close()


async def test_holds_port_names_only_ports_in_use(relay: LocalRelay) -> None:
    port = await relay.open_stream("s", "udp", idle_timeout=30)
    assert await relay.holds_port(port)
    assert not await relay.holds_port(port + 2)
    assert not await relay.holds_port(port + 1)  # odd: RTCP's, never the pool's
    await relay.close_stream("s")
    assert not await relay.holds_port(port)
