"""What the gateway keeps, as plain dataclasses (domain values, not wire messages)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Device:
    """A device (IPC, NVR, DVR, lower platform) that registers to the gateway.

    ``host``/``port``/``transport`` is where requests to the device go: the source of its last
    authenticated REGISTER (GB/T 28181-2022 §9.1, reference §8.2), not its Contact, which is
    often a private address behind NAT. Times are UNIX seconds.
    """

    device_id: str
    transport: str = "udp"
    host: str = ""
    port: int = 0
    contact: str = ""
    expires: int = 0
    registered_at: float = 0.0
    expires_at: float = 0.0
    last_seen: float = 0.0
    online: bool = False
    call_id: str = ""
    cseq: int = 0
    user_agent: str = ""
    gb_version: str = ""
