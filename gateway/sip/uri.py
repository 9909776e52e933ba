"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1).

GB/T 28181 URIs are ``sip:<20-digit ID>@<10-digit domain | IP:port>``: the host part of a GB
URI is often all digits, which some SIP libraries refuse. This parser accepts any host made of
URI-safe characters (hostname, IPv4, bracketed IPv6, or a numeric domain) and keeps parameters in
order. Parsing is linear: no regular expression that can backtrack. Values are NamedTuples:
immutable like frozen dataclasses, at a third of their construction cost on the hot path.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.sip.errors import ParseError


def is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" and full-width digits, which
    ``int()`` then refuses (or reads) as no SIP grammar allows."""
    return text.isascii() and text.isdigit()


def digits_value(text: str, limit: int) -> int | None:
    """The value of a ``1*DIGIT`` field (RFC 3261 §25.1: leading zeros are allowed, so
    ``0068`` is 68), or ``None`` when ``text`` is not ASCII digits or its value exceeds
    ``limit`` (below 10**10). The zeros are taken off before ``int``, which then never sees
    more than 10 digits: a field of 10,000 digits costs one scan, not a big-number
    conversion."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 10:  # every limit used is below 10**10
        text = text.lstrip("0") or "0"
        if len(text) > 10:
            return None
    value = int(text)
    return value if value <= limit else None


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


Params = tuple[tuple[str, str | None], ...]


def find_param(params: Params, name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive); ``""`` for a flag, ``None`` if absent."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v if v is not None else ""
    return None


class SipUri(NamedTuple):
    """A ``sip:`` or ``sips:`` URI. ``params`` keeps ``;name=value`` pairs in order (value
    ``None`` for a flag)."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    password: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str = ""

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host_port)
        for k, v in self.params:
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)


def _parse_port(text: str, whole: str) -> int:
    if not is_digits(text) or len(text) > 5:
        raise ParseError("Bad URI", f"bad port in {whole!r}")
    port = int(text)
    if port > 65535:
        raise ParseError("Bad URI", f"port out of range in {whole!r}")
    return port


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;a=b;c`` (the leading ``;`` optional) into ordered pairs.

    A ``;`` inside a double-quoted value does not split it (RFC 3261 ``gen-value``).
    """
    parts = text.split(";") if '"' not in text else split_unquoted(text, ";")
    out: list[tuple[str, str | None]] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            raise ParseError("Bad Header", f"empty parameter name in {text!r}")
        out.append((name, value.strip() if eq else None))
    return tuple(out)


def split_unquoted(text: str, sep: str, *, angles: bool = False) -> list[str]:
    """Split on ``sep`` where it stands outside double quotes (and, with ``angles``, outside
    ``<...>``). Backslash escapes inside quotes are honoured; an unterminated quote is an error."""
    parts: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif angles and ch == "<":
            in_angle = True
        elif angles and ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("Bad Header", f"unterminated quote in {text[:60]!r}")
    parts.append(text[start:])
    return parts


def parse_uri(text: str) -> SipUri:
    """Parse a SIP URI; raise :class:`ParseError` if it is not one."""
    s = text.strip()
    scheme, colon, rest = s.partition(":")
    lscheme = scheme.lower()
    if not colon or lscheme not in ("sip", "sips"):
        raise ParseError("Bad URI", f"not a sip URI: {text!r}")
    user: str | None = None
    password: str | None = None
    # '@' cannot appear unescaped after the userinfo, while '?' may appear inside it.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
    rest, _, headers = rest.partition("?")
    hostport, semi, params_text = rest.partition(";")
    if not hostport:
        raise ParseError("Bad URI", f"no host in {text!r}")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ParseError("Bad URI", f"unterminated IPv6 host in {text!r}")
        host = hostport[: end + 1]
        tail = hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ParseError("Bad URI", f"junk after IPv6 host in {text!r}")
            port = _parse_port(tail[1:], text)
    else:
        host, pc, port_text = hostport.partition(":")
        if pc:
            port = _parse_port(port_text, text)
        if not host or not _HOST_CHARS.issuperset(host):
            raise ParseError("Bad URI", f"bad host in {text!r}")
    return SipUri(
        host=host,
        user=user,
        port=port,
        scheme=lscheme,
        password=password,
        params=parse_params(params_text) if semi else (),
        headers=headers,
    )


class NameAddr(NamedTuple):
    """A From/To/Contact value: optional display name, URI, and header parameters (``tag``)."""

    uri: SipUri
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        lname = name.lower()
        kept = tuple((k, v) for k, v in self.params if k.lower() != lname)
        return NameAddr(self.uri, self.display, (*kept, (name, value)))

    def __str__(self) -> str:
        if self.display:
            quoted = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{quoted}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        for k, v in self.params:
            head += f";{k}" if v is None else f";{k}={v}"
        return head


# ASCII that is neither a token character nor white space: not allowed in a bare display name.
_DISPLAY_FORBIDDEN = frozenset('()<>@,;:\\"/[]?={}')


# The form nearly every GB device sends: <sip:user@host[:port]>;params, with no display name,
# no URI parameters and no quotes. Linear: no nested or overlapping repetition.
_PLAIN_NAME_ADDR = re.compile(
    r'<(sips?):([^@<>?;:"\s]+)@([A-Za-z0-9.\-_]+)(?::([0-9]{1,5}))?>'
    r'(?:;tag=([^;"<>\s=]+)\Z|([^"<>]*)\Z)',
    re.IGNORECASE,
)


def check_name_addr(text: str) -> None:
    """Raise :class:`ParseError` where :func:`parse_name_addr` would, building nothing for the
    plain form (``<sip:user@host[:port]>`` with no parameter but a tag): a check that a From or
    To can be read, for one that may never be read."""
    m = _PLAIN_NAME_ADDR.match(text.strip())
    if m is not None and (m.group(5) is not None or not m.group(6)):
        port_text = m.group(4)
        if port_text is None or int(port_text) <= 65535:
            return
    parse_name_addr(text)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``"Name" <sip:...>;tag=x``, ``<sip:...>;tag=x`` or the bare ``sip:...;tag=x`` form.

    In the bare form RFC 3261 §20.10 gives every ``;param`` to the header, not the URI.
    """
    s = text.strip()
    m = _PLAIN_NAME_ADDR.match(s)
    if m is not None:
        scheme, user, host, port_text, tag, tail = m.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise ParseError("Bad URI", f"port out of range in {text!r}")
        uri = SipUri(host, user, port, scheme if scheme == "sip" else scheme.lower())
        if tag is not None:
            return NameAddr(uri, None, (("tag", tag),))
        return NameAddr(uri, None, parse_params(tail) if tail else ())
    display: str | None = None
    rest = s
    if s.startswith('"'):
        i, n = 1, len(s)
        chars: list[str] = []
        while i < n and s[i] != '"':
            if s[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(s[i])
            i += 1
        if i >= n:
            raise ParseError("Bad Header", f"unterminated display name in {text!r}")
        display = "".join(chars)
        rest = s[i + 1 :].lstrip()
        if not rest.startswith("<"):
            raise ParseError("Bad Header", f"display name without <URI> in {text!r}")
    lt = rest.find("<")
    if lt >= 0:
        gt = rest.find(">", lt)
        if gt < 0:
            raise ParseError("Bad Header", f"unterminated '<' in {text!r}")
        if display is None:
            display = rest[:lt].strip() or None
            if display is not None and not _DISPLAY_FORBIDDEN.isdisjoint(display):
                # RFC 3261 §25.1: an unquoted display name is tokens and LWS (RFC 4475
                # §3.1.2.16 "baddn"). Non-ASCII is let through: devices write GBK names bare.
                raise ParseError("Bad Header", f"unquoted display name {display[:40]!r}")
        uri = parse_uri(rest[lt + 1 : gt])
        return NameAddr(uri, display, parse_params(rest[gt + 1 :].strip()))
    addr, _, params = rest.partition(";")
    if "?" in addr.partition("@")[2]:
        raise ParseError("Bad Header", f"URI headers need angle brackets: {text!r}")
    return NameAddr(parse_uri(addr), None, parse_params(params))
