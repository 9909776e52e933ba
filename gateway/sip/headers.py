"""Typed SIP header values: Via (RFC 3261 §20.42, RFC 3581), CSeq (§20.16) and the
``auth-param`` lists of Authorization / WWW-Authenticate (RFC 2617 §3.2).

Every parser here is a single left-to-right scan, so hostile input costs linear time.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.sip.errors import ParseError
from gateway.sip.uri import digits_value, find_param, is_digits, parse_params, split_unquoted

# RFC 3261 §7.3.3 compact forms.
COMPACT_FORMS = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "s": "subject",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
}


_COMMON = (
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Expires",
    "User-Agent",
    "Content-Type",
    "Content-Length",
    "Authorization",
    "WWW-Authenticate",
    "Date",
    "X-GB-Ver",
    "Subject",
    "Event",
    "Route",
    "Record-Route",
    "Allow",
    "Supported",
    "Server",
    "Subscription-State",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Call-Id",
    "Cseq",
)

# Exact spellings seen on the wire -> lookup key; a constant table, so the hot path skips
# lower() and the token check for names it already knows.
KNOWN_NAMES: dict[str, str] = {}
for _name in _COMMON:
    for _spelling in (_name, _name.lower(), _name.upper()):
        KNOWN_NAMES[_spelling] = _name.lower()
for _short, _long in COMPACT_FORMS.items():
    KNOWN_NAMES[_short] = _long
    KNOWN_NAMES[_short.upper()] = _long
del _name, _spelling, _short, _long


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = KNOWN_NAMES.get(name)
    if key is not None:
        return key
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def split_commas(value: str) -> list[str]:
    """Split a header value on commas that are outside double quotes and angle brackets."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    return [p.strip() for p in split_unquoted(value, ",", angles=True) if p.strip()]


class Via(NamedTuple):
    transport: str  # "UDP", "TCP", ...
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = f"SIP/2.0/{self.transport} {self.sent_by}"
        for k, v in self.params:
            out += f";{k}" if v is None else f";{k}={v}"
        return out


# What devices send: SIP/2.0/UDP host:port;params, single spaces, no quotes. Linear.
_PLAIN_VIA = re.compile(
    r'SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-_]+)(?::([0-9]{1,5}))?((?:;[^;"\s]+)*)\Z'
)


def parse_via(value: str) -> Via:
    """Parse one via-parm: ``SIP/2.0/UDP host:port;branch=...;rport``.

    LWS is allowed around ``/`` and ``:`` (RFC 3261 §25.1 ``SLASH``/``COLON``).
    """
    s = value.strip()
    m = _PLAIN_VIA.match(s)
    if m is not None:
        transport, host, port_text, params_text = m.groups()
        plain_port = int(port_text) if port_text is not None else None
        if plain_port is None or plain_port <= 65535:
            return Via(transport.upper(), host, plain_port, parse_params(params_text))
    head, _, params_text = s.partition(";")
    if "/" not in head:
        raise ParseError("Bad Via", f"bad protocol in {value!r}")
    pieces = head.split("/", 2)
    if len(pieces) != 3 or pieces[0].strip().upper() != "SIP" or pieces[1].strip() != "2.0":
        raise ParseError("Bad Via", f"bad protocol in {value!r}")
    transport_and_host = pieces[2].strip().split(None, 1)
    if len(transport_and_host) != 2:
        raise ParseError("Bad Via", f"no sent-by in {value!r}")
    transport, sent_by = transport_and_host
    port: int | None = None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        if end < 0:
            raise ParseError("Bad Via", f"bad IPv6 sent-by in {value!r}")
        host, tail = sent_by[: end + 1], sent_by[end + 1 :].strip()
        port_text = tail[1:].strip() if tail.startswith(":") else ""
        if tail and not port_text:
            raise ParseError("Bad Via", f"bad sent-by in {value!r}")
    else:
        host, _, port_text = sent_by.partition(":")
        host = host.strip()
        port_text = port_text.strip()
    if port_text:
        if not is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
            raise ParseError("Bad Via", f"bad port in {value!r}")
        port = int(port_text)
    if not host or " " in host or "\t" in host:
        raise ParseError("Bad Via", f"bad host in {value!r}")
    try:
        params = parse_params(params_text)
    except ParseError as exc:
        raise ParseError("Bad Via", exc.detail) from None
    return Via(transport.upper(), host, port, params)


class CSeq(NamedTuple):
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """``CSeq: 1 REGISTER``. The method keeps its case: methods are case-sensitive. The number
    is ``1*DIGIT`` (leading zeros allowed) below 2**31 (RFC 3261 §8.1.1.5, §20.16)."""
    parts = value.split()
    if len(parts) != 2:
        raise ParseError("Bad CSeq", repr(value[:40]))
    num, method = parts
    seq = digits_value(num, 2**31 - 1)
    if seq is None:
        raise ParseError("Bad CSeq", f"bad sequence number {num[:20]!r}")
    return CSeq(seq, method)


# One parameter, anchored where the previous one ended: separators, then name = "quoted
# \"value\"" | name = token. The quoted alternative is the unrolled-loop form, a name cannot
# contain '=', a separator or a quote, and a token value ends where the match ends, so a match (or
# a failure) costs time linear in what it spans, and the scan never goes back over a parameter:
# the whole list is linear. (One regular expression over the whole list, as before, kept
# backtracking state for every parameter; with optional separators, ``a=bc=d`` even had two
# readings and a failing input backtracked exponentially.)
_AUTH_PARAM_AT = re.compile(
    r'[\s,]*([^=\s,"]+)[ \t]*=[ \t]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^\s,"]*))'
)
_AUTH_TAIL = re.compile(r"[\s,]*\Z")
_UNESCAPE = re.compile(r"\\(.)")


def _simple_auth_params(rest: str) -> dict[str, str] | None:
    """The common shape, ``k="v",k=v``, split on commas; ``None`` for anything else (quoted
    commas or escapes, missing commas, stray quotes), which the regular grammar then handles."""
    params: dict[str, str] = {}
    for piece in rest.split(","):
        name, eq, val = piece.partition("=")
        name = name.strip()
        val = val.strip()
        if not eq or not name or " " in name or "\t" in name or '"' in name:
            return None
        if val[:1] == '"':
            if len(val) < 2 or val[-1] != '"' or '"' in val[1:-1] or "\\" in val:
                return None
            val = val[1:-1]
        elif '"' in val or " " in val or "\t" in val:
            return None
        params[name.lower()] = val
    return params


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``Scheme k=v, k="v"`` into (scheme, {lower-case name: value}).

    Tolerates missing commas between parameters (some devices omit them) and whitespace
    around ``=``. Raises :class:`ParseError` on anything else between parameters, such as an
    unterminated quote or a name without a value.
    """
    s = value.strip()
    scheme, _, rest = s.partition(" ")
    if not scheme or "=" in scheme:
        raise ParseError("Bad Authorization", "no scheme")
    simple = _simple_auth_params(rest)
    if simple is not None:
        return scheme, simple
    params: dict[str, str] = {}
    match = _AUTH_PARAM_AT.match
    pos, n = 0, len(rest)
    while True:
        m = match(rest, pos)
        if m is None:
            if _AUTH_TAIL.match(rest, pos) is None:
                raise ParseError("Bad Authorization", f"malformed parameters in {rest[:60]!r}")
            return scheme, params
        name, quoted, token = m.groups()
        if quoted is None:
            params[name.lower()] = token
        else:
            params[name.lower()] = quoted if "\\" not in quoted else _UNESCAPE.sub(r"\1", quoted)
        pos = m.end()
        # Between parameters: a separator, except right after a closing quote.
        if pos < n and quoted is None and not (rest[pos] == "," or rest[pos].isspace()):
            raise ParseError("Bad Authorization", f"malformed parameters in {rest[:60]!r}")
