"""What the gateway keeps, as plain dataclasses (domain values, not wire messages)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


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
    # What the device told us about itself (DeviceInfo, GB/T 28181-2022 §9.5.3).
    name: str = ""
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    channel_count: int = 0
    # The charset its MANSCDP bodies really use and the one their prolog declares; we answer
    # in kind. Empty until a non-ASCII body has been seen (reference §8.3).
    charset: str = ""
    declared_charset: str = ""
    synced_at: float = 0.0


@dataclass(slots=True)
class Alarm:
    """An alarm a device reported (GB/T 28181-2022 §9.4, reference §5.3).

    ``device_id`` is the registered device it came from, ``channel_id`` the body's DeviceID
    (the alarming channel or the device itself). ``time`` is the device's ``AlarmTime`` text.
    """

    device_id: str
    channel_id: str
    priority: int | None = None
    method: int | None = None
    alarm_type: int | None = None
    event_type: int | None = None
    time: str = ""
    description: str = ""
    longitude: float | None = None
    latitude: float | None = None
    received_at: float = 0.0
    id: int | None = None


@dataclass(slots=True)
class AuditEntry:
    """One write through the HTTP API: who (a user or token name, and its role), what
    (``action`` such as ``unit.create``, its ``target`` and a short ``detail``), when (UNIX
    seconds) and from where (the client address). ``id`` is given by the store."""

    at: float
    who: str
    role: str
    action: str
    target: str = ""
    detail: str = ""
    source: str = ""
    outcome: str = "ok"
    id: int | None = None


class DeviceDirectory(Protocol):
    """The registered devices, read-only: what every part outside ``downlink/`` may know of the
    registrar's bindings. The registrar implements it; tests may pass any object of this shape.
    The devices returned are the registrar's own records: read them, never change them."""

    def get(self, device_id: str, /) -> Device | None:
        """The device registered (or known from the store) under ``device_id``."""
        ...

    def __contains__(self, device_id: object, /) -> bool: ...

    def values(self) -> Iterable[Device]:
        """Every known device, online or not."""
        ...
