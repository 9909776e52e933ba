"""The SIP message trace of a run: every message the suite's endpoints send and receive.

:meth:`Trace.tap` puts itself between an endpoint and its transports, on both paths: outgoing
bytes through ``endpoint.transports.send`` (every request, response and retransmission leaves
that way, UDP or TCP), incoming bytes through ``endpoint.message_received`` (which the
transports, or a peer's own tap such as the simulated platform's ``_RawTap``, call for each
datagram or each message cut from a TCP stream). The bytes are kept as they were on the wire;
the reports decode them for display. Entries are stamped with seconds since the trace began, so
a case's excerpt reads with the timing the target showed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.sip.endpoint import Endpoint
from gateway.sip.transport import Peer

_FIRST_LINE_MAX = 200


@dataclass(slots=True)
class TraceEntry:
    t: float  # seconds since the run (the trace) began
    direction: str  # "sent" | "received"
    peer: str  # the other side, e.g. "udp:127.0.0.1:5060"
    first_line: str  # request line or status line
    data: bytes  # the raw SIP message
    label: str  # which of the suite's endpoints ("platform", "device", ...)
    note: str = ""  # e.g. "not sent: no connection"

    @property
    def text(self) -> str:
        """The message for display (see :func:`decode_message`)."""
        return decode_message(self.data)

    def describe(self, since: float = 0.0) -> str:
        """One line: time relative to ``since``, direction, who, first line."""
        arrow = "->" if self.direction == "sent" else "<-"
        note = f" ({self.note})" if self.note else ""
        return f"+{self.t - since:.3f}s [{self.label}] {arrow} {self.peer} {self.first_line}{note}"


def decode_message(data: bytes) -> str:
    """Bytes from the network as text: UTF-8, else GB18030 (a superset of the GB2312 that
    GB/T 28181 bodies often declare), else UTF-8 with the broken bytes replaced."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def first_line(data: bytes) -> str:
    end = data.find(b"\n", 0, 4 * _FIRST_LINE_MAX)
    line = data[: end if end >= 0 else 4 * _FIRST_LINE_MAX].rstrip(b"\r")
    text = line.decode("utf-8", errors="replace")
    if len(text) > _FIRST_LINE_MAX:
        text = text[:_FIRST_LINE_MAX] + "…"
    return text


class _Tap:
    """One endpoint's wrappers, and what to put back when they come off."""

    __slots__ = ("active", "endpoint", "had_receive", "had_send", "receive", "send")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.active = True
        # Instance attributes that were there before ours (someone else's wrapper), if any.
        self.had_send: Any = vars(endpoint.transports).get("send")
        self.had_receive: Any = vars(endpoint).get("message_received")
        self.send: Callable[[Peer, bytes], bool] | None = None
        self.receive: Callable[[bytes, Peer], None] | None = None


class Trace:
    """Every SIP message of the tapped endpoints, in order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.start = clock()
        self.entries: list[TraceEntry] = []
        self._taps: list[_Tap] = []

    def now(self) -> float:
        """Seconds since the trace began (the time base of every entry)."""
        return self._clock() - self.start

    def record(
        self, direction: str, peer: Peer | str, data: bytes, label: str, note: str = ""
    ) -> TraceEntry:
        entry = TraceEntry(
            t=self.now(),
            direction=direction,
            peer=str(peer),
            first_line=first_line(data),
            data=bytes(data),
            label=label,
            note=note,
        )
        self.entries.append(entry)
        return entry

    def tapped(self, endpoint: Endpoint) -> bool:
        return any(tap.endpoint is endpoint and tap.active for tap in self._taps)

    def tap(self, endpoint: Endpoint, label: str) -> None:
        """Record every SIP message ``endpoint`` sends and receives, as ``label``. Tapping an
        endpoint twice does nothing the second time."""
        if self.tapped(endpoint):
            return
        tap = _Tap(endpoint)
        transports = endpoint.transports
        send_next = transports.send
        receive_next = endpoint.message_received
        record = self.record

        def send(peer: Peer, data: bytes) -> bool:
            ok = send_next(peer, data)
            if tap.active:
                record("sent", peer, data, label, "" if ok else "not sent: no connection")
            return ok

        def message_received(data: bytes, peer: Peer) -> None:
            if tap.active:
                record("received", peer, data, label)
            receive_next(data, peer)

        tap.send, tap.receive = send, message_received
        transports.send = send  # type: ignore[method-assign]
        endpoint.message_received = message_received  # type: ignore[method-assign]
        self._taps.append(tap)

    def untap_all(self) -> None:
        """Take every wrapper off. One that another wrapper has since been put over stays in
        place but stops recording and only passes the message on."""
        for tap in self._taps:
            tap.active = False
            transports = tap.endpoint.transports
            if vars(transports).get("send") is tap.send:
                if tap.had_send is None:
                    del transports.send
                else:
                    transports.send = tap.had_send  # type: ignore[method-assign]
            if vars(tap.endpoint).get("message_received") is tap.receive:
                if tap.had_receive is None:
                    del tap.endpoint.message_received
                else:
                    tap.endpoint.message_received = tap.had_receive  # type: ignore[method-assign]
        self._taps.clear()

    def mark(self) -> int:
        """A position in the trace, for :meth:`since`."""
        return len(self.entries)

    def since(self, mark: int) -> list[TraceEntry]:
        return self.entries[mark:]
