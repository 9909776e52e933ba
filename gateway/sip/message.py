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
    CSeq,
    Via,
    header_key,
    parse_auth_params,
    parse_cseq,
    parse_via,
    split_commas,
)
from gateway.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

MAX_MESSAGE_SIZE = 64 * 1024
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
        self._cache: dict[str, Any] | None = None

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
        self._cache = None

    def add_header(self, name: str, value: str) -> None:
        self._items.append((header_key(name), name, value))
        self._cache = None

    def prepend_header(self, name: str, value: str) -> None:
        self._items.insert(0, (header_key(name), name, value))
        self._cache = None

    def remove_header(self, name: str) -> None:
        key = header_key(name)
        self._items = [it for it in self._items if it[0] != key]
        self._cache = None

    def headers(self) -> Iterator[tuple[str, str]]:
        """Every header as (name as written, value), in order."""
        for _, n, v in self._items:
            yield n, v

    # -- typed access, parsed once ------------------------------------------------------
    def _cached(self, key: str) -> Any:
        cache = self._cache
        if cache is not None and key in cache:
            return cache[key]
        return _MISSING

    def _store(self, key: str, value: Any) -> Any:
        if self._cache is None:
            self._cache = {}
        self._cache[key] = value
        return value

    def _required(self, name: str) -> str:
        value = self.get_header(name)
        if value is None:
            raise ParseError(f"Missing {name}")
        return value

    @property
    def vias(self) -> list[Via]:
        got = self._cached("via")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        out = [parse_via(part) for v in self.get_headers("via") for part in split_commas(v)]
        return self._store("via", out)  # type: ignore[no-any-return]

    @property
    def top_via(self) -> Via:
        got = self._cached("topvia")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        raw = self._required("Via")
        comma = raw.find(",")
        return self._store("topvia", parse_via(raw if comma < 0 else split_commas(raw)[0]))  # type: ignore[no-any-return]

    @property
    def from_(self) -> NameAddr:
        got = self._cached("from")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        return self._store("from", _name_addr(self._required("From"), "Bad From"))  # type: ignore[no-any-return]

    @property
    def to(self) -> NameAddr:
        got = self._cached("to")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        return self._store("to", _name_addr(self._required("To"), "Bad To"))  # type: ignore[no-any-return]

    @property
    def call_id(self) -> str:
        value = self._required("Call-ID").strip()
        if not value:
            raise ParseError("Bad Call-ID", "empty")
        return value

    @property
    def cseq(self) -> CSeq:
        got = self._cached("cseq")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        return self._store("cseq", parse_cseq(self._required("CSeq")))  # type: ignore[no-any-return]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; ``[]`` when absent. The wildcard ``*`` is not a NameAddr:
        see ``contact_star``."""
        got = self._cached("contact")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        out = [
            _name_addr(part, "Bad Contact")
            for v in self.get_headers("contact")
            for part in split_commas(v)
            if part != "*"
        ]
        return self._store("contact", out)  # type: ignore[no-any-return]

    @property
    def contact_star(self) -> bool:
        return any(v.strip() == "*" for v in self.get_headers("contact"))

    @property
    def expires(self) -> int | None:
        value = self.get_header("Expires")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or len(value) > 10:
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
        if not value.isdigit() or len(value) > 3:
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
        got = self._cached("ruri")
        if got is not _MISSING:
            return got  # type: ignore[no-any-return]
        return self._store("ruri", parse_uri(self.uri))  # type: ignore[no-any-return]

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


class _Missing:
    pass


_MISSING = _Missing()


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
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        head_end, body_start = lf, lf + 2
    elif crlf >= 0:
        head_end, body_start = crlf, crlf + 4
    else:
        head_end = body_start = n
    text = _decode_head(data[start:head_end])
    lines = text.split("\n")
    first = lines[0].rstrip("\r")
    if len(first) > MAX_HEADER_LINE:
        raise ParseError("Start Line Too Long")

    items: list[tuple[str, str, str]] = []
    name = value = ""
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) > MAX_HEADER_LINE:
            raise ParseError("Header Too Long", f"{len(line)} characters")
        if not line:
            continue
        if line[0] in " \t":
            if not name:
                raise ParseError("Bad Header", "continuation line without a header")
            value = f"{value} {line.strip()}"
            if len(value) > MAX_HEADER_LINE:
                raise ParseError("Header Too Long", f"folded {name}")
            items[-1] = (items[-1][0], name, value)
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError("Bad Header", f"no colon in {line[:40]!r}")
        name = line[:colon].rstrip()
        if not _TOKEN_CHARS.issuperset(name):
            raise ParseError("Bad Header", f"bad header name {name[:40]!r}")
        value = line[colon + 1 :].strip()
        items.append((header_key(name), name, value))
        if len(items) > MAX_HEADERS:
            raise ParseError("Too Many Headers", f"more than {MAX_HEADERS}")

    msg: Request | Response
    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise ParseError("Bad Status Line", repr(first[:80]))
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
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
    msg._items = items

    length_text = msg.get_header("content-length")
    if length_text is None:
        msg.body = data[body_start:]
    else:
        length_text = length_text.strip()
        if not length_text.isdigit() or len(length_text) > 6:
            raise ParseError("Bad Content-Length", repr(length_text[:20]))
        length = int(length_text)
        if body_start + length > n:
            raise ParseError("Truncated Body", f"Content-Length {length}, {n - body_start} bytes")
        msg.body = data[body_start : body_start + length]
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
