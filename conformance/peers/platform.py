"""A simulated upper (city) platform: the far end of every uplink test and ``gb28181-sim platform``.

A lower platform (the gateway, reference §7.1) registers to a :class:`SimPlatform` as a device
would: digest with or without ``qop`` (GB/T 28181-2022 §9.1; reference §2.1–§2.3), ``401`` or, with
``challenge_407``, ``407``; ``403 Forbidden (wrong password)``; a ``302`` registration redirect
(2022, reference §2.5); ``Date`` in the GB format (§2.4); ``X-GB-Ver`` echoed (§2.6). It keeps
alive (§9.6; reference §2.8): ``200`` from a registered lower, ``404`` from anyone else, offline
after ``keepalive_timeout_count`` × ``keepalive_interval`` without one. The platform queries and
controls the lower (reference §3, §4, §7.2, §7.5) and collects multi-part answers by SN (2022
Annex M), subscribes to its catalog, alarms and positions and records the NOTIFYs (RFC 6665;
reference §5, §7.3), and acknowledges alarms with ``Response/Alarm`` (§5.3).

Media (reference §6, §7.4): :meth:`SimPlatform.invite` asks a lower for live view, playback or
download over UDP or TCP (either role) into a receiver that decodes the H.264 it gets; the call
answers BYE, in-dialog ``MediaStatus`` and MANSRTSP INFOs (:class:`PlatformCall`).
:meth:`SimPlatform.broadcast` starts a voice broadcast and answers the lower's INVITE with audio
(:class:`BroadcastCall`); any other INVITE from a lower is refused.

Misbehaviour switches (attributes, all off by default): ``drop_keepalives``,
``refuse_keepalives``, ``challenge_407``, ``redirect_to``, ``no_date``, ``grant_expires``;
:meth:`SimPlatform.restart` forgets every lower, :meth:`SimPlatform.forget_nonces` every nonce.
Incoming NOTIFYs cost one decode and a few appends: no task per NOTIFY.

Quirks of real upper platforms (issue 15), each a switch, all off by default; what each does on
the wire:

* ``bare_register_ok``: the ``200`` to a REGISTER carries no To tag and no Contact (``Expires``
  and ``Date`` still come).
* ``no_max_forwards``: every request the platform sends in a transaction (MESSAGE, SUBSCRIBE,
  INVITE, INFO, BYE, its CANCEL) leaves without a ``Max-Forwards`` header: the line is taken out
  of the bytes as they go to the socket (the ACK of a 2xx, sent outside a transaction, keeps it).
* ``bye_cseq_of_invite``: a call's BYE carries the INVITE's CSeq number (``CSeq: 1 BYE`` after
  ``CSeq: 1 INVITE``), whatever in-dialog requests went between.
* ``info_cseq_method``: a call's INFO has ``CSeq: <n> Info`` (the request line stays ``INFO``);
  RFC 3261 §7.1, §8.1.1.5 make methods case-sensitive, so the method differs from the line's.
  The answers, whose CSeq copies ``Info``, are matched to the INFO all the same.
* ``refuse_new_call_id``: an authenticated REGISTER (Expires > 0) from a lower whose
  registration under another Call-ID still holds is answered
  ``500 Server Internal Error (registration held under another Call-ID)`` and binds nothing.
* ``min_catalog_items`` / ``max_catalog_items`` (0: off): a ``Response/Catalog`` MESSAGE or a
  catalog NOTIFY with fewer / more items than that is answered
  ``500 Server Internal Error (catalog message with <n> items)`` and its items are not
  recorded (the platform's parser "crashed"). A message whose ``SumNum`` is below the minimum
  is exempt (nothing could do better).
* ``requests_over_udp``: every request the platform starts towards a lower (queries, controls,
  SUBSCRIBE, INVITE and the call's in-dialog requests) goes over UDP to the host and port of
  the Contact the lower registered, even when the lower registered over TCP; the Request-URI
  carries no ``transport`` parameter.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from conformance.peers import mansrtsp
from conformance.peers.mansrtsp import CONTENT_TYPE as MANSRTSP
from conformance.peers.mansrtsp import RtspRequest
from conformance.peers.media_session import (
    DISCARD_PORT,
    KINDS,
    PCMA_PT,
    SDP_TYPE,
    TRANSPORTS,
    answer_role,
    close_quietly,
    make_ssrc,
    new_receiver,
    new_sender,
    parse_subject,
    pcma_frames,
    start_sender,
    subject,
    valid_ssrc,
)
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.gbid import is_gb_id
from gateway.manscdp.messages import (
    AlarmNotify,
    AlarmQuery,
    AlarmResponse,
    BroadcastNotify,
    BroadcastResponse,
    CatalogItem,
    CatalogNotify,
    CatalogQuery,
    ConfigDownloadQuery,
    DeviceConfig,
    DeviceConfigResponse,
    DeviceControl,
    DeviceControlResponse,
    DeviceInfoQuery,
    DeviceStatusQuery,
    Keepalive,
    MediaStatus,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PresetQuery,
    RecordInfoQuery,
    RecordItem,
    decode,
    encode,
)
from gateway.media.sdp import Sdp, SdpError, answer_setup, offer_setup, parse_sdp
from gateway.sip.dialog import Dialog, InviteFailed, OutgoingInvite, send_bye
from gateway.sip.digest import Credentials, DigestServer, Verdict
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import ParseError, TransactionTimeout, TransportError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transport import Peer
from gateway.sip.uri import is_digits, parse_uri

if TYPE_CHECKING:
    from conformance.media.stream import MediaReceiver, MediaSender

log = structlog.get_logger("conformance.platform")

MANSCDP = "Application/MANSCDP+xml"
MIN_EXPIRES = 60
MAX_EXPIRES = 86_400
DEFAULT_EXPIRES = 3600
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Answers split over several MESSAGEs and collected up to SumNum distinct items (Annex M).
# Answers that may come in several MESSAGEs, SumNum telling how many items in all (2022 Annex M).
MULTI_RESPONSE = frozenset(
    {"Catalog", "RecordInfo", "CruiseTrackListQuery", "CruiseTrackQuery", "SDCardStatus"}
)
SUBSCRIPTION_KINDS = ("Catalog", "Alarm", "MobilePosition")
LOG_SIZE = 10_000  # entries kept in register_answers and keepalive_log
_SEND_ERRORS = (TransactionTimeout, TransportError, OSError)

EventSink = Callable[[str], None]
"""Called with one human-readable line for everything the platform sees or does."""


def gb_date(now: datetime | None = None) -> str:
    """``Date`` of a REGISTER's 200 (reference §2.4): ``yyyy-MM-ddTHH:mm:ss.SSS``, local time."""
    dt = datetime.now() if now is None else now
    return dt.strftime(TIME_FORMAT) + f".{dt.microsecond // 1000:03d}"


def _host_port(peer: Peer) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}"


def _reason(text: str) -> str:
    return " ".join(text.split())[:120]


def _time_text(value: str | datetime) -> str:
    return value.strftime(TIME_FORMAT) if isinstance(value, datetime) else value


class RequestFailed(Exception):
    """A request to a lower got a non-2xx final response (``status``) or none (``status`` 0)."""

    def __init__(self, what: str, status: int, reason: str = "") -> None:
        super().__init__(f"{what}: {status or 'no final response'} {reason}".rstrip())
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Lower:
    """A lower platform (or device) known to the platform. Times are ``time.monotonic()``."""

    lower_id: str
    peer: Peer  # source address of its last successful REGISTER: where requests go
    registered: bool = False
    online: bool = False
    registrations: int = 0  # successful REGISTERs with Expires > 0, refreshes included
    keepalives: int = 0
    last_keepalive: float | None = None
    registered_at: float = 0.0
    expires: int = 0  # granted
    expires_at: float = 0.0
    gb_version: str | None = None  # X-GB-Ver of its last REGISTER
    contact: str = ""
    user_agent: str = ""
    call_id: str = ""

    @property
    def last_seen(self) -> float:
        return max(self.registered_at, self.last_keepalive or 0.0)

    @property
    def gb2022(self) -> bool:
        return (self.gb_version or "").startswith("3")


@dataclass(slots=True)
class QueryResult:
    """What came back for one query: every Response MESSAGE with its SN, in arrival order.

    ``items`` are distinct for Catalog (by DeviceID) and RecordInfo (by DeviceID, StartTime,
    EndTime), in first-seen order; for other answers, every item of every part. ``raw`` holds the
    SIP bytes of each Response MESSAGE as received. ``status`` is the final SIP status of the
    query's own MESSAGE (0: none came). ``partial``: the answer did not complete in time."""

    lower_id: str
    request: Message
    status: int
    transport: str
    responses: list[Message] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    sum_num: int | None = None
    partial: bool = True
    raw: list[bytes] = field(default_factory=list)
    # The transport each of ``raw`` arrived over ("udp", "tcp"), whatever its Via says.
    arrived_over: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.partial


class _Pending:
    """Collects the Response MESSAGEs of one query (matched on CmdType and SN)."""

    __slots__ = (
        "arrived_over",
        "done",
        "expect",
        "items",
        "last",
        "multi",
        "raw",
        "responses",
        "sum_num",
    )

    def __init__(self, cmd: str, expect: int, now: float) -> None:
        self.multi = cmd in MULTI_RESPONSE
        self.expect = expect
        self.responses: list[Message] = []
        self.raw: list[bytes] = []
        self.arrived_over: list[str] = []
        self.items: dict[Any, Any] = {}
        self.sum_num: int | None = None
        self.last = now
        self.done = asyncio.Event()
        if expect == 0:
            self.done.set()

    def feed(self, msg: Message, raw: bytes, now: float, transport: str = "") -> None:
        self.responses.append(msg)
        self.raw.append(raw)
        self.arrived_over.append(transport)
        self.last = now
        sum_num = getattr(msg, "sum_num", None)
        if self.sum_num is None and isinstance(sum_num, int):
            self.sum_num = sum_num
        items = self.items
        for item in getattr(msg, "items", ()):
            if isinstance(item, CatalogItem):
                key: Any = item.device_id
            elif isinstance(item, RecordItem):
                key = (item.device_id, item.start_time, item.end_time)
            else:
                key = len(items)
            items.setdefault(key, item)
        if self.complete:
            self.done.set()

    @property
    def complete(self) -> bool:
        if self.multi and self.responses:
            return self.sum_num is None or len(self.items) >= self.sum_num
        return len(self.responses) >= self.expect


def _expected_responses(msg: Message) -> int:
    """How many Response MESSAGEs complete the answer to ``msg`` (multi-part ones: the first,
    then SumNum decides)."""
    if isinstance(msg, DeviceControl):
        return 1 if msg.expects_response else 0
    if isinstance(msg, ConfigDownloadQuery):
        types = [t for t in (msg.config_type or "").split("/") if t.strip()]
        return max(1, len(types))
    return 1


@dataclass(slots=True)
class Subscription:
    """One SUBSCRIBE dialog the platform holds as subscriber (RFC 6665 §4.1; reference §5.1)."""

    lower_id: str
    kind: str  # Catalog, Alarm, MobilePosition: the body's CmdType
    target: str  # the body's DeviceID and the Request-URI user
    event: str  # Event header, the same in every request of the dialog
    call_id: str
    local_tag: str  # our From tag
    to_uri: str  # To URI of every request in the dialog
    remote_target: str  # Request-URI: the initial one, then the 200's Contact
    peer: Peer
    query: Message
    requested: int  # Expires asked for in the initial SUBSCRIBE
    remote_tag: str = ""  # To tag of the 200 (or From tag of a NOTIFY that came first)
    cseq: int = 0
    status: int = 0  # final status of the last SUBSCRIBE (0: none)
    expires: int = 0  # granted by the last 200
    expires_at: float = 0.0
    active: bool = False
    notifies: int = 0
    responses: list[Response] = field(default_factory=list)


class _WireFilter:
    """Between the core and the transports: rewrites the requests the platform sends, as its
    quirk switches say (``no_max_forwards``, ``info_cseq_method``). Responses pass unchanged."""

    __slots__ = ("network", "platform")

    def __init__(self, network: Any, platform: SimPlatform) -> None:
        self.network = network
        self.platform = platform

    def send(self, peer: Peer, data: bytes) -> bool:
        p = self.platform
        if not data.startswith(b"SIP/2.0 ") and (p.no_max_forwards or p.info_cseq_method):
            data = _rewrite_request(
                data, no_max_forwards=p.no_max_forwards, info_cseq=p.info_cseq_method
            )
        return bool(self.network.send(peer, data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.network, name)


def _rewrite_request(data: bytes, *, no_max_forwards: bool, info_cseq: bool) -> bytes:
    """``data`` (one request) without its Max-Forwards line, and/or an INFO's CSeq method
    written ``Info``; the body is untouched."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    is_info = lines[0].startswith(b"INFO ")
    out = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if no_max_forwards and name == b"max-forwards":
            continue
        if info_cseq and is_info and name == b"cseq":
            line = line.replace(b" INFO", b" Info")
        out.append(line)
    return b"\r\n".join(out) + sep + body


def _info_cseq_back(data: bytes) -> bytes:
    """A response whose CSeq says ``Info`` (copied from our quirky INFO), read as ``INFO``: the
    platform's own stack matches the answers to what it sent."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = [
        line.replace(b" Info", b" INFO") if line.lower().startswith(b"cseq:") else line
        for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + sep + body


class _RawTap:
    """Between the transports and the endpoint: keeps the bytes of the message being handled, so
    a synchronous handler can record a Response MESSAGE exactly as it came off the wire."""

    __slots__ = ("endpoint", "info_cseq", "last", "last_transport")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.last = b""
        self.last_transport = ""
        self.info_cseq: Callable[[], bool] = lambda: False

    def message_received(self, data: bytes, peer: Peer) -> None:
        if data.startswith(b"SIP/2.0 ") and self.info_cseq():
            data = _info_cseq_back(data)
        self.last, self.last_transport = data, peer.transport
        try:
            self.endpoint.message_received(data, peer)
        finally:
            self.last, self.last_transport = b"", ""

    def connection_lost(self, peer: Peer) -> None:
        self.endpoint.connection_lost(peer)


@dataclass(slots=True, eq=False)
class PlatformCall:
    """One INVITE the platform sent to a lower (reference §6.2–§6.7, §7.4) and the media that
    came back. ``ended`` is set when the dialog ends (``ended_by``: ``"lower"`` for its BYE,
    ``"platform"`` for ours); ``media_status`` lists the NotifyTypes of in-dialog
    ``MediaStatus`` MESSAGEs; ``infos`` holds (request, SIP status, answer body) per INFO."""

    platform: SimPlatform = field(repr=False)
    call_id: str
    lower_id: str
    channel_id: str
    kind: str
    transport: str  # our role: udp, tcp-passive (we listen), tcp-active (we connect)
    offer: Sdp
    request: Request = field(repr=False)
    receiver: MediaReceiver = field(repr=False)
    offered_ssrc: str | None = None
    status: int = 0
    reason: str = ""
    response: Response | None = field(default=None, repr=False)
    answer: Sdp | None = None
    ssrc: str | None = None  # the answer's y= (the offer's when the answer has none)
    dialog: Dialog | None = field(default=None, repr=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended_by: str | None = None
    media_status: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # every in-dialog MESSAGE body
    infos: list[tuple[str, int, str]] = field(default_factory=list)
    provisional: list[int] = field(default_factory=list)  # 1xx statuses seen
    rtsp_cseq: int = 0

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The 2xx's headers as (name, value), in order (``X-RoutePath`` checks)."""
        return list(self.response.headers()) if self.response is not None else []

    def header(self, name: str) -> str | None:
        return self.response.get_header(name) if self.response is not None else None

    @property
    def ssrc_int(self) -> int | None:
        return int(self.ssrc) if valid_ssrc(self.ssrc) else None  # type: ignore[arg-type]

    def _end(self, by: str) -> None:
        if self.ended.is_set():
            return
        self.ended_by = by
        self.ended.set()
        self.platform.spawn(close_quietly(self.receiver))

    async def bye(self, timeout: float | None = None) -> Response | None:
        """End the call with an in-dialog BYE; ``None`` if it had ended or got no answer."""
        if self.dialog is None or self.ended.is_set():
            return None
        self._end("platform")
        self.platform._emit(f"{self.lower_id} BYE {self.channel_id} call_id={self.call_id}")
        if self.platform.bye_cseq_of_invite:
            self.dialog.local_cseq = self.dialog.invite_cseq - 1  # the BYE takes the next
        return await send_bye(self.platform.endpoint, self.dialog, timeout)

    async def info(
        self, rtsp: str | bytes | RtspRequest, timeout: float | None = None
    ) -> tuple[int, str]:
        """An in-dialog INFO with a MANSRTSP body (reference §6.6): (SIP status, answer body)."""
        if self.dialog is None:
            raise LookupError(f"call {self.call_id} has no dialog")
        if isinstance(rtsp, RtspRequest):
            body = rtsp.to_bytes()
        else:
            body = rtsp.encode() if isinstance(rtsp, str) else rtsp
        req = self.dialog.request("INFO", body=body, content_type=MANSRTSP)
        resp = await self.platform.endpoint.request(req, self.dialog.peer, timeout=timeout)
        text = resp.body.decode("utf-8", "replace")
        self.infos.append((body.decode("utf-8", "replace"), resp.status, text))
        return resp.status, text

    def _cseq(self) -> int:
        self.rtsp_cseq += 1
        return self.rtsp_cseq

    async def play(
        self, range: str | float | None = None, scale: float | None = None
    ) -> tuple[int, str]:
        """PLAY: ``range`` seconds from the start (seek) or ``"now"`` (resume); ``scale``."""
        return await self.info(mansrtsp.play(self._cseq(), range, scale))

    async def pause(self) -> tuple[int, str]:
        return await self.info(mansrtsp.pause(self._cseq()))

    async def teardown(self) -> tuple[int, str]:
        return await self.info(mansrtsp.teardown(self._cseq()))


@dataclass(slots=True, eq=False)
class BroadcastCall:
    """The audio leg of a voice broadcast (reference §6.8): the lower's INVITE that followed our
    ``Notify/Broadcast``, answered ``a=sendonly``; audio flows from ``sender`` after the ACK."""

    platform: SimPlatform = field(repr=False)
    call_id: str
    lower_id: str
    target_id: str
    transport: str  # our role
    offer: Sdp
    answer: Sdp
    request: Request = field(repr=False)
    sender: MediaSender = field(repr=False)
    dialog: Dialog = field(repr=False)
    acked: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended_by: str | None = None
    messages: list[Message] = field(default_factory=list)

    @property
    def packets_sent(self) -> int:
        return self.sender.packets_sent

    def _end(self, by: str) -> None:
        if self.ended.is_set():
            return
        self.ended_by = by
        self.ended.set()
        self.platform.spawn(close_quietly(self.sender))

    async def bye(self, timeout: float | None = None) -> Response | None:
        if self.ended.is_set():
            return None
        self._end("platform")
        return await send_bye(self.platform.endpoint, self.dialog, timeout)


@dataclass(slots=True)
class _AwaitedBroadcast:
    """A ``Notify/Broadcast`` sent, its INVITE not yet come."""

    lower_id: str
    target_id: str
    transport: str
    future: asyncio.Future[BroadcastCall]

    def fail(self, status: int, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(
                RequestFailed(f"Broadcast INVITE for {self.target_id}", status, reason)
            )


@dataclass(slots=True)
class SimPlatform:
    """A simulated upper platform on one endpoint. Plain attributes configure it; the lists
    record what it saw. Call :meth:`start` (routes the endpoint and starts the liveness check)
    and :meth:`stop`.

    Switches (default off):

    * ``challenge_407``: challenge with ``407`` / ``Proxy-Authenticate`` instead of ``401``.
    * ``redirect_to``: answer the next REGISTER with ``302`` to this (host, port), then clear it;
      the Contact names ``redirect_server_id`` there (default: our own ID).
    * ``drop_keepalives``: never answer keepalives (the endpoint itself answers ``500`` to an
      unanswered request after 64·T1, by which time the sender has given up).
    * ``refuse_keepalives``: answer keepalives ``404``.
    * ``no_date``: leave ``Date`` out of the ``200`` to REGISTER (no time sync, reference §2.4).
    * ``grant_expires``: grant this many seconds to every registration, whatever was asked
      (below the usual 60 s minimum too: a quick refresh for tests).
    * The quirks of real platforms in the module docstring: ``bare_register_ok``,
      ``no_max_forwards``, ``bye_cseq_of_invite``, ``info_cseq_method``,
      ``refuse_new_call_id``, ``min_catalog_items``, ``max_catalog_items``,
      ``requests_over_udp``.

    ``decode_media`` (default on): calls decode the H.264 they receive; off, they only count
    RTP packets and PS frames (a load test's many calls on few cores).

    A lower marked offline for silence whose registration still holds is back online with its
    next keepalive (as wvp does); one whose registration expired gets ``404`` and must register.
    """

    endpoint: Endpoint
    platform_id: str = "34010000002000000001"
    domain: str = "3401000000"
    password: str = "12345678"
    passwords: dict[str, str] = field(default_factory=dict)  # per lower ID, over ``password``
    qop: bool = True
    realm: str = ""  # default: the domain
    charset: str = "GB2312"
    keepalive_interval: float = 60.0
    keepalive_timeout_count: int = 3
    on_event: EventSink | None = None
    on_registered: Callable[[Lower], None] | None = None  # a new registration (not a refresh)

    # -- switches ---------------------------------------------------------------------------
    challenge_407: bool = False
    redirect_to: tuple[str, int] | None = None
    redirect_server_id: str | None = None
    drop_keepalives: bool = False
    refuse_keepalives: bool = False
    no_date: bool = False
    grant_expires: int | None = None
    decode_media: bool = True
    # Quirks of real platforms (module docstring).
    bare_register_ok: bool = False
    no_max_forwards: bool = False
    bye_cseq_of_invite: bool = False
    info_cseq_method: bool = False
    refuse_new_call_id: bool = False
    min_catalog_items: int = 0
    max_catalog_items: int = 0
    requests_over_udp: bool = False
    # Catalog messages refused for their item count: (items, SumNum).
    refused_catalogs: list[tuple[int, int | None]] = field(default_factory=list)

    # -- what it saw ------------------------------------------------------------------------
    lowers: dict[str, Lower] = field(default_factory=dict)
    registers: list[Request] = field(default_factory=list)
    # The latest REGISTERs with their answers and arrival times (``time.monotonic()``).
    register_answers: deque[tuple[float, Request, Response]] = field(
        default_factory=lambda: deque(maxlen=LOG_SIZE)
    )
    # The latest keepalives: (arrival time, sender ID, request, body, status answered; 0 when
    # dropped).
    keepalive_log: deque[tuple[float, str, Request, Keepalive, int]] = field(
        default_factory=lambda: deque(maxlen=LOG_SIZE)
    )
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by Call-ID
    notifies: list[tuple[Request, Message | None]] = field(default_factory=list)
    catalog_events: list[tuple[str, str]] = field(default_factory=list)  # (Event, DeviceID)
    notify_times: list[float] = field(default_factory=list)  # arrival of catalog_events[i]
    alarms: list[AlarmNotify] = field(default_factory=list)  # by MESSAGE and by NOTIFY
    positions: list[MobilePositionNotify] = field(default_factory=list)
    stray: list[Message] = field(default_factory=list)  # Responses matching no pending query
    messages: list[Message] = field(default_factory=list)  # any other MESSAGE body
    events: list[str] = field(default_factory=list)
    calls: dict[str, PlatformCall] = field(default_factory=dict)  # INVITEs we sent, by Call-ID
    broadcast_calls: dict[str, BroadcastCall] = field(default_factory=dict)  # by Call-ID

    _digest: DigestServer = field(init=False, repr=False)
    _pending: dict[tuple[str, int], _Pending] = field(default_factory=dict, init=False, repr=False)
    _sn: Iterator[int] = field(init=False, repr=False)
    _cseq: int = field(default=0, init=False, repr=False)
    _event_ids: Iterator[int] = field(init=False, repr=False)
    _tap: _RawTap | None = field(default=None, init=False, repr=False)
    _installed: bool = field(default=False, init=False, repr=False)
    _check_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)
    _awaiting: dict[str, _AwaitedBroadcast] = field(default_factory=dict, init=False, repr=False)
    _ssrc_serial: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.realm:
            self.realm = self.domain
        self._digest = DigestServer(self.realm, qop=self.qop)
        self._sn = itertools.count(1)
        self._event_ids = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------------
    def install(self) -> SimPlatform:
        """Route the endpoint's REGISTER, MESSAGE, NOTIFY and the media dialogs' INVITE, ACK
        and BYE here (SUBSCRIBE is not served)."""
        if self._installed:
            return self
        ep = self.endpoint
        ep.route("REGISTER", self._on_register)
        ep.route("MESSAGE", self._on_message)
        ep.route("NOTIFY", self._on_notify)
        ep.route("INVITE", self._on_invite)
        ep.route("ACK", self._on_ack)
        ep.route("BYE", self._on_bye)
        ep.on_connection_lost(self._on_connection_lost)
        if not isinstance(ep.core.network, _WireFilter):
            ep.core.network = _WireFilter(ep.core.network, self)
        listener = ep.transports.listener
        if isinstance(listener, _RawTap):
            self._tap = listener
        elif listener is ep:
            self._tap = _RawTap(ep)
            ep.transports.listener = self._tap
        if self._tap is not None:
            self._tap.info_cseq = lambda: self.info_cseq_method
        self._installed = True
        return self

    def start(self) -> SimPlatform:
        """Install, and start the periodic liveness check (needs a running loop)."""
        self.install()
        if self._check_task is None:
            self._check_task = asyncio.get_running_loop().create_task(self._check_loop())
        return self

    def stop(self) -> None:
        """Stop the liveness check and every task of ours (alarm answers, CLI work)."""
        if self._check_task is not None:
            self._check_task.cancel()
            self._check_task = None
        for task in list(self._tasks):
            task.cancel()

    def restart(self) -> None:
        """As if the platform rebooted: every lower and subscription is forgotten, so the next
        keepalive gets 404 and NOTIFYs of the old dialogs get 481."""
        self.lowers.clear()
        self.subscriptions.clear()
        self._emit("platform restarted: every lower forgotten")

    def forget_nonces(self) -> None:
        """Every nonce issued so far becomes unknown: the next authenticated REGISTER of each
        lower (a refresh reusing its nonce, say) is challenged again."""
        self._digest = DigestServer(self.realm, qop=self.qop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that :meth:`stop` cancels."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("platform.task_failed", exc_info=task.exception())

    def _emit(self, line: str) -> None:
        self.events.append(line)
        if self.on_event is not None:
            self.on_event(line)

    def _answer(
        self, req: Request, status: int, reason: str | None = None, headers: Iterable[Any] = ()
    ) -> Response:
        return make_response(req, status, reason, to_tag=self.endpoint.tag(), headers=headers)

    def _next_sn(self) -> int:
        return next(self._sn)

    # -- REGISTER (reference §2.1–§2.6, §7.1) ------------------------------------------------
    def _on_register(self, req: Request, ctx: ServerContext) -> Response:
        self.registers.append(req)
        resp = self._register(req, ctx)
        self.register_answers.append((time.monotonic(), req, resp))
        return resp

    def _register(self, req: Request, ctx: ServerContext) -> Response:
        lower_id = req.to.uri.user or ""
        gb_ver = req.get_header("X-GB-Ver")
        extra = [("X-GB-Ver", gb_ver)] if gb_ver is not None else []

        def answer(status: int, reason: str | None = None, *more: tuple[str, str]) -> Response:
            return self._answer(req, status, reason, [*extra, *more])

        expires = self._requested_expires(req)
        if self.redirect_to is not None:
            host, port = self.redirect_to
            self.redirect_to = None
            granted = max(MIN_EXPIRES, min(MAX_EXPIRES, expires)) if expires else 0
            self._emit(f"{lower_id} redirected to {host}:{port}")
            return answer(
                302,
                "Moved Temporarily",
                ("Contact", f"<sip:{self.redirect_server_id or self.platform_id}@{host}:{port}>"),
                ("Expires", str(granted)),
            )
        if not is_gb_id(lower_id):
            self._emit(f"{lower_id!r} refused: not a 20-digit ID (from {ctx.peer})")
            return answer(400, "Bad Request (ID must be 20 digits)")
        auth_header = "Proxy-Authorization" if self.challenge_407 else "Authorization"
        auth = req.auth_params(auth_header)
        creds = Credentials.from_params(*auth) if auth is not None else None
        if auth is not None and creds is None:
            return answer(400, f"Bad Request (malformed {auth_header})")
        if creds is None:
            return self._challenge(answer)
        if creds.username != lower_id:
            self._emit(f"{lower_id} refused: digest username {creds.username}")
            return answer(403, "Forbidden (username is not the registering ID)")
        password = self.passwords.get(lower_id, self.password)
        verdict = self._digest.verify(creds, "REGISTER", password)
        if verdict is Verdict.BAD_PASSWORD:
            self._emit(f"{lower_id} refused: wrong password (from {ctx.peer})")
            return answer(403, "Forbidden (wrong password)")
        if verdict in (Verdict.STALE, Verdict.UNKNOWN_NONCE, Verdict.REPLAY, Verdict.WRONG_REALM):
            return self._challenge(answer, stale=verdict is Verdict.STALE)
        if verdict is Verdict.UNSUPPORTED:
            return answer(403, "Forbidden (only MD5 digest with qop=auth or none)")
        if verdict is not Verdict.OK:
            return answer(400, f"Bad Request (malformed {auth_header})")
        date = [] if self.no_date else [("Date", gb_date())]
        if expires == 0:
            self._unregister(lower_id, ctx.peer)
            return answer(200, "OK", ("Expires", "0"), *date)
        held = self.lowers.get(lower_id)
        if (
            self.refuse_new_call_id
            and held is not None
            and held.registered
            and held.expires_at > time.monotonic()
            and held.call_id != req.call_id
        ):
            self._emit(f"{lower_id} refused: registration held under Call-ID {held.call_id}")
            return answer(500, "Server Internal Error (registration held under another Call-ID)")
        granted = max(MIN_EXPIRES, min(MAX_EXPIRES, expires))
        if self.grant_expires is not None and self.grant_expires > 0:
            granted = self.grant_expires
        self._bind(lower_id, req, ctx.peer, granted, gb_ver)
        more = [("Expires", str(granted)), *date]
        if self.bare_register_ok:
            return make_response(req, 200, "OK", to_tag=None, headers=[*extra, *more])
        contacts = req.contacts
        if contacts:
            more.insert(0, ("Contact", str(contacts[0].with_param("expires", str(granted)))))
        return answer(200, "OK", *more)

    def _challenge(self, answer: Callable[..., Response], stale: bool = False) -> Response:
        digest = self._digest
        digest.realm, digest.qop = self.realm, self.qop  # follow attribute changes
        challenge = digest.challenge(stale=stale)
        if self.challenge_407:
            return answer(407, None, ("Proxy-Authenticate", challenge))
        return answer(401, None, ("WWW-Authenticate", challenge))

    @staticmethod
    def _requested_expires(req: Request) -> int:
        if req.contact_star:
            return 0
        contacts = req.contacts
        if contacts:
            param = contacts[0].param("expires")
            if param is not None and is_digits(param):
                return int(param)
        value = req.expires
        return DEFAULT_EXPIRES if value is None else value

    def _bind(
        self, lower_id: str, req: Request, peer: Peer, granted: int, gb_ver: str | None
    ) -> None:
        now = time.monotonic()
        lower = self.lowers.get(lower_id)
        if lower is None:
            lower = self.lowers[lower_id] = Lower(lower_id, peer)
        new = not lower.registered or lower.call_id != req.call_id
        contacts = req.contacts
        lower.peer = peer
        lower.registered = lower.online = True
        lower.registrations += 1
        lower.registered_at = now
        lower.expires = granted
        lower.expires_at = now + granted
        lower.gb_version = gb_ver
        lower.contact = str(contacts[0].uri) if contacts else ""
        lower.user_agent = req.get_header("User-Agent") or ""
        lower.call_id = req.call_id
        what = "registered" if new else "refreshed"
        self._emit(
            f"{lower_id} {what} from {peer} expires={granted} gb={gb_ver or '-'}"
            f" ua={lower.user_agent or '-'}"
        )
        if new and self.on_registered is not None:
            self.on_registered(lower)

    def _unregister(self, lower_id: str, peer: Peer) -> None:
        lower = self.lowers.get(lower_id)
        if lower is not None:
            lower.registered = lower.online = False
            lower.expires = 0
            lower.expires_at = time.monotonic()
        self._emit(f"{lower_id} unregistered from {peer}")

    def _on_connection_lost(self, peer: Peer) -> None:
        """A lower registered over TCP is offline when its connection drops (reference §2.7)."""
        for lower in self.lowers.values():
            if lower.peer == peer and lower.registered:
                lower.registered = lower.online = False
                self._emit(f"{lower.lower_id} offline: TCP connection lost")

    # -- liveness (reference §2.8) ----------------------------------------------------------
    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.01, min(self.keepalive_interval / 4, 1.0)))
            self.check_liveness()

    def check_liveness(self, now: float | None = None) -> list[str]:
        """Mark lowers whose registration expired, or that sent no keepalive for
        ``keepalive_timeout_count`` × ``keepalive_interval``, offline; return their IDs."""
        now = time.monotonic() if now is None else now
        limit = self.keepalive_interval * self.keepalive_timeout_count
        gone = []
        for lower in self.lowers.values():
            if lower.registered and lower.expires_at <= now:
                lower.registered = lower.online = False
                gone.append(lower.lower_id)
                self._emit(f"{lower.lower_id} offline: registration expired")
            elif lower.online and now - lower.last_seen > limit:
                lower.online = False
                gone.append(lower.lower_id)
                self._emit(
                    f"{lower.lower_id} offline: no keepalive for {now - lower.last_seen:.1f} s"
                )
        return gone

    def _on_keepalive(self, req: Request, ctx: ServerContext, sender: str) -> Response | None:
        if self.drop_keepalives:
            self._emit(f"{sender} keepalive dropped (drop_keepalives)")
            return None
        lower = self.lowers.get(sender)
        now = time.monotonic()
        if lower is not None and lower.registered and lower.expires_at <= now:
            lower.registered = lower.online = False
        if self.refuse_keepalives or lower is None or not lower.registered:
            self._emit(f"{sender} keepalive from {ctx.peer} answered 404")
            return self._answer(req, 404, "Not Found (not registered)")
        lower.last_keepalive = now
        lower.keepalives += 1
        if not lower.online:
            lower.online = True
            self._emit(f"{sender} online again (keepalive)")
        self._emit(f"{sender} keepalive #{lower.keepalives} from {ctx.peer}")
        return self._answer(req, 200)

    # -- incoming MESSAGE ---------------------------------------------------------------------
    def _on_message(self, req: Request, ctx: ServerContext) -> Response | None:
        call: PlatformCall | BroadcastCall | None = self.calls.get(req.call_id)
        if call is None:
            call = self.broadcast_calls.get(req.call_id)
        if call is not None:
            return self._in_dialog_message(call, req)
        sender = req.from_.uri.user or ""
        try:
            msg = decode(req.body).message
        except DecodeError as exc:
            self._emit(f"{sender} bad MANSCDP from {ctx.peer}: {exc}")
            return self._answer(req, 400, _reason(f"Bad MANSCDP: {exc}"))
        if isinstance(msg, Keepalive):
            resp = self._on_keepalive(req, ctx, sender)
            status = resp.status if resp is not None else 0
            self.keepalive_log.append((time.monotonic(), sender, req, msg, status))
            return resp
        if msg.ROOT == "Response":
            refused = self._refuse_catalog(req, msg)
            if refused is not None:
                return refused
            pending = self._pending.get((msg.CMD, msg.sn))
            if pending is not None:
                tap = self._tap
                raw = tap.last if tap is not None and tap.last else req.to_bytes()
                over = tap.last_transport if tap is not None and tap.last else ctx.peer.transport
                pending.feed(msg, raw, time.monotonic(), over)
            else:
                self.stray.append(msg)
                self._emit(f"{sender} stray Response/{msg.CMD} sn={msg.sn}")
            return self._answer(req, 200)
        if isinstance(msg, AlarmNotify):
            self.alarms.append(msg)
            self._emit(
                f"{sender} alarm {msg.device_id} priority={msg.alarm_priority}"
                f" method={msg.alarm_method} sn={msg.sn}"
            )
            lower = self.lowers.get(sender)
            peer = self.peer_of(lower) if lower else ctx.peer
            self.spawn(self._acknowledge_alarm(sender, msg, peer))
            return self._answer(req, 200)
        if isinstance(msg, MobilePositionNotify):
            self.positions.append(msg)
        self.messages.append(msg)
        self._emit(f"{sender} {msg.ROOT}/{msg.CMD} {msg.device_id} sn={msg.sn}")
        return self._answer(req, 200)

    def _refuse_catalog(self, req: Request, msg: Message) -> Response | None:
        """The ``min_catalog_items`` / ``max_catalog_items`` quirk: a 500 for a catalog message
        with too few or too many items (``None``: it passes)."""
        if msg.CMD != "Catalog" or not (self.min_catalog_items or self.max_catalog_items):
            return None
        count = len(getattr(msg, "items", ()))
        sum_num = getattr(msg, "sum_num", None)
        exempt = isinstance(sum_num, int) and sum_num < self.min_catalog_items
        short = count < self.min_catalog_items and not exempt
        over = bool(self.max_catalog_items) and count > self.max_catalog_items
        if not (short or over):
            return None
        self.refused_catalogs.append((count, sum_num if isinstance(sum_num, int) else None))
        self._emit(f"catalog {req.method} with {count} items refused (sum_num={sum_num})")
        return self._answer(req, 500, f"Server Internal Error (catalog message with {count} items)")

    def peer_of(self, lower: Lower) -> Peer:
        """Where requests to ``lower`` go: the address of its last REGISTER; with
        ``requests_over_udp``, UDP to the host and port of its registered Contact."""
        if not self.requests_over_udp or not lower.contact:
            return lower.peer
        try:
            uri = parse_uri(lower.contact)
        except ParseError:
            return lower.peer
        return Peer("udp", uri.host, uri.port or 5060)

    async def _acknowledge_alarm(self, lower_id: str, alarm: AlarmNotify, peer: Peer) -> None:
        """``Response/Alarm`` ``Result OK`` back to the source (reference §5.3)."""
        answer = AlarmResponse(sn=alarm.sn, device_id=alarm.device_id, result="OK")
        resp = await self._send(lower_id, peer, encode(answer, self.charset))
        status = resp.status if resp is not None else 0
        self._emit(f"{lower_id} alarm {alarm.device_id} sn={alarm.sn} acknowledged: {status}")

    # -- outgoing MESSAGE: queries and controls (reference §3, §4, §7.2, §7.5) ----------------
    def lower(self, lower_id: str) -> Lower:
        """The registered lower ``lower_id``; ``LookupError`` if there is none."""
        lower = self.lowers.get(lower_id)
        if lower is None or not lower.registered:
            raise LookupError(f"{lower_id} is not registered here")
        return lower

    def build_message(self, target: str, peer: Peer, body: bytes) -> Request:
        """An out-of-dialog MESSAGE from the platform to ``target`` at ``peer``."""
        self._cseq += 1
        uri = f"sip:{target}@{_host_port(peer)}"
        return Request(
            "MESSAGE",
            uri,
            [
                ("From", f"<sip:{self.platform_id}@{self.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", self.endpoint.call_id()),
                ("CSeq", f"{self._cseq} MESSAGE"),
                ("Content-Type", MANSCDP),
            ],
            body,
        )

    async def _send(
        self, target: str, peer: Peer, body: bytes, timeout: float | None = None
    ) -> Response | None:
        try:
            return await self.endpoint.request(
                self.build_message(target, peer, body), peer, timeout=timeout
            )
        except _SEND_ERRORS as exc:
            self._emit(f"{target} MESSAGE to {peer} failed: {type(exc).__name__}")
            return None

    async def query(
        self, lower_id: str, msg: Message, *, timeout: float = 10.0, idle: float = 2.0
    ) -> QueryResult:
        """Send ``msg`` (its SN replaced by ours) to the lower and collect the Response MESSAGEs
        with that SN, answering each 200 at once: up to SumNum distinct items for Catalog and
        RecordInfo, one per ConfigType for ConfigDownload, one for the rest. The first answer may
        take ``timeout`` seconds; after it, ``idle`` seconds without a part end the collection
        (``partial``). Request-URI and DeviceID name ``msg.device_id``."""
        return await self._exchange(lower_id, msg, _expected_responses(msg), timeout, idle)

    async def _exchange(
        self,
        lower_id: str,
        msg: Message,
        expect: int,
        timeout: float,
        idle: float,
        target: str | None = None,
    ) -> QueryResult:
        lower = self.lower(lower_id)
        msg = replace(msg, sn=self._next_sn())
        key = (msg.CMD, msg.sn)
        start = time.monotonic()
        pending = self._pending[key] = _Pending(msg.CMD, expect, start)
        try:
            body = encode(msg, self.charset, gb2022=lower.gb2022)
            resp = await self._send(target or msg.device_id, self.peer_of(lower), body, timeout)
            status = resp.status if resp is not None else 0
            if 200 <= status < 300:
                deadline = start + timeout
                while not pending.done.is_set():
                    now = time.monotonic()
                    limit = min(deadline, pending.last + idle) if pending.responses else deadline
                    if limit <= now:
                        break
                    try:
                        await asyncio.wait_for(pending.done.wait(), limit - now)
                    except TimeoutError:
                        pass
        finally:
            del self._pending[key]
        result = QueryResult(
            lower_id=lower_id,
            request=msg,
            status=status,
            transport=lower.peer.transport,
            responses=pending.responses,
            items=list(pending.items.values()),
            sum_num=pending.sum_num,
            partial=not (200 <= status < 300 and pending.complete),
            raw=pending.raw,
            arrived_over=pending.arrived_over,
            elapsed=time.monotonic() - start,
        )
        self._emit(
            f"{lower_id} {msg.CMD} sn={msg.sn} status={status} responses={len(result.responses)}"
            f" items={len(result.items)} sum_num={result.sum_num}"
            + (" partial" if result.partial else "")
        )
        return result

    async def catalog(self, lower_id: str, target: str | None = None, **kw: float) -> QueryResult:
        return await self.query(lower_id, CatalogQuery(sn=0, device_id=target or lower_id), **kw)

    async def device_info(
        self, lower_id: str, target: str | None = None, **kw: float
    ) -> QueryResult:
        return await self.query(lower_id, DeviceInfoQuery(sn=0, device_id=target or lower_id), **kw)

    async def device_status(
        self, lower_id: str, target: str | None = None, **kw: float
    ) -> QueryResult:
        return await self.query(
            lower_id, DeviceStatusQuery(sn=0, device_id=target or lower_id), **kw
        )

    async def record_info(
        self,
        lower_id: str,
        channel_id: str,
        start: str | datetime,
        end: str | datetime,
        type: str = "all",
        **kw: float,
    ) -> QueryResult:
        q = RecordInfoQuery(
            sn=0,
            device_id=channel_id,
            start_time=_time_text(start),
            end_time=_time_text(end),
            secrecy=0,
            type=type,
        )
        return await self.query(lower_id, q, **kw)

    async def preset_query(
        self, lower_id: str, target: str | None = None, **kw: float
    ) -> QueryResult:
        return await self.query(lower_id, PresetQuery(sn=0, device_id=target or lower_id), **kw)

    async def config_download(
        self, lower_id: str, target: str, types: str | Iterable[str] = "BasicParam", **kw: float
    ) -> QueryResult:
        config_type = types if isinstance(types, str) else "/".join(types)
        q = ConfigDownloadQuery(sn=0, device_id=target, config_type=config_type)
        return await self.query(lower_id, q, **kw)

    async def control(
        self, lower_id: str, msg: DeviceControl, *, timeout: float = 10.0
    ) -> DeviceControlResponse | None:
        """Send a DeviceControl. Waits for its Response when the sub-command has one (``None``
        if none came in ``timeout``); otherwise returns ``None`` after the 200. A non-2xx answer
        (or none) to the MESSAGE raises :class:`RequestFailed`."""
        result = await self.query(lower_id, msg, timeout=timeout, idle=timeout)
        if not 200 <= result.status < 300:
            raise RequestFailed(f"DeviceControl to {msg.device_id}", result.status)
        first = result.responses[0] if result.responses else None
        return first if isinstance(first, DeviceControlResponse) else None

    async def ptz(
        self, lower_id: str, channel_id: str, ptz_cmd: str, *, timeout: float = 10.0
    ) -> None:
        """A PTZCmd (8-byte hex string, passed unchanged); done at the 200."""
        msg = DeviceControl(sn=0, device_id=channel_id, ptz_cmd=ptz_cmd)
        await self.control(lower_id, msg, timeout=timeout)

    async def configure(
        self, lower_id: str, msg: DeviceConfig, *, timeout: float = 10.0
    ) -> DeviceConfigResponse | None:
        """Send a DeviceConfig and wait for its Response (``None`` if none came)."""
        result = await self.query(lower_id, msg, timeout=timeout, idle=timeout)
        if not 200 <= result.status < 300:
            raise RequestFailed(f"DeviceConfig to {msg.device_id}", result.status)
        first = result.responses[0] if result.responses else None
        return first if isinstance(first, DeviceConfigResponse) else None

    # -- media sessions (reference §6.2–§6.7, §7.4) ------------------------------------------
    def _next_ssrc(self, history: bool) -> str:
        self._ssrc_serial += 1
        return make_ssrc(self.domain, self._ssrc_serial, history=history)

    async def _prepare_call(
        self,
        lower_id: str,
        channel_id: str,
        kind: str,
        transport: str,
        start: int,
        stop: int,
        download_speed: int | None,
        ssrc: str | None,
        headers: Iterable[tuple[str, str]],
        on_provisional: Callable[[Response], None] | None = None,
        offer_hook: Callable[[Sdp], Sdp] | None = None,
    ) -> tuple[PlatformCall, OutgoingInvite]:
        """Bind the receiver, build the INVITE with its offer; nothing is sent yet."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        lower = self.lower(lower_id)
        peer = self.peer_of(lower)
        host = self.endpoint.local_host(peer)
        history = kind != "Play"
        if ssrc == "auto":
            ssrc = self._next_ssrc(history)
        receiver = new_receiver(
            transport=transport, local_host=host, keep=kind == "Download", decode=self.decode_media
        )
        port = await receiver.bind()
        offer = Sdp(
            origin_user=self.platform_id,
            origin_host=host,
            session=kind,
            uri=f"{channel_id}:0" if history else None,
            host=host,
            start=start if history else 0,
            stop=stop if history else 0,
            media="video",
            port=port or DISCARD_PORT,
            proto="RTP/AVP" if transport == "udp" else "TCP/RTP/AVP",
            formats=[96, 98],
            rtpmap={96: "PS/90000", 98: "H264/90000"},
            direction="recvonly",
            setup=offer_setup(transport),  # type: ignore[arg-type]
            connection_new=transport != "udp",
            ssrc=ssrc,
            download_speed=download_speed if kind == "Download" else None,
        )
        if offer_hook is not None:
            offer = offer_hook(offer)
            ssrc = offer.ssrc
        uri = f"sip:{channel_id}@{_host_port(peer)}"
        call_id = self.endpoint.call_id()
        req = Request(
            "INVITE",
            uri,
            [
                ("From", f"<sip:{self.platform_id}@{self.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<{self.endpoint.contact_uri(self.platform_id, peer)}>"),
                ("Subject", subject(channel_id, ssrc or "0", self.platform_id)),
                *headers,
                ("Content-Type", SDP_TYPE),
            ],
            offer.to_bytes(),
        )
        call = PlatformCall(
            platform=self,
            call_id=call_id,
            lower_id=lower_id,
            channel_id=channel_id,
            kind=kind,
            transport=transport,
            offer=offer,
            request=req,
            receiver=receiver,
            offered_ssrc=ssrc,
        )

        def provisional(resp: Response) -> None:
            call.provisional.append(resp.status)
            if on_provisional is not None:
                on_provisional(resp)

        # Known before the INVITE leaves: a BYE or MediaStatus may follow the 200 closely.
        self.calls[call_id] = call
        return call, OutgoingInvite(self.endpoint, req, peer, on_provisional=provisional)

    async def invite(
        self,
        lower_id: str,
        channel_id: str,
        *,
        kind: str = "Play",
        transport: str = "udp",
        start: int = 0,
        stop: int = 0,
        download_speed: int | None = None,
        ssrc: str | None = "auto",
        timeout: float = 10.0,
        headers: Iterable[tuple[str, str]] = (),
        offer_hook: Callable[[Sdp], Sdp] | None = None,
    ) -> PlatformCall:
        """INVITE a channel of a registered lower (reference §6.2): live ``Play``, ``Playback``
        or ``Download`` of ``start``..``stop`` (UNIX seconds), media to a receiver of ours over
        ``transport`` (our role). ``ssrc``: ``"auto"`` makes a ``y=`` from our domain, None
        offers none, else the given string. A non-2xx (or none in ``timeout``: 408) raises
        :class:`RequestFailed` with the status and reason; extra ``headers`` go as given.
        ``offer_hook`` may change the offer before it leaves (a port that is not listening
        yet, an odd attribute): what it returns is sent."""
        call, invite = await self._prepare_call(
            lower_id, channel_id, kind, transport, start, stop, download_speed, ssrc, headers,
            offer_hook=offer_hook,
        )  # fmt: skip
        try:
            resp = await invite.send(timeout)
        except InviteFailed as exc:
            self._call_failed(call, exc.status, exc.reason)
            if exc.status == 408:
                invite.cancel()  # stop the lower's transaction too (RFC 3261 timer C)
            raise RequestFailed(f"INVITE {channel_id}", exc.status, exc.reason) from None
        except BaseException:
            self._call_failed(call, 0, "abandoned")
            raise
        return await self._established(call, invite, resp)

    def _call_failed(self, call: PlatformCall, status: int, reason: str) -> None:
        call.status, call.reason = status, reason
        self.calls.pop(call.call_id, None)
        self.spawn(close_quietly(call.receiver))
        self._emit(f"{call.lower_id} INVITE {call.channel_id} {call.kind}: {status} {reason}")

    async def _established(
        self, call: PlatformCall, invite: OutgoingInvite, resp: Response
    ) -> PlatformCall:
        call.status, call.reason, call.response = resp.status, resp.reason, resp
        call.dialog = invite.dialog
        try:
            answer = parse_sdp(resp.body)
        except SdpError as exc:
            call._end("platform")
            await invite.bye()
            raise RequestFailed(
                f"INVITE {call.channel_id}", resp.status, f"bad SDP answer: {exc.reason}"
            ) from None
        call.answer = answer
        call.ssrc = answer.ssrc if answer.ssrc is not None else call.offered_ssrc
        if call.transport == "tcp-active":
            call.receiver.connect((answer.host, answer.port))
        self._emit(
            f"{call.lower_id} INVITE {call.channel_id} {call.kind} {call.transport}: 200"
            f" media from {answer.host}:{answer.port} y={call.ssrc} call_id={call.call_id}"
        )
        return call

    async def invite_cancel(
        self,
        lower_id: str,
        channel_id: str,
        *,
        delay: float = 0.0,
        timeout: float = 10.0,
        kind: str = "Play",
        transport: str = "udp",
        start: int = 0,
        stop: int = 0,
        ssrc: str | None = "auto",
    ) -> int:
        """Send an INVITE and CANCEL it once a provisional response came (and ``delay`` more
        seconds passed); return the INVITE's final status (487 expected; 200 when the answer
        beat the CANCEL, in which case the call is ended with BYE)."""
        came = asyncio.Event()
        call, invite = await self._prepare_call(
            lower_id, channel_id, kind, transport, start, stop, None, ssrc, (),
            on_provisional=lambda resp: came.set(),
        )  # fmt: skip
        sending = asyncio.ensure_future(invite.send(timeout))
        waiting = asyncio.ensure_future(came.wait())
        try:
            await asyncio.wait({sending, waiting}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            waiting.cancel()
        if not sending.done():
            if delay:
                await asyncio.sleep(delay)
            invite.cancel()
        try:
            resp = await sending
        except InviteFailed as exc:
            self._call_failed(call, exc.status, exc.reason)
            return exc.status
        await self._established(call, invite, resp)
        await call.bye()
        return resp.status

    def _in_dialog_message(self, call: PlatformCall | BroadcastCall, req: Request) -> Response:
        """A MESSAGE in a call's dialog: ``MediaStatus`` (121: end of file, reference §6.6)."""
        try:
            msg = decode(req.body).message
        except DecodeError as exc:
            return self._answer(req, 400, _reason(f"Bad MANSCDP: {exc}"))
        call.messages.append(msg)
        if isinstance(msg, MediaStatus) and isinstance(call, PlatformCall):
            call.media_status.append(msg.notify_type or 0)
        self._emit(f"{call.lower_id} in-dialog {msg.ROOT}/{msg.CMD} call_id={call.call_id}")
        return self._answer(req, 200)

    def _on_bye(self, req: Request, ctx: ServerContext) -> Response:
        call: PlatformCall | BroadcastCall | None = self.calls.get(req.call_id)
        if call is None:
            call = self.broadcast_calls.get(req.call_id)
        if call is None or call.dialog is None or call.ended.is_set():
            return self._answer(req, 481, "Call/Transaction Does Not Exist")
        if req.to.tag != call.dialog.local_tag:
            return self._answer(req, 481, "Call/Transaction Does Not Exist (wrong tag)")
        call._end("lower")
        self._emit(f"{call.lower_id} BYE from the lower call_id={call.call_id}")
        return self._answer(req, 200)

    def _on_ack(self, req: Request, ctx: ServerContext) -> None:
        call = self.broadcast_calls.get(req.call_id)
        if call is None or call.acked or call.ended.is_set():
            return
        call.acked = True
        try:
            start_sender(call.sender, call.transport, call.offer)
        except (RuntimeError, ValueError) as exc:
            self._emit(f"{call.lower_id} broadcast audio failed: {exc}")

    # -- voice broadcast (reference §6.8) ------------------------------------------------------
    async def broadcast(
        self,
        lower_id: str,
        target_channel_id: str,
        *,
        transport: str = "udp",
        timeout: float = 10.0,
    ) -> BroadcastCall:
        """``Notify/Broadcast`` (SourceID = us, TargetID = the voice output) to a lower, wait
        for ``Response/Broadcast``, then for its INVITE, which is answered ``a=sendonly`` with
        PCMA-ish audio (PT 8, 20 ms packets) from a sender of ours. ``transport`` is the role we
        accept for the audio leg (``"any"``: whatever the offer implies); an offer for another
        is refused 488. Failures raise :class:`RequestFailed`."""
        if transport not in (*TRANSPORTS, "any"):
            raise ValueError(f"transport must be one of {TRANSPORTS} or 'any', not {transport!r}")
        self.lower(lower_id)
        target = target_channel_id
        awaited = _AwaitedBroadcast(
            lower_id, target, transport, asyncio.get_running_loop().create_future()
        )
        self._awaiting[target] = awaited
        try:
            msg = BroadcastNotify(sn=0, source_id=self.platform_id, target_id=target)
            result = await self._exchange(lower_id, msg, 1, timeout, timeout, target=target)
            what = f"Broadcast to {target}"
            if not 200 <= result.status < 300:
                raise RequestFailed(what, result.status)
            answer = result.responses[0] if result.responses else None
            if not isinstance(answer, BroadcastResponse):
                raise RequestFailed(what, result.status, "no Response/Broadcast")
            if (answer.result or "").upper() != "OK":
                raise RequestFailed(what, result.status, f"Result {answer.result}")
            try:
                return await asyncio.wait_for(asyncio.shield(awaited.future), timeout)
            except TimeoutError:
                raise RequestFailed(what, 408, "no INVITE from the lower") from None
        finally:
            if self._awaiting.get(target) is awaited:
                del self._awaiting[target]
            if not awaited.future.done():
                awaited.future.cancel()

    def _on_invite(self, req: Request, ctx: ServerContext) -> Response | Awaitable[Response] | None:
        """An INVITE from a lower: only the audio leg of a broadcast we started is accepted."""
        tag = self.endpoint.tag()

        def refuse(status: int, reason: str) -> Response:
            self._emit(f"INVITE from {ctx.peer} refused: {status} {reason}")
            return self._answer(req, status, _reason(reason))

        if req.to.tag:
            return refuse(488, "Not Acceptable Here (re-INVITE not supported)")
        callee = req.request_uri.user or req.to.uri.user or ""
        if callee != self.platform_id:
            return refuse(404, f"Not Found ({callee} is not this platform)")
        named = parse_subject(req.get_header("Subject"))
        candidates = [named[1][0]] if named is not None else []
        candidates.append(req.from_.uri.user or "")
        awaited = next((self._awaiting[c] for c in candidates if c in self._awaiting), None)
        if awaited is None or awaited.future.done():
            return refuse(403, f"Forbidden (no broadcast pending for {candidates[0]})")

        def fail(status: int, reason: str) -> Response:
            awaited.fail(status, reason)
            return refuse(status, reason)

        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            return fail(488, f"Not Acceptable Here (bad SDP: {exc.reason})")
        if offer.media != "audio":
            return fail(488, f"Not Acceptable Here (m={offer.media}: broadcast is audio)")
        role = answer_role(offer)
        if awaited.transport not in ("any", role):
            return fail(488, f"Not Acceptable Here (audio over {role}, want {awaited.transport})")
        return self._accept_broadcast(req, ctx, tag, awaited, offer, role)

    async def _accept_broadcast(
        self,
        req: Request,
        ctx: ServerContext,
        tag: str,
        awaited: _AwaitedBroadcast,
        offer: Sdp,
        role: str,
    ) -> Response:
        host = self.endpoint.local_host(ctx.peer)
        ssrc = offer.ssrc if valid_ssrc(offer.ssrc) else self._next_ssrc(False)
        assert ssrc is not None
        sender = new_sender(
            pcma_frames(),
            ssrc=int(ssrc),
            transport=role,
            local_host=host,
            fps=1000 / 20,
            loop=True,
            payload_type=PCMA_PT,
        )
        try:
            port = await sender.bind()
        except OSError as exc:
            awaited.fail(500, f"cannot bind: {exc}")
            return self._answer(req, 500, "Server Internal Error (no media port)")
        answer = Sdp(
            origin_user=self.platform_id,
            origin_host=host,
            session="Play",
            host=host,
            media="audio",
            port=port or DISCARD_PORT,
            proto=offer.proto,
            formats=[PCMA_PT],
            rtpmap={PCMA_PT: "PCMA/8000"},
            direction="sendonly",
            setup=answer_setup(offer),
            connection_new=offer.tcp,
            ssrc=ssrc,
            media_info="v/////a/1/8/1",
        )
        call = BroadcastCall(
            platform=self,
            call_id=req.call_id,
            lower_id=awaited.lower_id,
            target_id=awaited.target_id,
            transport=role,
            offer=offer,
            answer=answer,
            request=req,
            sender=sender,
            dialog=Dialog.as_uas(req, tag, ctx.peer),
        )
        if awaited.future.done():  # the broadcast() caller gave up meanwhile
            await close_quietly(sender)
            return self._answer(req, 480, "Temporarily Unavailable (broadcast abandoned)")
        self.broadcast_calls[call.call_id] = call
        awaited.future.set_result(call)
        self._emit(
            f"{call.lower_id} broadcast INVITE for {call.target_id} answered:"
            f" audio to {offer.host}:{offer.port} over {role} y={ssrc}"
        )
        return make_response(
            req,
            200,
            to_tag=tag,
            headers=[
                ("Contact", f"<{self.endpoint.contact_uri(self.platform_id, ctx.peer)}>"),
                ("Content-Type", SDP_TYPE),
            ],
            body=answer.to_bytes(),
        )

    async def close(self) -> None:
        """:meth:`stop`, and close every media socket (no BYEs are sent). The endpoint stays
        the caller's to close."""
        self.stop()
        things: list[Any] = [c.receiver for c in self.calls.values()]
        things += [c.sender for c in self.broadcast_calls.values()]
        await asyncio.gather(*(close_quietly(t) for t in things))

    # -- subscriptions (RFC 6665; reference §5.1–§5.4, §7.3) ---------------------------------
    async def subscribe(
        self,
        lower_id: str,
        kind: str = "Catalog",
        expires: int = 600,
        target: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Subscription:
        """SUBSCRIBE with a Query body (``Event: Catalog;id=<n>`` for the catalog, ``presence``
        for alarms and positions). The returned dialog is ``active`` after a 2xx; ``status``
        tells otherwise."""
        if kind not in SUBSCRIPTION_KINDS:
            raise ValueError(f"kind must be one of {SUBSCRIPTION_KINDS}, not {kind!r}")
        lower = self.lower(lower_id)
        target = target or lower_id
        sn = self._next_sn()
        query: Message
        if kind == "Catalog":
            query = CatalogQuery(sn=sn, device_id=target)
            event = f"Catalog;id={next(self._event_ids)}"
        elif kind == "Alarm":
            query = AlarmQuery(
                sn=sn, device_id=target, start_alarm_priority=0, end_alarm_priority=0,
                alarm_method="0",
            )  # fmt: skip
            event = "presence"
        else:
            query = MobilePositionQuery(sn=sn, device_id=target, interval=5)
            event = "presence"
        peer = self.peer_of(lower)
        uri = f"sip:{target}@{_host_port(peer)}"
        sub = Subscription(
            lower_id=lower_id,
            kind=kind,
            target=target,
            event=event,
            call_id=self.endpoint.call_id(),
            local_tag=self.endpoint.tag(),
            to_uri=uri,
            remote_target=uri,
            peer=peer,
            query=query,
            requested=expires,
        )
        # Registered before sending: a NOTIFY may overtake the 200 (RFC 6665 §4.1.2.4).
        self.subscriptions[sub.call_id] = sub
        await self._subscribe_request(sub, expires, timeout)
        return sub

    async def refresh(
        self, sub: Subscription, expires: int | None = None, *, timeout: float | None = None
    ) -> Subscription:
        """Re-SUBSCRIBE in the dialog (CSeq + 1, the 200's To tag)."""
        await self._subscribe_request(sub, sub.requested if expires is None else expires, timeout)
        return sub

    async def unsubscribe(self, sub: Subscription, *, timeout: float | None = None) -> Subscription:
        """SUBSCRIBE with ``Expires: 0`` in the dialog. The dialog stays known, so the final
        ``terminated`` NOTIFY still gets its 200."""
        await self._subscribe_request(sub, 0, timeout)
        sub.active = False
        return sub

    async def _subscribe_request(
        self, sub: Subscription, expires: int, timeout: float | None
    ) -> Response | None:
        sub.cseq += 1
        to = f"<{sub.to_uri}>" + (f";tag={sub.remote_tag}" if sub.remote_tag else "")
        req = Request(
            "SUBSCRIBE",
            sub.remote_target,
            [
                ("From", f"<sip:{self.platform_id}@{self.domain}>;tag={sub.local_tag}"),
                ("To", to),
                ("Call-ID", sub.call_id),
                ("CSeq", f"{sub.cseq} SUBSCRIBE"),
                ("Contact", f"<{self.endpoint.contact_uri(self.platform_id, sub.peer)}>"),
                ("Event", sub.event),
                ("Expires", str(expires)),
                ("Content-Type", MANSCDP),
            ],
            encode(sub.query, self.charset),
        )
        what = "subscribe" if sub.cseq == 1 else "unsubscribe" if expires == 0 else "refresh"
        try:
            resp: Response | None = await self.endpoint.request(req, sub.peer, timeout=timeout)
        except _SEND_ERRORS as exc:
            resp = None
            self._emit(f"{sub.lower_id} {sub.kind} {what} failed: {type(exc).__name__}")
        sub.status = resp.status if resp is not None else 0
        if resp is None:
            return None
        sub.responses.append(resp)
        if 200 <= resp.status < 300:
            if not sub.remote_tag:
                sub.remote_tag = resp.to.tag or ""
            contacts = resp.contacts
            if contacts:
                sub.remote_target = str(contacts[0].uri)
            try:
                granted = resp.expires
            except ParseError:
                granted = None
            sub.expires = expires if granted is None else granted
            sub.expires_at = time.monotonic() + sub.expires
            sub.active = sub.expires > 0
        elif sub.cseq == 1 or resp.status == 481:
            sub.active = False
        self._emit(
            f"{sub.lower_id} {sub.kind} {what} {sub.target} event={sub.event}"
            f" expires={expires}: {resp.status} {resp.reason}"
        )
        return resp

    def _on_notify(self, req: Request, ctx: ServerContext) -> Response:
        sub = self.subscriptions.get(req.call_id)
        if sub is None or req.to.tag != sub.local_tag:
            self._emit(f"NOTIFY from {ctx.peer} for no dialog of ours: 481")
            return self._answer(req, 481, "Subscription Does Not Exist")
        if not sub.remote_tag:
            sub.remote_tag = req.from_.tag or ""
        now = time.monotonic()
        msg: Message | None = None
        if req.body.strip():
            try:
                msg = decode(req.body).message
            except DecodeError as exc:
                # Still 200: an error answer would end the subscription (RFC 6665 §4.2.2).
                self._emit(f"{sub.lower_id} NOTIFY with bad MANSCDP: {exc}")
        refused = self._refuse_catalog(req, msg) if msg is not None else None
        if refused is not None:
            return refused
        self.notifies.append((req, msg))
        sub.notifies += 1
        state = (req.get_header("Subscription-State") or "").partition(";")[0].strip().lower()
        if state == "terminated":
            sub.active = False
        if isinstance(msg, CatalogNotify):
            events = self.catalog_events
            times = self.notify_times
            for item in msg.items:
                events.append((item.event or "", item.device_id))
                times.append(now)
            self._emit(f"{sub.lower_id} NOTIFY Catalog items={len(msg.items)} sn={msg.sn} {state}")
        elif isinstance(msg, AlarmNotify):
            self.alarms.append(msg)
            self._emit(f"{sub.lower_id} NOTIFY Alarm {msg.device_id} sn={msg.sn} {state}")
        else:
            if isinstance(msg, MobilePositionNotify):
                self.positions.append(msg)
            cmd = msg.CMD if msg is not None else "-"
            self._emit(f"{sub.lower_id} NOTIFY {sub.kind} body={cmd} {state}")
        return self._answer(req, 200)
