"""The typed configuration sections, one per part of the gateway, with embedded defaults.

Each part is given its own section (and the gateway's identity, :class:`GatewaySection`), never
the whole :class:`Config`: only the composition root (``gateway.app``) reads the whole. Unknown
keys and bad values are refused with a message naming the key (``sip.port: ...``). Every key is
documented in README.md; keep the two in step.
"""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _gb_id(value: str) -> str:
    if len(value) != 20 or not (value.isascii() and value.isdigit()):
        raise ValueError("must be a 20-digit GB/T 28181 ID")
    return value


class GatewaySection(_Section):
    """The gateway's identity (GB/T 28181-2022 §4.3 IDs, its SIP domain, its time zone): the one
    value every part that writes a message is given besides its own section."""

    id: str = "34020000002000000001"
    domain: str = "3402000000"
    name: str = "GB28181 gateway"
    civil_code: str = ""
    time_zone: str = "Asia/Shanghai"

    _check_id = field_validator("id")(_gb_id)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in ".-" for c in value):
            raise ValueError("must be a SIP domain such as 3402000000")
        return value

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value.upper() in ("UTC", "LOCAL") or value.startswith(("+", "-")):
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class SipSection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(5060, ge=0, le=65535)
    advertised_host: str = ""
    user_agent: str = "gb28181-gateway"
    t1: float = Field(0.5, gt=0, le=10)
    t2: float = Field(4.0, gt=0, le=60)
    t4: float = Field(5.0, gt=0, le=60)
    tcp_idle_timeout: float = Field(300.0, gt=0)
    # Once a message's first byte arrives on TCP, the whole message must follow within this.
    tcp_message_timeout: float = Field(30.0, gt=0, le=600)
    max_connections_per_ip: int = Field(1000, ge=1)
    # TCP connections in all; 0: the descriptor limit less the media ports and a reserve,
    # at most 20,000.
    max_connections: int = Field(0, ge=0)
    # Bytes of incomplete TCP messages all connections may hold together; at least one
    # message of the largest size (1 MiB).
    tcp_buffer_budget: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    # A TCP message's body may go on past tcp_message_timeout while the message averages this
    # many bytes per second from its first byte; 0: the whole message within the timeout.
    tcp_min_body_rate: float = Field(2000.0, ge=0)


class DevicePassword(_Section):
    id: str
    password: str = Field(min_length=1)

    _check_id = field_validator("id")(_gb_id)


class AuthSection(_Section):
    password: str = Field("12345678", min_length=1)
    unknown_devices: Literal["accept", "reject"] = "accept"
    qop: bool = True
    nonce_ttl: float = Field(300.0, gt=0)
    devices: tuple[DevicePassword, ...] = ()
    # Password guessing (gateway.downlink.lockout): wrong passwords per device ID and per source
    # address within failure_window before a lock-out of lockout_seconds; each table holds at
    # most failure_table_size records. 5 < 20: one misconfigured device alone never locks out
    # the NAT address its neighbours share.
    max_failures_per_device: int = Field(5, ge=1)
    max_failures_per_address: int = Field(20, ge=1)
    failure_window: float = Field(900.0, gt=0)
    lockout_seconds: float = Field(900.0, gt=0)
    failure_table_size: int = Field(10_000, ge=16)

    @model_validator(mode="after")
    def _unique(self) -> AuthSection:
        seen: set[str] = set()
        for entry in self.devices:
            if entry.id in seen:
                raise ValueError(f"device {entry.id} is listed twice in auth.devices")
            seen.add(entry.id)
        return self

    def device_password(self, device_id: str) -> str | None:
        """The password a device must use, or ``None`` when it may not register at all."""
        for entry in self.devices:
            if entry.id == device_id:
                return entry.password
        return self.password if self.unknown_devices == "accept" else None


class RegistrarSection(_Section):
    default_expires: int = Field(3600, ge=1)
    min_expires: int = Field(60, ge=1)
    max_expires: int = Field(86400, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> RegistrarSection:
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need min_expires <= default_expires <= max_expires")
        return self


class OverloadSection(_Section):
    """Shedding new work while the gateway is behind (``gateway.sip.overload``)."""

    enabled: bool = True
    # behind: the UDP receive queue not empty for this long, or the event loop this late
    queue_delay: float = Field(0.2, gt=0, le=10)
    loop_lag: float = Field(0.25, gt=0, le=10)
    # the Retry-After of a shed request: from the first second the calendar of returns has
    # room in, no sooner than min, no later than max
    retry_after_min: int = Field(5, ge=1, le=3600)
    retry_after_max: int = Field(300, ge=1, le=86400)

    @model_validator(mode="after")
    def _window(self) -> OverloadSection:
        if self.retry_after_min > self.retry_after_max:
            raise ValueError("need retry_after_min <= retry_after_max")
        return self


class KeepaliveSection(_Section):
    interval: float = Field(60.0, gt=0)
    timeout_count: int = Field(3, ge=1)
    check_interval: float = Field(1.0, gt=0, le=60)


class DownlinkSection(_Section):
    response_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(5.0, gt=0)
    max_query_time: float = Field(300.0, gt=0)
    max_items: int = Field(100_000, ge=1)
    max_queries_per_device: int = Field(4, ge=1)
    max_queued_per_device: int = Field(64, ge=0)
    max_concurrent_syncs: int = Field(128, ge=1)
    # catalog syncs started per second at most; none start while the gateway sheds load
    sync_rate: float = Field(200.0, gt=0)
    sync_on_register: bool = True
    catalog_subscription: bool = True
    catalog_subscription_expires: int = Field(600, ge=60)
    alarm_subscription: bool = False
    alarm_subscription_expires: int = Field(3600, ge=60)
    mobile_position_subscription: bool = False
    mobile_position_interval: int = Field(5, ge=1)
    mobile_position_expires: int = Field(3600, ge=60)
    subscription_retry: float = Field(300.0, gt=0)


def _digits(value: str, lengths: tuple[int, ...], what: str) -> str:
    if len(value) not in lengths or not (value.isascii() and value.isdigit()):
        raise ValueError(f"must be {what}")
    return value


class UpperPlatform(_Section):
    """One upper (city) platform the gateway registers to as a lower platform (reference §7)."""

    id: str
    domain: str
    host: str
    port: int = Field(5060, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    password: str = Field(min_length=1)
    name: str = ""
    enabled: bool = True
    register_expires: int = Field(3600, ge=60)
    keepalive_interval: float = Field(60.0, gt=0)
    keepalive_timeout_count: int = Field(3, ge=1)
    retry_interval: float = Field(60.0, gt=0)
    charset: Literal["GB2312", "UTF-8"] = "GB2312"
    gb_version: Literal["2016", "2022"] = "2016"
    # "all", or at most 100,000 device and channel IDs (as the API's share lists).
    share: Literal["all"] | Annotated[tuple[str, ...], Field(max_length=100_000)] = "all"
    id_policy: Literal["keep", "recode"] = "keep"
    civil_code: str = ""
    industry_code: str = "00"
    catalog_batch_udp_bytes: int = Field(1300, ge=1000, le=65000)
    catalog_batch_tcp_items: int = Field(50, ge=1, le=10_000)
    # Items per catalog MESSAGE or NOTIFY, whatever the byte budget (a platform that refuses
    # one-item messages; one that cannot take many). 0: no maximum.
    # At most 50: a message held to the minimum may have to go over UDP when TCP fails, and 50
    # full items (about 40 KB, as catalog_batch_tcp_items) still fit in a datagram.
    catalog_min_items: int = Field(1, ge=1, le=50)
    catalog_max_items: int = Field(0, ge=0, le=10_000)
    # Other addresses the upper sends in-dialog requests (BYE, INFO) from: a platform with
    # several NICs, or a cluster (RFC 3261 §12.2.2 matches dialogs by Call-ID and tags).
    other_hosts: tuple[str, ...] = Field((), max_length=64)

    _check_id = field_validator("id")(_gb_id)

    @field_validator("share")
    @classmethod
    def _share(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, tuple):
            for item in value:
                _gb_id(item)
        return value

    @field_validator("industry_code")
    @classmethod
    def _industry(cls, value: str) -> str:
        return _digits(value, (2,), "a 2-digit industry code")

    @model_validator(mode="after")
    def _item_counts(self) -> UpperPlatform:
        # With max >= 2·min - 1 any count from min up splits into messages within both.
        if self.catalog_max_items and self.catalog_max_items < 2 * self.catalog_min_items - 1:
            raise ValueError(
                "catalog_max_items must be 0 or at least 2 × catalog_min_items - 1"
                " (so that any number of items splits into messages within both)"
            )
        return self

    @model_validator(mode="after")
    def _recode_needs_civil_code(self) -> UpperPlatform:
        if self.civil_code:
            _digits(self.civil_code, (2, 4, 6, 8), "a civil code of 2, 4, 6 or 8 digits")
        elif self.id_policy == "recode":
            raise ValueError("id_policy = recode needs civil_code (the upper's ID namespace)")
        return self


class UplinkSection(_Section):
    platforms: tuple[UpperPlatform, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> UplinkSection:
        ids = [p.id for p in self.platforms]
        if len(ids) != len(set(ids)):
            raise ValueError("two uplink.platforms have the same id")
        return self


MediaTransport = Literal["udp", "tcp-passive", "tcp-active"]
"""How one media leg carries RTP: ``udp`` is RTP/AVP (RFC 3550); ``tcp-passive`` means the relay
listens and the peer connects, ``tcp-active`` that the relay connects (TCP/RTP/AVP with RFC 4571
framing, ``a=setup`` of RFC 4145 as used by GB/T 28181-2022 Annex D). The one definition: the
SDP model and the relay use it under the name ``Transport``."""


class MediaSection(_Section):
    """RTP relay and media sessions (reference §6, §7.4)."""

    host: str = "0.0.0.0"
    advertised_host: str = ""
    port_min: int = Field(30000, ge=1024, le=65534)
    port_max: int = Field(39999, ge=1024, le=65535)
    workers: int = Field(0, ge=0, le=64)
    device_transport: MediaTransport = "udp"
    device_transports: dict[str, MediaTransport] = Field(default_factory=dict)
    rtp_timeout: float = Field(10.0, gt=0)
    invite_timeout: float = Field(15.0, gt=0)
    generate_ssrc: bool = True

    @model_validator(mode="after")
    def _range(self) -> MediaSection:
        if self.port_max <= self.port_min:
            raise ValueError("port_max must be above port_min")
        for key in self.device_transports:
            _gb_id(key)
        return self


class StoreSection(_Section):
    """Where the model is kept: ``sqlite`` (embedded default, one node), ``memory`` (tests) or
    ``redis`` (shared by the nodes of a cluster, ``url``; keys start with ``prefix``)."""

    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    path: str = "data/gateway.db"
    flush_interval: float = Field(0.2, gt=0, le=60)
    url: str = Field("redis://127.0.0.1:6379/0", max_length=2048)
    prefix: str = Field("gb:", max_length=64, pattern=r"^[A-Za-z0-9:_.-]*$")
    # Writes kept while Redis is unreachable; beyond it new writes are refused with an error.
    max_queued_writes: int = Field(1_000_000, ge=1000, le=100_000_000)


class ClusterSection(_Section):
    """This node in a cluster of gateways sharing a Redis store (``[store] backend = "redis"``).
    ``node_id`` names the node (unique in the cluster; default: the host name); a node holds
    each lease (an upper platform's registration, its own liveness) for ``lease_seconds`` and
    renews it every third of that."""

    node_id: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    lease_seconds: float = Field(10.0, ge=1.0, le=600.0)
    # Node-to-node requests (a query, control or INVITE for a device on another node) time out.
    request_timeout: float = Field(10.0, gt=0, le=120.0)
    # The SIP address devices reach this node on, taken over (listened on) by a survivor when
    # this node's lease runs out (a floating address moved by keepalived/VRRP in production).
    floating_host: str = Field("", max_length=255)

    def effective_node_id(self) -> str:
        """``node_id``, or the host name when it is not set."""
        return self.node_id or socket.gethostname()[:64]


class LogSection(_Section):
    """What is written to the log, and how much of it (``gateway.logs``): peers write part of
    it, so repeated events are rate-limited and every value is cut to a short escaped excerpt."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"
    burst: int = Field(20, ge=1, le=100_000)
    window: float = Field(10.0, gt=0, le=3600)
    max_value_chars: int = Field(200, ge=32, le=100_000)
    # Event names never rate-limited; None: the gateway's audit events (gateway.logs.AUDIT).
    unlimited: tuple[str, ...] | None = Field(None, max_length=256)


Role = Literal["viewer", "operator", "admin"]


class HttpToken(_Section):
    """A bearer token of the HTTP API given in the configuration (``[[http.tokens]]``): the
    token itself or its SHA-256 (hex), never both."""

    name: str = Field(min_length=1, max_length=64)
    role: Role = "viewer"
    token: str = Field("", max_length=256)
    token_sha256: str = Field("", max_length=64)

    @model_validator(mode="after")
    def _one(self) -> HttpToken:
        if bool(self.token) == bool(self.token_sha256):
            raise ValueError("give exactly one of token and token_sha256")
        if self.token and len(self.token) < 16:
            raise ValueError("token: at least 16 characters")
        h = self.token_sha256
        if h and (len(h) != 64 or any(c not in "0123456789abcdefABCDEF" for c in h)):
            raise ValueError("token_sha256: 64 hex digits")
        return self


class HttpSection(_Section):
    """The HTTP server of the API, the console and ``/metrics`` (``gateway.api``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: tuple[HttpToken, ...] = Field((), max_length=1000)
    # Console logins last this long (seconds) without use.
    session_ttl: float = Field(12 * 3600.0, gt=0, le=30 * 86400)
    # Server-Sent Events are coalesced over this many seconds.
    sse_interval: float = Field(1.0, gt=0, le=60)
    # Requests bigger than this are refused with 413 (imports included).
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # ``/metrics`` without a token (Prometheus scrapes it); false: a viewer token is needed.
    metrics_public: bool = True
    # A scrape within this many seconds of the last one gets the same text (and concurrent
    # scrapes share one rendering): /metrics costs O(devices) per rendering, so a stranger
    # polling it cannot make the gateway do that work more often. 0: render every scrape.
    metrics_min_interval: float = Field(1.0, ge=0, le=60)
    # Open Server-Sent Event streams at most; more are refused with 503.
    sse_max_connections: int = Field(100, ge=1, le=10_000)
    # Open HTTP connections in all, and from one client address (loopback included); a
    # connection beyond either is closed at once (``http.refused_connections``).
    max_connections: int = Field(256, ge=1, le=100_000)
    max_connections_per_ip: int = Field(64, ge=1, le=100_000)
    # Seconds a connection may take to deliver a whole request head, from its opening or from
    # the end of the previous response; then it is closed (``http.header_timeouts``).
    header_timeout: float = Field(10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _unique(self) -> HttpSection:
        names = [t.name for t in self.tokens]
        if len(names) != len(set(names)):
            raise ValueError("tokens: names must be unique")
        return self


class IceServer(_Section):
    """A STUN or TURN server the preview's WebRTC side may use (none is needed on a LAN)."""

    urls: tuple[str, ...] = Field(..., min_length=1, max_length=8)
    username: str = ""
    credential: str = ""

    @model_validator(mode="after")
    def _schemes(self) -> IceServer:
        for url in self.urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"ice server {url!r}: stun:, stuns:, turn: or turns: URLs only")
        return self


class PreviewSection(_Section):
    """Live preview in the browser: WHEP (RFC 9725) over WebRTC with aiortc, the camera's
    H.264 passed through without decoding (``gateway.preview``)."""

    enabled: bool = True
    # Previews open at once in all; one more is refused with 503.
    max_sessions: int = Field(200, ge=1, le=10_000)
    # A preview ends after this many seconds whatever the viewer does (0: never).
    max_seconds: float = Field(3600.0, ge=0, le=7 * 86400)
    # A new preview of a channel not yet streaming waits this long for the device's INVITE and
    # its first key frame; then the POST fails with 503.
    first_frame_timeout: float = Field(15.0, gt=0, le=120)
    # Local addresses whose ICE host candidates are offered to browsers; empty: every address
    # of the machine except loopback (aioice's own choice). Tests and a browser on the same
    # machine use ["127.0.0.1"].
    ice_addresses: tuple[str, ...] = Field((), max_length=32)
    # The address written into host candidates instead of the local one, for a gateway behind
    # a 1:1 NAT (the ports stay as bound); empty: the local addresses themselves.
    announce_host: str = ""
    # STUN/TURN servers; none by default (never a public one).
    ice_servers: tuple[IceServer, ...] = Field((), max_length=8)
    # Bytes of the last group of pictures kept per previewed channel, so that a new viewer
    # starts at once from its key frame; a longer GOP is cut and the viewer waits.
    gop_cache_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    # Frames a viewer may fall behind before it skips to the next key frame.
    max_viewer_lag_frames: int = Field(100, ge=5, le=10_000)
    # Previews one owner (a token or a console user) may have open at once; one more is 503.
    max_sessions_per_owner: int = Field(16, ge=1, le=10_000)
    # Previews one owner may open per minute (a token bucket per owner); beyond it 429.
    opens_per_minute: int = Field(60, ge=1, le=100_000)


class Config(_Section):
    gateway: GatewaySection = GatewaySection()
    sip: SipSection = SipSection()
    auth: AuthSection = AuthSection()
    registrar: RegistrarSection = RegistrarSection()
    keepalive: KeepaliveSection = KeepaliveSection()
    overload: OverloadSection = OverloadSection()
    downlink: DownlinkSection = DownlinkSection()
    uplink: UplinkSection = UplinkSection()
    media: MediaSection = MediaSection()
    store: StoreSection = StoreSection()
    cluster: ClusterSection = ClusterSection()
    log: LogSection = LogSection()
    http: HttpSection = HttpSection()
    preview: PreviewSection = PreviewSection()

    def device_password(self, device_id: str) -> str | None:
        """The password a device must use, or ``None`` when it may not register at all."""
        return self.auth.device_password(device_id)


Identity = GatewaySection
"""What a part is given to name the gateway on the wire (ID, domain, name, civil code, zone)."""
