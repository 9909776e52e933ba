"""Typed SIP header values: Via (RFC 3261 §20.42, RFC 3581), CSeq (§20.16) and the
``auth-param`` lists of Authorization / WWW-Authenticate (RFC 2617 §3.2).

Every parser here is a single left-to-right scan, so hostile input costs linear time.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.errors import ParseError
from gateway.sip.uri import parse_params

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


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def split_commas(value: str) -> list[str]:
    """Split a header value on commas that are outside double quotes and angle brackets."""
    parts: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@dataclass(frozen=True, slots=True)
class Via:
    transport: str  # "UDP", "TCP", ...
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k.lower() == name:
                return v if v is not None else ""
        return None

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


def parse_via(value: str) -> Via:
    """Parse one via-parm: ``SIP/2.0/UDP host:port;branch=...;rport``."""
    s = value.strip()
    proto, sp, rest = s.partition(" ")
    if not sp:
        proto, sp, rest = s.partition("\t")
    pieces = proto.split("/")
    if len(pieces) != 3 or pieces[0].strip().upper() != "SIP" or not pieces[2].strip():
        raise ParseError("Bad Via", f"bad protocol in {value!r}")
    sent_by, _, params_text = rest.strip().partition(";")
    sent_by = sent_by.strip()
    if not sent_by:
        raise ParseError("Bad Via", f"no sent-by in {value!r}")
    port: int | None = None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        if end < 0:
            raise ParseError("Bad Via", f"bad IPv6 sent-by in {value!r}")
        host, tail = sent_by[: end + 1], sent_by[end + 1 :]
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not port_text:
            raise ParseError("Bad Via", f"bad sent-by in {value!r}")
    else:
        host, _, port_text = sent_by.partition(":")
    if port_text:
        if not port_text.strip().isdigit() or int(port_text) > 65535:
            raise ParseError("Bad Via", f"bad port in {value!r}")
        port = int(port_text)
    if not host:
        raise ParseError("Bad Via", f"no host in {value!r}")
    try:
        params = parse_params(params_text)
    except ParseError as exc:
        raise ParseError("Bad Via", exc.detail) from None
    return Via(pieces[2].strip().upper(), host, port, params)


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    num, _, method = value.strip().partition(" ")
    method = method.strip()
    if not num.isdigit() or len(num) > 10 or not method or " " in method:
        raise ParseError("Bad CSeq", repr(value))
    seq = int(num)
    if seq >= 2**31:
        raise ParseError("Bad CSeq", f"sequence number out of range: {value!r}")
    return CSeq(seq, method.upper())


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``Scheme k=v, k="v"`` into (scheme, {lower-case name: value}).

    Tolerates missing commas between parameters (some devices omit them) and whitespace
    around ``=``. Raises :class:`ParseError` on unterminated quotes or nameless values.
    """
    s = value.strip()
    i = 0
    n = len(s)
    while i < n and not s[i].isspace():
        i += 1
    scheme = s[:i]
    if not scheme:
        raise ParseError("Bad Authorization", "no scheme")
    params: dict[str, str] = {}
    while i < n:
        while i < n and (s[i].isspace() or s[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and s[i] not in "=, \t":
            i += 1
        name = s[start:i].lower()
        while i < n and s[i] in " \t":
            i += 1
        if not name or i >= n or s[i] != "=":
            raise ParseError(
                "Bad Authorization", f"parameter without value near {s[start : start + 20]!r}"
            )
        i += 1
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == '"':
            i += 1
            chunks: list[str] = []
            seg = i
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n:
                    chunks.append(s[seg:i])
                    seg = i + 1
                    i += 2
                    continue
                i += 1
            if i >= n:
                raise ParseError("Bad Authorization", f"unterminated quote in {name!r}")
            chunks.append(s[seg:i])
            params[name] = "".join(chunks)
            i += 1
        else:
            start = i
            while i < n and s[i] not in ", \t":
                i += 1
            params[name] = s[start:i]
    return scheme, params
