"""Quirk findings: what the target does that real equipment is known to do, apart from pass/fail.

Field devices and platforms bend the standard in a handful of known ways (issue 15; reference
§8, §6.3). The gateway copes with most of them, but an integration engineer who takes a product
in wants to know which ones it shows. A finding is such an observation: it names the quirk,
says what was seen and when, and points at the messages. It is not a verdict: a case may pass
and the run still report findings, and a finding never makes the run fail.

Most quirks show in the trace the run keeps anyway, so :func:`scan` reads the whole run's SIP
trace once, after the cases, with one small state machine per quirk. A quirk that only shows
when the suite provokes it (two requests in one TCP segment, a REGISTER with a new Call-ID) is
found by a robustness case, which records it through :meth:`Findings.add`.

Only messages the suite *received* are judged (they come from the target); what the suite sent
is read for context (the offer an answer answers, the query a response answers, the lifetime a
registration was granted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.suite.trace import TraceEntry, decode_message
from gateway.manscdp.xmlio import declared_encoding
from gateway.media.sdp import Sdp, SdpError, parse_sdp
from gateway.sip.errors import ParseError
from gateway.sip.message import Request, Response, parse

EVIDENCE = 3  # messages kept per finding
BELOW = "devices"  # the label of the suite's devices: what they receive, the target sent as
# their platform (it may rightly echo their own charset, for one)
REFRESH_GRACE = 0.0  # seconds past a registration's expiry before "never refreshed" is said
SUBSCRIBE_PATIENCE = 8.0  # seconds an unanswered SUBSCRIBE must have had before it counts

# The quirks the suite knows: id -> (side, one-line description). ``side`` says which kind of
# target shows it: a device (or a lower platform, which speaks as one) or an upper platform.
QUIRKS: dict[str, tuple[str, str]] = {
    "content-length-in-characters": (
        "device",
        "Content-Length counts characters, not bytes: the declared body ends inside the "
        "datagram's XML (a UDP message with non-ASCII text)",
    ),
    "register-never-refreshed": (
        "device",
        "lets its registration run out without refreshing it, and goes on sending",
    ),
    "drops-pipelined-request": (
        "device",
        "answers only the first of two requests that arrive in one TCP segment",
    ),
    "subscribe-unanswered": ("device", "never answers a SUBSCRIBE, not even with an error"),
    "ptz-control-response": (
        "device",
        "answers a PTZ DeviceControl with a Response MESSAGE (the standard defines none)",
    ),
    "catalog-item-without-parentid": (
        "device",
        "sends catalog items of devices or channels without ParentID",
    ),
    "sdp-setup-ignores-offer": (
        "device",
        "answers a=setup with the same role as the offer (both sides active or both passive)",
    ),
    "sdp-answer-copies-offer": (
        "device",
        "puts the offer's own c= address and m= port into its answer",
    ),
    "sdp-udp-answer-to-tcp-offer": ("device", "answers RTP/AVP (UDP) to a TCP/RTP/AVP offer"),
    "invite-200-without-to-tag": ("device", "answers an INVITE 200 OK without a To-tag"),
    "invite-200-with-callers-contact": (
        "device",
        "puts the caller's own Contact in its INVITE 200 OK",
    ),
    "ssrc-not-10-digits": ("device", "writes a y= (SSRC) that is not 10 decimal digits"),
    "register-to-domain-uri": (
        "device",
        "sends REGISTER to sip:<domain> (no server ID in the Request-URI)",
    ),
    "request-uri-ip-port": ("device", "addresses requests to sip:IP:port (no user part)"),
    "unsolicited-response": (
        "device",
        "sends query Responses (DeviceInfo, Catalog...) nobody asked for",
    ),
    "utf8-declared-ascii-only": (
        "device",
        "declares UTF-8 on a body whose bytes are plain ASCII (2016 says GB2312)",
    ),
    "register-200-without-to-tag": ("platform", "answers REGISTER 200 OK without a To-tag"),
    "register-200-without-contact": ("platform", "answers REGISTER 200 OK without a Contact"),
    "request-without-max-forwards": ("platform", "sends requests without Max-Forwards"),
    "bye-cseq-equals-invite": ("platform", "sends a BYE whose CSeq number is the INVITE's"),
    "cseq-method-mismatch": ("platform", "sends a request whose CSeq method is another method"),
    "register-500-new-call-id": (
        "platform",
        "answers 500 to a REGISTER with a new Call-ID while it holds an older registration",
    ),
    "refuses-one-item-catalog": (
        "platform",
        "refuses (or does not answer) catalog MESSAGEs that carry a single item",
    ),
    "udp-request-to-tcp-registration": (
        "platform",
        "sends requests over UDP to a lower that registered over TCP",
    ),
}

_ROOT = re.compile(r"<\s*(Query|Response|Control|Notify)\b")
_CMD = re.compile(r"<CmdType>\s*([A-Za-z]+)\s*</CmdType>")
_SN = re.compile(r"<SN>\s*(\d+)\s*</SN>")
_ITEM = re.compile(r"<Item>(.*?)</Item>", re.DOTALL)
_ITEM_ID = re.compile(r"<DeviceID>\s*(\d+)\s*</DeviceID>")
_XML_END = re.compile(r"</\s*(Query|Response|Control|Notify)\s*>\s*$")
_DEVICE_TYPES = frozenset(range(111, 200))  # front-end and device types: the tree's leaves


@dataclass(slots=True)
class Finding:
    quirk: str  # a key of QUIRKS
    side: str  # "device" | "platform"
    title: str
    detail: str  # what was seen the first time
    first_seen: float  # seconds since the run began
    count: int = 1
    case: str = ""  # the case during which it was first seen ("" before the cases)
    evidence: list[TraceEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "quirk": self.quirk,
            "side": self.side,
            "title": self.title,
            "detail": self.detail,
            "first_seen": round(self.first_seen, 3),
            "count": self.count,
            "case": self.case,
            "evidence": [e.describe() for e in self.evidence],
        }


class Findings:
    """The findings of a run, one per quirk, counting repeats."""

    def __init__(self) -> None:
        self._by_quirk: dict[str, Finding] = {}

    def add(self, quirk: str, detail: str, t: float, *evidence: TraceEntry) -> None:
        side, title = QUIRKS[quirk]
        found = self._by_quirk.get(quirk)
        if found is None:
            self._by_quirk[quirk] = Finding(quirk, side, title, detail, t, 1, "", list(evidence))
            return
        found.count += 1
        room = EVIDENCE - len(found.evidence)
        if room > 0:
            found.evidence.extend(evidence[:room])

    def add_finding(self, finding: Finding) -> None:
        """Take a finding made elsewhere (a case's), as :meth:`merge` does."""
        other = Findings()
        other._by_quirk[finding.quirk] = finding
        self.merge(other)

    def merge(self, other: Findings) -> None:
        for f in other.all():
            mine = self._by_quirk.get(f.quirk)
            if mine is None:
                self._by_quirk[f.quirk] = f
            else:
                mine.count += f.count
                if f.first_seen < mine.first_seen:
                    mine.first_seen, mine.detail, mine.case = f.first_seen, f.detail, f.case

    def all(self) -> list[Finding]:
        return sorted(self._by_quirk.values(), key=lambda f: f.first_seen)

    def __contains__(self, quirk: object) -> bool:
        return quirk in self._by_quirk

    def __len__(self) -> int:
        return len(self._by_quirk)


# --- helpers -----------------------------------------------------------------------------


def _split(data: bytes) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    return head, body


def _declared_length(head: bytes) -> int | None:
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None


def _cmd(body: str) -> tuple[str | None, str | None, str | None]:
    """(root, CmdType, SN) of a MANSCDP body, as far as they can be read."""
    root, cmd, sn = _ROOT.search(body), _CMD.search(body), _SN.search(body)
    return (
        root.group(1) if root else None,
        cmd.group(1) if cmd else None,
        sn.group(1) if sn else None,
    )


def _sdp(body: bytes) -> Sdp | None:
    if not body.lstrip().startswith(b"v="):
        return None
    try:
        return parse_sdp(body)
    except SdpError:
        return None


def _user(msg: Request | Response, header: str = "from") -> str | None:
    try:
        addr = msg.from_ if header == "from" else msg.to
    except ParseError:
        return None
    return addr.uri.user


def _is_transport(entry: TraceEntry, name: str) -> bool:
    return entry.peer.lower().startswith(name + ":")


# --- the scan ----------------------------------------------------------------------------


class _Scanner:
    def __init__(self) -> None:
        self.found = Findings()
        # what the suite sent, looked up by what the target answers
        self.invites: dict[tuple[str, int], tuple[Sdp | None, str | None, TraceEntry]] = {}
        self.queries: set[tuple[str, str]] = set()  # (CmdType, SN) the suite asked
        self.ptz_sns: set[str] = set()  # SNs of PTZ DeviceControls the suite sent
        self.subscribes: dict[tuple[str, int], TraceEntry] = {}  # unanswered, by (Call-ID, CSeq)
        self.one_item: dict[tuple[str, int], TraceEntry] = {}  # one-item catalog MESSAGEs sent
        # registrations
        self.granted: dict[str, tuple[float, int, TraceEntry]] = {}  # user -> (t, expires, 200)
        self.refreshed: dict[str, float] = {}  # user -> last REGISTER seen from the target
        self.lapsed: set[str] = set()
        self.suite_registers: dict[tuple[str, int], tuple[str, str, TraceEntry]] = {}
        self.registered_call_ids: dict[str, str] = {}  # suite user -> Call-ID of its 200
        self.tcp_users: set[str] = set()  # suite users registered over TCP
        self.received_invites: dict[str, int] = {}  # Call-ID -> CSeq of the target's INVITE
        self.end = 0.0

    # sent by the suite: context only
    def sent(self, e: TraceEntry, msg: Request | Response) -> None:
        if isinstance(msg, Request):
            try:
                key = (msg.call_id, msg.cseq.seq)
            except ParseError:
                return
            if msg.method == "INVITE":
                contact = msg.get_header("Contact")
                self.invites[key] = (_sdp(msg.body), contact, e)
            elif msg.method == "SUBSCRIBE":
                self.subscribes.setdefault(key, e)
                root, cmd, sn = _cmd(decode_message(msg.body))
                if cmd and sn:
                    self.queries.add((cmd, sn))
            elif msg.method == "REGISTER":
                user = _user(msg)
                if user:
                    self.suite_registers[key] = (user, msg.call_id, e)
            elif msg.method == "MESSAGE" and msg.body:
                body = decode_message(msg.body)
                root, cmd, sn = _cmd(body)
                if root == "Query" and cmd and sn:
                    self.queries.add((cmd, sn))
                elif root == "Control" and cmd == "DeviceControl" and sn and "<PTZCmd" in body:
                    self.ptz_sns.add(sn)
                elif root == "Response" and cmd == "Catalog" and len(_ITEM.findall(body)) == 1:
                    self.one_item[key] = e
            return
        # a response of the suite's: a lifetime granted to the target
        try:
            cseq = msg.cseq
        except ParseError:
            return
        if cseq.method == "REGISTER" and msg.status == 200:
            user = _user(msg, "to")
            expires = _granted_expires(msg)
            if user and expires:
                self.granted[user] = (e.t, expires, e)
                self.lapsed.discard(user)

    # received from the target: judged
    def received(self, e: TraceEntry, msg: Request | Response) -> None:
        self._lapses(e, msg)
        if isinstance(msg, Request):
            self._request(e, msg)
        else:
            self._response(e, msg)

    def _lapses(self, e: TraceEntry, msg: Request | Response) -> None:
        if not isinstance(msg, Request):
            return
        user = _user(msg)
        if user is None or user not in self.granted:
            return
        if msg.method == "REGISTER":
            self.refreshed[user] = e.t
            return
        t0, expires, granted = self.granted[user]
        last = self.refreshed.get(user, -1.0)
        if (
            e.t > t0 + expires + REFRESH_GRACE
            and not t0 < last <= t0 + expires
            and user not in self.lapsed
        ):
            self.lapsed.add(user)
            self.found.add(
                "register-never-refreshed",
                f"{user} was granted {expires} s at +{t0:.1f} s, sent no REGISTER by "
                f"+{t0 + expires:.1f} s, and sent {msg.method} at +{e.t:.1f} s",
                e.t,
                granted,
                e,
            )

    def _request(self, e: TraceEntry, req: Request) -> None:
        if req.get_header("Max-Forwards") is None:
            self.found.add(
                "request-without-max-forwards", f"{req.method} without Max-Forwards", e.t, e
            )
        try:
            cseq = req.cseq
        except ParseError:
            cseq = None
        if cseq is not None and cseq.method != req.method:
            self.found.add(
                "cseq-method-mismatch",
                f"{req.method} with CSeq {cseq.seq} {cseq.method}",
                e.t,
                e,
            )
        uri = req.request_uri
        if uri.user is None and req.method != "ACK":
            if req.method == "REGISTER" and not _is_ip(uri.host):
                self.found.add("register-to-domain-uri", f"REGISTER {uri} (no user part)", e.t, e)
            elif _is_ip(uri.host):
                self.found.add("request-uri-ip-port", f"{req.method} {uri} (no user part)", e.t, e)
        if req.method == "INVITE" and cseq is not None:
            self.received_invites[req.call_id] = cseq.seq
        elif req.method == "BYE" and cseq is not None:
            invite_seq = self.received_invites.get(req.call_id)
            if invite_seq is not None and invite_seq == cseq.seq:
                self.found.add(
                    "bye-cseq-equals-invite",
                    f"BYE with CSeq {cseq.seq}, the number of the INVITE of its dialog",
                    e.t,
                    e,
                )
        to_user = _user(req, "to") or uri.user
        if _is_transport(e, "udp") and to_user in self.tcp_users:
            self.found.add(
                "udp-request-to-tcp-registration",
                f"{req.method} over UDP to {to_user}, which registered over TCP",
                e.t,
                e,
            )
        if req.method in ("MESSAGE", "NOTIFY") and req.body:
            self._body(e, req)

    def _body(self, e: TraceEntry, req: Request) -> None:
        head, raw_body = _split(e.data)
        declared_length = _declared_length(head)
        if (
            _is_transport(e, "udp")
            and declared_length is not None
            and len(raw_body.rstrip(b"\r\n")) > declared_length
        ):
            whole = decode_message(raw_body)
            cut = decode_message(raw_body[:declared_length])
            if _XML_END.search(whole.strip()) and not _XML_END.search(cut.strip()):
                chars = len(whole.rstrip("\r\n")), len(whole)
                self.found.add(
                    "content-length-in-characters",
                    f"{req.method} declares Content-Length {declared_length}; the datagram "
                    f"carries {len(raw_body)} bytes of body ({chars[1]} characters)",
                    e.t,
                    e,
                )
        body_bytes = req.body
        if (
            e.label != BELOW
            and declared_encoding(body_bytes) in ("UTF-8", "UTF8")
            and body_bytes.isascii()
        ):
            self.found.add(
                "utf8-declared-ascii-only",
                "a body declared UTF-8 whose bytes are all ASCII",
                e.t,
                e,
            )
        text = decode_message(raw_body if raw_body else body_bytes)
        root, cmd, sn = _cmd(text)
        if root != "Response" and not (root == "Notify" and cmd == "Catalog"):
            return
        if root == "Response" and cmd == "DeviceControl" and sn in self.ptz_sns:
            self.found.add(
                "ptz-control-response", f"Response DeviceControl to the PTZ control SN {sn}", e.t, e
            )
        elif (
            root == "Response"
            and cmd in ("DeviceInfo", "Catalog", "DeviceStatus")
            and sn
            and (cmd, sn) not in self.queries
        ):
            self.found.add(
                "unsolicited-response", f"Response {cmd} with SN {sn}, which no query had", e.t, e
            )
        if cmd == "Catalog":
            for item in _ITEM.findall(text):
                found_id = _ITEM_ID.search(item)
                if found_id is None or "<ParentID" in item or "<Name" not in item:
                    continue  # a status event (DeviceID and Event) needs no ParentID
                item_id = found_id.group(1)
                if len(item_id) == 20 and int(item_id[10:13]) in _DEVICE_TYPES:
                    self.found.add(
                        "catalog-item-without-parentid",
                        f"catalog item {item_id} has no ParentID",
                        e.t,
                        e,
                    )
                    break

    def _response(self, e: TraceEntry, resp: Response) -> None:
        try:
            key = (resp.call_id, resp.cseq.seq)
            method = resp.cseq.method
        except ParseError:
            return
        if method == "SUBSCRIBE":
            self.subscribes.pop(key, None)
        elif method == "MESSAGE" and key in self.one_item and resp.status >= 200:
            sent = self.one_item.pop(key)
            if resp.status >= 300:
                self.found.add(
                    "refuses-one-item-catalog",
                    f"a one-item catalog MESSAGE got {resp.status} {resp.reason}",
                    e.t,
                    sent,
                    e,
                )
        elif method == "REGISTER":
            self._register_response(e, resp, key)
        elif method == "INVITE" and 200 <= resp.status < 300:
            self._invite_answer(e, resp, key)

    def _register_response(self, e: TraceEntry, resp: Response, key: tuple[str, int]) -> None:
        mine = self.suite_registers.get(key)
        if mine is None:
            return
        user, call_id, sent = mine
        if resp.status == 200:
            if resp.to.tag is None:
                self.found.add("register-200-without-to-tag", "REGISTER 200 OK, no To tag", e.t, e)
            if resp.get_header("Contact") is None and resp.expires != 0:
                self.found.add(
                    "register-200-without-contact", "REGISTER 200 OK, no Contact", e.t, e
                )
            if (resp.expires or 0) > 0 or _granted_expires(resp):
                self.registered_call_ids[user] = call_id
                if _is_transport(e, "tcp"):
                    self.tcp_users.add(user)
                else:
                    self.tcp_users.discard(user)
        elif resp.status == 500:
            old = self.registered_call_ids.get(user)
            if old is not None and old != call_id:
                self.found.add(
                    "register-500-new-call-id",
                    f"500 to {user}'s REGISTER with Call-ID {call_id}; its registration "
                    f"had Call-ID {old}",
                    e.t,
                    sent,
                    e,
                )

    def _invite_answer(self, e: TraceEntry, resp: Response, key: tuple[str, int]) -> None:
        offer, caller_contact, sent = self.invites.get(key, (None, None, None))
        if resp.to.tag is None:
            self.found.add("invite-200-without-to-tag", "INVITE 200 OK, no To tag", e.t, e)
        contact = resp.get_header("Contact")
        if caller_contact and contact and contact.strip() == caller_contact.strip():
            self.found.add(
                "invite-200-with-callers-contact",
                f"INVITE 200 OK with Contact {contact.strip()}, the INVITE's own",
                e.t,
                e,
            )
        answer = _sdp(resp.body)
        if answer is None:
            return
        if answer.ssrc is not None and not (len(answer.ssrc) == 10 and answer.ssrc.isdigit()):
            self.found.add("ssrc-not-10-digits", f"y={answer.ssrc}", e.t, e)
        if offer is None:
            return
        evidence = (sent, e) if sent is not None else (e,)
        if offer.tcp and not answer.tcp:
            self.found.add(
                "sdp-udp-answer-to-tcp-offer",
                f"offer {offer.proto}, answer {answer.proto}",
                e.t,
                *evidence,
            )
        if offer.tcp and answer.tcp:
            mine, theirs = (offer.setup or "").lower(), (answer.setup or "").lower()
            if mine in ("active", "passive") and mine == theirs:
                self.found.add(
                    "sdp-setup-ignores-offer",
                    f"offer a=setup:{mine}, answer a=setup:{theirs}",
                    e.t,
                    *evidence,
                )
        if answer.host == offer.host and answer.port == offer.port and offer.port:
            self.found.add(
                "sdp-answer-copies-offer",
                f"answer c={answer.host} m= port {answer.port}: the offer's own",
                e.t,
                *evidence,
            )

    def finish(self) -> None:
        for (call_id, seq), e in self.subscribes.items():
            if self.end - e.t >= SUBSCRIBE_PATIENCE:
                self.found.add(
                    "subscribe-unanswered",
                    f"SUBSCRIBE (Call-ID {call_id}, CSeq {seq}) got no response in "
                    f"{self.end - e.t:.0f} s",
                    e.t,
                    e,
                )
        for key, e in self.one_item.items():
            if self.end - e.t >= SUBSCRIBE_PATIENCE:
                self.found.add(
                    "refuses-one-item-catalog",
                    f"a one-item catalog MESSAGE (Call-ID {key[0]}) got no final response",
                    e.t,
                    e,
                )


def _granted_expires(resp: Response) -> int | None:
    """The lifetime a REGISTER 200 grants: the Contact's expires, else the Expires header."""
    try:
        for contact in resp.contacts:
            value = contact.param("expires")
            if value and value.isdigit():
                return int(value)
        return resp.expires
    except ParseError:
        return None


def _is_ip(host: str) -> bool:
    parts = host.split(".")
    return (len(parts) == 4 and all(p.isdigit() for p in parts)) or host.startswith("[")


def split_stream(data: bytes) -> list[bytes]:
    """The SIP messages of one write to a stream (the suite writes two at once to provoke
    ``drops-pipelined-request``), cut at each Content-Length; a datagram is one message."""
    out = []
    while data:
        head, sep, _ = data.partition(b"\r\n\r\n")
        length = _declared_length(head) if sep else None
        if length is None:
            out.append(data)
            break
        end = len(head) + len(sep) + length
        out.append(data[:end])
        data = data[end:].lstrip(b"\r\n")
    return out


def scan(entries: Iterable[TraceEntry]) -> Findings:
    """The quirks the target shows in a run's trace (see :data:`QUIRKS`). Messages that do
    not parse are left to the cases that judge them."""
    scanner = _Scanner()
    seen_sent: set[bytes] = set()
    for whole in entries:
        scanner.end = max(scanner.end, whole.t)
        if whole.direction == "sent" and _is_transport(whole, "tcp"):
            parts = [replace(whole, data=d) for d in split_stream(whole.data)]
        else:
            parts = [whole]
        for e in parts:
            _scan_one(scanner, e, seen_sent)
    scanner.finish()
    return scanner.found


def _scan_one(scanner: _Scanner, e: TraceEntry, seen_sent: set[bytes]) -> None:
    try:
        msg = parse(e.data)
        msg.from_, msg.to, msg.call_id, msg.cseq  # noqa: B018 - the headers every rule reads
        if e.direction == "sent":
            if e.data in seen_sent and isinstance(msg, Request):
                return  # a retransmission: no new context
            seen_sent.add(e.data)
            scanner.sent(e, msg)
        else:
            scanner.received(e, msg)
    except (ParseError, ValueError, LookupError):
        return  # a message too broken to read: the cases judge it
