"""Wire fuzzing: mutated SIP over UDP and TCP at a running gateway, with honest devices beside.

Run: ``.venv/bin/python bench/fuzz.py --seconds 600`` (``make fuzz``); the test suite runs it
for about 40 seconds (``tests/test_fuzz.py``).

A gateway is started as an operator starts it (``python -m gateway.cli run``, JSON logs to a
file, SQLite in a temporary directory). Then, for ``--seconds``:

* **honest devices** (``--devices``, on 127.0.0.1, UDP) register with digest, send a Keepalive
  every second and refresh their registration every 20 s, retransmitting as RFC 3261 §17.1.2
  says (T1 = 0.5 s, up to 4 s); they answer whatever the gateway asks them with 200;
* **the fuzzer** (on 127.0.0.2, so that its failed digests never lock out the honest devices'
  address) sends mutations of valid messages: REGISTER with and without credentials, MESSAGE of
  every CmdType family (Keepalive, Catalog, DeviceInfo, DeviceStatus, RecordInfo, Alarm,
  MobilePosition, DeviceControl, Broadcast), SUBSCRIBE, NOTIFY, INVITE with SDP, BYE, INFO
  (MANSRTSP), CANCEL, ACK and responses. One to four mutations each: bit flips, inserted and
  deleted bytes, lines duplicated, dropped and swapped, numbers replaced with edge values,
  a slice repeated, truncation, a wrong Content-Length, XML broken (unclosed or deeply nested
  elements, entity and DTD declarations, control characters, GBK bytes). Four in five go by
  UDP, the rest over short TCP connections, sometimes cut into pieces, sometimes cut off.

Watched: that the process stays alive; that its log has no line at level ``error`` or above
and no traceback (by event name); that every honest request is answered; and RSS, sampled
every second (growth over the second half of the run is reported; completed transactions are
kept for 32 s, timer J, so a short run sees that plateau build).

Prints one JSON object (figures and ``findings``, a list of what went wrong, empty when
nothing did) and exits 1 when there are findings. Every loop is bounded in count and time;
only the gateway started here is stopped, by PID. ``--seed`` makes the mutations repeatable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from register import free_port  # bench/ is first on sys.path when a script there runs

ROOT = Path(__file__).resolve().parent.parent
GW_ID = "34020000002000000001"
DOMAIN = "3402000000"
PASSWORD = "12345678"  # the embedded default
HONEST_HOST = "127.0.0.1"
FUZZ_HOST = "127.0.0.2"
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def token() -> str:
    return os.urandom(6).hex()


# -- the gateway ------------------------------------------------------------------------------


class GatewayProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "gateway.log"
        config = workdir / "gateway.toml"
        media_low = random.randrange(30000, 50000) & ~1
        config.write_text(
            "\n".join(
                [
                    "[sip]",
                    'host = "0.0.0.0"',  # both loopback addresses: honest and fuzzer
                    f"port = {self.port}",
                    "[http]",
                    "port = 0",
                    "[store]",
                    'backend = "sqlite"',
                    f'path = "{workdir / "gateway.db"}"',
                    "[keepalive]",
                    "interval = 5.0",
                    "timeout_count = 3",
                    "[downlink]",
                    "sync_on_register = false",
                    "catalog_subscription = false",
                    "[media]",
                    'host = "127.0.0.1"',
                    f"port_min = {media_low}",
                    f"port_max = {media_low + 99}",
                    "[log]",
                    'level = "info"',
                    'format = "json"',
                    "",
                ]
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(workdir),
            )
        self.ps = psutil.Process(self.proc.pid)

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the gateway exited at start:\n" + self.tail())
            if b'"gateway.started"' in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError("the gateway did not start:\n" + self.tail())

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                events.append({"event": "(not JSON)", "level": "error", "text": line[:200]})
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


# -- messages ---------------------------------------------------------------------------------


def device_id(n: int) -> str:
    return f"{DOMAIN}132{n:07d}"


def xml(cmd_root: str, cmd: str, dev: str, inner: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="GB2312"?>\r\n'
        f"<{cmd_root}>\r\n<CmdType>{cmd}</CmdType>\r\n<SN>{random.randrange(1, 99999)}</SN>\r\n"
        f"<DeviceID>{dev}</DeviceID>\r\n{inner}</{cmd_root}>\r\n"
    )


CATALOG_ITEM = (
    "<Item><DeviceID>{ch}</DeviceID><Name>Camera 1</Name><Manufacturer>Sim</Manufacturer>"
    "<Model>X</Model><Owner>Owner</Owner><CivilCode>340200</CivilCode><Address>A</Address>"
    "<Parental>0</Parental><ParentID>{dev}</ParentID><SafetyWay>0</SafetyWay>"
    "<RegisterWay>1</RegisterWay><Secrecy>0</Secrecy><Status>ON</Status></Item>"
)

BODIES: dict[str, Callable[[str], tuple[str, str]]] = {
    "keepalive": lambda d: (
        "Application/MANSCDP+xml",
        xml("Notify", "Keepalive", d, "<Status>OK</Status>"),
    ),
    "catalog": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Response",
            "Catalog",
            d,
            '<SumNum>1</SumNum><DeviceList Num="1">'
            + CATALOG_ITEM.format(ch=d[:10] + "131" + d[13:], dev=d)
            + "</DeviceList>",
        ),
    ),
    "deviceinfo": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Response",
            "DeviceInfo",
            d,
            "<Result>OK</Result><DeviceName>NVR</DeviceName><Channel>4</Channel>",
        ),
    ),
    "devicestatus": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Response",
            "DeviceStatus",
            d,
            "<Result>OK</Result><Online>ONLINE</Online><Status>OK</Status>",
        ),
    ),
    "recordinfo": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Response",
            "RecordInfo",
            d,
            '<Name>r</Name><SumNum>0</SumNum><RecordList Num="0"></RecordList>',
        ),
    ),
    "alarm": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Notify",
            "Alarm",
            d,
            "<AlarmPriority>1</AlarmPriority><AlarmMethod>2</AlarmMethod>"
            "<AlarmTime>2026-12-07T10:00:00</AlarmTime>",
        ),
    ),
    "position": lambda d: (
        "Application/MANSCDP+xml",
        xml(
            "Notify",
            "MobilePosition",
            d,
            "<Time>2026-12-07T10:00:00</Time><Longitude>116.3</Longitude><Latitude>39.9</Latitude>",
        ),
    ),
    "control": lambda d: (
        "Application/MANSCDP+xml",
        xml("Control", "DeviceControl", d, "<PTZCmd>A50F010800FA00B7</PTZCmd>"),
    ),
    "query": lambda d: ("Application/MANSCDP+xml", xml("Query", "Catalog", d)),
    "broadcast": lambda d: (
        "Application/MANSCDP+xml",
        xml("Notify", "Broadcast", d, f"<SourceID>{GW_ID}</SourceID><TargetID>{d}</TargetID>"),
    ),
}

SDP = (
    "v=0\r\no=34020000002000000001 0 0 IN IP4 127.0.0.2\r\ns=Play\r\nc=IN IP4 127.0.0.2\r\n"
    "t=0 0\r\nm=video 30000 RTP/AVP 96 98 97\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\n"
    "a=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\ny=0100000001\r\n"
)


def request(
    method: str,
    lport: int,
    frm: str,
    to: str,
    *,
    transport: str = "UDP",
    body: str = "",
    ctype: str = "",
    extra: str = "",
    cseq: int = 1,
    call_id: str = "",
    branch: str = "",
    ruri_user: str = "",
) -> bytes:
    ruri = f"sip:{ruri_user or to}@{DOMAIN}"
    data = body.encode("gb18030")
    head = (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {FUZZ_HOST}:{lport};rport;branch=z9hG4bK{branch or token()}\r\n"
        f"From: <sip:{frm}@{DOMAIN}>;tag={token()}\r\n"
        f"To: <sip:{to}@{DOMAIN}>\r\n"
        f"Call-ID: {call_id or token()}@{FUZZ_HOST}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{frm}@{FUZZ_HOST}:{lport}>\r\n"
        "Max-Forwards: 70\r\n"
        "User-Agent: fuzz\r\n"
        f"{extra}"
        + (f"Content-Type: {ctype}\r\n" if ctype else "")
        + f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def digest_header(dev: str, nonce: str, uri: str, method: str = "REGISTER") -> str:
    def md5(x: str) -> str:
        return hashlib.md5(x.encode()).hexdigest()

    cnonce = token()
    ha1 = md5(f"{dev}:{DOMAIN}:{PASSWORD}")
    ha2 = md5(f"{method}:{uri}")
    resp = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
    return (
        f'Authorization: Digest username="{dev}",realm="{DOMAIN}",nonce="{nonce}",uri="{uri}",'
        f'response="{resp}",algorithm=MD5,cnonce="{cnonce}",qop=auth,nc=00000001\r\n'
    )


def seed_message(kind: str, lport: int, transport: str, honest: int) -> bytes:
    """A valid message of ``kind``. REGISTERs are from a fuzzer's device ID, never an honest
    one (whose refreshes they would compete with); other requests are half the time from one of
    the ``honest`` registered devices, so that what only a registered device may send (a
    Catalog answer, an alarm) reaches the code behind it."""
    dev = device_id(5_000_000 + random.randrange(1000))
    if kind in ("register", "register_auth"):
        auth = ""
        if kind == "register_auth":  # a nonce the gateway never gave: forged credentials
            auth = digest_header(dev, os.urandom(22).hex(), f"sip:{GW_ID}@{DOMAIN}")
        return request(
            "REGISTER",
            lport,
            dev,
            dev,
            transport=transport,
            extra=auth + "Expires: 3600\r\n",
            ruri_user=GW_ID,
        )
    if honest and random.random() < 0.5:
        dev = device_id(random.randint(1, honest))
    if kind in BODIES:
        ctype, body = BODIES[kind](dev)
        return request("MESSAGE", lport, dev, GW_ID, transport=transport, body=body, ctype=ctype)
    if kind in ("subscribe", "notify"):
        ctype, body = BODIES["query" if kind == "subscribe" else "catalog"](dev)
        state = "Expires: 600" if kind == "subscribe" else "Subscription-State: active;expires=600"
        extra = f"Event: Catalog;id=1\r\n{state}\r\n"
        return request(
            kind.upper(),
            lport,
            dev,
            GW_ID,
            transport=transport,
            body=body,
            ctype=ctype,
            extra=extra,
        )
    if kind == "invite":
        channel = dev[:10] + "131" + dev[13:]
        return request(
            "INVITE",
            lport,
            GW_ID,
            channel,
            transport=transport,
            body=SDP,
            ctype="APPLICATION/SDP",
            extra=f"Subject: {channel}:0100000001,{GW_ID}:0\r\n",
        )
    if kind in ("bye", "cancel", "ack"):
        return request(kind.upper(), lport, GW_ID, dev, transport=transport)
    if kind == "info":
        return request(
            "INFO",
            lport,
            GW_ID,
            dev,
            transport=transport,
            body="PLAY MANSRTSP/1.0\r\nCSeq: 2\r\nScale: 2.0\r\n",
            ctype="Application/MANSRTSP",
        )
    if kind == "options":
        return request("OPTIONS", lport, dev, GW_ID, transport=transport)
    # a response, to nothing the gateway sent (or, by chance, to something it did)
    status = random.choice([b"100 Trying", b"200 OK", b"401 Unauthorized", b"486 Busy Here"])
    req = request("MESSAGE", lport, GW_ID, dev, transport=transport)
    head = req.split(b"\r\n", 1)[1]
    return b"SIP/2.0 " + status + b"\r\n" + head


SEED_KINDS = [
    "register",
    "register_auth",
    *BODIES,
    "subscribe",
    "notify",
    "invite",
    "bye",
    "cancel",
    "ack",
    "info",
    "options",
    "response",
]


# -- mutations --------------------------------------------------------------------------------

INTERESTING = [
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc0\x80",
    b"%",
    b"%00",
    b"=",
    b" ",
    b"\t",
    b"\r\n ",
    b"SIP/2.0",
    b"z9hG4bK",
    b"sip:",
    b"@",
    b"&",
    b"&#1;",
    b"&#x1b;",
    b"\x1b[2J",
    b"\xc2\x9b",
    b"<!DOCTYPE a [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>",
    b"<!ENTITY a 'aaaa'>",
    b"\xd6\xd0\xce\xc4",  # GBK
    b"]]>",
    b"<![CDATA[",
]
NUMBERS = [
    b"0",
    b"-1",
    b"00000000001",
    b"4294967295",
    b"4294967296",
    b"2147483648",
    b"99999999999999999999999",
    b"1e9",
    b"0x10",
    b"",
    b" 1",
]
_NUMBER = re.compile(rb"\d+")


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out = bytearray(b"X")
        op = rng.randrange(13)
        pos = rng.randrange(len(out) + 1)
        if op == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert interesting bytes
            out[pos:pos] = rng.choice(INTERESTING)
        elif op == 2:  # insert random bytes
            out[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif op == 3:  # delete a range
            out[pos : pos + rng.randint(1, 64)] = b""
        elif op in (4, 5, 6):  # line operations
            lines = bytes(out).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 4:
                lines.insert(i, lines[j])
            elif op == 5 and len(lines) > 1:
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            out = bytearray(b"\r\n".join(lines))
        elif op == 7:  # a number becomes an edge value
            numbers = list(_NUMBER.finditer(out))
            if numbers:
                m = rng.choice(numbers)
                out[m.start() : m.end()] = rng.choice(NUMBERS)
        elif op == 8:  # a slice repeated
            start = rng.randrange(len(out))
            piece = bytes(out[start : start + rng.randint(1, 16)])
            out[start:start] = piece * rng.randint(2, 4096 // max(1, len(piece)))
        elif op == 9:  # truncated
            del out[rng.randrange(len(out)) :]
        elif op == 10:  # a wrong Content-Length
            out = bytearray(
                re.sub(
                    rb"Content-Length: *\d+",
                    b"Content-Length: " + str(rng.choice([0, 1, 5, 100, 70000])).encode(),
                    bytes(out),
                    count=1,
                )
            )
        elif op == 11:  # deep nesting or an unclosed element in the body
            at = out.find(b"</")
            if at >= 0:
                depth = rng.randint(1, 60)
                out[at:at] = b"<a>" * depth + (b"</a>" * depth if rng.random() < 0.5 else b"")
        else:  # a header value made long
            lines = bytes(out).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines[i] += rng.choice([b"a", b",", b";x", b" ", b"%41"]) * rng.randint(100, 5000)
            out = bytearray(b"\r\n".join(lines))
    return bytes(out)


# -- honest devices ---------------------------------------------------------------------------


class Honest(asyncio.DatagramProtocol):
    """One registered device on 127.0.0.1: REGISTER with digest, a Keepalive a second."""

    def __init__(self, n: int, gw: tuple[str, int], stats: dict[str, Any]) -> None:
        self.dev = device_id(n)
        self.gw = gw
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None
        self.lport = 0
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.cseq = 0
        self.retry_at = 0.0  # after a 503: not before this (monotonic)
        self.call_id = token()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lport = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data.startswith(b"SIP/2.0 "):
            m = re.search(rb"branch=z9hG4bK([0-9a-f]+)", data)
            status = int(data[8:11]) if data[8:11].isdigit() else 0
            if m and status >= 200:
                fut = self.waiting.pop(m.group(1).decode(), None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            return
        # A request of the gateway's: 200, copying what a response copies (RFC 3261 §8.2.6).
        keep = [
            line
            for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            if line.split(b":", 1)[0].strip().lower()
            in (b"via", b"from", b"to", b"call-id", b"cseq")
        ]
        if self.transport is not None:
            self.transport.sendto(
                b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", addr
            )
            self.stats["answered_gateway"] += 1

    async def ask(self, build: Callable[[str], bytes]) -> bytes | None:
        """Send a request (``build(branch)``), retransmitted at T1 doubling, for up to 4 s."""
        branch = token()
        data = build(branch)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[branch] = fut
        started = time.monotonic()
        interval = 0.5
        try:
            for _ in range(8):
                assert self.transport is not None
                self.transport.sendto(data, self.gw)
                try:
                    got = await asyncio.wait_for(asyncio.shield(fut), interval)
                except TimeoutError:
                    if time.monotonic() - started >= 4.0:
                        break
                    interval = min(interval * 2, 4.0 - (time.monotonic() - started))
                    self.stats["retransmissions"] += 1
                    continue
                self.stats["latencies"].append(time.monotonic() - started)
                return got
        finally:
            self.waiting.pop(branch, None)
        self.stats["unanswered"] += 1
        self.stats["unanswered_what"].append(data.split(b" ", 1)[0].decode())
        return None

    def _request(
        self, method: str, branch: str, extra: str = "", body: str = "", ctype: str = ""
    ) -> bytes:
        self.cseq += 1
        data = body.encode()
        to = self.dev if method == "REGISTER" else GW_ID
        return (
            f"{method} sip:{GW_ID}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HONEST_HOST}:{self.lport};rport;branch=z9hG4bK{branch}\r\n"
            f"From: <sip:{self.dev}@{DOMAIN}>;tag={self.dev[-6:]}\r\n"
            f"To: <sip:{to}@{DOMAIN}>\r\n"
            f"Call-ID: {self.call_id if method == 'REGISTER' else token()}@{HONEST_HOST}\r\n"
            f"CSeq: {self.cseq} {method}\r\n"
            f"Contact: <sip:{self.dev}@{HONEST_HOST}:{self.lport}>\r\n"
            f"Max-Forwards: 70\r\n{extra}"
            + (f"Content-Type: {ctype}\r\n" if ctype else "")
            + f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    async def register(self) -> bool:
        first = await self.ask(lambda b: self._request("REGISTER", b, "Expires: 3600\r\n"))
        if first is None:
            return False
        if first.startswith(b"SIP/2.0 503"):
            # Shed while the gateway was busy: not a refusal. Come back as Retry-After says.
            self.stats["register_shed"] += 1
            m = re.search(rb"\r\nRetry-After: *([0-9]+)", first)
            self.retry_at = time.monotonic() + (int(m.group(1)) if m else 5)
            return False
        m = re.search(rb'nonce="([^"]+)"', first)
        if not first.startswith(b"SIP/2.0 401") or m is None:
            self.stats["register_refused"].append(
                first.split(b"\r\n", 1)[0].decode(errors="replace")
            )
            return False
        auth = digest_header(self.dev, m.group(1).decode(), f"sip:{GW_ID}@{DOMAIN}")
        second = await self.ask(lambda b: self._request("REGISTER", b, auth + "Expires: 3600\r\n"))
        if second is None:
            return False
        if not second.startswith(b"SIP/2.0 200"):
            self.stats["register_refused"].append(
                second.split(b"\r\n", 1)[0].decode(errors="replace")
            )
            return False
        self.stats["registrations"] += 1
        return True

    async def keepalive(self) -> None:
        ctype, body = BODIES["keepalive"](self.dev)
        got = await self.ask(lambda b: self._request("MESSAGE", b, body=body, ctype=ctype))
        if got is not None:
            if got.startswith(b"SIP/2.0 200"):
                self.stats["keepalives"] += 1
            else:
                self.stats["keepalive_refused"].append(
                    got.split(b"\r\n", 1)[0].decode(errors="replace")
                )

    async def run(self, until: float) -> None:
        registered_at = time.monotonic() if await self.register() else 0.0
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            if time.monotonic() < self.retry_at:
                continue
            if time.monotonic() - registered_at > 20:
                registered_at = time.monotonic() if await self.register() else registered_at
            else:
                await self.keepalive()


# -- the fuzzer -------------------------------------------------------------------------------


async def fuzz_udp(
    port: int, until: float, rng: random.Random, rate: float, stats: dict[str, Any], honest: int
) -> None:
    socks = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((FUZZ_HOST, 0))
        s.setblocking(False)
        socks.append(s)
    answers: Counter[str] = stats["udp_answers"]
    try:
        sent = 0
        started = time.monotonic()
        while time.monotonic() < until:
            s = rng.choice(socks)
            kind = rng.choice(SEED_KINDS)
            data = mutate(seed_message(kind, s.getsockname()[1], "UDP", honest), rng)[:65000]
            try:
                s.sendto(data, ("127.0.0.1", port))
            except OSError:
                stats["send_errors"] += 1
            sent += 1
            stats["udp_sent"] += 1
            stats["kinds"][kind] += 1
            for sock in socks:
                with contextlib.suppress(OSError):
                    while True:
                        reply = sock.recv(65536)
                        answers[
                            reply[8:11].decode(errors="replace")
                            if reply.startswith(b"SIP/2.0 ")
                            else "request"
                        ] += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        for s in socks:
            s.close()


async def fuzz_tcp(
    port: int, until: float, rng: random.Random, rate: float, stats: dict[str, Any], honest: int
) -> None:
    async def one() -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(FUZZ_HOST, 0)), 5
            )
        except (OSError, TimeoutError):
            stats["tcp_connect_failed"] += 1
            return
        try:
            lport = writer.get_extra_info("sockname")[1]
            blob = b"".join(
                mutate(seed_message(rng.choice(SEED_KINDS), lport, "TCP", honest), rng)
                for _ in range(rng.randint(1, 3))
            )
            stats["tcp_sent"] += 1
            if rng.random() < 0.3:  # in pieces
                for i in range(0, len(blob), 97):
                    writer.write(blob[i : i + 97])
                    await writer.drain()
                    await asyncio.sleep(0.001)
            else:
                writer.write(blob)
            if rng.random() < 0.2:  # cut off mid-message
                writer.transport.abort()
                return
            await writer.drain()
            with contextlib.suppress(TimeoutError, OSError):
                got = await asyncio.wait_for(reader.read(65536), 0.3)
                if got:
                    stats["tcp_answers"] += 1
        except OSError:
            stats["tcp_errors"] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    started = time.monotonic()
    running: set[asyncio.Task[None]] = set()
    n = 0
    while time.monotonic() < until:
        if len(running) < 16:
            task = asyncio.ensure_future(one())
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
        ahead = n / rate - (time.monotonic() - started)
        await asyncio.sleep(max(ahead, 0.005))
    if running:
        await asyncio.wait(running, timeout=10)


# -- the run ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace, gw: GatewayProcess) -> dict[str, Any]:
    rng = random.Random(args.seed)
    loop = asyncio.get_running_loop()
    honest_stats: dict[str, Any] = {
        "registrations": 0,
        "keepalives": 0,
        "unanswered": 0,
        "unanswered_what": [],
        "retransmissions": 0,
        "latencies": [],
        "register_refused": [],
        "register_shed": 0,
        "keepalive_refused": [],
        "answered_gateway": 0,
    }
    fuzz_stats: dict[str, Any] = {
        "udp_sent": 0,
        "tcp_sent": 0,
        "kinds": Counter(),
        "udp_answers": Counter(),
        "tcp_answers": 0,
        "tcp_connect_failed": 0,
        "tcp_errors": 0,
        "send_errors": 0,
    }
    until = time.monotonic() + args.seconds
    devices = []
    for n in range(args.devices):
        _, proto = await loop.create_datagram_endpoint(
            lambda n=n: Honest(n + 1, ("127.0.0.1", gw.port), honest_stats),
            local_addr=(HONEST_HOST, 0),
        )
        devices.append(proto)
    rss: list[tuple[float, int]] = []
    alive = True

    async def watch() -> None:
        nonlocal alive
        start = time.monotonic()
        while time.monotonic() < until + 2:
            if gw.proc.poll() is not None:
                alive = False
                return
            rss.append((round(time.monotonic() - start, 1), gw.rss()))
            await asyncio.sleep(1.0)

    await asyncio.gather(
        watch(),
        *(d.run(until) for d in devices),
        fuzz_udp(gw.port, until, rng, args.rate * 0.8, fuzz_stats, args.devices),
        fuzz_tcp(gw.port, until, rng, args.rate * 0.2 / 2, fuzz_stats, args.devices),
    )
    for d in devices:
        if d.transport is not None:
            d.transport.close()
    lat = honest_stats.pop("latencies")
    honest_stats["latency_ms_p50"] = round(1000 * (percentile(lat, 0.5) or 0), 1)
    honest_stats["latency_ms_p99"] = round(1000 * (percentile(lat, 0.99) or 0), 1)
    honest_stats["unanswered_what"] = dict(Counter(honest_stats["unanswered_what"]))
    honest_stats["register_refused"] = dict(Counter(honest_stats["register_refused"]))
    honest_stats["keepalive_refused"] = dict(Counter(honest_stats["keepalive_refused"]))
    fuzz_stats["kinds"] = dict(fuzz_stats["kinds"])
    fuzz_stats["udp_answers"] = dict(sorted(fuzz_stats["udp_answers"].items()))
    return {"honest": honest_stats, "fuzzer": fuzz_stats, "rss": rss, "alive": alive}


BAD_LEVELS = {"error", "critical", "exception"}


def judge(
    result: dict[str, Any], events: list[dict[str, Any]], rc: int | None, args: argparse.Namespace
) -> list[str]:
    findings = []
    if not result["alive"]:
        findings.append(f"the gateway died during the run (exit {rc})")
    elif rc not in (0, -signal.SIGTERM):
        findings.append(f"the gateway stopped with exit code {rc}")
    bad: Counter[str] = Counter()
    for e in events:
        if e.get("level") not in BAD_LEVELS and "exception" not in e:
            continue
        if e.get("event") == "log.suppressed":  # the lines the rate limit held back
            bad[str(e.get("name", "?"))] += int(e.get("count", 1))
        else:
            bad[str(e.get("event", "?"))] += 1
    for name, count in bad.items():
        findings.append(f"{count} log line(s) at error level: {name}")
    honest = result["honest"]
    if honest["unanswered"]:
        findings.append(
            f"{honest['unanswered']} honest request(s) unanswered: {honest['unanswered_what']}"
        )
    if honest["register_refused"] or honest["keepalive_refused"]:
        findings.append(
            f"honest devices refused: {honest['register_refused']} {honest['keepalive_refused']}"
        )
    if honest["registrations"] < args.devices:
        findings.append(
            f"only {honest['registrations']} of {args.devices} honest devices registered"
        )
    rss = [r for _, r in result["rss"] if r]
    if len(rss) >= 6:
        half = rss[len(rss) // 2]
        growth = (rss[-1] - half) / MB
        result["rss_growth_second_half_mb"] = round(growth, 1)
        if growth > args.max_rss_growth_mb:
            findings.append(f"RSS grew {growth:.1f} MB over the second half of the run")
    return findings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz")
    p.add_argument("--rate", type=float, default=600.0, help="mutated messages per second")
    p.add_argument("--devices", type=int, default=10, help="honest devices beside the fuzzer")
    p.add_argument("--seed", type=int, default=None, help="mutation seed (random by default)")
    p.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=64.0,
        help="RSS growth over the second half that counts as a finding",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (log, database)")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    random.seed(args.seed)  # the seeds' choices; the mutations have their own generator
    # Our own TCP writes to connections the gateway reset are expected: no asyncio warnings.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="gb-fuzz-"))
    log(f"seed {args.seed}, {args.seconds:.0f} s at {args.rate:.0f} messages/s, work dir {workdir}")
    gw = GatewayProcess(workdir)
    rc: int | None = None
    try:
        gw.wait_started()
        rss_start = gw.rss()
        result = asyncio.run(run(args, gw))
    finally:
        rc = gw.stop()
    events = gw.log_events()
    findings = judge(result, events, rc, args)
    stopped = next((e for e in reversed(events) if e.get("event") == "gateway.stopped"), {})
    metrics = stopped.get("metrics", {})
    out = {
        "seed": args.seed,
        "seconds": args.seconds,
        "gateway": {
            "alive_to_the_end": result["alive"],
            "exit_code": rc,
            "rss_mb_start": round(rss_start / MB, 1),
            "rss_mb_end": round((result["rss"][-1][1] if result["rss"] else 0) / MB, 1),
            "rss_growth_second_half_mb": result.get("rss_growth_second_half_mb"),
            "log_lines": len(events),
            "log_levels": dict(Counter(e.get("level", "?") for e in events)),
            "metrics": {
                k: v
                for k, v in sorted(metrics.items())
                if k.startswith(("sip.", "register.", "keepalive."))
            },
        },
        "fuzzer": result["fuzzer"],
        "honest": result["honest"],
        "findings": findings,
    }
    print(json.dumps(out, indent=1))
    if findings:
        log(f"{len(findings)} finding(s); log kept in {workdir}")
    elif not args.keep:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
