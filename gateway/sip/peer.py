"""A remote SIP address: transport, host and port (RFC 3261 §18)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote SIP address: ``transport`` is ``"udp"`` or ``"tcp"``."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport == "tcp"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port}"
