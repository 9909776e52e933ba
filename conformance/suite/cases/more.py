"""Mobile position, the 2022 PTZ, cruise and SD-card queries, precise PTZ and the snapshot
configuration, judged from the platform above the target (device and gateway roles).

GB/T 28181-2016 and -2022 §9.11 and A.2 (the MobilePosition subscription; 2022 A.2.5.6 gives
the notification a list form), 2022 §9.5 and A.2 (CruiseTrackListQuery, CruiseTrackQuery,
PTZPosition, SDCardStatus, ConfigDownload SnapShotConfig), §9.3 (PTZPreciseCtrl); reference
§3.7, §3.9, §4.3, §4.4, §5.1, §5.4.

These features are optional (a fixed camera has no PTZ, a camera without a card no SD card, a
camera that never moves no position), so a target may say it lacks one. The cases skip, naming
what the target said, when:

* the request (query MESSAGE, control MESSAGE or SUBSCRIBE) gets a final status of
  :data:`NOT_SUPPORTED`: ``403`` Forbidden, ``405`` Method Not Allowed, ``489`` Bad Event,
  ``501`` Not Implemented;
* or the application answer (or the SUBSCRIBE 200's ``Response`` body) says ``Result ERROR``.

Anything else is judged: another refusal (``400``, ``404``, ``500``...), no final response, a
query accepted with 200 whose ``Response`` never comes (a 200 to a query promises one), a
subscription accepted whose NOTIFYs never come, and every wrong field. The one exception is the
one-shot ``Query/MobilePosition`` MESSAGE (D-POS-02): the standard defines that body only as a
subscription's; answering it by MESSAGE is practice (wvp), so silence or a refusal skips, and
only an answer that comes is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.peers.platform import QueryResult
from conformance.peers.platform import Subscription as PlatformSubscription
from conformance.suite.case import case
from conformance.suite.cases.common import (
    GB_TIME,
    charset_problem,
    clock_problem,
    content_type_ok,
    fail_problems,
    parse_gb_time,
    refusal_line,
    sip_body,
    until,
)
from conformance.suite.context import Context
from gateway.manscdp import xmlio
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.messages import (
    ConfigDownloadQuery,
    ConfigDownloadResponse,
    CruiseTrackListQuery,
    CruiseTrackListResponse,
    CruiseTrackQuery,
    CruiseTrackResponse,
    DeviceControl,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PositionItem,
    PtzPositionQuery,
    PtzPositionResponse,
    PtzPrecise,
    SDCardStatusQuery,
    SDCardStatusResponse,
    decode,
)
from gateway.sip.errors import ParseError
from gateway.sip.message import Request, parse

BOTH = ("2016", "2022")
V2022 = ("2022",)
TARGET_DEVICE = ("device", "gateway")

NOT_SUPPORTED = frozenset({403, 405, 489, 501})
"""Final statuses that say "I do not do this" (see the module docstring)."""

# The mobile position subscription (D-POS-01). A short interval keeps the case short; a device
# that cannot report this often fails the interval check.
POSITION_INTERVAL = 1  # seconds, the subscription's Interval
POSITION_EXPIRES = 60  # seconds asked for
POSITION_REPORTS = 4  # reports collected before the subscription is ended
POSITION_GRACE = 0.5  # s after the un-SUBSCRIBE's 200 in which a NOTIFY in flight may land
# What the suite's device below a gateway reports (it moves north-east a little each time).
ROUTE_START = (117.2272, 31.8206)
ROUTE_STEP = 0.0003
OTHER_POSITION = (100.5, 20.25)  # reported by another device below, not subscribed to

SD_STATUSES = ("ok", "formatting", "unformatted", "idle", "error")
# PTZPreciseCtrl: how close PTZPosition must come to the position set.
ANGLE_TOLERANCE = 0.5  # degrees
ZOOM_TOLERANCE = 0.1
PTZ_SETTLE = 6.0  # s a dome may take to get there
PTZ_STILL = 2.0  # s after which a dome that has not moved at all is taken not to move


def _channel(ctx: Context) -> str:
    channel = ctx.harness.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    return str(channel)


def _device(ctx: Context) -> str:
    """The device whose own features are asked for: the target (device role) or, below a
    gateway, the first suite device (the gateway forwards to it)."""
    h = ctx.harness
    return str(h.devices[0].device_id if h.role == "gateway" else h.lower_id)


def _unsupported(ctx: Context, what: str, status: int) -> None:
    if status in NOT_SUPPORTED:
        line = refusal_line(ctx, status) or f"SIP/2.0 {status}"
        ctx.skip(f"{what}: the target does not support it ({line})")


async def _ask(
    ctx: Context, msg: Message, what: str, *, timeout: float = 10.0
) -> tuple[Message, QueryResult]:
    """A query with one Response: skip when the target says it does not support it; fail
    unless the Response came with our SN, the queried DeviceID, a charset that is true and
    ``Result OK`` (when it has a Result)."""
    h = ctx.harness
    res = await h.need_platform().query(h.lower_id, msg, timeout=timeout, idle=timeout)
    _unsupported(ctx, what, res.status)
    ctx.check(
        200 <= res.status < 300,
        f"{what}: the query MESSAGE was refused",
        expected="200 OK (or 403/405/489/501 when not supported)",
        seen=refusal_line(ctx, res.status) or res.status or "no final response",
    )
    ctx.check(
        bool(res.responses),
        f"{what}: no Response/{msg.CMD} came in {timeout:g} s after the 200 (a target without "
        "the feature answers 501 or Result ERROR)",
    )
    answer = res.responses[0]
    if len(res.responses) > 1 and hasattr(answer, "items"):
        # An answer in several MESSAGEs (2022 Annex M): judged as one, every part's items.
        answer = replace(answer, items=tuple(res.items))
    ctx.expect_equal(answer.sn, res.request.sn, f"{what}: SN of the Response")
    ctx.expect_equal(answer.device_id, msg.device_id, f"{what}: DeviceID of the Response")
    problem = charset_problem(sip_body(res.raw[0])) if res.raw else None
    ctx.check(problem is None, f"{what}: the Response's charset", seen=problem)
    result = getattr(answer, "result", None)
    if result == "ERROR":
        ctx.skip(f"{what}: the target answered Result ERROR (not supported here)")
    ctx.check(result in (None, "OK"), f"{what}: Result", expected="OK", seen=result)
    return answer, res


def _num_problem(body: bytes, list_tag: str, item_tag: str) -> str | None:
    """``<list_tag Num="n">`` against its ``item_tag`` children (None when right, or when the
    list is absent: SumNum then says whether items are missing)."""
    try:
        root = xmlio.parse(body).root
    except DecodeError as exc:
        return f"body is not XML: {exc}"
    for child in root:
        if isinstance(child.tag, str) and child.tag.lower() == list_tag.lower():
            items = [
                c for c in child if isinstance(c.tag, str) and c.tag.lower() == item_tag.lower()
            ]
            num = child.get("Num") or child.get("num")
            if num is None:
                return f"<{list_tag}> has no Num attribute"
            if not num.strip().isdigit() or int(num) != len(items):
                return f'<{list_tag} Num="{num}"> holds {len(items)} <{item_tag}>'
            return None
    return None


def _count_problems(
    res: QueryResult, sum_num: int | None, count: int, list_tag: str, item_tag: str
) -> list[str]:
    """SumNum present and equal to the items, and every part's list Num right."""
    out = []
    if sum_num is None:
        out.append("no SumNum")
    elif sum_num != count:
        out.append(f"SumNum {sum_num} with {count} items in <{list_tag}>")
    for raw in res.raw:
        problem = _num_problem(sip_body(raw), list_tag, item_tag)
        if problem:
            out.append(problem)
    return out


def _queries_below(ctx: Context, cmd: str, before: int) -> list[Message]:
    """The queries of ``cmd`` the first suite device below a gateway received since
    ``before``."""
    dev = ctx.harness.devices[0]
    return [q for q in dev.queries[before:] if cmd == q.CMD]


def sent_below(ctx: Context, cmd: str, device_id: str) -> Message | None:
    """Below a gateway: the last ``Response/<cmd>`` (or ``Notify/<cmd>``) MESSAGE a suite
    device sent for ``device_id`` in this case, read back from the trace: what the gateway
    had to relay."""
    for entry in reversed(ctx.messages()):
        if entry.direction != "sent" or not entry.first_line.startswith("MESSAGE "):
            continue
        try:
            msg = decode(parse(entry.data).body).message
        except (ParseError, DecodeError):
            continue
        if msg.ROOT in ("Response", "Notify") and cmd == msg.CMD and msg.device_id == device_id:
            return msg
    return None


def _expect_relayed(ctx: Context, what: str, cmd: str, local: str, seen: Any, view: Any) -> None:
    """Below a gateway: ``seen`` (the upper's view of the relayed answer) equals ``view`` of
    what the device sent for ``local``."""
    origin = sent_below(ctx, cmd, local)
    ctx.check(origin is not None, f"{what}: the device below sent no {cmd} answer to compare")
    ctx.expect_equal(seen, view(origin), f"{what} relayed by the gateway is not the device's")


# -- mobile position (§9.11; reference §5.1, §5.4) ----------------------------------------------
def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _in_range(value: float | None, low: float, high: float) -> bool:
    return value is not None and math.isfinite(value) and low <= value <= high


def _time_problems(name: str, value: str | None, received_at: float | None) -> list[str]:
    """A MANSCDP time: there, ``yyyy-MM-ddTHH:mm:ss``, a real time and (when ``received_at``,
    a wall-clock time, is given) our clock's in some time zone."""
    if value is None:
        return [f"no {name} (mandatory)"]
    text = value.strip()
    if not GB_TIME.match(text):
        return [f"{name} {value!r} is not yyyy-MM-ddTHH:mm:ss"]
    when = parse_gb_time(text)
    if when is None:
        return [f"{name} {value!r} is not a real time"]
    if received_at is not None:
        problem = clock_problem(when, received_at)
        if problem:
            return [f"{name} {problem}"]
    return []


def _point_problems(where: str, p: PositionItem | MobilePositionNotify) -> list[str]:
    """Longitude and Latitude there and in range; Speed, Direction, Altitude (and the 2022
    Height) in range when present."""
    out = []
    for name, value, low, high in (
        ("Longitude", p.longitude, -180.0, 180.0),
        ("Latitude", p.latitude, -90.0, 90.0),
    ):
        if value is None:
            out.append(f"{where}: no {name} (mandatory)")
        elif not _in_range(value, low, high):
            out.append(f"{where}: {name} {value} outside {low:g}..{high:g}")
    if p.speed is not None and not _in_range(p.speed, 0.0, math.inf):
        out.append(f"{where}: Speed {p.speed} (km/h, not negative)")
    if p.direction is not None and not _in_range(p.direction, 0.0, 360.0):
        out.append(f"{where}: Direction {p.direction} (degrees from north, 0..360)")
    if p.altitude is not None and not _finite(p.altitude):
        out.append(f"{where}: Altitude {p.altitude} is not a number")
    height = getattr(p, "height", None)
    if height is not None and not _finite(height):
        out.append(f"{where}: Height {height} is not a number")
    return out


def position_problems(
    msg: MobilePositionNotify, body: bytes | None, received_at: float | None
) -> list[str]:
    """A ``Notify/MobilePosition`` body in either form (reference §5.4): 2016 flat (DeviceID,
    Time, Longitude, Latitude, optional Speed, Direction, Altitude) or the 2022 list (Time,
    SumNum, DeviceList of items with DeviceID, CaptureTime, Longitude, Latitude...). DeviceIDs
    are not judged here (see :func:`_position_ids`)."""
    out = _time_problems("Time", msg.time, received_at)
    if not msg.items:
        if msg.sum_num is not None and msg.sum_num != 1:
            out.append(f"SumNum {msg.sum_num} but one position in the flat form (no DeviceList)")
        return out + _point_problems("the position", msg)
    if msg.sum_num is None:
        out.append("list form without SumNum")
    elif msg.sum_num != len(msg.items):
        out.append(f"SumNum {msg.sum_num} with {len(msg.items)} items in <DeviceList>")
    if body is not None:
        problem = _num_problem(body, "DeviceList", "Item")
        if problem:
            out.append(problem)
    for n, item in enumerate(msg.items, 1):
        where = f"item {n}"
        if not item.device_id:
            out.append(f"{where}: no DeviceID (mandatory)")
        out += [f"{where}: {p}" for p in _time_problems("CaptureTime", item.capture_time, None)]
        out += _point_problems(where, item)
    return out


def _position_ids(msg: MobilePositionNotify) -> list[str]:
    """The IDs a position notification reports for: the envelope's, and each item's."""
    return [msg.device_id, *(i.device_id for i in msg.items if i.device_id)]


def _points(msg: MobilePositionNotify) -> list[tuple[float, float]]:
    return [
        (p.longitude, p.latitude)
        for p in msg.positions()
        if p.longitude is not None and p.latitude is not None
    ]


def _event_problem(seen: str | None, sent: str) -> str | None:
    """The NOTIFY's Event names the SUBSCRIBE's package (and its id, when it had one)."""

    def split(value: str) -> tuple[str, str | None]:
        package, _, params = value.partition(";")
        ident = None
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "id":
                ident = val.strip()
        return package.strip().lower(), ident

    if seen is None:
        return "no Event header"
    want_package, want_id = split(sent)
    package, ident = split(seen)
    if package != want_package or (want_id is not None and ident != want_id):
        return f"Event {seen!r}, the SUBSCRIBE's was {sent!r}"
    return None


@dataclass(slots=True)
class _Report:
    """A NOTIFY of the subscription as the suite's platform got it."""

    at: float  # time.monotonic() when the poll saw it
    wall: float  # time.time() then
    req: Request
    msg: Message | None

    @property
    def state(self) -> str:
        value = self.req.get_header("Subscription-State") or ""
        return value.partition(";")[0].strip().lower()


@dataclass(slots=True)
class _Watch:
    """Collects the NOTIFYs of one subscription from the platform's log, timestamped."""

    platform: Any
    call_id: str
    mark: int  # the platform's NOTIFY log is read from here on
    reports: list[_Report] = field(default_factory=list)

    def poll(self) -> list[_Report]:
        notifies = self.platform.notifies
        now, wall = time.monotonic(), time.time()
        while self.mark < len(notifies):
            req, msg = notifies[self.mark]
            self.mark += 1
            if req.call_id == self.call_id:
                self.reports.append(_Report(now, wall, req, msg))
        return self.reports


def _notify_problems(report: _Report, sub: PlatformSubscription) -> list[str]:
    """What RFC 6665 and reference §5.1 ask of a NOTIFY in an active subscription."""
    req = report.req
    out = []
    problem = _event_problem(req.get_header("Event"), sub.event)
    if problem:
        out.append(problem)
    state = req.get_header("Subscription-State") or ""
    if report.state != "active":
        out.append(f"Subscription-State {state!r} while the subscription holds (active)")
    elif "expires=" not in state.lower():
        out.append(f"Subscription-State {state!r} has no expires")
    if req.from_.tag != sub.remote_tag:
        out.append(f"From tag {req.from_.tag!r} is not the dialog's ({sub.remote_tag!r})")
    if not content_type_ok(req):
        out.append(f"Content-Type {req.content_type!r} (Application/MANSCDP+xml)")
    if report.msg is None:
        out.append("a NOTIFY without a readable MANSCDP body")
    elif not isinstance(report.msg, MobilePositionNotify):
        body = f"{report.msg.ROOT}/{report.msg.CMD}"
        out.append(f"a NOTIFY body is {body}, not Notify/MobilePosition")
    return out


async def subscribe_position(
    ctx: Context, target: str, interval: int, expires: int
) -> PlatformSubscription:
    """SUBSCRIBE to ``target``'s positions (``Event: presence``, ``Query/MobilePosition`` with
    ``Interval``), through the suite's platform.

    :meth:`SimPlatform.subscribe` asks for Interval 5 s; when it takes no ``interval`` this
    builds the same dialog with ours and sends it through the platform's own SUBSCRIBE."""
    h = ctx.harness
    platform = h.need_platform()
    if "interval" in inspect.signature(platform.subscribe).parameters:
        sub: PlatformSubscription = await platform.subscribe(
            h.lower_id, "MobilePosition", expires=expires, target=target, interval=interval,
            timeout=10.0,
        )  # fmt: skip
        return sub
    lower = platform.lower(h.lower_id)
    host = f"[{lower.peer.host}]" if ":" in lower.peer.host else lower.peer.host
    uri = f"sip:{target}@{host}:{lower.peer.port}"
    sub = PlatformSubscription(
        lower_id=h.lower_id,
        kind="MobilePosition",
        target=target,
        event="presence",
        call_id=platform.endpoint.call_id(),
        local_tag=platform.endpoint.tag(),
        to_uri=uri,
        remote_target=uri,
        peer=lower.peer,
        query=MobilePositionQuery(sn=platform._next_sn(), device_id=target, interval=interval),
        requested=expires,
    )
    platform.subscriptions[sub.call_id] = sub  # a NOTIFY may overtake the 200
    await platform._subscribe_request(sub, expires, 10.0)
    return sub


def _subscribe_refusal(sub: PlatformSubscription) -> str | None:
    """A 200 to the SUBSCRIBE whose ``Response`` body says ``Result ERROR``."""
    if not sub.responses or not sub.responses[0].body.strip():
        return None
    try:
        body = decode(sub.responses[0].body).message
    except DecodeError:
        return None
    return "Result ERROR" if getattr(body, "result", None) == "ERROR" else None


class _Mover:
    """Below a gateway: the suite device reports its position every ``interval`` seconds (by
    NOTIFY when the gateway subscribed to it, else by MESSAGE), as a moving device would."""

    def __init__(self, dev: Any, interval: float, form: str) -> None:
        self.dev = dev
        self.interval = interval
        self.form = form
        self.sent: list[tuple[float, float, float, float, float]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            lon = round(ROUTE_START[0] + n * ROUTE_STEP, 6)
            lat = round(ROUTE_START[1] + n * ROUTE_STEP, 6)
            point = (lon, lat, 30.5 + n, 45.0, 20.0)
            self.sent.append(point)
            await self.dev.send_position(lon, lat, speed=point[2], direction=point[3],
                                         altitude=point[4], form=self.form)  # fmt: skip
            n += 1
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


def _relay_problems(reports: Iterable[_Report], sent: Sequence[tuple[float, ...]]) -> list[str]:
    """Below a gateway: every relayed position is one the device reported, with its Speed,
    Direction and Altitude."""
    by_point = {(s[0], s[1]): s for s in sent}
    out = []
    for r in reports:
        assert isinstance(r.msg, MobilePositionNotify)
        for p in r.msg.positions():
            key = (p.longitude, p.latitude)
            origin = by_point.get(key)  # type: ignore[arg-type]
            if origin is None:
                out.append(f"position {key} was never reported by the device")
                continue
            got = (p.speed, p.direction, p.altitude)
            if got != origin[2:]:
                out.append(f"position {key}: Speed/Direction/Altitude {got}, the device's were "
                           f"{origin[2:]}")  # fmt: skip
    return out


@case(
    "D-POS-01",
    "Device side: mobile position subscription, its reports and its end",
    grade="D",
    clause_2016="9.11, A.2",
    clause_2022="9.11, A.2.5.6",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def mobile_position_subscription(ctx: Context) -> None:
    """Steps: the suite's platform SUBSCRIBEs to the target's positions (``Event: presence``,
    ``Query/MobilePosition`` with ``Interval`` 1, Expires 60; below a gateway, for the first
    suite device, which then reports a moving position every second, and a second device
    reports one position of its own); it collects 4 NOTIFYs, ends the subscription with
    ``Expires: 0`` in the dialog and listens 3 s more (below a gateway, the device goes on
    reporting meanwhile).

    Pass: 200 with a To tag and an Expires of 1..60 (403/405/489/501 or a ``Result ERROR``
    body: skipped, not supported). The first NOTIFY within 3 s; each in the dialog (From tag),
    with our Event package, ``Subscription-State: active;expires=``, MANSCDP Content-Type and
    a ``Notify/MobilePosition`` body in the 2016 form (DeviceID, Time, Longitude, Latitude,
    optional Speed, Direction, Altitude) or the 2022 list (Time, SumNum = items =
    ``DeviceList Num``, items with DeviceID, CaptureTime, Longitude, Latitude, optional Speed,
    Direction, Altitude, Height): times ``yyyy-MM-ddTHH:mm:ss`` and Time our clock's (any time
    zone, 10 s), Longitude -180..180, Latitude -90..90, Speed >= 0, Direction 0..360. The
    NOTIFYs after the first come every 0.5..2 s on average (the Interval asked, with a
    margin), none more than 3 s apart. Below a gateway: each position is one the device
    reported, with its Speed, Direction and Altitude. The un-SUBSCRIBE gets 200 and, from
    0.5 s after it, no NOTIFY but a ``terminated`` one comes. Every DeviceID named is the
    subscribed device or one of its channels (below a gateway: never the other device's)."""
    h = ctx.harness
    platform = h.need_platform()
    interval = POSITION_INTERVAL
    dev = h.devices[0] if h.role == "gateway" else None
    other = h.devices[1] if dev is not None and len(h.devices) > 1 else None
    target = _device(ctx)
    if dev is not None:
        allowed = {dev.device_id, *dev.channel_ids()}
    else:
        allowed = {target, *(i.device_id for i in h.catalog_items())}
    mark = len(platform.notifies)
    sub = await subscribe_position(ctx, target, interval, POSITION_EXPIRES)
    watch = _Watch(platform, sub.call_id, mark)
    ctx.step(f"SUBSCRIBE MobilePosition for {target} (Interval {interval} s, Expires "
             f"{POSITION_EXPIRES}): {sub.status or 'no final response'}, "
             f"expires {sub.expires}")  # fmt: skip
    _unsupported(ctx, "the MobilePosition SUBSCRIBE", sub.status)
    mover = _Mover(dev, interval, "2022" if h.edition_2022 else "2016") if dev else None
    # Below a gateway the mover alone reports: the devices' own reporting (to a gateway that
    # subscribed to their positions) is held for the case.
    held = [(d, d.no_position_reports) for d in (dev, other) if d is not None]
    for d, _ in held:
        d.no_position_reports = True
    try:
        ctx.check(200 <= sub.status < 300, "the MobilePosition SUBSCRIBE was not accepted",
                  expected="200 OK (or 403/405/489/501 when not supported)",
                  seen=refusal_line(ctx, sub.status) or sub.status
                  or "no final response")  # fmt: skip
        refusal = _subscribe_refusal(sub)
        if refusal:
            ctx.skip(f"the MobilePosition SUBSCRIBE: 200 with {refusal} (not supported)")
        ctx.check(bool(sub.remote_tag), "the 200 to SUBSCRIBE has no To tag (no dialog)")
        granted = sub.responses[0].get_header("Expires") if sub.responses else None
        ctx.check(granted is not None, "the 200 to SUBSCRIBE carries no Expires (RFC 6665)")
        ctx.check(0 < sub.expires <= POSITION_EXPIRES, "the granted Expires",
                  expected=f"1..{POSITION_EXPIRES}", seen=sub.expires)  # fmt: skip
        accepted = time.monotonic()
        if mover is not None:
            mover.start()
            ctx.step(f"{target} reports a moving position every {interval} s")

        def problems() -> list[str]:
            out = []
            for n, r in enumerate(watch.reports, 1):
                out += [f"NOTIFY {n}: {p}" for p in _notify_problems(r, sub)]
                if isinstance(r.msg, MobilePositionNotify):
                    out += [f"NOTIFY {n}: {p}"
                            for p in position_problems(r.msg, r.req.body, r.wall)]  # fmt: skip
            return out

        def positions() -> list[_Report]:
            return [r for r in watch.poll() if isinstance(r.msg, MobilePositionNotify)
                    and allowed.issuperset(_position_ids(r.msg))]  # fmt: skip

        first_limit = 2 * interval + 1
        got = await until(lambda: bool(watch.poll()), first_limit)
        ctx.check(got, f"no NOTIFY within {first_limit} s of the 200 (Interval {interval} s)")
        ctx.step(f"first NOTIFY {watch.reports[0].at - accepted:.2f} s after the 200")
        if other is not None:
            await other.send_position(*OTHER_POSITION, form="2022" if h.edition_2022 else "2016")
            ctx.step(f"{other.device_id} (not subscribed to) reported {OTHER_POSITION}")
        limit = (POSITION_REPORTS + 1) * (1.5 * interval + 0.5)
        got = await until(lambda: len(positions()) >= POSITION_REPORTS or bool(problems()), limit)
        fail_problems(ctx, "the position NOTIFYs", problems())
        reports = positions()
        ctx.check(got, f"{len(reports)} position NOTIFYs for {target} in {limit:g} s",
                  expected=f">= {POSITION_REPORTS}", seen=len(reports))  # fmt: skip
        times = [r.at for r in reports[:POSITION_REPORTS]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        ctx.step(f"{len(watch.reports)} NOTIFYs checked; gaps between the first "
                 f"{POSITION_REPORTS}: " + ", ".join(f"{g:.2f}" for g in gaps) + " s")  # fmt: skip
        mean = sum(gaps[1:]) / len(gaps[1:])  # the first may follow an immediate NOTIFY
        low, high = 0.5 * interval, 1.5 * interval + 0.5
        ctx.check(low <= mean <= high, f"NOTIFYs came every {mean:.2f} s on average, the "
                  f"subscription asked for every {interval} s",
                  expected=f"{low:g}..{high:g} s", seen=f"{mean:.2f} s")  # fmt: skip
        ctx.check(max(gaps) <= 2 * interval + 1, "a report is missing: NOTIFYs too far apart",
                  expected=f"<= {2 * interval + 1} s", seen=f"{max(gaps):.2f} s")  # fmt: skip
        if mover is not None:
            fail_problems(ctx, "the relayed positions", _relay_problems(reports, mover.sent))
            ctx.step("each relayed position is one the device reported")
        await platform.unsubscribe(sub, timeout=10.0)
        ended = time.monotonic()
        ctx.step(f"un-SUBSCRIBE (Expires: 0): {sub.status or 'no final response'}")
        ctx.expect_equal(sub.status, 200, "the un-SUBSCRIBE (Expires: 0)")
        quiet = 2 * interval + 1

        def late() -> list[_Report]:
            return [r for r in watch.poll()
                    if r.at > ended + POSITION_GRACE and r.state != "terminated"]  # fmt: skip

        await until(lambda: bool(late()), quiet)
        late_ones = late()
        ctx.check(not late_ones, "a NOTIFY came after the subscription was ended (Expires: 0)",
                  expected="none (or one terminated NOTIFY)",
                  seen=[f"+{r.at - ended:.2f} s {r.req.get_header('Subscription-State')}"
                        for r in late_ones])  # fmt: skip
        ctx.step(f"no NOTIFY in the {quiet} s after the un-SUBSCRIBE")
        strays = sorted({i for r in watch.reports if isinstance(r.msg, MobilePositionNotify)
                         for i in _position_ids(r.msg) if i not in allowed})  # fmt: skip
        leaked = other is not None and any(other.owns(i) for i in strays)
        ctx.check(not strays,
                  f"positions of {other.device_id}, which was not subscribed to, came in the "
                  f"subscription to {target}" if leaked and other is not None else
                  f"a NOTIFY names a DeviceID that is neither {target} nor one of its channels",
                  expected=f"{target} or one of its channels", seen=strays)  # fmt: skip
    finally:
        if sub.active:
            with contextlib.suppress(Exception):
                await platform.unsubscribe(sub, timeout=5.0)
        if mover is not None:
            await mover.stop()
        for d, kept in held:
            d.no_position_reports = kept


def _sent_sn(ctx: Context, cmd: str) -> int | None:
    """The SN of the last ``Query/<cmd>`` MESSAGE the suite sent in this case (from the
    trace: the platform numbers its queries itself)."""
    for entry in reversed(ctx.messages()):
        if entry.direction != "sent" or not entry.first_line.startswith("MESSAGE "):
            continue
        try:
            msg = decode(parse(entry.data).body).message
        except (ParseError, DecodeError):
            continue
        if msg.ROOT == "Query" and cmd == msg.CMD:
            return msg.sn
    return None


@case(
    "D-POS-02",
    "Device side: one-shot MobilePosition query (practice)",
    grade="D",
    clause_2016="A.2",
    clause_2022="A.2.5.6",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def mobile_position_query(ctx: Context) -> None:
    """Steps: the suite's platform sends ``Query/MobilePosition`` by MESSAGE for the target
    (below a gateway: for the first suite device) and waits 5 s for the answer, a
    ``Notify/MobilePosition`` MESSAGE (wvp practice; the standard defines the Query body only
    for a subscription).

    Pass: the answer carries our SN and the queried DeviceID, and a position as D-POS-01 asks
    (either form, Time our clock's, ranges; a SumNum, if the flat form carries one, is 1).
    Below a gateway: the position is the one the device answered with. Skipped when no
    answer comes or the query is refused (practice, not a rule)."""
    h = ctx.harness
    platform = h.need_platform()
    target = _device(ctx)
    before = len(platform.messages)  # MESSAGE bodies other than Responses and alarms
    query = MobilePositionQuery(sn=0, device_id=target)
    task = asyncio.get_running_loop().create_task(
        platform.query(h.lower_id, query, timeout=5.0, idle=5.0)
    )

    def answers() -> list[MobilePositionNotify]:
        return [m for m in platform.messages[before:] if isinstance(m, MobilePositionNotify)]

    try:
        await until(lambda: bool(answers()) or task.done(), 6.0)
        received = time.time()
        await asyncio.sleep(0.05)  # the query's own 200, when the answer overtook it
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sn = _sent_sn(ctx, "MobilePosition")
    got = answers()
    if not got:
        res = task.result() if not task.cancelled() else None
        status = res.status if res is not None else 0
        line = refusal_line(ctx, status) if status >= 300 else None
        ctx.skip("no Notify/MobilePosition answered the one-shot query (practice, not a rule): "
                 + (line or f"the MESSAGE got {status or 'no final response'}"))  # fmt: skip
    answer = got[0]
    ctx.step(f"Query/MobilePosition SN {sn}: Notify/MobilePosition SN {answer.sn} with "
             f"{_points(answer)}")  # fmt: skip
    ctx.expect_equal(answer.sn, sn, "SN of the Notify/MobilePosition answer (the query's)")
    ctx.expect_equal(answer.device_id, target, "DeviceID of the Notify/MobilePosition answer")
    fail_problems(ctx, "the position answered", position_problems(answer, None, received))
    if h.role == "gateway":
        _expect_relayed(ctx, "the position", "MobilePosition", target, _points(answer), _points)


# -- 2022 queries: cruise tracks, PTZ position, SD cards (reference §3.9) -----------------------
def _tracks(msg: Any) -> tuple[Any, ...]:
    """SumNum and (Number, Name) of each track of a CruiseTrackList answer."""
    return (msg.sum_num, [(t.number, t.name) for t in msg.items])


def _track(msg: Any) -> tuple[Any, ...]:
    """Number, Name, SumNum and (PresetIndex, StayTime, Speed) of each point of a
    CruiseTrack answer."""
    points = [(p.preset_index, p.stay_time, p.speed) for p in msg.items]
    return (msg.number, msg.name, msg.sum_num, points)


def _ptz(msg: Any) -> tuple[Any, ...]:
    """The six PTZPosition fields."""
    return (msg.pan, msg.tilt, msg.zoom, msg.horizontal_field_angle, msg.vertical_field_angle,
            msg.max_view_distance)  # fmt: skip


def _cards(msg: Any) -> tuple[Any, ...]:
    """SumNum and the fields of each card of an SDCardStatus answer."""
    cards = [(c.id, c.hdd_name, c.status, c.format_progress, c.capacity, c.free_space)
             for c in msg.items]  # fmt: skip
    return (msg.sum_num, cards)


@case(
    "N-CRUISE-01",
    "Device side: cruise track list and cruise track queries",
    grade="2022",
    clause_2016="",
    clause_2022="9.5, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def cruise_tracks(ctx: Context) -> None:
    """Steps: ``CruiseTrackListQuery`` to the first video channel, then ``CruiseTrackQuery``
    with the ``Number`` of each track listed (at most 4).

    Pass: each Response has our SN, the channel's ID, Result OK when present (403/405/489/501
    or Result ERROR: skipped, not supported). The list: SumNum = tracks = ``CruiseTrackList
    Num``, every track a distinct Number 0..255 (the cruise group byte of A.3) and a Name. Each
    track: the Number asked, the list's Name, SumNum = points = ``CruisePointList Num``, every
    point a PresetIndex 1..255, a StayTime >= 0 and a Speed 1..15. An empty list passes (no
    track to query). Below a gateway: the device got the queries for its channel, Number
    unchanged, and each answer relayed is the device's (SumNum, tracks, points)."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    before = len(below[0].queries) if below else 0
    lst, res = await _ask(ctx, CruiseTrackListQuery(sn=0, device_id=channel),
                          "CruiseTrackListQuery")  # fmt: skip
    assert isinstance(lst, CruiseTrackListResponse)
    ctx.step(f"CruiseTrackListQuery: SumNum {lst.sum_num}, "
             f"tracks {[(t.number, t.name) for t in lst.items]}")  # fmt: skip
    problems = _count_problems(res, lst.sum_num, len(lst.items), "CruiseTrackList", "CruiseTrack")
    numbers: list[int] = []
    for n, track in enumerate(lst.items, 1):
        if track.number is None:
            problems.append(f"track {n}: no Number")
        elif not 0 <= track.number <= 255:
            problems.append(f"track {n}: Number {track.number} (0..255)")
        elif track.number in numbers:
            problems.append(f"track {n}: Number {track.number} listed twice")
        else:
            numbers.append(track.number)
        if track.name is None:
            problems.append(f"track {n}: no Name")
    fail_problems(ctx, "CruiseTrackListQuery", problems)
    if below is not None:
        _expect_relayed(ctx, "CruiseTrackList", lst.CMD, below[1], _tracks(lst), _tracks)
    names = {t.number: t.name for t in lst.items}
    for number in numbers[:4]:
        what = f"CruiseTrackQuery {number}"
        answer, res = await _ask(ctx, CruiseTrackQuery(sn=0, device_id=channel, number=number),
                                 what)  # fmt: skip
        assert isinstance(answer, CruiseTrackResponse)
        ctx.step(f"{what}: {answer.name!r}, SumNum {answer.sum_num}, points "
                 f"{[(p.preset_index, p.stay_time, p.speed) for p in answer.items]}")  # fmt: skip
        problems = _count_problems(res, answer.sum_num, len(answer.items), "CruisePointList",
                                   "CruisePoint")  # fmt: skip
        if answer.number != number:
            problems.append(f"Number {answer.number}, {number} was asked")
        if answer.name != names[number]:
            problems.append(f"Name {answer.name!r}, the list calls track {number} "
                            f"{names[number]!r}")  # fmt: skip
        for n, p in enumerate(answer.items, 1):
            if p.preset_index is None or not 1 <= p.preset_index <= 255:
                problems.append(f"point {n}: PresetIndex {p.preset_index} (1..255)")
            if p.stay_time is None or p.stay_time < 0:
                problems.append(f"point {n}: StayTime {p.stay_time} (seconds, >= 0)")
            if p.speed is None or not 1 <= p.speed <= 15:
                problems.append(f"point {n}: Speed {p.speed} (1..15)")
        fail_problems(ctx, what, problems)
        if below is not None:
            _expect_relayed(ctx, what, answer.CMD, below[1], _track(answer), _track)
    if not numbers:
        ctx.step("no cruise track configured: no CruiseTrackQuery to send")
    if below is not None:
        dev, local = below
        got = [(q.CMD, q.device_id, getattr(q, "number", None))
               for q in dev.queries[before:]
               if q.CMD in ("CruiseTrackListQuery", "CruiseTrackQuery")]  # fmt: skip
        want: list[tuple[str, str, int | None]] = [("CruiseTrackListQuery", local, None)]
        want += [("CruiseTrackQuery", local, number) for number in numbers[:4]]
        ctx.expect_equal(got, want, "the queries at the device (CmdType, DeviceID, Number)")


def _ptz_position_problems(answer: PtzPositionResponse) -> list[str]:
    out = []
    for name, value, low, high in (
        ("Pan", answer.pan, 0.0, 360.0),
        ("Tilt", answer.tilt, -90.0, 90.0),
        ("Zoom", answer.zoom, 1.0, math.inf),
        ("HorizontalFieldAngle", answer.horizontal_field_angle, 0.0, 360.0),
        ("VerticalFieldAngle", answer.vertical_field_angle, 0.0, 180.0),
        ("MaxViewDistance", answer.max_view_distance, 0.0, math.inf),
    ):
        if value is None:
            out.append(f"no {name}")
        elif not _in_range(value, low, high):
            out.append(f"{name} {value} outside {low:g}..{high:g}")
    for name, value in (
        ("HorizontalFieldAngle", answer.horizontal_field_angle),
        ("VerticalFieldAngle", answer.vertical_field_angle),
    ):
        if value is not None and value == 0:
            out.append(f"{name} 0 (a field of view is wider than nothing)")
    return out


async def _ptz_position(ctx: Context, channel: str, what: str) -> PtzPositionResponse:
    answer, _ = await _ask(ctx, PtzPositionQuery(sn=0, device_id=channel), what)
    assert isinstance(answer, PtzPositionResponse)
    fail_problems(ctx, what, _ptz_position_problems(answer))
    return answer


@case(
    "N-PTZPOS-01",
    "Device side: PTZPosition query",
    grade="2022",
    clause_2016="",
    clause_2022="9.5, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def ptz_position(ctx: Context) -> None:
    """Steps: ``Query/PTZPosition`` to the first video channel.

    Pass: the Response has our SN, the channel's ID, Result OK when present (403/405/489/501 or
    Result ERROR: skipped, a camera without PTZ), and all six fields: Pan 0..360, Tilt
    -90..90, Zoom >= 1, HorizontalFieldAngle in (0, 360], VerticalFieldAngle in (0, 180],
    MaxViewDistance >= 0. Below a gateway: the device got the query for its channel and the
    six values relayed are the ones it answered."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    before = len(below[0].queries) if below else 0
    answer = await _ptz_position(ctx, channel, "PTZPosition")
    ctx.step(f"PTZPosition: pan {answer.pan}, tilt {answer.tilt}, zoom {answer.zoom}, field "
             f"{answer.horizontal_field_angle}x{answer.vertical_field_angle}, view "
             f"{answer.max_view_distance}")  # fmt: skip
    if below is not None:
        dev, local = below
        got = [q.device_id for q in dev.queries[before:] if q.CMD == "PTZPosition"]
        ctx.expect_equal(got, [local], "PTZPosition queries at the device (DeviceID)")
        _expect_relayed(ctx, "PTZPosition", answer.CMD, local, _ptz(answer), _ptz)


def _near(answer: PtzPositionResponse, want: PtzPrecise) -> bool:
    def close(a: float | None, b: float | None, tolerance: float, wrap: bool = False) -> bool:
        if a is None or b is None:
            return False
        diff = abs(a - b)
        if wrap:
            diff = min(diff, 360.0 - diff)
        return diff <= tolerance

    return (
        close(answer.pan, want.pan, ANGLE_TOLERANCE, wrap=True)
        and close(answer.tilt, want.tilt, ANGLE_TOLERANCE)
        and close(answer.zoom, want.zoom, ZOOM_TOLERANCE)
    )


@case(
    "N-PPTZ-01",
    "Device side: precise PTZ (PTZPreciseCtrl) seen in PTZPosition",
    grade="2022",
    clause_2016="",
    clause_2022="9.3, 9.5, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def precise_ptz(ctx: Context) -> None:
    """Steps: ``Query/PTZPosition`` to the first video channel; ``DeviceControl`` with
    ``PTZPreciseCtrl`` Pan 123.45, Tilt 10.0, Zoom 4.0 (or 234.5, 20.0, 2.0 when the camera is
    already there); ``PTZPosition`` again every 0.5 s until it gets there (at most 6 s; 2 s
    when the position has not changed at all: the dome is not moving); finally the first
    position is set back.

    Pass: the queries pass as in N-PTZPOS-01 (403/405/489/501 or Result ERROR: skipped, no
    PTZ); the control is answered 200 (no application answer; 403/405/489/501: skipped); the
    position reported comes within 0.5° of Pan and Tilt and 0.1 of Zoom. Below a gateway: the
    device got the PTZPreciseCtrl for its channel with the values sent."""
    h = ctx.harness
    platform = h.need_platform()
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    start = await _ptz_position(ctx, channel, "PTZPosition before")
    ctx.step(f"PTZPosition before: pan {start.pan}, tilt {start.tilt}, zoom {start.zoom}")
    want = PtzPrecise(pan=123.45, tilt=10.0, zoom=4.0)
    if _near(start, want):
        want = PtzPrecise(pan=234.5, tilt=20.0, zoom=2.0)
    msg = DeviceControl(sn=0, device_id=channel, ptz_precise_ctrl=want)
    controls = len(below[0].controls) if below else 0
    try:
        res = await platform.query(h.lower_id, msg, timeout=10.0, idle=10.0)
        _unsupported(ctx, "PTZPreciseCtrl", res.status)
        ctx.check(200 <= res.status < 300, "PTZPreciseCtrl: the control MESSAGE was refused",
                  expected="200 OK (or 403/405/489/501 when not supported)",
                  seen=refusal_line(ctx, res.status) or res.status
                  or "no final response")  # fmt: skip
        ctx.step(f"PTZPreciseCtrl pan {want.pan}, tilt {want.tilt}, zoom {want.zoom}: 200")
        if below is not None:
            dev, local = below
            got = await until(lambda: len(dev.controls) > controls, 5.0)
            ctx.check(got, "PTZPreciseCtrl did not reach the device below in 5 s")
            last = dev.controls[-1]
            ctx.expect_equal((last.device_id, last.ptz_precise_ctrl), (local, want),
                             "PTZPreciseCtrl at the device (DeviceID, Pan/Tilt/Zoom)")  # fmt: skip
        loop = asyncio.get_running_loop()
        began = loop.time()
        before = (start.pan, start.tilt, start.zoom)
        while True:
            now = await _ptz_position(ctx, channel, "PTZPosition after PTZPreciseCtrl")
            elapsed = loop.time() - began
            seen = (now.pan, now.tilt, now.zoom)
            still = seen == before and elapsed >= PTZ_STILL  # never started to move
            if _near(now, want) or still or elapsed >= PTZ_SETTLE:
                break
            await asyncio.sleep(0.5)
        ctx.step(f"PTZPosition after {elapsed:.1f} s: pan {now.pan}, tilt {now.tilt}, "
                 f"zoom {now.zoom}")  # fmt: skip
        ctx.check(_near(now, want), "PTZPosition does not reflect PTZPreciseCtrl "
                  + (f"(unchanged after {elapsed:.1f} s)" if still
                     else f"within {PTZ_SETTLE:g} s")
                  + f" (tolerance {ANGLE_TOLERANCE}°, zoom {ZOOM_TOLERANCE})",
                  expected=(want.pan, want.tilt, want.zoom), seen=seen)  # fmt: skip
    finally:
        if None not in (start.pan, start.tilt, start.zoom):
            back = PtzPrecise(pan=start.pan, tilt=start.tilt, zoom=start.zoom)
            with contextlib.suppress(Exception):
                await platform.query(
                    h.lower_id, DeviceControl(sn=0, device_id=channel, ptz_precise_ctrl=back),
                    timeout=5.0, idle=0.1,
                )  # fmt: skip


@case(
    "N-SD-01",
    "Device side: SD card status query",
    grade="2022",
    clause_2016="",
    clause_2022="9.5, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def sd_card_status(ctx: Context) -> None:
    """Steps: ``Query/SDCardStatus`` to the target device (below a gateway: to the first suite
    device).

    Pass: the Response has our SN, the device's ID, Result OK when present (403/405/489/501 or
    Result ERROR: skipped, no card support); SumNum = cards = ``SDCardStatusInfo Num`` (0 with
    no card); each card: a distinct ID >= 1 (FormatSDCard numbers cards from 1, 0 = all), an
    HddName, Status ok/formatting/unformatted/idle/error, FormatProgress 0..100, Capacity and
    FreeSpace (MB) >= 0 with FreeSpace <= Capacity. Below a gateway: the device got the
    query and the answer relayed is its own (SumNum and every card's fields)."""
    h = ctx.harness
    target = _device(ctx)
    before = len(h.devices[0].queries) if h.role == "gateway" else 0
    answer, res = await _ask(ctx, SDCardStatusQuery(sn=0, device_id=target), "SDCardStatus")
    assert isinstance(answer, SDCardStatusResponse)
    cards = [(c.id, c.hdd_name, c.status, c.capacity, c.free_space) for c in answer.items]
    ctx.step(f"SDCardStatus: SumNum {answer.sum_num}, cards {cards}")
    problems = _count_problems(res, answer.sum_num, len(answer.items), "SDCardStatusInfo", "Item")
    ids: list[int] = []
    for n, card in enumerate(answer.items, 1):
        where = f"card {n}"
        if card.id is None or card.id < 1:
            problems.append(f"{where}: ID {card.id} (cards are numbered from 1)")
        elif card.id in ids:
            problems.append(f"{where}: ID {card.id} listed twice")
        else:
            ids.append(card.id)
        if not (card.hdd_name or "").strip():
            problems.append(f"{where}: no HddName")
        if (card.status or "").strip().lower() not in SD_STATUSES:
            problems.append(f"{where}: Status {card.status!r} (one of {', '.join(SD_STATUSES)})")
        if card.format_progress is None or not 0 <= card.format_progress <= 100:
            problems.append(f"{where}: FormatProgress {card.format_progress} (0..100)")
        for name, value in (("Capacity", card.capacity), ("FreeSpace", card.free_space)):
            if value is None or not _in_range(value, 0.0, math.inf):
                problems.append(f"{where}: {name} {value} (MB, >= 0)")
        cap, free = card.capacity, card.free_space
        if cap is not None and free is not None and _finite(cap) and _finite(free) and free > cap:
            problems.append(f"{where}: FreeSpace {card.free_space} above Capacity {card.capacity}")
    fail_problems(ctx, "SDCardStatus", problems)
    if h.role == "gateway":
        got = [q.device_id for q in _queries_below(ctx, "SDCardStatus", before)]
        ctx.expect_equal(got, [target], "SDCardStatus queries at the device (DeviceID)")
        _expect_relayed(ctx, "SDCardStatus", answer.CMD, target, _cards(answer), _cards)


@case(
    "N-SNAP-01",
    "Device side: snapshot configuration read (ConfigDownload SnapShotConfig)",
    grade="2022",
    clause_2016="",
    clause_2022="9.5, 9.14, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def snapshot_config(ctx: Context) -> None:
    """Steps: ``Query/ConfigDownload`` with ``ConfigType SnapShotConfig`` to the first video
    channel.

    Pass: the Response has our SN, the channel's ID, Result OK (403/405/489/501 or Result
    ERROR: skipped, no snapshot) and a ``SnapShot`` block (the ConfigDownload name of
    SnapShotConfig) with SnapNum 1..10 and Interval >= 1 (seconds); a SessionID, when there,
    is 32..128 letters, digits and '-'. Below a gateway: the device got the query for its
    channel and the block relayed is its own. (The snapshot itself — DeviceConfig
    SnapShotConfig, the upload, the UploadSnapShotFinished notification — is not tried.)"""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    before = len(below[0].queries) if below else 0
    query = ConfigDownloadQuery(sn=0, device_id=channel, config_type="SnapShotConfig")
    answer, _ = await _ask(ctx, query, "ConfigDownload SnapShotConfig")
    assert isinstance(answer, ConfigDownloadResponse)
    block = answer.snap_shot
    ctx.check(block is not None, "ConfigDownload SnapShotConfig: the Response has no SnapShot "
              "block")  # fmt: skip
    assert block is not None
    values = {c.tag: c.text for c in block.children}
    ctx.step(f"SnapShot: {values}")
    problems = []
    for name, low, high in (("SnapNum", 1, 10), ("Interval", 1, None)):
        text = block.get(name)
        if text is None:
            problems.append(f"no {name}")
        elif not text.strip().isdigit():
            problems.append(f"{name} {text!r} is not a whole number")
        elif int(text) < low or (high is not None and int(text) > high):
            problems.append(f"{name} {text} ({low}..{high if high is not None else ''})")
    session = block.get("SessionID")
    if session is not None and not (
        32 <= len(session) <= 128 and all(ch.isascii() and (ch.isalnum() or ch == "-")
                                           for ch in session)
    ):  # fmt: skip
        problems.append(f"SessionID {session!r} (32..128 letters, digits, '-')")
    fail_problems(ctx, "the SnapShot block", problems)
    if below is not None:
        dev, local = below
        got = [(q.device_id, getattr(q, "config_type", None))
               for q in dev.queries[before:] if q.CMD == "ConfigDownload"]  # fmt: skip
        ctx.expect_equal(got, [(local, "SnapShotConfig")],
                         "ConfigDownload at the device (DeviceID, ConfigType)")  # fmt: skip
        _expect_relayed(ctx, "the SnapShot block", answer.CMD, local, block,
                        lambda m: m.snap_shot)  # fmt: skip


__all__ = ["NOT_SUPPORTED", "position_problems", "subscribe_position"]
