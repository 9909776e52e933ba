"""SIP message codec: bytes ⇄ :class:`Request` / :class:`Response` (RFC 3261 §7, §18.3, §25).

Parsing splits the start line and the header block once and keeps header values as ``str``;
typed values (Via, From/To, CSeq, Authorization...) are parsed on first access and cached, so a
keepalive that only needs Call-ID, CSeq and the top Via pays for nothing else.

Leniency (devices in the field need it): LF-only line ends, folded header lines, compact header
names, any header-name case, header bytes in UTF-8 or GBK/GB18030, leading CRLFs, leading zeros in
numbers (``1*DIGIT``), and a datagram whose Content-Length counted the body's characters, not
its bytes (:func:`counted_in_characters`: taken whole, marked in ``declared_length``). Limits:
1 MiB a message (and so a Content-Length), 64 KiB a header block, 128 headers, 8 KiB a header
line; beyond them, and on anything malformed, ``ParseError``
(``status`` 513 for what is too large, 505 for a SIP version other than 2.0, else 400). A header
that may appear once (RFC 3261 §7.3.1: Call-ID, CSeq, From, To, Max-Forwards, Content-Length,
Content-Type, Expires) appearing twice is malformed, which copy is right cannot be known: the
parser refuses a second Content-Length (the body's end is unknown), :func:`check_single_values`
the others.

Serialization always recomputes Content-Length from the body bytes, and writes a Reason-Phrase
that is valid (RFC 3261 §25.1) and short whatever text the code put in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

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
from gateway.sip.uri import (
    NameAddr,
    SipUri,
    check_name_addr,
    digits_value,
    parse_name_addr,
    parse_uri,
)

# Over TCP a catalog answer may carry hundreds of items per MESSAGE (GB/T 28181-2022 Annex M
# allows up to 10,000 records); UDP datagrams cannot exceed 64 KiB anyway.
MAX_MESSAGE_SIZE = 1024 * 1024
MAX_HEADER_BLOCK = 64 * 1024
MAX_HEADERS = 128
MAX_HEADER_LINE = 8 * 1024

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")

# Headers whose grammar allows one value (RFC 3261 §7.3.1, §20): a second copy is an error.
SINGLE_VALUED = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "from": "From",
    "to": "To",
    "max-forwards": "Max-Forwards",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "expires": "Expires",
}

# RFC 3261 §25.1 Reason-Phrase = *(reserved / unreserved / escaped / UTF8-NONASCII / UTF8-CONT
# / SP / HTAB): the ASCII part of that set ('%' only as the start of an escape).
_REASON_ASCII = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789;/?:@&=+$,-_.!~*'() \t"
)
_HEX = frozenset("0123456789abcdefABCDEF")
MAX_REASON = 64

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

    __slots__ = ("_cache", "_items", "body", "declared_length")

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        self._items: list[tuple[str, str, str]] = [(header_key(n), n, v) for n, v in headers]
        self.body = body
        self._cache: dict[str, Any] = {}
        # The Content-Length the sender wrote when the body taken is not that many bytes: a
        # datagram whose Content-Length counted characters (:func:`counted_in_characters`).
        self.declared_length: int | None = None

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
        # The census stays true: the line is where it was, the Via lines as many, and a list
        # of values still a list (only the top value changed). Dropping it would make every
        # later header look-up scan the list (the core stamps every request it takes).
        self._cache.pop("via", None)
        self._cache["topvia"] = via

    # -- typed access, parsed once ------------------------------------------------------
    def _first(self, key: str) -> str | None:
        """The first value of a header by its key (lower-case full name); from the parser's
        census when it has one (:data:`CENSUS_KEYS`), so no scan of the header list."""
        census: HeaderCensus | None = self._cache.get("census")
        if census is not None and key in CENSUS_KEYS:
            i = census.first.get(key)
            return None if i is None else self._items[i][2]
        for k, _, v in self._items:
            if k == key:
                return v
        return None

    def _required(self, key: str, name: str) -> str:
        value = self._first(key)
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
        raw = self._required("via", "Via")
        if "," in raw:
            values = split_commas(raw)
            if not values:  # only commas and white space (found by bench/fuzz.py)
                raise ParseError("Bad Via", "no value")
            raw = values[0]
        got = self._cache["topvia"] = parse_via(raw)
        return got

    @property
    def from_(self) -> NameAddr:
        got = self._cache.get("from")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["from"] = _name_addr(self._required("from", "From"), "Bad From")
        return got

    @property
    def to(self) -> NameAddr:
        got = self._cache.get("to")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["to"] = _name_addr(self._required("to", "To"), "Bad To")
        return got

    @property
    def call_id(self) -> str:
        """RFC 3261 §25.1 ``callid = word ["@" word]``: visible ASCII, no white space. (Any
        visible character is taken, not only ``word``'s: the value is only compared.)"""
        got = self._cache.get("call-id")
        if got is not None:
            return got  # type: ignore[no-any-return]
        value = self._required("call-id", "Call-ID").strip()
        if not value:
            raise ParseError("Bad Call-ID", "empty")
        if not (value.isascii() and value.isprintable()) or " " in value:
            raise ParseError("Bad Call-ID", repr(value[:40]))
        self._cache["call-id"] = value
        return value

    @property
    def cseq(self) -> CSeq:
        got = self._cache.get("cseq")
        if got is not None:
            return got  # type: ignore[no-any-return]
        got = self._cache["cseq"] = parse_cseq(self._required("cseq", "CSeq"))
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
        value = self._first("expires")
        if value is None:
            return None
        # delta-seconds: 1*DIGIT, at most 2**32-1 (RFC 3261 §20.19, §25.1).
        got = digits_value(value.strip(), 2**32 - 1)
        if got is None:
            raise ParseError("Bad Expires", repr(value[:20]))
        return got

    @property
    def content_type(self) -> str | None:
        value = self._first("content-type")
        return value.strip().lower() if value is not None else None

    @property
    def max_forwards(self) -> int | None:
        value = self._first("max-forwards")
        if value is None:
            return None
        # 1*DIGIT, 0-255 (RFC 3261 §20.22; leading zeros allowed, as in RFC 4475 §3.1.1.1).
        got = digits_value(value.strip(), 255)
        if got is None:
            raise ParseError("Bad Max-Forwards", repr(value[:20]))
        return got

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
        return f"{self.version} {self.status} {reason_phrase(self.reason, self.status)}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def reason_phrase(text: str, status: int = 0) -> str:
    """``text`` made a valid, short Reason-Phrase (RFC 3261 §25.1): characters the grammar
    does not allow (controls, ``<>"\\[]{}|^`#``, a ``%`` not starting an escape, C1 controls,
    unpaired surrogates) become spaces, runs of spaces one, and a phrase over
    :data:`MAX_REASON` characters is cut at a word boundary. Detail belongs in the log (and a
    Warning header), not here: a phrase ends up in peers' logs and user interfaces."""
    if len(text) <= MAX_REASON and text.isascii() and _REASON_ASCII.issuperset(text):
        return text
    out: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        code = ord(ch)
        if ch == "%":
            keep = i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX
        else:
            keep = ch in _REASON_ASCII or (code >= 0xA0 and not 0xD800 <= code <= 0xDFFF)
        out.append(ch if keep else " ")
    phrase = " ".join("".join(out).split())
    if len(phrase) > MAX_REASON:
        cut = phrase.rfind(" ", 0, MAX_REASON + 1)
        phrase = phrase[: cut if cut >= MAX_REASON // 2 else MAX_REASON].rstrip()
    if not phrase and text:
        phrase = REASONS.get(status, "")
    return phrase


def warning_value(agent: str, text: str) -> str:
    """A ``Warning: 399 agent "text"`` value (RFC 3261 §20.43: 399 is a miscellaneous warning),
    the text cut to 80 characters and kept a valid quoted-string: quotes, backslashes and
    characters that are not printable become spaces."""
    cleaned = "".join(
        " " if (ch in '"\\' or not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF) else ch
        for ch in text[:80]
    )
    return f'399 {agent} "{cleaned}"'


def _name_addr(value: str, reason: str) -> NameAddr:
    try:
        return parse_name_addr(value)
    except ParseError as exc:
        raise ParseError(reason, exc.detail) from None


def check_addresses(msg: Message) -> None:
    """From and To present and readable, else :class:`ParseError` ("Missing To", "Bad
    From"); the plain form most devices send is matched, not built (:func:`check_name_addr`),
    so a To nobody reads costs no object."""
    for key, name in (("from", "From"), ("to", "To")):
        value = msg._first(key)
        if value is None:
            raise ParseError(f"Missing {name}")
        try:
            check_name_addr(value)
        except ParseError as exc:
            raise ParseError(f"Bad {name}", exc.detail) from None


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
        raise ParseError("Message Too Large", f"{n} bytes > {MAX_MESSAGE_SIZE}", status=513)
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
    items, census = _headers(text) if nl >= 0 else ([], _EMPTY_CENSUS)
    msg = _start_line(first)
    msg._items = items
    msg._cache["census"] = census

    at = census.first.get("content-length")
    if at is None:
        msg.body = data[body_start:]
    else:
        if census.content_lengths > 1:
            # Where the body ends cannot be known (RFC 4475 §3.1.2: mcl01).
            raise ParseError("Duplicate Content-Length", "header given twice")
        length = content_length(items[at][2])
        if body_start + length > MAX_MESSAGE_SIZE:
            raise ParseError(
                "Message Too Large", f"{body_start + length} bytes declared", status=513
            )
        if body_start + length > n:
            raise ParseError("Truncated Body", f"Content-Length {length}, {n - body_start} bytes")
        end = body_start + length
        if end < n and counted_in_characters(data, body_start, length):
            msg.declared_length = length
            end = n
        msg.body = data[body_start:end]
    return msg


def counted_in_characters(data: bytes, body_start: int, length: int) -> bool:
    """Did the sender count the body in characters rather than bytes (a field quirk of devices
    with Chinese text: a 297-byte body sent with ``Content-Length: 287``)? Only a datagram can
    hold bytes past its Content-Length (a stream is cut at it, :mod:`gateway.sip.framing`);
    RFC 3261 §18.3 discards them, which cuts such a body short. They are kept instead when the
    whole rest of the datagram, read as UTF-8 or as GB 18030 (strictly), is exactly
    ``length`` characters (not counting a trailing line end): then the declared body is a cut
    in the middle of the text, and the rest is its true end, never a second message or padding
    (those would not add up; a rest of only line ends or blanks is padding however counted)."""
    rest = data[body_start:]
    if len(rest) <= length or not length or not rest[length:].strip(b" \t\r\n"):
        return False  # nothing past the body but line ends or blanks: padding, discarded
    for codec in ("utf-8", "gb18030"):
        try:
            text = rest.decode(codec)
        except UnicodeDecodeError:
            continue
        # A trailing line end the sender did not count either is part of the same quirk.
        if len(text) == length or len(text.rstrip("\r\n")) == length:
            return True
    return False


class HeaderCensus(NamedTuple):
    """What the parser saw of a header list while building it, so that the core's checks
    (:func:`check_single_values`) and the typed accessors need no scan of their own: the first
    header that may appear once and appears again (its key), how many Via header lines and
    whether one holds several values, whether there is a Require, how many Content-Lengths,
    and where in the list the first header of each key in :data:`CENSUS_KEYS` is. Kept in the
    message's cache, so any change to the headers drops it."""

    duplicate: str | None
    vias: int
    via_list: bool
    require: bool
    content_lengths: int
    first: dict[str, int]


# The headers whose first place the census keeps: the single-valued ones, and Via.
CENSUS_KEYS = frozenset([*SINGLE_VALUED, "via"])
_EMPTY_CENSUS = HeaderCensus(None, 0, False, False, 0, {})


def header_census(items: list[tuple[str, str, str]]) -> HeaderCensus:
    """The census of a header list (for a message not built by :func:`parse`)."""
    first: dict[str, int] = {}
    duplicate: str | None = None
    vias = content_lengths = 0
    via_list = require = False
    for i, (key, _, value) in enumerate(items):
        if key in CENSUS_KEYS:
            if key == "via":
                vias += 1
                via_list = via_list or "," in value
                first.setdefault(key, i)
                continue
            if key == "content-length":
                content_lengths += 1
            if key in first:
                duplicate = duplicate or key
            else:
                first[key] = i
        elif key == "require":
            require = True
    return HeaderCensus(duplicate, vias, via_list, require, content_lengths, first)


def check_single_values(msg: Message) -> HeaderCensus:
    """Raise :class:`ParseError` naming a header that may appear once (:data:`SINGLE_VALUED`)
    and appears twice; else return the census (the parser's, or one taken now)."""
    census: HeaderCensus | None = msg._cache.get("census")
    if census is None:
        census = msg._cache["census"] = header_census(msg._items)
    if census.duplicate is not None:
        raise ParseError(f"Duplicate {SINGLE_VALUED[census.duplicate]}", "header given twice")
    return census


def content_length(text: str) -> int:
    """A Content-Length value: ``1*DIGIT`` (leading zeros allowed), at most the message size
    limit. Beyond it the answer is 513 Message Too Large (RFC 3261 §21.5.9): the whole message
    could not be taken, whatever its body. The stream framer reads it with the same rule."""
    text = text.strip()
    value = digits_value(text, MAX_MESSAGE_SIZE)
    if value is None:
        if text.isascii() and text.isdigit():
            raise ParseError("Message Too Large", f"Content-Length {text[:20]}", status=513)
        raise ParseError("Bad Content-Length", repr(text[:20]))
    return value


def _headers(text: str) -> tuple[list[tuple[str, str, str]], HeaderCensus]:
    """The header lines after the start line, folded lines joined, names checked; and their
    census (:class:`HeaderCensus`), taken on the way."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    check_length = len(text) > MAX_HEADER_LINE  # else no single line can exceed it
    items: list[tuple[str, str, str]] = []
    append = items.append
    known = KNOWN_NAMES
    name = value = ""
    # A folded header's pieces, joined once at its end: joining at each continuation line
    # would copy the value again for every line (quadratic in the header's length).
    folded: list[str] | None = None
    folded_len = 0
    census_keys = CENSUS_KEYS
    first: dict[str, int] = {}
    duplicate: str | None = None
    vias = content_lengths = 0
    via_list = require = False
    for line in lines[1:]:
        if not line:
            continue
        if check_length and len(line) > MAX_HEADER_LINE:
            raise ParseError("Header Too Long", f"{len(line)} characters")
        first_char = line[0]
        if first_char == " " or first_char == "\t":
            if not name:
                raise ParseError("Bad Header", "continuation line without a header")
            piece = line.strip()
            if folded is None:
                folded = [value]
                folded_len = len(value)
            folded.append(piece)
            folded_len += len(piece) + 1
            if folded_len > MAX_HEADER_LINE:
                raise ParseError("Header Too Long", f"folded {name[:40]}")
            continue
        if folded is not None:
            last = items[-1][0]
            joined = " ".join(folded).strip()
            items[-1] = (last, name, joined)
            via_list = via_list or (last == "via" and "," in joined)
            folded = None
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
        if key in census_keys:
            if key == "via":
                vias += 1
                via_list = via_list or "," in value
                if vias == 1:
                    first[key] = len(items)
            elif key in first:
                duplicate = duplicate or key
                content_lengths += key == "content-length"
            else:
                first[key] = len(items)
                content_lengths += key == "content-length"
        elif key == "require":
            require = True
        append((key, name, value))
    if folded is not None:
        last = items[-1][0]
        joined = " ".join(folded).strip()
        items[-1] = (last, name, joined)
        via_list = via_list or (last == "via" and "," in joined)
    if len(items) > MAX_HEADERS:
        raise ParseError("Too Many Headers", f"more than {MAX_HEADERS}")
    return items, HeaderCensus(duplicate, vias, via_list, require, content_lengths, first)


_URI_FORBIDDEN = frozenset('<>"\\{}|^`\t')


def _start_line(first: str) -> Request | Response:
    """RFC 3261 §7.1, §7.2: exactly one SP between the parts of a Request-Line, none after it
    (RFC 4475 §3.1.2.11, §3.1.2.12: ``lwsstart``, ``trws``)."""
    msg: Request | Response
    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise ParseError("Bad Status Line", repr(first[:80]))
        code = parts[1]
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] not in "123456":
            raise ParseError("Bad Status Line", f"bad status code {code[:10]!r}")
        msg = Response(int(code), parts[2] if len(parts) == 3 else "", version="SIP/2.0")
    else:
        parts = first.split(" ")
        if len(parts) != 3:
            raise ParseError("Bad Request Line", repr(first[:80]))
        method, uri, version = parts
        if not method or not _TOKEN_CHARS.issuperset(method):
            raise ParseError("Bad Request Line", f"bad method {method[:20]!r}")
        if ":" not in uri or not _URI_FORBIDDEN.isdisjoint(uri):
            raise ParseError("Bad Request-URI", repr(uri[:80]))
        if uri[:4].lower() in ("sip:", "sips") and "?" in uri[uri.find("@") + 1 :]:
            # RFC 3261 §19.1.1: URI headers are not allowed in a Request-URI (RFC 4475 §3.1.2.13)
            raise ParseError("Bad Request-URI", "headers in the Request-URI")
        if version.upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", repr(version[:20]), status=505)
        msg = Request(method, uri)
    return msg


def salvage_request(data: bytes) -> Request | None:
    """What can be read of a request that :func:`parse` refused, for answering it (400, 505).

    Keeps the start line and every header line that is well formed, drops the rest; the body
    is ignored. A request whose start line parses needs a Via (where the answer goes); one
    whose start line does not (a bad Request-URI, stray white space, another SIP version) is
    taken for a request when it has Via, From, To, Call-ID and CSeq, the method then read from
    the CSeq (RFC 4475 §3.1.2: answer it 400, or 505). ``None`` for anything else (a
    response, garbage). Never raises.
    """
    # Only the header block matters; a message over the size limit is answered (513) from it.
    head = data[:MAX_HEADER_BLOCK].lstrip(b"\r\n")
    for end in (head.find(b"\r\n\r\n"), head.find(b"\n\n")):
        if end >= 0:
            head = head[:end]
            break
    lines = _decode_head(head).replace("\r\n", "\n").split("\n")
    start_ok = True
    try:
        msg = _start_line(lines[0])
    except ParseError:
        if lines[0].startswith("SIP/"):
            return None
        start_ok = False
        msg = Request("UNKNOWN", "sip:invalid")
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
    keys = {k for k, _, _ in items}
    if "via" not in keys:
        return None
    if not start_ok:
        if not {"from", "to", "call-id", "cseq"}.issubset(keys):
            return None
        try:
            msg.method = msg.cseq.method
        except ParseError:
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
    copied: set[str] = set()
    for key, name, value in request._items:
        if key == "via":
            items.append((key, name, value))
        elif key in copied:
            continue  # the answer to a request with a header given twice has it once
        elif key in ("from", "call-id", "cseq"):
            copied.add(key)
            items.append((key, name, value))
        elif key == "to":
            copied.add(key)
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
