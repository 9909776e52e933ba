"""The RTP relay's public vocabulary: transports, errors, statistics and the ``Relay`` protocol.

Kept apart from the implementations so that :mod:`gateway.media.relay` (the in-process relay) and
the worker-process relay can both use it without importing each other. Everything here is
re-exported by :mod:`gateway.media.relay`; import it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.settings import MediaTransport

Transport = MediaTransport
"""How a leg carries RTP (one definition, in the settings the media section validates)."""

TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp-passive", "tcp-active")

EventSink = Callable[[str, str | None, str], None]
"""Called as ``(stream_id, output_id or None, event)``; ``event`` is ``"idle"``, ``"closed"``
or ``"unreachable"`` (see :mod:`gateway.media.relay`)."""


class RelayError(Exception):
    """Base class of every error the relay raises."""


class PortsExhausted(RelayError):
    """No even port of the configured range is free (or bindable) any more."""


class UnknownStream(RelayError, KeyError):
    """No open stream (or output) has this id. Also a ``KeyError``, for ``except KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(slots=True)
class LegStats:
    """What arrived on a stream's input leg.

    ``lost`` follows RFC 3550 §6.4.1/A.3 (expected − received, so a late packet fills its gap);
    ``reordered`` counts packets whose sequence number is behind the highest seen; ``bitrate`` is
    bits/s over the last 1–2 s; times are ``time.monotonic()``; ``foreign`` counts UDP packets
    from a source address other than the first one (still relayed).
    """

    packets: int
    bytes: int
    lost: int
    reordered: int
    bitrate: float
    last_packet_at: float | None
    last_keyframe_at: float | None
    ssrc: int | None
    foreign: int


@dataclass(slots=True)
class OutputStats:
    """What one output sent; ``dropped`` counts packets not sent (TCP peer absent, buffer full)."""

    output_id: str
    packets: int
    bytes: int
    dropped: int
    connected: bool


@dataclass(slots=True)
class StreamStats:
    stream_id: str
    input: LegStats
    outputs: list[OutputStats]
    port: int


class Relay(Protocol):
    """What the session layer drives; :class:`LocalRelay` and :class:`WorkerRelay` satisfy it."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def open_stream(
        self,
        stream_id: str,
        transport: Transport,
        *,
        idle_timeout: float,
        remote: tuple[str, int] | None = None,
    ) -> int: ...

    async def connect_stream(self, stream_id: str, remote: tuple[str, int]) -> None: ...

    async def settle_input(self, stream_id: str, transport: Transport) -> None: ...

    async def add_output(
        self,
        stream_id: str,
        output_id: str,
        transport: Transport,
        *,
        remote: tuple[str, int] | None,
        ssrc: int,
    ) -> int: ...

    async def remove_output(self, stream_id: str, output_id: str) -> None: ...

    async def close_stream(self, stream_id: str) -> None: ...

    async def stats(self, stream_id: str) -> StreamStats: ...

    def ports_free(self) -> int: ...

    async def holds_port(self, port: int) -> bool: ...
