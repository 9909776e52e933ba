"""One sans-I/O core on a fake clock and a recording network, for feeding it raw bytes.

The RFC 4475 and hardening tests send a core what a peer would (whole datagrams) and look at
what it answers, what it counts and what it keeps; no sockets, no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.metrics import Metrics
from gateway.sip import Peer, Request, Response, SipCore, make_response, parse
from gateway.sip.transaction import ServerTransaction, TimerConfig
from tests.sip.fakeclock import FakeClock

PEER = Peer("udp", "192.0.2.9", 5060)


@dataclass
class Recorder:
    """The core's network: keeps every (peer, bytes) it sends."""

    sent: list[tuple[Peer, bytes]] = field(default_factory=list)

    def send(self, peer: Peer, data: bytes) -> bool:
        self.sent.append((peer, data))
        return True


@dataclass
class Answerer:
    """A transaction user that answers every request 200 and remembers it."""

    seen: list[Request] = field(default_factory=list)

    def request_received(self, request: Request, peer: Peer, txn: ServerTransaction | None) -> None:
        self.seen.append(request)
        if txn is not None:
            txn.respond(make_response(request, 200, to_tag="uas"))


class Rig:
    def __init__(self, methods: tuple[str, ...] = ("INVITE", "OPTIONS", "REGISTER", "MESSAGE")):
        self.clock = FakeClock()
        self.net = Recorder()
        self.user = Answerer()
        self.metrics = Metrics()
        self.core = SipCore(
            network=self.net,
            user=self.user,
            counters=self.metrics,
            scheduler=self.clock,
            timers=TimerConfig(),
        )
        for method in methods:
            self.core.allow(method)

    def feed(self, data: bytes, peer: Peer = PEER) -> list[Response]:
        """Hand the core one datagram; the responses it sent for it."""
        before = len(self.net.sent)
        self.core.receive(data, peer)
        out = []
        for _, raw in self.net.sent[before:]:
            msg = parse(raw)
            assert isinstance(msg, Response)
            out.append(msg)
        return out

    def final(self, data: bytes) -> Response:
        """The one final response the core sends for ``data`` (a 100 Trying is skipped)."""
        finals = [r for r in self.feed(data) if r.status >= 200]
        assert len(finals) == 1, finals
        return finals[0]
