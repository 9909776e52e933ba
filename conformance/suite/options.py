"""What one run of the conformance suite is pointed at and how it plays its part.

The target's role decides which side the suite takes (reference §1.1): for a ``device`` target the
suite is the platform the device registers to; for a ``platform`` target it is devices (and a
lower platform) below it and an upper platform above it; for a ``gateway`` target it is both. The
edition (GB/T 28181-2016 or -2022) decides which cases apply and which fields are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

ROLES = ("device", "platform", "gateway")
EDITIONS = ("2016", "2022")
SIP_TRANSPORTS = ("udp", "tcp")
# Our side of a media session (reference §6.5): RTP over UDP, TCP where we listen, TCP where we
# connect.
MEDIA_TRANSPORTS = ("udp", "tcp-passive", "tcp-active")


@dataclass(slots=True)
class Options:
    target_role: str  # "device" | "platform" | "gateway"
    target_host: str = "127.0.0.1"
    target_port: int = 5060
    target_id: str = ""  # device role: the device's ID; platform/gateway: the platform's ID
    target_domain: str = ""  # platform/gateway: its SIP domain (realm)
    password: str = "12345678"
    transport: str = "udp"  # SIP
    media_transports: tuple[str, ...] = MEDIA_TRANSPORTS
    edition: str = "2022"
    local_host: str = "127.0.0.1"  # the suite's SIP address
    local_port: int = 0  # 0: the OS picks
    suite_platform_id: str = "34020000002000000001"  # the suite as platform / upper
    suite_domain: str = "3402000000"
    suite_device_ids: tuple[str, ...] = ("34020000001180000101",)  # platform/gateway roles
    # Platform role: the target also registers to the suite's upper platform (on local_host,
    # local_port, as suite_platform_id) and shares the suite's devices there: it is then
    # judged as a gateway is, as well as a platform.
    cascade: bool = False
    channels: int = 4  # channels per simulated device
    register_timeout: float = 30.0
    case_timeout: float = 60.0
    # The target's heartbeat period (s); None: learned from its keepalives (else GB/T 28181's
    # 60 s). Cases that wait on the target's own timers wait a multiple of it, not case_timeout.
    keepalive_interval: float | None = None
    # The lifetime (s) the suite's registrar grants when a case checks that the target refreshes
    # its registration in time (RFC 3261 §10.2.4: the granted time binds the registering side).
    grant_expires: int = 60
    # -k style expressions matched on "ID title"; a case must match every one.
    select: tuple[str, ...] = ()
    grades: tuple[str, ...] = ()  # empty: every grade
    report_dir: str | None = None
    # Who acts at the target when a case needs it (conformance.suite.operator): "none" (those
    # cases are skipped), "prompt" (a person, told on the terminal) or "hook" (a program).
    operator: str = "none"
    operator_hook: str = ""  # the shell command of the "hook" operator
    operator_timeout: float = 60.0  # how long a case waits for each action's effect

    def __post_init__(self) -> None:
        if self.target_role not in ROLES:
            raise ValueError(f"target_role must be one of {', '.join(ROLES)}: {self.target_role!r}")
        if self.edition not in EDITIONS:
            raise ValueError(f"edition must be one of {', '.join(EDITIONS)}: {self.edition!r}")
        if self.transport not in SIP_TRANSPORTS:
            raise ValueError(f"transport must be udp or tcp: {self.transport!r}")
        self.media_transports = tuple(self.media_transports)
        for name in self.media_transports:
            if name not in MEDIA_TRANSPORTS:
                raise ValueError(
                    f"media transports are {', '.join(MEDIA_TRANSPORTS)}: got {name!r}"
                )
        self.suite_device_ids = tuple(self.suite_device_ids)
        self.select = tuple(self.select)
        self.grades = tuple(self.grades)
        if self.cascade and self.target_role != "platform":
            raise ValueError("cascade is for a platform target (a gateway always registers up)")
        if self.operator not in ("none", "prompt", "hook"):
            raise ValueError(f"operator must be none, prompt or hook: {self.operator!r}")
        if self.operator == "hook" and not self.operator_hook.strip():
            raise ValueError("the hook operator needs a command (operator_hook)")
        if self.case_timeout <= 0 or self.register_timeout <= 0 or self.operator_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        if self.grant_expires < 1:
            raise ValueError("grant_expires must be at least 1 s")

    def public(self) -> dict[str, Any]:
        """The options as plain values for reports, the password and the operator hook (which
        may carry an API's credentials) masked: reports are handed over, secrets are not."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("password", "operator_hook"):  # a hook may hold API credentials
                value = "********" if value else ""
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out
