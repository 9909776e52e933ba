"""Robustness: malformed SIP and MANSCDP, GB2312 and UTF-8 names, a large catalog.

Bad input must get an error answer or be ignored, never a success, and the target must keep
working afterwards (reference §8; design: "bad input from the network never escapes a
handler"). Names: 2016 says signalling should be GB 2312, 2022 shall be GB 18030; the
declaration must match the bytes (reference §8.3).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from conformance.suite.case import case
from conformance.suite.cases.common import (
    MAX_UDP_REQUEST,
    charset_problem,
    fail_problems,
    item_differences,
    query_one,
    short,
    sip_body,
)
from conformance.suite.context import Context
from gateway.manscdp.messages import DeviceInfoQuery
from gateway.sip.errors import TransactionTimeout, TransportError
from gateway.sip.transport import Peer

BOTH = ("2016", "2022")
LARGE = 500  # channels of the large device
ANSWER_WAIT = 0.5  # seconds to wait for an answer to a malformed message
VIA_PORT = 65001  # stands for the sending socket's port until it is known


def _malformed(
    ctx: Context, to_id: str, peer: Peer, via_host: str, via_port: int, proto: str
) -> list[tuple[str, bytes]]:
    """Broken SIP requests (RFC 3261 §7, §8.2: a 400 or silence are the right answers)."""
    o = ctx.options
    uri = f"sip:{to_id}@{peer.host}:{peer.port}"
    via = f"Via: SIP/2.0/{proto} {via_host}:{via_port};rport;branch=z9hG4bKbroken"
    base = [
        f"From: <sip:{o.suite_platform_id}@{o.suite_domain}>;tag=broken1",
        f"To: <{uri}>",
        "Call-ID: broken-call@conformance",
        "CSeq: 1 MESSAGE",
        "Max-Forwards: 70",
    ]

    def req(first: str, headers: list[str], body: bytes = b"", length: int | None = None) -> bytes:
        lines = [first, *headers, f"Content-Length: {len(body) if length is None else length}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    out = [
        ("bytes that are not SIP", b"\x00\xff\xfe GARBAGE \x01\x02\r\n\r\n"),
        ("no Call-ID and no CSeq", req(f"MESSAGE {uri} SIP/2.0", [via, *base[:2], base[4]])),
        ("a CSeq that is not a number",
         req(f"MESSAGE {uri} SIP/2.0", [via, *base[:3], "CSeq: abc MESSAGE", base[4]])),
        ("a header line without a colon",
         req(f"MESSAGE {uri} SIP/2.0", [via, *base, "this line is not a header"])),
        ("an unknown SIP version", req(f"MESSAGE {uri} SIP/7.0", [via, *base])),
        ("a From without a URI", req(f"MESSAGE {uri} SIP/2.0", [via, "From: ;tag=1", *base[1:]])),
    ]  # fmt: skip
    if proto == "UDP":
        out.append(("a Content-Length beyond the datagram",
                    req(f"MESSAGE {uri} SIP/2.0", [via, *base], b"<short/>", 500)))  # fmt: skip
    return out


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)


def _status(data: bytes) -> int | None:
    first = data.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"SIP/") and first[1].isdigit():
        return int(first[1])
    return None


async def _send_raw(
    peer: Peer, host: str, messages: list[tuple[str, bytes]]
) -> list[tuple[str, list[int]]]:
    """Send each message from a fresh socket; the statuses of what came back. The Via names
    that socket's real port (the messages are built with ``VIA_PORT``), so a target that
    ignores ``rport`` still answers where we listen."""
    loop = asyncio.get_running_loop()
    out = []
    placeholder = f":{VIA_PORT};".encode()
    for label, data in messages:
        if peer.transport == "udp":
            transport, proto = await loop.create_datagram_endpoint(_Collect, local_addr=(host, 0))
            try:
                local = transport.get_extra_info("sockname")[1]
                data = data.replace(placeholder, f":{local};".encode(), 1)
                transport.sendto(data, (peer.host, peer.port))
                await asyncio.sleep(ANSWER_WAIT)
                got = list(proto.got)
            finally:
                transport.close()
        else:
            got = []
            try:
                reader, writer = await asyncio.open_connection(peer.host, peer.port)
            except OSError:
                out.append((label, [-1]))
                continue
            try:
                local = writer.get_extra_info("sockname")[1]
                writer.write(data.replace(placeholder, f":{local};".encode(), 1))
                await writer.drain()
                with contextlib.suppress(TimeoutError, OSError):
                    chunk = await asyncio.wait_for(reader.read(65536), ANSWER_WAIT)
                    if chunk:
                        got.append(chunk)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        statuses = [s for s in (_status(g) for g in got) if s is not None]
        out.append((label, statuses))
    return out


async def _still_works(ctx: Context, what: str) -> None:
    """The target answers normal requests after the abuse."""
    h = ctx.harness
    if h.suite_is_platform:
        await query_one(ctx, DeviceInfoQuery(sn=0, device_id=h.lower_id),
                        f"DeviceInfo after {what}")  # fmt: skip
    if h.suite_has_devices:
        resp = await h.devices[0].keepalive()
        ctx.expect_equal(resp.status, 200, f"a keepalive after {what}")


@case(
    "R-SIP-01",
    "Malformed SIP is refused or ignored, and the target keeps working",
    grade="R",
    clause_2016="8.2 of RFC 3261",
    clause_2022="8.2 of RFC 3261",
    roles=("device", "platform", "gateway"),
    editions=BOTH,
)
async def malformed_sip(ctx: Context) -> None:
    """Steps: from a socket of its own the suite sends the target broken requests over the
    run's transport: bytes that are not SIP, a MESSAGE without Call-ID and CSeq, a CSeq that is
    not a number, a header line without a colon, an unknown SIP version, a From without a URI
    and (UDP) a Content-Length beyond the datagram; then it talks to the target normally.

    Pass: no broken request gets a 2xx (a 4xx/5xx or silence are both right); afterwards the
    target answers a DeviceInfo query (device side) and a suite device's keepalive (platform
    side)."""
    h = ctx.harness
    peer = h.target_peer
    proto = "UDP" if peer.transport == "udp" else "TCP"
    host = ctx.options.local_host
    messages = _malformed(ctx, h.lower_id, peer, host, VIA_PORT, proto)
    results = await _send_raw(peer, host, messages)
    for label, statuses in results:
        ctx.step(f"{label}: {statuses or 'no answer'}")
    accepted = [f"{label} -> {s}" for label, statuses in results for s in statuses
                if 200 <= s < 300]  # fmt: skip
    ctx.check(not accepted, "a malformed request was accepted: " + "; ".join(accepted))
    await _still_works(ctx, "malformed SIP")


BAD_BODIES: tuple[tuple[str, str], ...] = (
    ("not XML", "this is not XML <Query>"),
    ("no CmdType", '<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n<SN>901</SN>\r\n'
     "<DeviceID>{id}</DeviceID>\r\n</Query>\r\n"),
    ("an unknown CmdType", '<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n'
     "<CmdType>NoSuchCommand</CmdType>\r\n<SN>902</SN>\r\n<DeviceID>{id}</DeviceID>\r\n"
     "</Query>\r\n"),
    ("an SN that is not a number", '<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n'
     "<CmdType>Catalog</CmdType>\r\n<SN>abc</SN>\r\n<DeviceID>{id}</DeviceID>\r\n</Query>\r\n"),
    ("cut short", '<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n'
     "<CmdType>Catalog</CmdType>\r\n<SN>9"),
    ("an entity bomb (DTD)", '<?xml version="1.0"?>\r\n<!DOCTYPE q [<!ENTITY a "aaaaaaaaaa">'
     '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\r\n<Query><CmdType>Catalog</CmdType>'
     "<SN>903</SN><DeviceID>&b;</DeviceID></Query>\r\n"),
    ("a PTZCmd that is not hex", '<?xml version="1.0" encoding="GB2312"?>\r\n<Control>\r\n'
     "<CmdType>DeviceControl</CmdType>\r\n<SN>904</SN>\r\n<DeviceID>{id}</DeviceID>\r\n"
     "<PTZCmd>ZZZZZZZZZZZZZZZZ</PTZCmd>\r\n</Control>\r\n"),
)  # fmt: skip


async def _send_bodies(
    send: Any, bodies: tuple[tuple[str, str], ...], target: str
) -> list[tuple[str, int | str]]:
    out: list[tuple[str, int | str]] = []
    for label, text in bodies:
        body = text.replace("{id}", target).encode("gb2312")
        try:
            resp = await send(body)
            out.append((label, resp.status))
        except (TransactionTimeout, TimeoutError):
            out.append((label, "no answer"))
        except (TransportError, OSError) as exc:
            out.append((label, f"connection failed: {exc}"))
    return out


@case(
    "R-MANSCDP-01",
    "Device side: malformed MANSCDP is refused or ignored",
    grade="R",
    clause_2016="A.2",
    clause_2022="A.2",
    roles=("device", "gateway"),
    editions=BOTH,
)
async def malformed_manscdp_device(ctx: Context) -> None:
    """Steps: the suite's platform sends the target well-formed MESSAGEs whose bodies are
    broken: not XML, no CmdType, an unknown CmdType, an SN that is not a number, XML cut short,
    a DTD with entities, a PTZCmd that is not hex; then a DeviceInfo query.

    Pass: each MESSAGE is answered (any final status: an error, or 200 and ignored) or
    ignored, and no application Response follows a broken query; the DeviceInfo query is
    still answered."""
    h = ctx.harness
    platform = h.need_platform()
    peer = h.target_peer

    async def send(body: bytes) -> Any:
        return await platform.endpoint.request(
            platform.build_message(h.lower_id, peer, body), peer, timeout=3.0
        )

    stray = len(platform.stray)
    results = await _send_bodies(send, BAD_BODIES, h.lower_id)
    for label, status in results:
        ctx.step(f"{label}: {status}")
    broken = [f"{label}: {s}" for label, s in results if isinstance(s, str) and
              s.startswith("connection")]  # fmt: skip
    ctx.check(not broken, "the target dropped the connection: " + "; ".join(broken))
    answered = [f"{m.CMD} SN {m.sn}" for m in platform.stray[stray:] if m.sn in range(900, 905)]
    ctx.check(not answered, "a broken query was answered as if it were valid",
              seen=answered)  # fmt: skip
    await _still_works(ctx, "malformed MANSCDP")


PLATFORM_BAD_BODIES: tuple[tuple[str, str], ...] = (
    ("not XML", "this is not XML <Notify>"),
    ("a keepalive without DeviceID", '<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n'
     "<CmdType>Keepalive</CmdType>\r\n<SN>911</SN>\r\n<Status>OK</Status>\r\n</Notify>\r\n"),
    ("an alarm with a priority that is not a number", '<?xml version="1.0" encoding="GB2312"?>'
     "\r\n<Notify>\r\n<CmdType>Alarm</CmdType>\r\n<SN>912</SN>\r\n<DeviceID>{id}</DeviceID>\r\n"
     "<AlarmPriority>high</AlarmPriority>\r\n<AlarmMethod>5</AlarmMethod>\r\n</Notify>\r\n"),
    ("a Response nobody asked for", '<?xml version="1.0" encoding="GB2312"?>\r\n<Response>\r\n'
     "<CmdType>Catalog</CmdType>\r\n<SN>913</SN>\r\n<DeviceID>{id}</DeviceID>\r\n"
     '<SumNum>1</SumNum>\r\n<DeviceList Num="0">\r\n</DeviceList>\r\n</Response>\r\n'),
    ("cut short", '<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>Keep'),
)  # fmt: skip


@case(
    "R-MANSCDP-02",
    "Platform side: malformed MANSCDP from a device is refused or ignored",
    grade="R",
    clause_2016="A.2",
    clause_2022="A.2",
    roles=("platform", "gateway"),
    editions=BOTH,
)
async def malformed_manscdp_platform(ctx: Context) -> None:
    """Steps: a registered suite device sends the target MESSAGEs with broken bodies: not XML,
    a keepalive without DeviceID, an alarm whose priority is not a number, a Response nobody
    asked for, XML cut short; then a normal keepalive.

    Pass: each MESSAGE gets a final answer or is ignored, never a dropped connection; the
    normal keepalive afterwards gets 200."""
    h = ctx.harness
    dev = h.devices[0]

    async def send(body: bytes) -> Any:
        return await dev.endpoint.request(dev.build_message(body), dev.server, timeout=3.0)

    results = await _send_bodies(send, PLATFORM_BAD_BODIES, dev.device_id)
    for label, status in results:
        ctx.step(f"{label}: {status}")
    broken = [f"{label}: {s}" for label, s in results if isinstance(s, str) and
              s.startswith("connection")]  # fmt: skip
    ctx.check(not broken, "the target dropped the connection: " + "; ".join(broken))
    await _still_works(ctx, "malformed MANSCDP")


def _declares_utf8(body: bytes) -> bool:
    head = body[:100].upper().replace(b"'", b'"')
    return b'ENCODING="UTF-8"' in head or b'ENCODING="UTF8"' in head


@case(
    "R-CHARSET-01",
    "Device side: names in GB2312 and UTF-8, declared as they are encoded",
    grade="R",
    clause_2016="A.2 (GB 2312 charset)",
    clause_2022="A.2 (GB 18030 charset)",
    roles=("device", "gateway"),
    editions=BOTH,
)
async def charsets(ctx: Context) -> None:
    """Steps: the suite's platform reads the catalog and DeviceInfo (below a gateway the suite
    devices write GB2312 and UTF-8 names; with one device, it is re-read in each).

    Pass: every MANSCDP body's declared encoding matches its bytes (GB 2312/GBK/GB 18030
    declared over UTF-8 bytes fails); no name needs replacement characters; in 2022 the
    declaration is a GB one (the 2022 text: GB 18030 shall be used). Below a gateway: every name
    reaches the upper as the device wrote it, whatever the device's charset."""
    h = ctx.harness
    await query_one(ctx, DeviceInfoQuery(sn=0, device_id=h.lower_id), "DeviceInfo")
    charsets_below = {d.charset for d in h.devices}
    rounds: list[Any] = [None]
    if h.role == "gateway" and len(charsets_below) < 2:
        rounds = ["GB2312", "UTF-8"]
    for want in rounds:
        dev0 = h.devices[0] if want is not None else None
        kept = dev0.charset if dev0 is not None else None
        try:
            if dev0 is not None:
                dev0.charset = want
                await h.resync(dev0, min(10.0, ctx.options.case_timeout / 4))
            res = await h.catalog()
            problems = []
            for n, raw in enumerate(res.raw):
                body = sip_body(raw)
                problem = charset_problem(body)
                if problem:
                    problems.append(f"part {n + 1}: {problem}")
                elif ctx.options.edition == "2022" and _declares_utf8(body):
                    problems.append(f"part {n + 1}: declares UTF-8 (2022: GB 18030 shall be used)")
            names = [i.name or "" for i in res.items]
            bad = [n for n in names if "\ufffd" in n]
            if bad:
                problems.append(f"names with replacement characters: {short(bad)}")
            fail_problems(ctx, "catalog bodies", problems)
            ctx.step(f"{len(res.raw)} catalog bodies{' with ' + str(want) if want else ''}: "
                     "declarations match the bytes")  # fmt: skip
            if h.role == "gateway":
                seen = {i.device_id: i.name for i in res.items}
                wrong = [
                    f"{item.device_id}: {seen.get(item.device_id)!r} (sent {item.name!r}, "
                    f"{d.charset})"
                    for d in h.devices
                    for item in d.catalog_items()
                    if seen.get(item.device_id) != item.name
                ]
                ctx.check(not wrong, "names changed on the way up: " + "; ".join(wrong[:3]))
        finally:
            if dev0 is not None and kept is not None:
                dev0.charset = kept
    if rounds != [None]:
        await h.resync(h.devices[0], min(10.0, ctx.options.case_timeout / 4))


@case(
    "R-LARGE-01",
    "Platform side: a large catalog is read completely",
    grade="R",
    clause_2016="9.5, Annex N",
    clause_2022="9.5, Annex M",
    roles=("platform", "gateway"),
    editions=BOTH,
)
async def large_catalog(ctx: Context) -> None:
    """Steps: a spare suite device with 500 channels registers (one item per MESSAGE over UDP,
    100 per MESSAGE over TCP); the target reads its catalog; (gateway) the upper reads the
    gateway's catalog; the device unregisters.

    Pass: the target queries the catalog and answers every one of the device's MESSAGEs 200;
    below a gateway, the upper sees all 500 channels with their fields as sent, over UDP in
    MESSAGEs of at most 1300 bytes."""
    h = ctx.harness
    spare = h.spare_device(4, install=True, channel_count=LARGE)
    timeout = max(10.0, ctx.options.case_timeout - 10)
    try:
        try:
            q = await h.resync(spare, timeout)
        except TimeoutError as exc:
            ctx.fail(str(exc))
        parts = [s for c, sn, s in spare.answer_statuses if c == "Catalog" and sn == q.sn]
        ctx.step(f"the target read {LARGE} channels in {len(parts)} MESSAGEs")
        ctx.check(
            bool(parts) and all(s == 200 for s in parts),
            "every catalog Response MESSAGE is answered 200",
            expected="200 to each part",
            seen=parts,
        )
        if h.role != "gateway":
            return
        res = await h.catalog(timeout=15.0, idle=3.0)
        seen = {i.device_id: i for i in res.items}
        sent = list(spare.catalog_items())
        missing = [i.device_id for i in sent if i.device_id not in seen]
        ctx.check(not missing, f"{len(missing)} of the {LARGE} channels are missing at the "
                  f"upper: {short(missing)}")  # fmt: skip
        different = [i.device_id for i in sent if item_differences(i, seen[i.device_id])]
        ctx.check(not different, f"{len(different)} channels changed on the way up: "
                  f"{short(different)}")  # fmt: skip
        # Over UDP each MESSAGE fits; larger ones may come over TCP (RFC 3261 §18.1.1).
        over_udp = zip(res.raw, res.arrived_over, strict=True)
        big = max((len(r) for r, t in over_udp if t == "udp"), default=0)
        ctx.check(big <= MAX_UDP_REQUEST, "a catalog MESSAGE over UDP is too large",
                  expected=f"<= {MAX_UDP_REQUEST}", seen=big)  # fmt: skip
        ctx.step(f"the upper got all {LARGE} in {len(res.raw)} MESSAGEs over {res.transport}")
    finally:
        await h.drop_spare(spare)
