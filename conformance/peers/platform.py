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

Misbehaviour switches (attributes, all off by default): ``drop_keepalives``,
``refuse_keepalives``, ``challenge_407``, ``redirect_to``; :meth:`SimPlatform.restart` forgets
every lower. Incoming NOTIFYs cost one decode and a few appends: no task per NOTIFY.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from gateway.manscdp.errors import DecodeError
from gateway.manscdp.gbid import is_gb_id
from gateway.manscdp.messages import (
    AlarmNotify,
    AlarmQuery,
    AlarmResponse,
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
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PresetQuery,
    RecordInfoQuery,
    RecordItem,
    decode,
    encode,
)
from gateway.sip.digest import Credentials, DigestServer, Verdict
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import ParseError, TransactionTimeout, TransportError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transport import Peer
from gateway.sip.uri import is_digits

log = structlog.get_logger("conformance.platform")

MANSCDP = "Application/MANSCDP+xml"
MIN_EXPIRES = 60
MAX_EXPIRES = 86_400
DEFAULT_EXPIRES = 3600
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Answers split over several MESSAGEs and collected up to SumNum distinct items (Annex M).
MULTI_RESPONSE = frozenset({"Catalog", "RecordInfo"})
SUBSCRIPTION_KINDS = ("Catalog", "Alarm", "MobilePosition")
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
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.partial


class _Pending:
    """Collects the Response MESSAGEs of one query (matched on CmdType and SN)."""

    __slots__ = ("done", "expect", "items", "last", "multi", "raw", "responses", "sum_num")

    def __init__(self, cmd: str, expect: int, now: float) -> None:
        self.multi = cmd in MULTI_RESPONSE
        self.expect = expect
        self.responses: list[Message] = []
        self.raw: list[bytes] = []
        self.items: dict[Any, Any] = {}
        self.sum_num: int | None = None
        self.last = now
        self.done = asyncio.Event()
        if expect == 0:
            self.done.set()

    def feed(self, msg: Message, raw: bytes, now: float) -> None:
        self.responses.append(msg)
        self.raw.append(raw)
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


class _RawTap:
    """Between the transports and the endpoint: keeps the bytes of the message being handled, so
    a synchronous handler can record a Response MESSAGE exactly as it came off the wire."""

    __slots__ = ("endpoint", "last")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.last = b""

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.last = data
        try:
            self.endpoint.message_received(data, peer)
        finally:
            self.last = b""

    def connection_lost(self, peer: Peer) -> None:
        self.endpoint.connection_lost(peer)


@dataclass(slots=True)
class SimPlatform:
    """A simulated upper platform on one endpoint. Plain attributes configure it; the lists
    record what it saw. Call :meth:`start` (routes the endpoint and starts the liveness check)
    and :meth:`stop`.

    Switches (default off):

    * ``challenge_407``: challenge with ``407`` / ``Proxy-Authenticate`` instead of ``401``.
    * ``redirect_to``: answer the next REGISTER with ``302`` to this (host, port), then clear it.
    * ``drop_keepalives``: never answer keepalives (the endpoint itself answers ``500`` to an
      unanswered request after 64·T1, by which time the sender has given up).
    * ``refuse_keepalives``: answer keepalives ``404``.

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
    drop_keepalives: bool = False
    refuse_keepalives: bool = False

    # -- what it saw ------------------------------------------------------------------------
    lowers: dict[str, Lower] = field(default_factory=dict)
    registers: list[Request] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by Call-ID
    notifies: list[tuple[Request, Message | None]] = field(default_factory=list)
    catalog_events: list[tuple[str, str]] = field(default_factory=list)  # (Event, DeviceID)
    notify_times: list[float] = field(default_factory=list)  # arrival of catalog_events[i]
    alarms: list[AlarmNotify] = field(default_factory=list)  # by MESSAGE and by NOTIFY
    positions: list[MobilePositionNotify] = field(default_factory=list)
    stray: list[Message] = field(default_factory=list)  # Responses matching no pending query
    messages: list[Message] = field(default_factory=list)  # any other MESSAGE body
    events: list[str] = field(default_factory=list)

    _digest: DigestServer = field(init=False, repr=False)
    _pending: dict[tuple[str, int], _Pending] = field(default_factory=dict, init=False, repr=False)
    _sn: Iterator[int] = field(init=False, repr=False)
    _cseq: int = field(default=0, init=False, repr=False)
    _event_ids: Iterator[int] = field(init=False, repr=False)
    _tap: _RawTap | None = field(default=None, init=False, repr=False)
    _installed: bool = field(default=False, init=False, repr=False)
    _check_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.realm:
            self.realm = self.domain
        self._digest = DigestServer(self.realm, qop=self.qop)
        self._sn = itertools.count(1)
        self._event_ids = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------------
    def install(self) -> SimPlatform:
        """Route the endpoint's REGISTER, MESSAGE and NOTIFY here (SUBSCRIBE is not served)."""
        if self._installed:
            return self
        ep = self.endpoint
        ep.route("REGISTER", self._on_register)
        ep.route("MESSAGE", self._on_message)
        ep.route("NOTIFY", self._on_notify)
        ep.on_connection_lost(self._on_connection_lost)
        listener = ep.transports.listener
        if isinstance(listener, _RawTap):
            self._tap = listener
        elif listener is ep:
            self._tap = _RawTap(ep)
            ep.transports.listener = self._tap
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
                ("Contact", f"<sip:{self.platform_id}@{host}:{port}>"),
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
        if expires == 0:
            self._unregister(lower_id, ctx.peer)
            return answer(200, "OK", ("Expires", "0"), ("Date", gb_date()))
        granted = max(MIN_EXPIRES, min(MAX_EXPIRES, expires))
        self._bind(lower_id, req, ctx.peer, granted, gb_ver)
        more = [("Expires", str(granted)), ("Date", gb_date())]
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
        sender = req.from_.uri.user or ""
        try:
            msg = decode(req.body).message
        except DecodeError as exc:
            self._emit(f"{sender} bad MANSCDP from {ctx.peer}: {exc}")
            return self._answer(req, 400, _reason(f"Bad MANSCDP: {exc}"))
        if isinstance(msg, Keepalive):
            return self._on_keepalive(req, ctx, sender)
        if msg.ROOT == "Response":
            pending = self._pending.get((msg.CMD, msg.sn))
            if pending is not None:
                tap = self._tap
                raw = tap.last if tap is not None and tap.last else req.to_bytes()
                pending.feed(msg, raw, time.monotonic())
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
            self.spawn(self._acknowledge_alarm(sender, msg, lower.peer if lower else ctx.peer))
            return self._answer(req, 200)
        if isinstance(msg, MobilePositionNotify):
            self.positions.append(msg)
        self.messages.append(msg)
        self._emit(f"{sender} {msg.ROOT}/{msg.CMD} {msg.device_id} sn={msg.sn}")
        return self._answer(req, 200)

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
        self, lower_id: str, msg: Message, expect: int, timeout: float, idle: float
    ) -> QueryResult:
        lower = self.lower(lower_id)
        msg = replace(msg, sn=self._next_sn())
        key = (msg.CMD, msg.sn)
        start = time.monotonic()
        pending = self._pending[key] = _Pending(msg.CMD, expect, start)
        try:
            body = encode(msg, self.charset, gb2022=lower.gb2022)
            resp = await self._send(msg.device_id, lower.peer, body, timeout)
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
        uri = f"sip:{target}@{_host_port(lower.peer)}"
        sub = Subscription(
            lower_id=lower_id,
            kind=kind,
            target=target,
            event=event,
            call_id=self.endpoint.call_id(),
            local_tag=self.endpoint.tag(),
            to_uri=uri,
            remote_target=uri,
            peer=lower.peer,
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
