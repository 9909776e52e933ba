"""What the cases share: the standard's formats as checks, and short ways to drive the target.

Each ``*_problems`` function returns what is wrong (empty when nothing is), so that a case can
report every problem of a message at once; the ``check_*`` functions fail the case with the
first problems, naming the rule and the clause.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from conformance.peers.platform import PlatformCall, QueryResult, RequestFailed
from conformance.suite.context import Context
from gateway.manscdp import xmlio
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.gbid import is_civil_code, is_gb_id, item_kind
from gateway.manscdp.messages import CatalogInfo, CatalogItem, DeviceControl, Message
from gateway.media.sdp import Sdp
from gateway.sip.errors import ParseError
from gateway.sip.message import Request, Response, parse

# yyyy-MM-ddTHH:mm:ss with optional .SSS (reference §2.4; Date of the REGISTER 200).
GB_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?$")
# yyyy-MM-ddTHH:mm:ss (MANSCDP times: DeviceTime, StartTime, AlarmTime...).
GB_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
CLOCK_TOLERANCE = 10.0  # seconds a synchronised clock may be off
MANSCDP_TYPE = "application/manscdp+xml"
MAX_UDP_REQUEST = 1300  # RFC 3261 §18.1.1: larger requests (MTU unknown) go over TCP
GB_CHARSETS = ("GB2312", "GBK", "GB18030")
MAC = re.compile(r"^[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}$")
# Catalog item fields compared one by one when the suite knows what a device sent.
ITEM_FIELDS = tuple(f.name for f in fields(CatalogItem) if f.name not in ("event", "extra"))
INFO_FIELDS = tuple(f.name for f in fields(CatalogInfo) if f.name != "extra")


def short(values: Sequence[Any], limit: int = 5) -> str:
    """The first ``limit`` values, and how many more."""
    head = ", ".join(str(v) for v in values[:limit])
    more = len(values) - limit
    return head + (f" (and {more} more)" if more > 0 else "")


def fail_problems(ctx: Context, what: str, problems: Sequence[str]) -> None:
    """Fail with ``what`` and the problems (when there are any)."""
    if problems:
        ctx.fail(
            f"{what}: "
            + "; ".join(problems[:8])
            + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
        )


# -- time (reference §2.4) ---------------------------------------------------------------------
def parse_gb_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def clock_problem(value: datetime, received_at: float | None = None) -> str | None:
    """Whether a wall-clock reading (local time of some zone, no zone written) agrees with
    ours: it may differ from UTC by a whole number of quarter hours (any zone, Beijing time
    included) plus at most :data:`CLOCK_TOLERANCE` seconds."""
    now = datetime.fromtimestamp(received_at if received_at is not None else time.time())
    utc_now = datetime.utcfromtimestamp(now.timestamp())
    delta = (value - utc_now).total_seconds()
    quarter = 15 * 60
    zone = round(delta / quarter) * quarter
    off = delta - zone
    if abs(zone) > 14 * 3600 or abs(off) > CLOCK_TOLERANCE:
        return (
            f"{value.isoformat()} is {off:+.1f} s from our clock in any time zone "
            f"(our UTC time {utc_now.isoformat(timespec='seconds')})"
        )
    return None


def date_problems(value: str | None, received_at: float | None = None) -> list[str]:
    """``Date`` of a REGISTER 200: ``yyyy-MM-ddTHH:mm:ss.SSS`` (the milliseconds optional),
    a real time, and the clock right."""
    if value is None:
        return ["no Date header (GB/T 28181 §9.10: the 200 OK to REGISTER carries the time)"]
    text = value.strip()
    if not GB_DATE.match(text):
        return [f"Date {text!r} is not yyyy-MM-ddTHH:mm:ss[.SSS] (not RFC 1123, reference §2.4)"]
    when = parse_gb_time(text)
    if when is None:
        return [f"Date {text!r} is not a real time"]
    problem = clock_problem(when, received_at)
    return [f"Date {problem}"] if problem else []


# -- SSRC (reference §6.4) ---------------------------------------------------------------------
def ssrc_problems(value: str | None, *, history: bool, domain: str | None) -> list[str]:
    """``y=``: 10 digits; digit 1 ``0`` live / ``1`` history; digits 2–6 = digits 4–8 of the
    issuing domain (when known)."""
    if value is None:
        return ["no y= (SSRC)"]
    if len(value) != 10 or not (value.isascii() and value.isdigit()):
        return [f"y={value} is not 10 decimal digits"]
    out = []
    want = "1" if history else "0"
    if value[0] != want:
        kind = "history" if history else "live"
        out.append(f"y={value}: first digit {value[0]}, {want} for {kind}")
    if domain:
        digits = "".join(ch for ch in domain if ch.isdigit())
        if len(digits) >= 8 and value[1:6] != digits[3:8]:
            out.append(
                f"y={value}: digits 2-6 are {value[1:6]}, expected {digits[3:8]} "
                f"(digits 4-8 of the domain {domain})"
            )
    return out


# -- SIP and MANSCDP bytes ---------------------------------------------------------------------
def sip_body(raw: bytes) -> bytes:
    """The body of a SIP message as received (empty when it cannot be parsed)."""
    try:
        return parse(raw).body
    except ParseError:
        _, _, body = raw.partition(b"\r\n\r\n")
        return body


def charset_problem(body: bytes) -> str | None:
    """The declared charset against the bytes (reference §8.3): a GB declaration over UTF-8
    bytes, or bytes that are neither."""
    try:
        parsed = xmlio.parse(body)
    except DecodeError as exc:
        return f"body is not MANSCDP XML: {exc}"
    declared, actual = parsed.declared, parsed.charset
    if "replacement characters" in " ".join(parsed.repairs):
        return f"bytes decode in no charset ({', '.join(parsed.repairs)})"
    if actual is None:  # pure ASCII fits every declaration
        return None
    if declared in GB_CHARSETS and actual == "UTF-8":
        return f'declares encoding="{declared}" but the bytes are UTF-8'
    if declared in ("UTF-8", "UTF8") and actual != "UTF-8":
        return f'declares encoding="{declared}" but the bytes are {actual}'
    if declared is None and actual == "UTF-8":
        return "declares no encoding (GB 2312/GB 18030 is assumed) but the bytes are UTF-8"
    return None


def list_num_problem(body: bytes, list_tag: str) -> str | None:
    """``<DeviceList Num="n">`` (or RecordList...) against the number of ``Item`` children."""
    try:
        root = xmlio.parse(body).root
    except DecodeError as exc:
        return f"body is not XML: {exc}"
    low = list_tag.lower()
    for child in root:
        if isinstance(child.tag, str) and child.tag.lower() == low:
            items = [c for c in child if isinstance(c.tag, str) and c.tag.lower() == "item"]
            num = child.get("Num") or child.get("num")
            if num is None:
                return f"<{list_tag}> has no Num attribute"
            if not num.strip().isdigit() or int(num) != len(items):
                return f'<{list_tag} Num="{num}"> holds {len(items)} items'
            return None
    return None


def element_texts(body: bytes, tag: str) -> list[str]:
    """Texts of every element named ``tag`` (any depth, any case)."""
    try:
        root = xmlio.parse(body).root
    except DecodeError:
        return []
    low = tag.lower()
    return [
        (el.text or "").strip()
        for el in root.iter()
        if isinstance(el.tag, str) and el.tag.lower() == low
    ]


def refusal_line(ctx: Context, status: int) -> str | None:
    """The status line of the latest ``status`` response the suite received in this case (its
    reason phrase often says why)."""
    prefix = f"SIP/2.0 {status}"
    for entry in reversed(ctx.messages()):
        if entry.direction == "received" and entry.first_line.startswith(prefix):
            return entry.first_line
    return None


def content_type_ok(req: Request | Response) -> bool:
    value = (req.content_type or "").partition(";")[0].strip().lower()
    return value == MANSCDP_TYPE


# -- catalog items (reference §1.4, §3.2) -----------------------------------------------------
def _parent_ok(value: str) -> bool:
    parts = [p.strip() for p in value.split("/")]
    return all(is_gb_id(p) or is_civil_code(p) for p in parts) and bool(parts)


FREE_TEXT = frozenset({"manufacturer", "model", "owner", "address", "block"})


def item_elements(raws: Iterable[bytes], list_tag: str = "DeviceList") -> dict[str, set[str]]:
    """For each item of the answers' raw SIP messages: the element names it carries (lower
    case), empty ones included: a mandatory free-text element may be present and empty."""
    out: dict[str, set[str]] = {}
    low = list_tag.lower()
    for raw in raws:
        try:
            root = xmlio.parse(sip_body(raw)).root
        except DecodeError:
            continue
        for lst in root:
            if not (isinstance(lst.tag, str) and lst.tag.lower() == low):
                continue
            for item in lst:
                tags = {c.tag.lower() for c in item if isinstance(c.tag, str)}
                ident = next(
                    ((c.text or "").strip() for c in item
                     if isinstance(c.tag, str) and c.tag.lower() == "deviceid"),
                    "",
                )  # fmt: skip
                out.setdefault(ident, set()).update(tags)
    return out


def item_problems(item: CatalogItem, edition: str, present: set[str] | None = None) -> list[str]:
    """What the standard requires of one catalog item, by its kind. ``present`` (the element
    names the item carried, from :func:`item_elements`) lets a mandatory free-text element
    be present and empty."""
    out: list[str] = []
    iid = item.device_id
    where = f"item {iid}"
    if not (is_gb_id(iid) or is_civil_code(iid)):
        return [f"{where}: DeviceID is neither 20 digits nor a 2/4/6/8-digit region code"]
    if not (item.name or "").strip():
        out.append(f"{where}: no Name")
    kind = item_kind(iid)
    if kind == "region":
        return out
    if kind == "virtual_org" and not item.group_id:
        out.append(f"{where}: virtual organisation without BusinessGroupID")
    if kind == "virtual_org" and edition == "2022" and not item.business_group_id:
        out.append(f"{where}: BusinessGroupID belongs at item level in 2022 (not in Info)")
    if kind in ("business_group", "virtual_org"):
        return out
    required = ["manufacturer", "model", "civil_code", "address", "register_way", "secrecy",
                "status"]  # fmt: skip
    if kind in ("device", "channel"):
        required += ["parental", "parent_id"]
        if edition == "2016":
            required.append("owner")
    for name in required:
        if getattr(item, name) is not None:
            continue
        if name in FREE_TEXT and present is not None and _tag(name).lower() in present:
            continue  # there, and empty
        out.append(f"{where}: no {_tag(name)} (mandatory)")
    if item.civil_code is not None and not is_civil_code(item.civil_code.strip()):
        out.append(f"{where}: CivilCode {item.civil_code!r} is not a 2/4/6/8-digit region code")
    if item.parental is not None and item.parental not in (0, 1):
        out.append(f"{where}: Parental {item.parental} (0 or 1)")
    if item.parent_id is not None and not _parent_ok(item.parent_id):
        out.append(f"{where}: ParentID {item.parent_id!r} is not a '/'-list of IDs")
    ways = (1, 2, 3, 4) if edition == "2022" else (1, 2, 3)
    if item.register_way is not None and item.register_way not in ways:
        out.append(f"{where}: RegisterWay {item.register_way} (one of {ways})")
    if item.secrecy is not None and item.secrecy not in (0, 1):
        out.append(f"{where}: Secrecy {item.secrecy} (0 or 1)")
    if item.status is not None and item.status not in ("ON", "OFF"):
        out.append(f"{where}: Status {item.status!r} (ON or OFF)")
    if item.safety_way is not None and item.safety_way not in (0, 2, 3, 4):
        out.append(f"{where}: SafetyWay {item.safety_way} (0, 2, 3 or 4)")
    for name, low, high in (("longitude", -180, 180), ("latitude", -90, 90)):
        value = getattr(item, name)
        if value is not None and not low <= value <= high:
            out.append(f"{where}: {_tag(name)} {value} out of range")
    info = item.info
    if info is not None and info.ptz_type is not None:
        types = range(1, 8) if edition == "2022" else range(1, 5)
        if info.ptz_type not in types:
            out.append(f"{where}: PTZType {info.ptz_type} (one of {list(types)})")
    return out


def item_2022_problems(item: CatalogItem) -> list[str]:
    """The 2022 catalog fields (2022 Annex A; reference §3.2): what a 2022 camera carries."""
    out: list[str] = []
    where = f"item {item.device_id}"
    info = item.info
    for removed in ("owner", "safety_way", "cert_num", "certifiable", "err_code", "end_time"):
        if getattr(item, removed) is not None:
            out.append(f"{where}: {_tag(removed)} was removed in 2022")
    if info is None:
        return [*out, f"{where}: no Info (GrassrootsCode is mandatory in 2022)"]
    if info.position_type is not None or info.use_type is not None:
        out.append(f"{where}: Info/PositionType and UseType were removed in 2022")
    code = (info.grassroots_code or "").strip()
    if not (len(code) == 6 and code.isdigit()):
        out.append(f"{where}: Info/GrassrootsCode {info.grassroots_code!r} (6 digits, mandatory)")
    if info.point_type is not None and info.point_type not in (1, 2, 3, 9):
        out.append(f"{where}: Info/PointType {info.point_type} (1, 2, 3 or 9)")
    if info.mac is not None and not MAC.match(info.mac.strip()):
        out.append(f"{where}: Info/MAC {info.mac!r} is not xx-xx-xx-xx-xx-xx")
    if info.stream_number_list is not None and not re.fullmatch(
        r"\d+(/\d+)*", info.stream_number_list.strip()
    ):
        out.append(f"{where}: Info/StreamNumberList {info.stream_number_list!r} is not n/n/...")
    if info.supply_light_type is not None and info.supply_light_type not in (1, 2, 3, 4, 9):
        out.append(f"{where}: Info/SupplyLightType {info.supply_light_type}")
    if info.business_group_id is not None:
        out.append(f"{where}: Info/BusinessGroupID moved to item level in 2022")
    return out


def _tag(name: str) -> str:
    """The element name of a CatalogItem field (``civil_code`` → ``CivilCode``)."""
    for f in fields(CatalogItem):
        if f.name == name and "gb" in f.metadata:
            return str(f.metadata["gb"][0])
    return name


def item_differences(sent: CatalogItem, seen: CatalogItem, ignore: Iterable[str] = ()) -> list[str]:
    """Fields of ``seen`` that differ from what the device ``sent`` (Info compared child by
    child); ``ignore`` names fields a relay legitimately rewrites."""
    skip = set(ignore)
    out = []
    for name in ITEM_FIELDS:
        if name in skip or name == "info":
            continue
        a, b = getattr(sent, name), getattr(seen, name)
        if a != b:
            out.append(f"{_tag(name)} {b!r} (sent {a!r})")
    if "info" not in skip:
        ia, ib = sent.info, seen.info
        for name in INFO_FIELDS:
            a = getattr(ia, name) if ia is not None else None
            b = getattr(ib, name) if ib is not None else None
            if a != b:
                out.append(f"Info/{name} {b!r} (sent {a!r})")
    return out


# -- multi-part answers (2022 Annex M; reference §3.3) ----------------------------------------
def multi_problems(res: QueryResult, list_tag: str, target: str) -> list[str]:
    """A Catalog or RecordInfo answer: every part with our SN and the queried DeviceID, the same
    SumNum, ``Num`` right, no item twice, ``SumNum`` distinct items in all."""
    out: list[str] = []
    cmd = res.request.CMD
    sn = res.request.sn
    if not 200 <= res.status < 300:
        return [f"the query MESSAGE got {res.status or 'no final response'}"]
    if not res.responses:
        return [f"no Response/{cmd} came"]
    sums = {getattr(r, "sum_num", None) for r in res.responses}
    if None in sums:
        out.append("a part has no SumNum")
    if len(sums - {None}) > 1:
        out.append(f"the parts disagree on SumNum: {sorted(s for s in sums if s is not None)}")
    for n, r in enumerate(res.responses):
        if r.sn != sn:
            out.append(f"part {n + 1}: SN {r.sn}, the query's is {sn}")
        if r.device_id != target:
            out.append(f"part {n + 1}: DeviceID {r.device_id}, the query named {target}")
    seen_total = sum(len(getattr(r, "items", ())) for r in res.responses)
    if seen_total != len(res.items):
        out.append(f"{seen_total - len(res.items)} items came twice")
    for n, raw in enumerate(res.raw):
        problem = list_num_problem(sip_body(raw), list_tag)
        if problem:
            out.append(f"part {n + 1}: {problem}")
    if res.sum_num is not None and res.sum_num != len(res.items):
        out.append(
            f"SumNum says {res.sum_num} items, {len(res.items)} distinct items arrived"
            + (" (parts missing, or SumNum wrong)" if res.partial else "")
        )
    elif res.partial:
        out.append(f"the answer did not complete ({len(res.items)} items)")
    return out


# -- driving the target ------------------------------------------------------------------------
async def control(
    ctx: Context, msg: DeviceControl, what: str, *, timeout: float = 10.0
) -> Message | None:
    """Send a DeviceControl to the target (through the suite's platform); fail the case on a
    non-2xx; for sub-commands with an answer (RecordCmd...), fail unless ``Result OK`` came
    with our SN and DeviceID."""
    h = ctx.harness
    platform = h.need_platform()
    res = await platform.query(h.lower_id, msg, timeout=timeout, idle=timeout)
    ctx.check(
        200 <= res.status < 300,
        f"{what}: the control MESSAGE was refused",
        expected="200 OK",
        seen=res.status or "no final response",
    )
    if not msg.expects_response:
        return None
    ctx.check(bool(res.responses), f"{what}: no Response/DeviceControl in {timeout:g} s")
    answer = res.responses[0]
    ctx.expect_equal(getattr(answer, "result", None), "OK", f"{what}: Result")
    ctx.expect_equal(answer.sn, res.request.sn, f"{what}: SN of the Response")
    ctx.expect_equal(answer.device_id, msg.device_id, f"{what}: DeviceID of the Response")
    return answer


async def query_one(
    ctx: Context, msg: Message, what: str, *, timeout: float = 10.0
) -> tuple[Message, QueryResult]:
    """A query with a single Response: fail unless it came, with our SN and DeviceID."""
    h = ctx.harness
    res = await h.need_platform().query(h.lower_id, msg, timeout=timeout, idle=timeout)
    ctx.check(
        200 <= res.status < 300,
        f"{what}: the query MESSAGE was refused",
        expected="200 OK",
        seen=res.status or "no final response",
    )
    ctx.check(bool(res.responses), f"{what}: no Response/{msg.CMD} in {timeout:g} s")
    answer = res.responses[0]
    ctx.expect_equal(answer.sn, res.request.sn, f"{what}: SN of the Response")
    ctx.expect_equal(answer.device_id, msg.device_id, f"{what}: DeviceID of the Response")
    problem = charset_problem(sip_body(res.raw[0])) if res.raw else None
    ctx.check(problem is None, f"{what}: the Response's charset", seen=problem)
    return answer, res


async def invite(ctx: Context, channel: str, **kw: Any) -> PlatformCall:
    """INVITE a channel of the target; fail the case with the status when it is refused."""
    h = ctx.harness
    kw.setdefault("timeout", 10.0)
    try:
        return await h.need_platform().invite(h.lower_id, channel, **kw)
    except RequestFailed as exc:
        ctx.fail(
            f"INVITE {channel} ({kw.get('kind', 'Play')} over {kw.get('transport', 'udp')})"
            " was not answered 200",
            expected="200 OK",
            seen=f"{exc.status} {exc.reason}".strip() if exc.status else "no final response",
        )


def answer_problems(call: PlatformCall, kind: str) -> list[str]:
    """The 200's SDP (reference §6.2–§6.5): ``s=``, connection, port, direction, a PS or
    other standard payload, ``y=`` echoed, TCP setup opposite to ours."""
    out: list[str] = []
    answer = call.answer
    if answer is None:
        return ["the 200 OK has no SDP"]
    if answer.session.strip().lower() != kind.lower():
        out.append(f"s={answer.session}, expected s={kind}")
    if not answer.host:
        out.append("no c= address")
    if answer.media != "video":
        out.append(f"m={answer.media}, expected video")
    if answer.direction not in ("sendonly", None):
        out.append(f"a={answer.direction}, expected a=sendonly")
    names = {v.split("/")[0].upper() for v in answer.rtpmap.values()}
    if not names & {"PS", "MPEG4", "H264", "SVAC", "H265"}:
        out.append(f"no standard video payload in a=rtpmap ({answer.rtpmap})")
    tcp = call.transport != "udp"
    if answer.tcp != tcp:
        out.append(f"m= transport {answer.proto}, offered {call.offer.proto}")
    if tcp:
        wanted = "active" if call.transport == "tcp-passive" else "passive"
        if answer.setup != wanted:
            out.append(f"a=setup:{answer.setup}, expected a=setup:{wanted} (opposite of ours)")
    elif answer.port <= 0:
        out.append(f"m= port {answer.port}")
    if call.offered_ssrc is not None and answer.ssrc != call.offered_ssrc:
        out.append(f"y={answer.ssrc}, the offer's y={call.offered_ssrc} was not echoed")
    return out


def offer_problems(offer: Sdp, kind: str) -> list[str]:
    """An INVITE offer (the gateway's, seen at a device below): s=, c=, m=video, recvonly,
    PS payload."""
    out: list[str] = []
    if offer.session.strip().lower() != kind.lower():
        out.append(f"s={offer.session}, expected s={kind}")
    if not offer.host:
        out.append("no c= address")
    if offer.media != "video":
        out.append(f"m={offer.media}")
    if offer.direction != "recvonly":
        out.append(f"a={offer.direction}, expected a=recvonly")
    if not any(v.upper().startswith("PS/") for v in offer.rtpmap.values()):
        out.append(f"no a=rtpmap PS/90000 ({offer.rtpmap})")
    if kind != "Play" and not (offer.start or offer.stop):
        out.append("t= 0 0 for history (start and end times expected)")
    return out


async def frames(ctx: Context, call: PlatformCall, n: int, what: str, timeout: float = 10.0) -> int:
    """Wait until ``n`` frames decoded at our receiver; fail with what arrived otherwise."""
    got = await call.receiver.wait_frames(n, timeout=timeout)
    r = call.receiver
    ctx.check(
        got >= n,
        f"{what}: {got} frames decoded in {timeout:g} s ({r.packets} RTP packets, "
        f"{r.frames} PS frames, {r.decode_errors} decode errors"
        + (f", {r.error}" if r.error else "")
        + ")",
        expected=f">= {n} decoded frames",
        seen=got,
    )
    return got


async def end_call(call: PlatformCall) -> None:
    if not call.ended.is_set():
        try:
            await call.bye(timeout=5.0)
        except Exception:  # the target may be gone; the case has its verdict
            pass


def today_window(now: datetime | None = None) -> tuple[str, str]:
    """00:00:00 to 23:59:59 of today, as MANSCDP times."""
    day = (now or datetime.now()).replace(hour=0, minute=0, second=0, microsecond=0)
    end = day + timedelta(hours=23, minutes=59, seconds=59)
    return day.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")


def epoch(text: str) -> int:
    """A MANSCDP local time as UNIX seconds (SDP t=, reference §6.3)."""
    return int(datetime.fromisoformat(text).timestamp())


async def until(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    """Wait until ``predicate()`` holds; False after ``timeout`` (the case decides)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() >= end:
            return False
        await asyncio.sleep(step)
    return True
