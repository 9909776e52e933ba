"""SIP message codec: bytes ⇄ :class:`Request` / :class:`Response` (RFC 3261 §7, §18.3, §25).

Parsing splits the start line and the header block once and keeps header values as ``str``;
typed values (Via, From/To, CSeq, Authorization...) are parsed on first access and cached, so a
keepalive that only needs Call-ID, CSeq and the top Via pays for nothing else.

Leniency (devices in the field need it): LF-only line ends, folded header lines, compact header
names, any header-name case, header bytes in UTF-8 or GBK/GB18030, leading CRLFs. Limits: 64 KiB a
message, 128 headers, 8 KiB a header line; beyond them, and on anything malformed, ``ParseError``.
Serialization always recomputes Content-Length from the body bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gateway.sip.errors import ParseError
from gateway.sip.headers import (
    KNOWN_NAMES,
    CSeq,
    Via,
    header_key,
    parse_auth_params,
    parse_cseq,
    parse_via,
    split_commas,
)
from gateway.sip.uri import NameAddr, SipUri, is_digits, parse_name_addr, parse_uri

# Over TCP a catalog answer may carry hundreds of items per MESSAGE (GB/T 28181-2022 Annex M
# allows up to 10,000 records); UDP datagrams cannot exceed 64 KiB anyway.
MAX_MESSAGE_SIZE = 1024 * 1024
MAX_HEADER_BLOCK = 64 * 1024
MAX_HEADERS = 128
MAX_HEADER_LINE = 8 * 1024

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")

REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


class Message:
    """Common part of requests and responses: an ordered header list and a body of bytes."""

    __slots__ = ("_cache", "_items", "body")

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        self._items: list[tuple[str, str, str]] = [(header_key(n), n, v) for n, v in headers]
        self.body = body
        self._cache: dict[str, Any] = {}

    # -- raw header access -------------------------------------------------------------
    def get_header(self, name: str) -> str | None:
        """The first value of a header (any case or compact form), or ``None``."""
        key = header_key(name)
        for k, _, v in self._items:
            if k == key:
                return v
        return None

    def get_headers(self, name: str) -> list[str]:
        key = header_key(name)
        return [v for k, _, v in self._items if k == key]

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one, at the place of the first (or append)."""
        key = header_key(name)
        items = self._items
        for i, (k, _, _) in enumerate(items):
            if k == key:
                items[i] = (key, name, value)
                self._items = [it for j, it in enumerate(items) if j <= i or it[0] != key]
                break
        else:
            items.append((key, name, value))
        self._cache = {}

    def add_header(self, name: str, value: str) -> None:
        self._items.append((header_key(name), name, value))
        self._cache = {}

    def prepend_header(self, name: str, value: str) -> None:
        self._items.insert(0, (header_key(name), name, value))
        self._cache = {}

    def remove_header(self, name: str) -> None:
        key = header_key(name)
        self._items = [it for it in self._items if it[0] != key]
        self._cache = {}

    def headers(self) -> Iterator[tuple[str, str]]:
        """Every header as (name as written, value), in order."""
        for _, n, v in self._items:
            yield n, v

    def replace_top_via(self, via: Via) -> None:
        """Put ``via`` in place of the topmost Via value (RFC 3581 stamping), in place."""
        items = self._items
        for i, (key, name, value) in enumerate(items):
            if key == "via":
                comma = value.find(",")
                text = str(via) if comma < 0 else str(via) + value[comma:]
                items[i] = (key, name, text)
                break
        else:
            raise ParseError("Missing Via")
        self._cache.pop("via", None)
        self._cache["topvia"] = via

    # -- typed access, parsed once ------------------------------------------------------
    def _required(self, name: str) -> str:
        value = self.get_header(name)
        if value is None:
            raise ParseError(f"Missing {name}")
        return value

    @property
    def vias(self) -> list[Via]:
        got = self._cache.get("via")
        if got is not None:
            return got  # type: ignore[no-any-return]
        out = [parse_via(part) for v in self.get_headers("via") for part in split_commas(v)]
        got = self._cache["via"] = out
        return got

    @property
    def top_via(self) -> Via:
        got = self._cache.get("topvia")
        if got is not None:
            return got  # type: ignore[no-any-return]
        raw = self._required("Via")
        comma = raw.find(",")
        got = self._cache["topvia"] = parse_via(raw if comma < 0 else split_commas(raw)[0])
        return got

    @property
    def from_(self) -> NameAddr:
        got = self._cache.get("from")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["from"] = _name_addr(self._required("From"), "Bad From")
        return got

    @property
    def to(self) -> NameAddr:
        got = self._cache.get("to")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["to"] = _name_addr(self._required("To"), "Bad To")
        return got

    @property
    def call_id(self) -> str:
        value = self._required("Call-ID").strip()
        if not value:
            raise ParseError("Bad Call-ID", "empty")
        return value

    @property
    def cseq(self) -> CSeq:
        got = self._cache.get("cseq")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["cseq"] = parse_cseq(self._required("CSeq"))
        return got

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; ``[]`` when absent. The wildcard ``*`` is not a NameAddr:
        see ``contact_star``."""
        got = self._cache.get("contact")
        if got is not None:
            return got  # type: ignore[no-any-return]
        out = [
            _name_addr(part, "Bad Contact")
            for v in self.get_headers("contact")
            for part in split_commas(v)
            if part != "*"
        ]
        got = self._cache["contact"] = out
        return got

    @property
    def contact_star(self) -> bool:
        return any(v.strip() == "*" for v in self.get_headers("contact"))

    @property
    def expires(self) -> int | None:
        value = self.get_header("Expires")
        if value is None:
            return None
        value = value.strip()
        if not is_digits(value) or len(value) > 10:
            raise ParseError("Bad Expires", repr(value))
        return int(value)

    @property
    def content_type(self) -> str | None:
        value = self.get_header("Content-Type")
        return value.strip().lower() if value is not None else None

    @property
    def max_forwards(self) -> int | None:
        value = self.get_header("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        if not is_digits(value) or len(value) > 3:
            raise ParseError("Bad Max-Forwards", repr(value))
        return int(value)

    def auth_params(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(scheme, params) of Authorization / WWW-Authenticate / Proxy-* or ``None``."""
        value = self.get_header(name)
        if value is None:
            return None
        try:
            return parse_auth_params(value)
        except ParseError as exc:
            raise ParseError(f"Bad {name}", exc.detail) from None

    # -- serialization ------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        parts = [self.start_line()]
        for key, name, value in self._items:
            if key != "content-length":
                parts.append(f"{name}: {value}")
        parts.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(parts).encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str | SipUri,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = str(uri)
        self.version = version

    @property
    def request_uri(self) -> SipUri:
        got = self._cache.get("ruri")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["ruri"] = parse_uri(self.uri)
        return got

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _name_addr(value: str, reason: str) -> NameAddr:
    try:
        return parse_name_addr(value)
    except ParseError as exc:
        raise ParseError(reason, exc.detail) from None


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        # GB devices put GBK text in User-Agent or display names; gb18030 is a superset.
        return head.decode("gb18030", errors="replace")


def parse(data: bytes) -> Request | Response:
    """Parse one whole SIP message (a UDP datagram, or a framed TCP message)."""
    n = len(data)
    if n > MAX_MESSAGE_SIZE:
        raise ParseError("Message Too Large", f"{n} bytes > {MAX_MESSAGE_SIZE}")
    start = 0
    while start < n and data[start] in (13, 10):
        start += 1
    if start == n:
        raise ParseError("Empty Message")
    crlf = data.find(b"\r\n\r\n", start)
    # An LF-only header end can only come before the CRLF one; never scan the body for it.
    lf = data.find(b"\n\n", start, crlf) if crlf >= 0 else data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        head_end, body_start = lf, lf + 2
    elif crlf >= 0:
        head_end, body_start = crlf, crlf + 4
    else:
        head_end = body_start = n
    text = _decode_head(data[start:head_end])
    nl = text.find("\n")
    first = (text if nl < 0 else text[:nl]).rstrip("\r")
    if len(first) > MAX_HEADER_LINE:
        raise ParseError("Start Line Too Long")
    items = _headers(text) if nl >= 0 else []
    msg = _start_line(first)
    msg._items = items

    length_text = msg.get_header("content-length")
    if length_text is None:
        msg.body = data[body_start:]
    else:
        length_text = length_text.strip()
        if not is_digits(length_text) or len(length_text) > 6:
            raise ParseError("Bad Content-Length", repr(length_text[:20]))
        length = int(length_text)
        if body_start + length > n:
            raise ParseError("Truncated Body", f"Content-Length {length}, {n - body_start} bytes")
        msg.body = data[body_start : body_start + length]
    return msg


def _headers(text: str) -> list[tuple[str, str, str]]:
    """The header lines after the start line, folded lines joined, names checked."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    check_length = len(text) > MAX_HEADER_LINE  # else no single line can exceed it
    items: list[tuple[str, str, str]] = []
    append = items.append
    known = KNOWN_NAMES
    name = value = ""
    for line in lines[1:]:
        if not line:
            continue
        if check_length and len(line) > MAX_HEADER_LINE:
            raise ParseError("Header Too Long", f"{len(line)} characters")
        first_char = line[0]
        if first_char == " " or first_char == "\t":
            if not name:
                raise ParseError("Bad Header", "continuation line without a header")
            value = f"{value} {line.strip()}"
            if len(value) > MAX_HEADER_LINE:
                raise ParseError("Header Too Long", f"folded {name}")
            items[-1] = (items[-1][0], name, value)
            continue
        name, colon, rest = line.partition(":")
        if not colon:
            raise ParseError("Bad Header", f"no colon in {line[:40]!r}")
        key = known.get(name)
        if key is None:
            name = name.rstrip()
            if not name or not _TOKEN_CHARS.issuperset(name):
                raise ParseError("Bad Header", f"bad header name {name[:40]!r}")
            key = header_key(name)
        value = rest.strip()
        append((key, name, value))
    if len(items) > MAX_HEADERS:
        raise ParseError("Too Many Headers", f"more than {MAX_HEADERS}")
    return items


def _start_line(first: str) -> Request | Response:
    msg: Request | Response
    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise ParseError("Bad Status Line", repr(first[:80]))
        code = parts[1]
        if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
            raise ParseError("Bad Status Line", f"bad status code {code[:10]!r}")
        msg = Response(int(code), parts[2] if len(parts) == 3 else "", version="SIP/2.0")
    else:
        parts = first.split(" ")
        if len(parts) != 3:
            raise ParseError("Bad Request Line", repr(first[:80]))
        method, uri, version = parts
        if not method or not _TOKEN_CHARS.issuperset(method):
            raise ParseError("Bad Request Line", f"bad method {method[:20]!r}")
        if version.upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", repr(version[:20]))
        if ":" not in uri:
            raise ParseError("Bad Request Line", f"bad Request-URI {uri[:80]!r}")
        msg = Request(method, uri)
    return msg


def salvage_request(data: bytes) -> Request | None:
    """What can be read of a request that :func:`parse` refused, for answering it with 400.

    Keeps the start line and every header line that is well formed, drops the rest; the body
    is ignored. ``None`` unless it is a request with Via, From, To, Call-ID and CSeq, since a
    response cannot be built without them. Never raises.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        return None
    head = data.lstrip(b"\r\n")
    for end in (head.find(b"\r\n\r\n"), head.find(b"\n\n")):
        if end >= 0:
            head = head[:end]
            break
    lines = _decode_head(head).replace("\r\n", "\n").split("\n")
    try:
        msg = _start_line(lines[0])
    except ParseError:
        return None
    if not isinstance(msg, Request):
        return None
    items: list[tuple[str, str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or len(line) > MAX_HEADER_LINE:
            continue
        if not _TOKEN_CHARS.issuperset(name) or len(items) >= MAX_HEADERS:
            continue
        items.append((header_key(name), name, value.strip()))
    msg._items = items
    needed = {"via", "from", "to", "call-id", "cseq"}
    if not needed.issubset(k for k, _, _ in items):
        return None
    return msg


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: Via, From, To, Call-ID and CSeq copied,
    the To tag added (except on 100) when the request had none."""
    items: list[tuple[str, str, str]] = []
    for key, name, value in request._items:
        if key in ("via", "from", "call-id", "cseq"):
            items.append((key, name, value))
        elif key == "to":
            if status > 100 and to_tag is not None and "tag=" not in value.lower():
                value = f"{value};tag={to_tag}"
            items.append((key, name, value))
        elif key == "record-route" and 100 < status < 300:
            items.append((key, name, value))
    resp = Response(status, reason)
    resp._items = items
    for hname, hvalue in headers:
        resp._items.append((header_key(hname), hname, hvalue))
    resp.body = body
    return resp
